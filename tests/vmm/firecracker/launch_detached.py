"""Launch one VM with the Firecracker driver, print its handle as JSON, and exit.

The lifecycle suite runs this as a separate process to play a daemon that starts a VM and then
goes away: the VM must keep running and a new driver instance must re-attach to it.
Usage: launch_detached.py '{"vmlinux": …, "initrd": …, "root": …, "vm_dir": …, "name": …}'
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from banger.vmm.firecracker import FirecrackerDriver
from tests.vmm.firecracker.fcutil import GuestFiles, make_spec


async def main(args: dict[str, str]) -> None:
    guest = GuestFiles(
        "debian-host", Path(), Path(args["vmlinux"]), Path(args["initrd"]), Path(args["root"])
    )
    spec = make_spec(guest, Path(args["vm_dir"]), name=args["name"])
    handle = await FirecrackerDriver().launch(spec)
    print(json.dumps(handle.to_json()))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
