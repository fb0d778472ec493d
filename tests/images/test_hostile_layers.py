"""Hostile layers, replayed against the real applier (and a few through a real `image pull`).

Every case runs with a sentinel directory beside the tree (the host directory an attack aims
at): whatever the case does, the sentinel keeps its modes, mtimes and contents. A case either
is refused with the exact error, or unpacks with everything landing inside the tree.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from banger.images.layers import HostileLayer, Layer, LayerError, TooLarge, apply_layers
from banger.rpc.errors import RPCError
from tests.conftest import BangerEnv
from tests.images.ocifix import TAR_TYPES, Entry, Registry, cat, compress, ls, stat_inode

T0 = 1_600_000_000
MiB = 1 << 20
GiB = 1 << 30


@dataclass
class Sparse:
    """A GNU sparse member (PAX 0.1 headers, written by hand so the map can lie)."""

    name: str
    size: int
    segments: list[tuple[int, int]]
    data: bytes
    # Replaces the sparse headers entirely (unsupported versions).
    headers: dict[str, str] | None = None


Item = Entry | Sparse


def tar_of(items: list[Item]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for it in items:
            if isinstance(it, Sparse):
                ti = tarfile.TarInfo(f"GNUSparseFile.0/{it.name}")
                ti.size, ti.mtime, ti.mode = len(it.data), T0, 0o644
                ti.pax_headers = it.headers or {
                    "GNU.sparse.size": str(it.size),
                    "GNU.sparse.numblocks": str(len(it.segments)),
                    "GNU.sparse.map": ",".join(f"{o},{n}" for o, n in it.segments),
                    "GNU.sparse.name": it.name,
                }
                tf.addfile(ti, io.BytesIO(it.data))
                continue
            ti = tarfile.TarInfo(it.name)
            ti.type = TAR_TYPES[it.kind]
            ti.mode, ti.uid, ti.gid, ti.mtime = it.mode, it.uid, it.gid, it.mtime
            ti.linkname = it.link
            ti.devmajor, ti.devminor = it.major, it.minor
            if it.kind == "file":
                ti.size = len(it.data)
                tf.addfile(ti, io.BytesIO(it.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


# --- the sentinel ---


@dataclass(frozen=True)
class Where:
    tree: Path
    out: Path

    @property
    def inside(self) -> Path:
        """Where absolute paths naming the sentinel land: re-rooted in the tree."""
        return self.tree / str(self.out).lstrip("/")


def make_sentinel(out: Path) -> dict[str, tuple[Any, ...]]:
    (out / "sub").mkdir(parents=True)
    (out / "victim").write_bytes(b"keep me")
    os.chmod(out / "victim", 0o600)
    for p in (out / "victim", out / "sub", out):
        os.chmod(p, 0o600 if p.name == "victim" else 0o700)
        os.utime(p, (T0, T0))
    return sentinel(out)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Type, mode, mtime, owner and content of everything under `root` (links not followed)."""
    seen: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            body = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            seen[str(p.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_mtime_ns,
                st.st_uid,
                st.st_gid,
                body,
            )
    return seen


def sentinel(out: Path) -> dict[str, tuple[Any, ...]]:
    """The sentinel as made, checked, for comparing after the case."""
    snap = snapshot(out)
    me = (os.geteuid(), os.getegid())
    assert snap == {
        ".": (stat.S_IFDIR, 0o700, T0 * 10**9, *me, None),
        "sub": (stat.S_IFDIR, 0o700, T0 * 10**9, *me, None),
        "victim": (stat.S_IFREG, 0o600, T0 * 10**9, *me, b"keep me"),
    }
    return snap


# --- the corpus ---


@dataclass
class Case:
    id: str
    # Layers oldest first; "{out}" in names and links is the sentinel's absolute path, "{rel}"
    # a relative path climbing out of the tree to it, "{up}" the sentinel's parent.
    layers: list[list[Item]]
    error: type[LayerError] | None = None
    # The exact message ("{out}" substituted); layers are named sha256:l0, sha256:l1, ...
    message: str = ""
    max_bytes: int | None = None
    compression: str = "tar"
    check: Callable[[Where], None] | None = None
    marks: list[Any] = field(default_factory=list)


def _hostile(layer: int, member: str, reason: str) -> str:
    return f"layer sha256:l{layer}: member {member!r}: {reason}; refusing to unpack this image"


def _too_large(limit: str, layer: int, member: str, total: str) -> str:
    return (
        f"image 'hostile' unpacks to more than its {limit} limit: layer sha256:l{layer}, member "
        f"{member!r} brings it to {total} (sparse and hard-linked files count at their full "
        "size); refusing to unpack it. If it really is that big, pull it with a --size above "
        "its unpacked size"
    )


def _whiteout(layer: int, member: str) -> str:
    base = member.rsplit("/", 1)[-1]
    target = base[len(".wh.") :]
    return _hostile(
        layer, member, f"whiteout {base!r} names {target!r}, which is not an entry of the directory"
    )


def _is_symlink(rel: str, target: str) -> Callable[[Where], None]:
    def check(w: Where) -> None:
        p = w.tree / rel
        assert p.is_symlink() and os.readlink(p) == target.format(out=w.out, up=w.out.parent)

    return check


def _mode_inside(rel: str, mode: int) -> Callable[[Where], None]:
    def check(w: Where) -> None:
        st = os.lstat(w.inside / rel)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == mode

    return check


def _file_is(path: Callable[[Where], Path], body: bytes) -> Callable[[Where], None]:
    def check(w: Where) -> None:
        p = path(w)
        assert not p.is_symlink() and p.read_bytes() == body

    return check


def _only(names: list[str]) -> Callable[[Where], None]:
    def check(w: Where) -> None:
        assert sorted(os.listdir(w.tree)) == names

    return check


def _absent(rel: str) -> Callable[[Where], None]:
    def check(w: Where) -> None:
        assert not os.path.lexists(w.tree / rel)

    return check


def _hardlink_to_link(w: Where) -> None:
    h, s = os.lstat(w.tree / "h"), os.lstat(w.tree / "s")
    assert stat.S_ISREG(h.st_mode) and (w.tree / "h").read_bytes() == b"mine"
    assert stat.S_ISLNK(s.st_mode) and os.readlink(w.tree / "s") == f"{w.out}/victim"


def _device_inside(w: Where) -> None:
    st = os.lstat(w.inside / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3


def _tree_root_private(w: Where) -> None:
    st = os.lstat(w.tree)
    assert stat.S_IMODE(st.st_mode) == 0o700 and (st.st_uid, st.st_gid) == (
        os.geteuid(),
        os.getegid(),
    )


D = "dir"
S = "symlink"
H = "hardlink"

CASES = [
    # --- finding 1: deferred directory attributes must never go through a planted symlink ---
    Case(
        "symlink-replaces-parent-same-layer",
        [[Entry("a/", D), Entry("a/sub/", D, mode=0o777, mtime=1), Entry("a", S, link="{out}")]],
        check=_is_symlink("a", "{out}"),
    ),
    Case(
        "symlink-replaces-parent-later-layer",
        [[Entry("a/", D), Entry("a/sub/", D, mode=0o777, mtime=1)], [Entry("a", S, link="{out}")]],
        check=_is_symlink("a", "{out}"),
    ),
    Case(
        "relative-symlink-replaces-parent-later-layer",
        [[Entry("a/", D), Entry("a/sub/", D, mode=0o777)], [Entry("a", S, link="{rel}")]],
    ),
    Case(
        # The implicit parent a/outside is recorded too (0755): it must not land on the sentinel.
        "symlink-replaces-grandparent-later-layer",
        [[Entry("a/outside/sub/", D, mode=0o777, mtime=1)], [Entry("a", S, link="{up}")]],
        check=_is_symlink("a", "{up}"),
    ),
    Case(
        "whiteout-then-symlink-later-layer",
        [
            [Entry("p/", D), Entry("p/sub/", D, mode=0o777)],
            [Entry(".wh.p"), Entry("p", S, link="{out}")],
        ],
    ),
    Case(
        "symlink-replaces-recorded-dir-later-layer",
        [[Entry("d/", D, mode=0o777, mtime=1)], [Entry("d", S, link="{out}/sub")]],
    ),
    Case(
        "symlink-replaces-root-children-same-layer",
        [[Entry("./", D, mode=0o755), Entry("x/", D, mode=0o777), Entry("x", S, link="{out}")]],
    ),
    Case(
        # The tree holds the image's device nodes as root while it is built: another host user
        # must not be handed it (mkfs gives the image's root 0755 root:root anyway).
        "root-entry-cannot-open-the-tree",
        [[Entry("./", D, mode=0o777, uid=1000, gid=1000), Entry("dev/sda", "block", mode=0o666)]],
        check=_tree_root_private,
    ),
    # --- members placed through planted symlinks land inside the tree (chroot-style) ---
    Case(
        "dir-through-symlinked-parent",
        [[Entry("l", S, link="{out}")], [Entry("l/sub/", D, mode=0o777, mtime=1)]],
        check=_mode_inside("sub", 0o777),
    ),
    Case(
        "file-through-symlinked-parent",
        [[Entry("etc", S, link="{out}")], [Entry("etc/victim", data=b"pwned")]],
        check=_file_is(lambda w: w.inside / "victim", b"pwned"),
    ),
    Case(
        "file-through-relative-symlink-chain",
        [[Entry("a", S, link="b"), Entry("b", S, link="{rel}")], [Entry("a/victim", data=b"x")]],
        check=_file_is(lambda w: w.inside / "victim", b"x"),
    ),
    Case(
        "file-replaces-symlink-to-outside-file",
        [[Entry("f", S, link="{out}/victim")], [Entry("f", data=b"pwned", mode=0o777)]],
        check=_file_is(lambda w: w.tree / "f", b"pwned"),
    ),
    Case(
        "device-through-symlinked-parent",
        [
            [Entry("dev", S, link="{out}")],
            [Entry("dev/null", "char", mode=0o666, major=1, minor=3)],
        ],
        check=_device_inside,
    ),
    Case(
        "fifo-replaces-symlink-to-outside-file",
        [[Entry("p", S, link="{out}/victim")], [Entry("p", "fifo", mode=0o666)]],
    ),
    Case(
        "hardlink-to-symlink-links-the-symlink",
        [
            [Entry("s", S, link="{out}/victim")],
            [Entry("h", H, link="s")],
            [Entry("h", data=b"mine")],
        ],
        check=_hardlink_to_link,
    ),
    Case(
        "hardlink-via-symlinked-parent",
        [[Entry("l", S, link="{out}")], [Entry("h", H, link="l/victim")]],
        HostileLayer,
        _hostile(1, "h", "hardlink target 'l/victim' does not exist in the image"),
    ),
    # --- whiteouts ---
    Case(
        "whiteout-through-symlinked-dir",
        [[Entry("d", S, link="{out}")], [Entry("d/.wh.victim"), Entry("d/.wh.sub")]],
    ),
    Case(
        "opaque-under-symlinked-dir",
        [[Entry("d", S, link="{out}")], [Entry("d/.wh..wh..opq")]],
    ),
    Case(
        "opaque-under-relative-symlinked-dir",
        [[Entry("d", S, link="{rel}")], [Entry("d/.wh..wh..opq")]],
    ),
    Case(
        "opaque-root-hides-only-lower-entries",
        [
            [Entry("x", data=b"1"), Entry("l", S, link="{out}")],
            [Entry(".wh..wh..opq"), Entry("new")],
        ],
        check=_only(["new"]),
    ),
    Case(
        "whiteout-dot",
        [[Entry("d/", D), Entry("d/f", data=b"1")], [Entry("d/.wh..")]],
        HostileLayer,
        _whiteout(1, "d/.wh.."),
    ),
    Case(
        "whiteout-dotdot",
        [[Entry("d/", D), Entry("d/f", data=b"1")], [Entry("d/.wh...")]],
        HostileLayer,
        _whiteout(1, "d/.wh..."),
    ),
    Case(
        "whiteout-empty-name",
        [[Entry("d/", D)], [Entry("d/.wh.")]],
        HostileLayer,
        _whiteout(1, "d/.wh."),
    ),
    Case("whiteout-of-root-dot", [[Entry(".wh..")]], HostileLayer, _whiteout(0, ".wh..")),
    Case("whiteout-of-root-dotdot", [[Entry(".wh...")]], HostileLayer, _whiteout(0, ".wh...")),
    Case("whiteout-of-root-empty", [[Entry("./.wh.")]], HostileLayer, _whiteout(0, "./.wh.")),
    Case(
        "whiteout-dotdot-under-symlinked-dir",
        [[Entry("d", S, link="{out}")], [Entry("d/.wh...")]],
        HostileLayer,
        _whiteout(1, "d/.wh..."),
    ),
    # --- names ---
    Case(
        "absolute-name-at-sentinel",
        [[Entry("{out}/victim", data=b"x")]],
        HostileLayer,
        _hostile(0, "{out}/victim", "absolute name '{out}/victim'"),
    ),
    Case(
        "dotdot-name",
        [[Entry("a/../../outside/victim", data=b"x")]],
        HostileLayer,
        _hostile(0, "a/../../outside/victim", "name 'a/../../outside/victim' contains '..'"),
    ),
    Case(
        "hardlink-absolute-target",
        [[Entry("h", H, link="{out}/victim")]],
        HostileLayer,
        _hostile(0, "h", "absolute hardlink target '{out}/victim'"),
    ),
    Case(
        "hardlink-dotdot-target",
        [[Entry("h", H, link="../outside/victim")]],
        HostileLayer,
        _hostile(0, "h", "hardlink target '../outside/victim' contains '..'"),
    ),
    Case(
        "symlink-loop",
        [[Entry("loop", S, link="loop")], [Entry("loop/x", data=b"x")]],
        HostileLayer,
        _hostile(1, "loop/x", "too many levels of symbolic links"),
    ),
    Case(
        "parent-is-a-file",
        [[Entry("f", data=b"1")], [Entry("f/x", data=b"x")]],
        HostileLayer,
        _hostile(1, "f/x", "parent 'f' is not a directory"),
    ),
    Case(
        "nesting-too-deep",
        [[Entry("a/" * 300 + "x", data=b"x")]],
        HostileLayer,
        _hostile(0, "a/" * 300 + "x", "path nests deeper than 256 directories"),
    ),
    Case(
        "name-component-too-long",
        [[Entry("n" * 256, data=b"x")]],
        HostileLayer,
        _hostile(0, "n" * 256, "name component longer than 255 bytes"),
    ),
    # --- finding 2: bombs, on the disk (tmp_path is not tmpfs) ---
    Case(
        "sparse-bomb-over-limit",
        [[Sparse("big", GiB, [(0, 4)], b"head")]],
        TooLarge,
        _too_large("512.0 MiB", 0, "big", "1.0 GiB"),
        max_bytes=512 * MiB,
        check=_absent("big"),
    ),
    Case(
        "dense-bomb-over-limit",
        [[Entry("ok", data=bytes(MiB)), Entry("zeros", data=bytes(8 * MiB))]],
        TooLarge,
        _too_large("4.0 MiB", 0, "zeros", "9.0 MiB"),
        max_bytes=4 * MiB,
        compression="gzip",
        check=_absent("zeros"),
    ),
    Case(
        "dense-bomb-across-layers",
        [[Entry("a", data=bytes(3 * MiB))], [Entry("b", data=bytes(3 * MiB))]],
        TooLarge,
        _too_large("4.0 MiB", 1, "b", "6.0 MiB"),
        max_bytes=4 * MiB,
        compression="zstd",
        check=_absent("b"),
    ),
    Case(
        "hardlink-amplification-over-limit",
        [[Entry("f", data=bytes(MiB)), *(Entry(f"l{i}", H, link="f") for i in range(6))]],
        TooLarge,
        _too_large("4.0 MiB", 0, "l3", "5.0 MiB"),
        max_bytes=4 * MiB,
        check=_absent("l3"),
    ),
    Case(
        "sparse-map-beyond-size",
        [[Sparse("s", 1000, [(0, 4), (2000, 10)], b"x" * 14)]],
        HostileLayer,
        _hostile(
            0,
            "s",
            "sparse map entry (2000, 10) overlaps another or lies beyond the file's size 1000",
        ),
    ),
    Case(
        "sparse-map-overlapping",
        [[Sparse("s", 1000, [(0, 10), (5, 10)], b"x" * 20)]],
        HostileLayer,
        _hostile(
            0, "s", "sparse map entry (5, 10) overlaps another or lies beyond the file's size 1000"
        ),
    ),
    Case(
        "sparse-map-claims-more-than-stored",
        [[Sparse("s", 1 << 20, [(0, 4096)], b"x" * 10), Entry("next", data=b"n")]],
        HostileLayer,
        _hostile(0, "s", "sparse map claims 4096 bytes of data but the member stores 512"),
    ),
    Case(
        "sparse-unsupported-version",
        [
            [
                Sparse(
                    "s",
                    0,
                    [],
                    b"1\n0\n4\n",
                    headers={
                        "GNU.sparse.major": "2",
                        "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "s",
                        "GNU.sparse.realsize": "4096",
                    },
                )
            ]
        ],
        HostileLayer,
        _hostile(
            0,
            "s",
            "unsupported GNU sparse format 2.0 (0.0, 0.1, 1.0 and old GNU sparse members are"
            " supported)",
        ),
    ),
]


def _subst(text: str, out: Path, tree: Path) -> str:
    depth = len(tree.parts) + 3
    return text.format(out=out, up=out.parent, rel="../" * depth + str(out).lstrip("/"))


def _materialize(case: Case, tmp_path: Path, out: Path, tree: Path) -> list[Layer]:
    layers = []
    for i, items in enumerate(case.layers):
        fixed: list[Item] = []
        for it in items:
            if isinstance(it, Entry):
                it = replace(it, name=_subst(it.name, out, tree), link=_subst(it.link, out, tree))
            fixed.append(it)
        blob = tmp_path / f"l{i}.blob"
        blob.write_bytes(compress(tar_of(fixed), case.compression))
        layers.append(Layer(blob, f"sha256:l{i}"))
    return layers


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_layer(tmp_path: Path, case: Case) -> None:
    out = tmp_path / "outside"
    before = make_sentinel(out)
    tree = tmp_path / "tree"
    layers = _materialize(case, tmp_path, out, tree)
    if case.error is None:
        apply_layers(tree, layers, max_bytes=case.max_bytes, image="hostile")
    else:
        with pytest.raises(LayerError) as ei:
            apply_layers(tree, layers, max_bytes=case.max_bytes, image="hostile")
        assert type(ei.value) is case.error
        assert str(ei.value) == _subst(case.message, out, tree)
    assert snapshot(out) == before
    if case.check is not None:
        case.check(Where(tree, out))


# --- the build child: the same limit whichever tree it unpacks into ---


def _bomb_spec(tmp_path: Path, **extra: object) -> dict[str, object]:
    blob = tmp_path / "bomb.blob"
    # 2 MiB that a 1 MiB scratch cannot take (but the limit can), then the bomb.
    entries = [Entry("warm", data=bytes(2 * MiB)), Entry("zeros", data=bytes(16 * MiB))]
    blob.write_bytes(compress(tar_of(entries), "gzip"))
    assert blob.stat().st_size < 64 << 10
    return {
        "layers": [{"path": str(blob), "name": "sha256:bomb", "compression": "gzip"}],
        "tree": str(tmp_path / "scratch" / "tree"),
        "out": str(tmp_path / "rootfs.ext4"),
        "size_bytes": None,
        "image": "bomb",
        "max_bytes": 8 * MiB,
        **extra,
    }


BOMB_MESSAGE = (
    "image 'bomb' unpacks to more than its 8.0 MiB limit: layer sha256:bomb, member 'zeros' "
    "brings it to 18.0 MiB (sparse and hard-linked files count at their full size); refusing "
    "to unpack it. If it really is that big, pull it with a --size above its unpacked size"
)


@pytest.mark.parametrize(
    "staging",
    [
        pytest.param({}, id="disk"),
        # Scratch with room to spare: the limit, not the scratch budget, stops it (no fallback).
        pytest.param({"fallback_tree": "disk", "tree_budget": 1 << 30}, id="scratch-roomy"),
        # Scratch too small: falls back to the disk, where the same limit stops it.
        pytest.param({"fallback_tree": "disk", "tree_budget": MiB}, id="scratch-then-disk"),
    ],
)
def test_build_refuses_bomb_on_every_staging_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], staging: dict[str, object]
) -> None:
    from banger.images import build

    if "fallback_tree" in staging:
        staging = {**staging, "fallback_tree": str(tmp_path / "disk")}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_bomb_spec(tmp_path, **staging)))
    assert build.main([str(spec)]) == 2
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1] == {"event": "error", "kind": "too_large", "message": BOMB_MESSAGE}
    fell_back = any(e["event"] == "fallback" for e in events)
    assert fell_back == (staging.get("tree_budget") == MiB)
    assert not (tmp_path / "rootfs.ext4").exists()


