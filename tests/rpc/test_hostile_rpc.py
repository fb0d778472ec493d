"""Hostile RPC requests against a real bangerd: each gets its exact error code with an op id,
names the parameter, leaves the daemon answering, and changes nothing outside the state dir.

Validation happens before any work (daemon/params.py): `vm create --kernel ../../boot` must not
build the default image first, so the images dir stays empty through the whole corpus.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BangerEnv
from tests.rpc.daemon_proc import Bangerd, bangerd

MIB = 1 << 20


def req(method: str, params: object = None, **extra: object) -> bytes:
    body: dict[str, object] = {"version": 1, "method": method, **extra}
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode() + b"\n"


@dataclass(frozen=True)
class Case:
    id: str
    line: bytes
    code: str
    param: str | None = None  # the message names it: "parameter '<param>'"
    says: str | None = None  # a further fragment of the message


CASES = [
    # NUL bytes in names and paths: bad_request naming the param (was operation_failed).
    Case("nul-in-vm-ref", req("vm.show", {"ref": "dev\x00box"}), "bad_request", "ref", "NUL"),
    Case("nul-in-vm-name", req("vm.create", {"name": "a\x00"}), "bad_request", "name", "NUL"),
    Case(
        "nul-in-register-rootfs",
        req("image.register", {"name": "x", "rootfs": "/tmp/a\x00b"}),
        "bad_request",
        "rootfs",
        "NUL",
    ),
    Case(
        "nul-in-kernel-import-path",
        req("kernel.import", {"name": "k", "kernel": "/boot/vmlinuz\x00"}),
        "bad_request",
        "kernel",
        "NUL",
    ),
    Case(
        "nul-in-workspace-path",
        req("vm.workspace.prepare", {"vm": "v", "path": "/src\x00/x"}),
        "bad_request",
        "path",
        "NUL",
    ),
    Case("nul-in-kernel-name", req("kernel.show", {"name": "k\x00"}), "bad_request", "name"),
    # Overlong input: refused, and never echoed back.
    Case("overlong-vm-name", req("vm.create", {"name": "a" * 64}), "bad_request", "name"),
    Case("mib-vm-ref", req("vm.show", {"ref": "a" * MIB}), "bad_request", "ref", "at most 128"),
    Case(
        "mib-unknown-param-name", req("ping", {"x" * MIB: 1}), "bad_request", None, "unknown param"
    ),
    Case("mib-unknown-method", req("m" * MIB), "unknown_method", None, "…"),
    # Traversal in names that become directories.
    Case("kernel-pull-traversal", req("kernel.pull", {"name": "../../etc"}), "bad_request", "name"),
    Case(
        "image-pull-name-traversal",
        req("image.pull", {"ref": "debian-bookworm", "name": "../../tmp/x"}),
        "bad_request",
        "name",
    ),
    Case(
        "register-name-traversal",
        req("image.register", {"name": "../evil", "rootfs": "/etc/passwd"}),
        "bad_request",
        "name",
    ),
    Case(
        "create-kernel-traversal",
        req("vm.create", {"kernel": "../../boot", "no_start": True}),
        "bad_request",
        "kernel",
        "invalid kernel name",
    ),
    Case(
        "create-unknown-kernel-before-image",
        req("vm.create", {"kernel": "no-such-kernel", "no_start": True}),
        "not_found",
        None,
        "kernel 'no-such-kernel' not found",
    ),
    Case(
        "host-version-traversal",
        req("kernel.import", {"name": "k", "from_host": True, "host_version": "../../etc"}),
        "bad_request",
        "host_version",
    ),
    Case(
        "register-relative-rootfs",
        req("image.register", {"name": "x", "rootfs": "rootfs.ext4"}),
        "bad_request",
        "rootfs",
        "absolute",
    ),
    Case(
        "guest-path-system-dir",
        req("vm.workspace.prepare", {"vm": "v", "path": "/src", "guest_path": "/etc"}),
        "bad_request",
        "guest_path",
    ),
    Case(
        "git-option-injection",
        req("vm.workspace.prepare", {"vm": "v", "path": "/src", "branch": "--upload-pack=id"}),
        "bad_request",
        "branch",
        "cannot start with '-'",
    ),
    Case(
        "control-char-signal",
        req("vm.kill", {"refs": ["a"], "signal": "KILL\n"}),
        "bad_request",
        "signal",
    ),
    # Huge numbers.
    Case("huge-vcpu", req("vm.create", {"vcpu": 10**30}), "bad_request", "vcpu"),
    Case("huge-disk-size", req("vm.create", {"disk_size": "9" * 400}), "bad_request", "disk_size"),
    Case(
        "huge-image-size", req("image.pull", {"ref": "x", "size": 10**400}), "bad_request", "size"
    ),
    Case(
        "int-over-json-digit-limit",
        b'{"version":1,"method":"vm.create","params":{"vcpu":' + b"9" * 5000 + b"}}\n",
        "bad_request",
        None,
        "not valid JSON",
    ),
    Case(
        "infinite-stop-timeout",
        b'{"version":1,"method":"vm.stop","params":{"refs":["a"],"timeout":1e999}}\n',
        "bad_request",
        "timeout",
    ),
    Case("negative-log-bytes", req("vm.logs", {"ref": "a", "max_bytes": -1}), "bad_request"),
    # A param of the wrong shape, in every method family.
    Case("wrong-shape-vm-refs", req("vm.stop", {"refs": "a"}), "bad_request", "refs"),
    Case("wrong-shape-kernel-name", req("kernel.show", {"name": 5}), "bad_request", "name"),
    Case("wrong-shape-image-ref", req("image.show", {"ref": {"a": 1}}), "bad_request", "ref"),
    Case("wrong-shape-workspace-vm", req("vm.workspace.export", {"vm": ["x"]}), "bad_request"),
    Case("wrong-shape-ports-refs", req("vm.ports", {"refs": "x"}), "bad_request", "refs"),
    Case("wrong-shape-op-id", req("vm.create.status", {"id": "../op"}), "bad_request", "id"),
    # Strict types: "yes" was coerced to true and `dry_run: "yes"` pruned for real.
    Case("string-for-bool", req("image.cache.prune", {"dry_run": "yes"}), "bad_request"),
    Case("string-for-int", req("vm.create", {"vcpu": "4"}), "bad_request", "vcpu"),
    Case("shutdown-with-params", req("shutdown", {"now": True}), "bad_request", None, "now"),
    Case("params-not-an-object", req("ping", [1, 2]), "bad_request", None, "params"),
    # The envelope itself.
    Case("deep-json", b"[" * 100_000 + b"]" * 100_000 + b"\n", "bad_request"),
    Case("invalid-utf8", b'{"version":1,"method":"\xff\xfe"}\n', "bad_request"),
    Case(
        "line-over-4mib",
        req("ping", {"x": "a" * (4 * MIB + 16)}),
        "bad_request",
        None,
        "longer than",
    ),
    Case("unknown-method", req("vm.explode"), "unknown_method", None, "vm.explode"),
    Case(
        "bad-version", json.dumps({"version": 99, "method": "ping"}).encode() + b"\n", "bad_version"
    ),
    Case(
        "version-as-string",
        json.dumps({"version": "1", "method": "ping"}).encode() + b"\n",
        "bad_request",
    ),
    Case("not-an-object", b'"ping"\n', "bad_request"),
]

OP_ID = re.compile(r"^op-[0-9a-f]{12}$")


def _tree(root: Path, skip: Path) -> dict[str, tuple[int, int, bytes]]:
    """path -> (mode, size, content of small files) for everything under root but `skip`."""
    out: dict[str, tuple[int, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in [*dirnames, *filenames]:
            p = here / name
            st = p.lstat()
            body = p.read_bytes() if p.is_file() and st.st_size < 4096 else b""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, body)
    return out


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[Bangerd, Path]]:
    outside = Path(tempfile.mkdtemp(prefix="bg-sentinel-", dir="/tmp"))
    (outside / "keep").write_text("sentinel\n")
    os.chmod(outside, 0o700)
    with bangerd("bg-hr-") as d:
        yield d, outside
    shutil.rmtree(outside)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request(hostile: tuple[Bangerd, Path], case: Case) -> None:
    d, outside = hostile
    paths = d.env.paths
    sentinel_before = _tree(outside, outside / "none")
    env_before = _tree(d.env.root, paths.state_dir)

    answers = _send(d, case.line)
    assert len(answers) == 1, answers
    raw = answers[0]
    # Never echo the input back: every answer fits in a few KiB whatever was sent.
    assert len(raw) < 4096
    answer = json.loads(raw)
    assert answer["ok"] is False
    err = answer["error"]
    assert err["code"] == case.code, err
    assert OP_ID.match(err["op_id"]), err
    if case.param is not None:
        assert f"parameter '{case.param}'" in err["message"], err
    if case.says is not None:
        assert case.says in err["message"], err

    assert d.ping(timeout=10)["ok"] is True
    assert _tree(outside, outside / "none") == sentinel_before
    assert _tree(d.env.root, paths.state_dir) == env_before
    # Nothing was built or pulled before the refusal.
    images = paths.images_dir
    assert not images.exists() or list(images.iterdir()) == []


def _send(d: Bangerd, line: bytes) -> list[bytes]:
    """Send one request line; the raw answer lines (one is expected)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(d.socket))
        s.sendall(line)
        f = s.makefile("rb")
        return [f.readline()]


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 15
    assert len({c.id for c in CASES}) == len(CASES)


def test_cli_vm_create_with_a_traversal_kernel_fails_before_any_image_work(
    daemon: BangerEnv,
) -> None:
    # The reported case, as a user types it: refused at once, the default image never built.
    p = daemon.banger("vm", "create", "--kernel", "../../boot", "--no-start", timeout=60)
    assert p.returncode == 1
    assert "parameter 'kernel': invalid kernel name '../../boot'" in p.stderr
    images = daemon.paths.images_dir
    assert not images.exists() or list(images.iterdir()) == []
    assert json.loads(daemon.banger("vm", "list", "--json", check=True).stdout) == []
