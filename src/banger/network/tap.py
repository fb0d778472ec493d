"""Per-VM TAP devices on the bridge (the one attachment both QEMU and Firecracker can use)."""

from __future__ import annotations

import hashlib
import json
import re

from banger.errors import OperationFailed
from banger.network.bridge import link_info, link_kind
from banger.network.cmd import Runner

# IFNAMSIZ is 16 with the NUL: "tap-bg-" + 8 hex = 15. The prefix marks devices banger owns.
TAP_PREFIX = "tap-bg-"
TAP_RE = re.compile(r"^tap-bg-[0-9a-f]{8}$")


def tap_name(vm_id: str) -> str:
    """The deterministic TAP name of a VM (stable across daemon restarts)."""
    return TAP_PREFIX + hashlib.sha256(vm_id.encode()).hexdigest()[:8]


def guest_mac(vm_id: str) -> str:
    """A stable MAC in QEMU's 52:54:00 range, so the guest keeps its identity across boots."""
    h = hashlib.sha256(b"mac:" + vm_id.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


async def ensure_tap(run: Runner, name: str, bridge: str, owner_uid: int) -> None:
    info = await link_info(run, name)
    if info is None:
        r = await run(
            ["ip", "tuntap", "add", "dev", name, "mode", "tap", "user", str(owner_uid)],
            check=False,
        )
        if r.returncode != 0 and await link_info(run, name) is None:
            raise OperationFailed(f"cannot create TAP {name}: {r.err.strip()}")
    elif link_kind(info) != "tun":
        raise OperationFailed(f"host interface {name} exists but is not a TAP device")
    await run(["ip", "link", "set", "dev", name, "master", bridge])
    await run(["ip", "link", "set", "dev", name, "up"])


async def delete_tap(run: Runner, name: str) -> None:
    info = await link_info(run, name)
    if info is None:
        return
    if link_kind(info) != "tun":
        raise OperationFailed(f"refusing to delete {name}: it is not a TAP device")
    r = await run(["ip", "tuntap", "del", "dev", name, "mode", "tap"], check=False)
    if r.returncode != 0 and await link_info(run, name) is not None:
        raise OperationFailed(f"cannot delete TAP {name}: {r.err.strip()}")


async def list_taps(run: Runner) -> list[str]:
    """Every banger-named TAP on the host (attached or not)."""
    r = await run(["ip", "-j", "link", "show"])
    names = [str(link.get("ifname", "")) for link in json.loads(r.out or "[]")]
    return sorted(n for n in names if TAP_RE.fullmatch(n))