def test_unpack_limit_defaults_and_grows_with_size() -> None:
    from banger.images.build import unpack_limit

    assert unpack_limit(None) == 32 * GiB
    assert unpack_limit(4 * GiB) == 32 * GiB
    assert unpack_limit(100 * GiB) == 100 * GiB


# --- end to end: a real registry, a real daemon, the error code the user gets ---


def _pull_error(env: BangerEnv, ref: str, name: str) -> RPCError:
    with env.client() as c, pytest.raises(RPCError) as ei:
        c.call("image.pull", {"ref": ref, "name": name}, timeout=300)
    return ei.value


def _still_answers(env: BangerEnv) -> None:
    with env.client() as c:
        assert c.call("ping", timeout=30)


def _nothing_left(env: BangerEnv) -> None:
    assert list(env.paths.staging_dir.iterdir()) == []
    assert list(env.paths.images_dir.iterdir()) == []


@pytest.mark.slow
def test_pull_sparse_bomb_is_refused_naming_image_and_limit(
    daemon: BangerEnv, registry: Registry, tmp_path: Path
) -> None:
    out = tmp_path / "outside"
    before = make_sentinel(out)
    # 40 GiB apparent in a layer of a few hundred bytes: over the default 32 GiB limit.
    layer = [Entry("ok", data=b"1"), Sparse("bomb", 40 * GiB, [(0, 4)], b"boom")]
    digest = _push_raw_image(registry, "hostile/bomb", "v1", compress(tar_of(layer), "zstd"))
    err = _pull_error(daemon, f"{registry.host}/hostile/bomb:v1", "bomb")
    assert err.code == "operation_failed"
    assert err.message == (
        f"image 'bomb' unpacks to more than its 32.0 GiB limit: layer {digest}, member 'bomb' "
        "brings it to 40.0 GiB (sparse and hard-linked files count at their full size); "
        "refusing to unpack it. If it really is that big, pull it with a --size above its "
        "unpacked size"
    )
    _still_answers(daemon)
    _nothing_left(daemon)
    assert snapshot(out) == before


