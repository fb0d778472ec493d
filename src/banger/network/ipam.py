"""Guest IPv4 addresses, allocated deterministically and recorded in SQLite.

A VM gets the lowest free host address of the bridge subnet (never the bridge's own, the network
or the broadcast address) and keeps it until it is released (VM deleted). The UNIQUE constraint
on `vm_network.ip` makes a duplicate impossible even if two allocations raced.
"""

from __future__ import annotations

import ipaddress
import time

from banger.errors import OperationFailed
from banger.store.db import Store


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class IPAM:
    def __init__(self, store: Store, gateway: str, prefix: int) -> None:
        self.store = store
        self.interface = ipaddress.IPv4Interface(f"{gateway}/{prefix}")
        self.network = self.interface.network
        self.gateway = self.interface.ip

    def lookup(self, vm_id: str) -> str | None:
        row = self.store.query_one("SELECT ip FROM vm_network WHERE vm_id = ?", (vm_id,))
        return None if row is None or row["ip"] is None else str(row["ip"])

    def allocate(self, vm_id: str) -> str:
        """The VM's address, allocating the lowest free one on first use (idempotent)."""
        with self.store.tx() as conn:
            row = conn.execute("SELECT ip FROM vm_network WHERE vm_id = ?", (vm_id,)).fetchone()
            if row is not None and row["ip"] is not None:
                current = ipaddress.IPv4Address(row["ip"])
                # Still valid under the current config? (bridge_ip/cidr may have changed.)
                if current in self.network and current != self.gateway:
                    return str(current)
            used = {
                str(r["ip"])
                for r in conn.execute(
                    "SELECT ip FROM vm_network WHERE ip IS NOT NULL AND vm_id != ?", (vm_id,)
                )
            }
            for host in self.network.hosts():
                if host != self.gateway and str(host) not in used:
                    ip = str(host)
                    break
            else:
                raise OperationFailed(
                    f"no free guest address left in {self.network} ({len(used)} in use): delete "
                    "unused VMs or widen `cidr` in the config"
                )
            if row is None:
                conn.execute(
                    "INSERT INTO vm_network (vm_id, ip, nat, allocated_at) VALUES (?, ?, 0, ?)",
                    (vm_id, ip, _now()),
                )
            else:
                conn.execute(
                    "UPDATE vm_network SET ip = ?, allocated_at = ? WHERE vm_id = ?",
                    (ip, _now(), vm_id),
                )
            return ip

    def release(self, vm_id: str) -> None:
        """Forget the VM entirely (address and NAT flag): only when the VM is deleted."""
        self.store.execute("DELETE FROM vm_network WHERE vm_id = ?", (vm_id,))

    def allocations(self) -> dict[str, str]:
        rows = self.store.query("SELECT vm_id, ip FROM vm_network WHERE ip IS NOT NULL")
        return {str(r["vm_id"]): str(r["ip"]) for r in rows}

    def nat(self, vm_id: str) -> bool:
        row = self.store.query_one("SELECT nat FROM vm_network WHERE vm_id = ?", (vm_id,))
        return bool(row["nat"]) if row is not None else False

    def set_nat(self, vm_id: str, enabled: bool) -> None:
        with self.store.tx() as conn:
            conn.execute(
                "INSERT INTO vm_network (vm_id, ip, nat, allocated_at) VALUES (?, NULL, ?, ?) "
                "ON CONFLICT(vm_id) DO UPDATE SET nat = excluded.nat",
                (vm_id, int(enabled), _now()),
            )

    def meta_get(self, key: str) -> str | None:
        row = self.store.query_one("SELECT value FROM network_meta WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def meta_set(self, key: str, value: str | None) -> None:
        if value is None:
            self.store.execute("DELETE FROM network_meta WHERE key = ?", (key,))
        else:
            self.store.execute(
                "INSERT INTO network_meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
