"""`image pull --kernel-ref` / `--kernel --modules`: a pulled image that boots its own kernel.

Real docker-registry, real host kernel files; the VM is created without booting (its record
names the kernel it will boot, which is what the attachment decides)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests import hostkernel
from tests.conftest import BangerEnv
from tests.images.ocifix import Entry, Registry

pytestmark = pytest.mark.slow

ROOT = [Entry("etc/", "dir", mode=0o755), Entry("etc/hostname", data=b"tiny\n")]
KVER = hostkernel.newest_version()


@pytest.fixture(scope="module")
def tiny(registry: Registry) -> str:
    registry.push_image("fixtures/tiny", "v1", [(ROOT, "tar")], {})
    return f"{registry.host}/fixtures/tiny:v1"


def _json(env: BangerEnv, *args: str) -> Any:
    return json.loads(env.banger(*args, "--json", check=True, timeout=300).stdout)


def test_kernel_ref_attaches_a_known_kernel(daemon: BangerEnv, tiny: str) -> None:
    daemon.banger("kernel", "import", "hostk", "--from-host", check=True, timeout=300)
    rec = _json(daemon, "image", "pull", tiny, "--name", "withref", "--kernel-ref", "hostk")
    assert rec["kernel_ref"] == "hostk"
    assert _json(daemon, "image", "show", "withref")["kernel_ref"] == "hostk"
    vm = _json(daemon, "vm", "create", "--image", "withref", "--no-start", "--name", "k1")
    assert vm["kernel"] == "hostk"


def test_kernel_files_are_imported_under_the_image_name(daemon: BangerEnv, tiny: str) -> None:
    rec = _json(
        daemon, "image", "pull", tiny, "--name", "ownk",
        "--kernel", f"/boot/vmlinuz-{KVER}", "--modules", f"/lib/modules/{KVER}",
    )  # fmt: skip
    assert rec["kernel_ref"] == "ownk"
    k = _json(daemon, "kernel", "show", "ownk")
    assert k["kernel_version"] == KVER and k["initrd_generated"] is True
    vm = _json(daemon, "vm", "create", "--image", "ownk", "--no-start", "--name", "k2")
    assert vm["kernel"] == "ownk"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kernel-ref", "nosuch"], "kernel 'nosuch' not found"),
        (
            ["--kernel-ref", "k", "--kernel", "/boot/x"],
            "hint: pass either --kernel-ref NAME or --kernel",
        ),
        (["--modules", "/lib/modules"], "hint: --initrd and --modules need --kernel FILE"),
        (["--kernel", "/nonexistent/vmlinuz"], "is not an existing file"),
        (["--kernel-ref", "../../boot"], "kernel name"),
    ],
    ids=["missing-ref", "ref-and-files", "modules-alone", "missing-file", "traversal"],
)
def test_bad_kernel_is_refused_before_any_pull(
    daemon: BangerEnv, tiny: str, args: list[str], message: str
) -> None:
    p = daemon.banger("image", "pull", tiny, "--name", "refused", *args)
    assert p.returncode == 1 and message in p.stderr, p.stderr
    assert _json(daemon, "image", "list") == []
    images_dir = daemon.paths.images_dir
    assert not images_dir.exists() or not any(images_dir.iterdir())


def test_failed_pull_removes_the_imported_kernel(daemon: BangerEnv, registry: Registry) -> None:
    p = daemon.banger(
        "image", "pull", f"{registry.host}/fixtures/absent:v1", "--name", "absent",
        "--kernel", f"/boot/vmlinuz-{KVER}", "--modules", f"/lib/modules/{KVER}",
        timeout=300,
    )  # fmt: skip
    assert p.returncode == 1 and "not found" in p.stderr, p.stderr
    assert [k["name"] for k in _json(daemon, "kernel", "list")] == []
    assert _json(daemon, "image", "list") == []
