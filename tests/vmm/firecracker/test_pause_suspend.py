"""The calls `vm pause|resume|suspend` make on the Firecracker driver (vms/suspend.py), in the
order the service makes them: pause and resume a running VM, then suspend it from paused and
wake it (same guest, its RAM value kept). Against the contract double (and the real binary
where it can run); every body the driver sent validates against the shipped spec."""

from __future__ import annotations

from pathlib import Path

from banger.vmm.firecracker import FirecrackerDriver
from tests.vmm.firecracker.conftest import Backend
from tests.vmm.firecracker.fcutil import GuestFiles, make_spec
from tests.vmm.firecracker.test_snapshot import assert_bodies_match_spec, boot, guest


async def test_pause_resume_then_suspend_from_paused_and_wake(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    handle = await boot(driver, spec)
    try:
        if fc.kind == "double":
            boot_id = await guest(handle, "boot-id")
            assert await guest(handle, "set kept") == "ok"
        await driver.pause(handle)
        assert await driver.state(handle) == "Paused"
        await driver.resume(handle)
        assert await driver.state(handle) == "Running"
        # `vm suspend` of a paused VM: the save of an already paused machine.
        await driver.pause(handle)
        saved = await driver.save(handle, spec, tmp_path / "suspend", keep_running=False)
        assert not driver.is_alive(handle)
        assert saved.disks == {}
        woke = await driver.restore(spec, saved)
        try:
            assert await driver.state(woke) == "Running"
            if fc.kind == "double":
                assert await guest(woke, "boot-id") == boot_id
                assert await guest(woke, "get") == "value kept"
            assert_bodies_match_spec(fc)
            # What `vm start` does after a wake: the image goes.
            assert await driver.delete_saved(saved, []) is True
            assert not saved.dir.exists()
        finally:
            await driver.force_stop(woke)
    finally:
        await driver.force_stop(handle)
