"""banger's own view of the spec: requests are checked before they are sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.vmm.fc_api import FirecrackerAPIError, FirecrackerClient, SpecViolation
from banger.vmm.fc_spec import SPEC_SHA256, load_spec, spec_text
from banger.vmm.firecracker import (
    FC_BOOT_ARGS,
    boot_args,
    instance_id,
    parse_version,
    version_supported,
)


def test_shipped_spec_is_the_recorded_copy() -> None:
    import hashlib

    assert hashlib.sha256(spec_text().encode()).hexdigest() == SPEC_SHA256
    spec = load_spec()
    assert spec.version == "1.16.1"
    assert len(spec.operations) == 38
    assert "Off" in spec.definitions["Logger"]["properties"]["level"]["enum"]


@pytest.mark.parametrize(
    ("method", "path", "body", "needle"),
    [
        ("PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 128}, "vcpu_count"),
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mb": 128}, "mem_size_mb"),
        ("PUT", "/boot-source", {"boot_args": "x"}, "kernel_image_path"),
        ("PUT", "/drives/rootfs", {"drive_id": "work", "is_root_device": False}, "differs"),
        ("PUT", "/vsock", {"guest_cid": 3}, "uds_path"),
        ("PATCH", "/vm", {"state": "Stopped"}, "Stopped"),
        ("PUT", "/actions", None, "needs a InstanceActionInfo body"),
        ("GET", "/vm/config", {"x": 1}, "takes no body"),
        ("DELETE", "/drives/rootfs", None, "has no DELETE"),
        ("PUT", "/logger", {"level": "Off", "log_path": 3}, "log_path"),
    ],
)
async def test_invalid_requests_never_leave_banger(
    tmp_path: Path, method: str, path: str, body: object, needle: str
) -> None:
    # The socket does not exist: a request that got past the check would fail differently.
    async with FirecrackerClient(tmp_path / "absent.sock") as api:
        with pytest.raises(SpecViolation, match=needle):
            await api.request(method, path, body)  # type: ignore[arg-type]


async def test_valid_request_reaches_the_socket(tmp_path: Path) -> None:
    async with FirecrackerClient(tmp_path / "absent.sock") as api:
        api.check("PUT", "/logger", {"level": "Off"})  # a valid body passes the check
        with pytest.raises(FirecrackerAPIError, match="no answer on"):
            await api.put("/logger", {"level": "Off"})


def test_boot_args_keep_the_service_line_and_force_reboot_k() -> None:
    line = boot_args("root=/dev/vda reboot=t panic=0 console=hvc0 banger.seed=/dev/vdc")
    words = line.split()
    assert "reboot=k" in words and "reboot=t" not in words
    assert "panic=1" in words and "panic=0" not in words
    assert "console=hvc0" in words and "console=ttyS0" not in words  # the service's choice wins
    assert words[-2:] == ["console=hvc0", "banger.seed=/dev/vdc"]
    assert set(boot_args("").split()) == set(FC_BOOT_ARGS)


def test_ids_and_versions() -> None:
    assert instance_id("vm_01.abc") == "vm-01-abc"
    assert len(instance_id("a" * 100)) == 64
    assert parse_version("Firecracker v1.16.1\n") == (1, 16, 1)
    assert parse_version("nothing") is None
    assert version_supported((1, 8, 0)) and version_supported((1, 16, 1))
    assert not version_supported((1, 7, 9)) and not version_supported((2, 0, 0))
