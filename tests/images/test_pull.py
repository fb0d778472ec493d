"""`banger image pull` against a real docker-registry: layer semantics checked inside the ext4."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BangerEnv
from tests.images.ocifix import Entry, Registry, cat, ls, stat_inode
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

BASE = [
    Entry("etc/", "dir", mode=0o755),
    Entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
    Entry("etc/shadow", data=b"root:*:1::::::\n", mode=0o640, gid=42),
    Entry("bin/", "dir", mode=0o755),
    Entry("bin/busybox", data=b"\x7fELF-not-really", mode=0o755),
    Entry("bin/sh", "symlink", link="/bin/busybox"),
    Entry("bin/ash", "hardlink", link="bin/busybox"),
    Entry("usr/bin/su", data=b"su", mode=0o4755),
    Entry("usr/bin/wall", data=b"wall", mode=0o2755, gid=5),
    Entry("tmp/", "dir", mode=0o1777),
    Entry("home/alice/", "dir", mode=0o750, uid=1000, gid=1000),
    Entry("home/alice/notes.txt", data=b"hi", mode=0o600, uid=1000, gid=1000),
    Entry("dev/", "dir", mode=0o755),
    Entry("dev/null", "char", mode=0o666, major=1, minor=3),
    Entry("dev/sda", "block", mode=0o660, major=8, minor=0, gid=6),
    Entry("run/ctl", "fifo", mode=0o600),
    Entry("opq/", "dir"),
    Entry("opq/lower-a", data=b"a"),
    Entry("opq/lower-dir/", "dir"),
    Entry("opq/lower-dir/deep", data=b"deep"),
    Entry("gone", data=b"soon deleted"),
    Entry("gonedir/", "dir"),
    Entry("gonedir/x", data=b"x"),
    Entry("was-dir/", "dir"),
    Entry("was-dir/child", data=b"c"),
    Entry("usr/bin/ping", data=b"ping", mode=0o755, xattrs={"user.banger": "test-value"}),
]
UPPER = [
    # The opaque marker comes after an entry of this layer in the same dir: the spec says it
    # applies first regardless, so upper-new must survive and only the lower entries vanish.
    Entry("opq/upper-new", data=b"new"),
    Entry("opq/.wh..wh..opq", data=b""),
    Entry(".wh.gone", data=b""),
    Entry(".wh.gonedir", data=b""),
    Entry("was-dir", data=b"now a file"),
    Entry(
        "etc/passwd", data=b"root:x:0:0::/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n"
    ),
]
TOP = [Entry("etc/motd", data=b"zstd layer says hi\n", mode=0o644, uid=0, gid=0)]
CONFIG = {
    "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ["echo hi"],
    "WorkingDir": "/home/alice",
    "User": "1000:1000",
}


@pytest.fixture(scope="module")
def pushed(registry: Registry) -> dict[str, Any]:
    return registry.push_image(
        "fixtures/semantics", "v1", [(BASE, "tar"), (UPPER, "gzip"), (TOP, "zstd")], CONFIG
    )


def _pull(env: BangerEnv, ref: str, *args: str) -> dict[str, Any]:
    p = env.banger("image", "pull", ref, *args, "--json", check=True, timeout=300)
    rec: dict[str, Any] = json.loads(p.stdout)
    rec["_stderr"] = p.stderr
    return rec


def test_pull_builds_ext4_with_layer_semantics(
    daemon: BangerEnv, registry: Registry, pushed: dict[str, Any]
) -> None:
    rec = _pull(daemon, f"{registry.host}/fixtures/semantics:v1")
    assert rec["name"] == "semantics-v1"
    # Progress reached the CLI (plain lines when not on a terminal).
    err = rec["_stderr"]
    assert f"resolving {registry.host}/fixtures/semantics:v1" in err and "3 layer(s)" in err
    for i, layer in enumerate(pushed["layers"], 1):
        assert f"applying layer {i}/3 {layer['digest'][7:19]}" in err
    assert "writing ext4 (1.0 GiB, sparse)" in err
    assert rec["digest"] == pushed["manifest"]
    assert rec["managed"] is True
    img = Path(rec["rootfs"])
    assert img.is_file() and img.stat().st_size == rec["size_bytes"] >= 1 << 30
    # Sparse: far less allocated than its apparent size.
    assert img.stat().st_blocks * 512 < 64 << 20

    assert rec["config"] == {
        "env": CONFIG["Env"],
        "entrypoint": CONFIG["Entrypoint"],
        "cmd": CONFIG["Cmd"],
        "working_dir": "/home/alice",
        "user": "1000:1000",
    }
    # Ownership and special bits exactly as in the tar headers.
    su = stat_inode(img, "/usr/bin/su")
    assert (su["mode"], su["uid"], su["gid"]) == (0o4755, 0, 0)
    wall = stat_inode(img, "/usr/bin/wall")
    assert (wall["mode"], wall["gid"]) == (0o2755, 5)
    assert stat_inode(img, "/tmp")["mode"] == 0o1777
    # The daemon's umask 077 must not reach the guest's `/` (the tree root is staged 0700).
    root = stat_inode(img, "/")
    assert (root["mode"], root["uid"], root["gid"]) == (0o755, 0, 0)
    alice = stat_inode(img, "/home/alice")
    assert (alice["mode"], alice["uid"], alice["gid"]) == (0o750, 1000, 1000)
    notes = stat_inode(img, "/home/alice/notes.txt")
    assert (notes["mode"], notes["uid"], notes["gid"]) == (0o600, 1000, 1000)
    shadow = stat_inode(img, "/etc/shadow")
    assert (shadow["mode"], shadow["gid"]) == (0o640, 42)
    # Devices and fifos.
    null = stat_inode(img, "/dev/null")
    assert null["type"] == "character" and null["dev"] == (1, 3) and null["mode"] == 0o666
    sda = stat_inode(img, "/dev/sda")
    assert sda["type"] == "block" and sda["dev"] == (8, 0) and sda["gid"] == 6
    assert stat_inode(img, "/run/ctl")["type"] == "FIFO"
    # Absolute symlink target kept as written; hardlink shares the inode.
    assert 'Fast link dest: "/bin/busybox"' in stat_inode(img, "/bin/sh")["raw"]
    bb, ash = stat_inode(img, "/bin/busybox"), stat_inode(img, "/bin/ash")
    assert bb["inode"] == ash["inode"] and bb["links"] == 2
    # xattrs survive into the ext4.
    assert "user.banger" in stat_inode(img, "/usr/bin/ping")["raw"]
    # Whiteouts and the opaque dir.
    assert ls(img, "/opq") == ["upper-new"]
    root = ls(img, "/")
    assert "gone" not in root and "gonedir" not in root
    assert stat_inode(img, "/was-dir")["type"] == "regular"
    assert cat(img, "/was-dir") == b"now a file"
    assert b"alice" in cat(img, "/etc/passwd")
    assert cat(img, "/etc/motd") == b"zstd layer says hi\n"
    assert not any(".wh." in n for n in root)

    # Readable output of list/show.
    out = daemon.banger("image", "list", check=True).stdout
    assert "semantics-v1" in out and rec["id"] in out
    show = daemon.banger("image", "show", rec["id"][:6], check=True).stdout
    assert "/bin/sh -c" in show and "1000:1000" in show and pushed["manifest"] in show


def test_second_pull_downloads_nothing_and_cache_is_oci_layout(
    daemon: BangerEnv, registry: Registry, pushed: dict[str, Any]
) -> None:
    repo = "fixtures/semantics"
    ref = f"{registry.host}/{repo}:v1"
    before = len(registry.blob_gets(repo))
    _pull(daemon, ref, "--name", "first")
    fetched = registry.blob_gets(repo)[before:]
    # A fresh cache: config + 3 layers, once each.
    assert sorted(fetched) == sorted(
        [pushed["config"]["digest"], *(x["digest"] for x in pushed["layers"])]
    )
    mid = len(registry.blob_gets(repo))
    second = _pull(daemon, ref, "--name", "second")
    assert registry.blob_gets(repo)[mid:] == []
    # The built rootfs is reused too (a hard link to the immutable file, not a rebuild).
    first = json.loads(daemon.banger("image", "show", "first", "--json", check=True).stdout)
    assert os.stat(first["rootfs"]).st_ino == os.stat(second["rootfs"]).st_ino
    # A different --size is a different filesystem: built afresh.
    third = _pull(daemon, ref, "--name", "third", "--size", "1100M")
    assert third["size_bytes"] == 1100 << 20
    assert os.stat(third["rootfs"]).st_ino != os.stat(second["rootfs"]).st_ino

    oci = daemon.paths.oci_cache_dir
    assert json.loads((oci / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((oci / "index.json").read_text())
    refs = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    assert refs[ref] == pushed["manifest"]
    for layer in pushed["layers"]:
        assert (oci / "blobs/sha256" / layer["digest"][7:]).stat().st_size == layer["size"]


def test_concurrent_pulls_fetch_each_blob_once(daemon: BangerEnv, registry: Registry) -> None:
    repo = "fixtures/concurrent"
    big = os.urandom(3 << 20)
    pushed = registry.push_image(
        repo,
        "v1",
        [([Entry("a.bin", data=big)], "gzip"), ([Entry("b.bin", data=big[::-1])], "zstd")],
    )
    results: list[Any] = []

    def pull(name: str) -> None:
        with daemon.client() as c:
            results.append(
                c.call("image.pull", {"ref": f"{registry.host}/{repo}:v1", "name": name})
            )

    threads = [threading.Thread(target=pull, args=(f"conc-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 2 and {r["name"] for r in results} == {"conc-0", "conc-1"}
    gets = registry.blob_gets(repo)
    want = [pushed["config"]["digest"], *(x["digest"] for x in pushed["layers"])]
    assert sorted(gets) == sorted(want)


def test_index_pins_linux_amd64_and_skips_attestations(
    daemon: BangerEnv, registry: Registry
) -> None:
    repo = "fixtures/multiarch"
    arm = registry.push_image(repo, "arm", [([Entry("arch", data=b"arm64")], "gzip")])
    amd = registry.push_image(repo, "amd", [([Entry("arch", data=b"amd64")], "gzip")])
    att = registry.push_image(repo, "att", [([Entry("sbom", data=b"{}")], "gzip")])
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": att["manifest"],
                "size": att["size"],
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": arm["manifest"],
                "size": arm["size"],
                "platform": {"os": "linux", "architecture": "arm64"},
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": amd["manifest"],
                "size": amd["size"],
                "platform": {"os": "linux", "architecture": "amd64"},
            },
        ],
    }
    registry.push_manifest(repo, "multi", index)
    rec = _pull(daemon, f"{registry.host}/{repo}:multi")
    assert rec["digest"] == amd["manifest"]
    assert cat(Path(rec["rootfs"]), "/arch") == b"amd64"

    only_arm = dict(index, manifests=index["manifests"][:2])
    registry.push_manifest(repo, "armonly", only_arm)
    p = daemon.banger("image", "pull", f"{registry.host}/{repo}:armonly")
    assert p.returncode == 1
    assert "no linux/amd64 image" in p.stderr and "linux/arm64" in p.stderr


def _no_leftovers(env: BangerEnv) -> None:
    paths = env.paths
    assert list(paths.staging_dir.iterdir()) == []
    assert list(paths.images_dir.iterdir()) == []
    blobs = paths.oci_cache_dir / "blobs" / "sha256"
    assert not [p for p in blobs.iterdir() if p.name.startswith(".tmp")] if blobs.exists() else True


def test_digest_mismatch_names_blob_and_caches_nothing(
    daemon: BangerEnv, registry: Registry
) -> None:
    repo = "fixtures/corrupt"
    pushed = registry.push_image(repo, "v1", [([Entry("f", data=b"A" * 5000)], "tar")])
    bad = pushed["layers"][0]["digest"]
    data = registry.blob_data_path(bad)
    # Same length, different bytes: the registry serves it without checking.
    data.write_bytes(data.read_bytes().replace(b"A" * 5000, b"B" * 5000))
    p = daemon.banger("image", "pull", f"{registry.host}/{repo}:v1")
    assert p.returncode == 1
    assert bad in p.stderr and "failed verification" in p.stderr
    assert not (daemon.paths.oci_cache_dir / "blobs/sha256" / bad[7:]).exists()
    assert json.loads(daemon.banger("image", "list", "--json", check=True).stdout) == []
    _no_leftovers(daemon)


def test_hostile_layer_rejected_end_to_end(daemon: BangerEnv, registry: Registry) -> None:
    repo = "fixtures/hostile"
    pushed = registry.push_image(
        repo,
        "v1",
        [([Entry("ok", data=b"1")], "gzip"), ([Entry("../../escape", data=b"x")], "gzip")],
    )
    p = daemon.banger("image", "pull", f"{registry.host}/{repo}:v1")
    assert p.returncode == 1
    assert pushed["layers"][1]["digest"] in p.stderr and "../../escape" in p.stderr
    assert json.loads(daemon.banger("image", "list", "--json", check=True).stdout) == []
    _no_leftovers(daemon)


def test_missing_ref_and_bad_ref(daemon: BangerEnv, registry: Registry) -> None:
    p = daemon.banger("image", "pull", f"{registry.host}/fixtures/nope:v9")
    assert p.returncode == 1 and "not found" in p.stderr
    p = daemon.banger("image", "pull", f"{registry.host}/library/debian:bookworm")
    assert p.returncode == 1 and "reserved for banger's built-in" in p.stderr
    p = daemon.banger("image", "pull", "Bad Ref!")
    assert p.returncode == 1 and "reference" in p.stderr
    p = daemon.banger("image", "pull", f"{registry.host}/fixtures/semantics:v1", "--name", "UPPER")
    assert p.returncode == 1 and "image name" in p.stderr


def test_htpasswd_registry_needs_and_uses_docker_config(
    daemon: BangerEnv, auth_registry: Registry, tmp_path: Path
) -> None:
    repo = "private/app"
    auth_registry.push_image(repo, "v1", [([Entry("secret", data=b"s3")], "gzip")])
    ref = f"{auth_registry.host}/{repo}:v1"
    p = daemon.banger("image", "pull", ref)
    assert p.returncode == 1 and "docker login" in p.stderr

    # The daemon reads ~/.docker/config.json of its own environment: restart it with one.
    daemon.banger("daemon", "stop", check=True)
    import base64

    assert auth_registry.auth is not None
    token = base64.b64encode(":".join(auth_registry.auth).encode()).decode()
    docker_dir = tmp_path / "docker"
    docker_dir.mkdir()
    (docker_dir / "config.json").write_text(
        json.dumps({"auths": {auth_registry.host: {"auth": token}}})
    )
    daemon.env["DOCKER_CONFIG"] = str(docker_dir)
    rec = _pull(daemon, ref)
    assert cat(Path(rec["rootfs"]), "/secret") == b"s3"

    (docker_dir / "config.json").write_text(
        json.dumps({"auths": {auth_registry.host: {"username": "tester", "password": "wrong"}}})
    )
    daemon.banger("daemon", "stop", check=True)
    p = daemon.banger("image", "pull", ref, "--name", "again")
    assert p.returncode == 1 and "rejected the credentials" in p.stderr


def test_bearer_token_flow(
    daemon: BangerEnv, token_registry: tuple[Registry, Any], tmp_path: Path
) -> None:
    reg, tokens = token_registry
    reg.push_image("public/tool", "v1", [([Entry("pub", data=b"anyone")], "gzip")])
    reg.push_image("private/tool", "v1", [([Entry("priv", data=b"members")], "zstd")])

    # Anonymous bearer flow: challenge → token for repository:public/tool:pull → pull.
    tokens.requests.clear()
    rec = _pull(daemon, f"{reg.host}/public/tool:v1")
    assert cat(Path(rec["rootfs"]), "/pub") == b"anyone"
    assert tokens.requests and not tokens.requests[0]["authorized"]
    assert tokens.requests[0]["query"]["scope"] == ["repository:public/tool:pull"]
    assert tokens.requests[0]["query"]["service"] == ["banger-test-registry"]

    p = daemon.banger("image", "pull", f"{reg.host}/private/tool:v1", "--name", "priv")
    assert p.returncode == 1 and "refused a token" in p.stderr and "docker login" in p.stderr

    # With credentials in the docker config, the token request authenticates.
    daemon.banger("daemon", "stop", check=True)
    docker_dir = tmp_path / "docker"
    docker_dir.mkdir()
    (docker_dir / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    f"http://{reg.host}": {"username": tokens.user, "password": tokens.password}
                }
            }
        )
    )
    daemon.env["DOCKER_CONFIG"] = str(docker_dir)
    tokens.requests.clear()
    rec = _pull(daemon, f"{reg.host}/private/tool:v1", "--name", "priv")
    assert cat(Path(rec["rootfs"]), "/priv") == b"members"
    assert tokens.requests[-1]["authorized"]


def test_cancelled_pull_leaves_nothing(daemon: BangerEnv, registry: Registry) -> None:
    repo = "fixtures/big"
    layers = [([Entry(f"blob{i}", data=os.urandom(24 << 20))], "tar") for i in range(3)]
    registry.push_image(repo, "v1", layers)
    seen: list[str] = []

    class Disconnect(Exception):
        pass

    def on_progress(ev: dict[str, Any]) -> None:
        seen.append(str(ev.get("stage")))
        if ev.get("stage") == "download":
            raise Disconnect

    c = daemon.client()
    with pytest.raises(Disconnect):
        c.call("image.pull", {"ref": f"{registry.host}/{repo}:v1"}, on_progress=on_progress)
    c.close()  # the daemon cancels the request when its client goes away
    assert "download" in seen
    daemon_pid = daemon.paths.pid_file.read_text().strip()
    paths = daemon.paths
    blobs = paths.oci_cache_dir / "blobs" / "sha256"

    def leftovers() -> list[Path]:
        return [
            *paths.staging_dir.iterdir(),
            *paths.images_dir.iterdir(),
            *(p for p in blobs.iterdir() if p.name.startswith(".tmp")),
            *Path("/dev/shm").glob(f"banger-scratch-{daemon_pid}-*"),
        ]

    wait_until(lambda: leftovers() == [], 30, "the cancelled pull's cleanup")
    assert json.loads(daemon.banger("image", "list", "--json", check=True).stdout) == []
    # And the next pull works from whatever was verified before the cancel.
    rec = _pull(daemon, f"{registry.host}/{repo}:v1")
    assert stat_inode(Path(rec["rootfs"]), "/blob2")["type"] == "regular"


def test_transient_failures_are_retried(daemon: BangerEnv, registry: Registry) -> None:
    from tests.images.ocifix import FlakyProxy

    repo = "fixtures/flaky"
    pushed = registry.push_image(repo, "v1", [([Entry("f", data=b"flaky")], "gzip")])
    layer = pushed["layers"][0]["digest"]
    proxy = FlakyProxy(registry.url, fail_times=2)
    try:
        rec = _pull(daemon, f"{proxy.host}/{repo}:v1")
        assert cat(Path(rec["rootfs"]), "/f") == b"flaky"
        statuses = [code for path, code in proxy.blob_gets if path.endswith(layer)]
        assert statuses == [503, 503, 200]
    finally:
        proxy.close()
    # A blob that keeps failing: four attempts, then an error naming it.
    other = registry.push_image(repo, "v2", [([Entry("g", data=b"never")], "gzip")])
    proxy = FlakyProxy(registry.url, fail_times=10)
    try:
        p = daemon.banger("image", "pull", f"{proxy.host}/{repo}:v2")
        assert p.returncode == 1
        assert "gave up after 4 attempts" in p.stderr and "HTTP 503" in p.stderr
        # Config and layer download at once; whichever gave up first is named, after 4 tries.
        layer2, config2 = other["layers"][0]["digest"], other["config"]["digest"]
        named = layer2 if layer2 in p.stderr else config2
        assert named in p.stderr
        assert [c for path, c in proxy.blob_gets if path.endswith(named)] == [503] * 4
    finally:
        proxy.close()
