"""The host bridge guests' TAPs attach to: created idempotently, address set, brought up."""

from __future__ import annotations

import json
from typing import Any

from banger.errors import OperationFailed
from banger.network.cmd import Runner


async def link_info(run: Runner, name: str) -> dict[str, Any] | None:
    """`ip -d -j link show dev NAME` as a dict, or None when there is no such link."""
    r = await run(["ip", "-d", "-j", "link", "show", "dev", name], check=False)
    if r.returncode != 0:
        return None
    data = json.loads(r.out or "[]")
    return data[0] if data else None


def link_kind(info: dict[str, Any]) -> str:
    return str(info.get("linkinfo", {}).get("info_kind", ""))


async def ensure_bridge(run: Runner, name: str, address: str, prefix: int) -> None:
    info = await link_info(run, name)
    if info is None:
        r = await run(["ip", "link", "add", "name", name, "type", "bridge"], check=False)
        # Another caller may have created it between our check and the add.
        if r.returncode != 0 and "File exists" not in r.err:
            raise OperationFailed(f"cannot create bridge {name}: {r.err.strip()}")
        info = await link_info(run, name)
    if info is None or link_kind(info) != "bridge":
        raise OperationFailed(
            f"host interface {name} exists but is not a bridge; set `bridge_name` in the config "
            "to an unused name"
        )
    await run(["ip", "addr", "replace", f"{address}/{prefix}", "dev", name])
    await run(["ip", "link", "set", "dev", name, "up"])


async def delete_bridge(run: Runner, name: str) -> None:
    info = await link_info(run, name)
    if info is None:
        return
    if link_kind(info) != "bridge":
        raise OperationFailed(f"refusing to delete {name}: it is not a bridge")
    r = await run(["ip", "link", "del", "dev", name], check=False)
    if r.returncode != 0 and await link_info(run, name) is not None:
        raise OperationFailed(f"cannot delete bridge {name}: {r.err.strip()}")


async def bridge_addresses(run: Runner, name: str) -> list[str]:
    r = await run(["ip", "-j", "addr", "show", "dev", name], check=False)
    if r.returncode != 0:
        return []
    out = []
    for link in json.loads(r.out or "[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out
