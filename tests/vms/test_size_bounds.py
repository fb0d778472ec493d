"""Out-of-range disk and image sizes are bad requests naming the size, never an internal error."""

from __future__ import annotations

import pytest

from banger.rpc.errors import BadRequest
from tests.conftest import BangerEnv


@pytest.mark.parametrize(
    ("size", "message"),
    [
        # Reached SQLite: "Python int too large to convert to C long" (operation failed).
        ("99999999999999T", "16 TiB maximum"),
        # float() overflow: "cannot convert float infinity to integer".
        ("9" * 400, "not understood"),
        # truncate(2): "[Errno 27] File too large".
        ("100T", "16 TiB maximum"),
        # Rounded to a 0-byte disk, refused only by mkfs after the image and kernel work.
        ("0.0001", "at least one byte"),
        ("1M", "at least 64 MiB"),
    ],
)
def test_vm_create_disk_size_out_of_range(daemon: BangerEnv, size: str, message: str) -> None:
    with daemon.client() as c, pytest.raises(BadRequest, match=message):
        c.call("vm.create", {"disk_size": size, "no_start": True}, timeout=60)
    p = daemon.banger("vm", "list", "--json", check=True, timeout=60)
    assert p.stdout.strip() == "[]"  # nothing half created


@pytest.mark.parametrize(("size", "message"), [(1 << 62, "16 TiB maximum"), ("17T", "16 TiB")])
def test_image_pull_size_out_of_range(daemon: BangerEnv, size: int | str, message: str) -> None:
    with daemon.client() as c, pytest.raises(BadRequest, match=message):
        c.call("image.pull", {"ref": "debian-bookworm", "size": size}, timeout=60)