@pytest.mark.slow
def test_pull_whiteout_dotdot_is_refused(
    daemon: BangerEnv, registry: Registry, tmp_path: Path
) -> None:
    out = tmp_path / "outside"
    before = make_sentinel(out)
    pushed = registry.push_image(
        "hostile/whiteout",
        "v1",
        [([Entry("d/", D), Entry("d/f", data=b"1")], "gzip"), ([Entry("d/.wh...")], "gzip")],
    )
    err = _pull_error(daemon, f"{registry.host}/hostile/whiteout:v1", "wh")
    assert err.code == "operation_failed"
    layer = pushed["layers"][1]["digest"]
    assert err.message == (
        f"layer {layer}: member 'd/.wh...': whiteout '.wh...' names '..', which is not an entry"
        " of the directory; refusing to unpack this image"
    )
    _still_answers(daemon)
    _nothing_left(daemon)
    assert snapshot(out) == before


@pytest.mark.slow
def test_pull_symlink_replacing_parent_keeps_host_dir(
    daemon: BangerEnv, registry: Registry, tmp_path: Path
) -> None:
    """Finding 1 end to end: as root, the recorded 0777 of a/sub used to land on the host."""
    out = tmp_path / "outside"
    before = make_sentinel(out)
    registry.push_image(
        "hostile/replace",
        "v1",
        [
            ([Entry("a/", D), Entry("a/sub/", D, mode=0o777, mtime=1)], "gzip"),
            ([Entry("a", S, link=str(out))], "zstd"),
        ],
    )
    with daemon.client() as c:
        rec = c.call("image.pull", {"ref": f"{registry.host}/hostile/replace:v1"}, timeout=300)
    img = Path(rec["rootfs"])
    link = stat_inode(img, "/a")
    # Longer than 60 bytes: the target is in a data block, which debugfs `cat` prints.
    assert link["type"] == "symlink" and cat(img, "/a") == str(out).encode()
    assert ls(img, "/") == ["a"]
    _still_answers(daemon)
    assert snapshot(out) == before


def _push_raw_image(registry: Registry, repo: str, tag: str, blob: bytes) -> str:
    """Push a one-layer image whose layer is `blob` (zstd) as given; returns the layer digest."""
    import hashlib

    import zstandard

    raw = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    layer = registry.push_blob(repo, blob)
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        }
    ).encode()
    registry.push_manifest(
        repo,
        tag,
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": registry.push_blob(repo, cfg),
                "size": len(cfg),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                    "digest": layer,
                    "size": len(blob),
                }
            ],
        },
    )
    return layer
