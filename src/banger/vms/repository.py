"""VM records <-> rows of the `vms` table: the only module with SQL for VMs.

Records come out with their on-disk facts (dir, console log, root disk) filled in; what the
network service knows (address, NAT, egress) is added by the VM service. `set_state` is called
by the state machine (`vms/states.py`) only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from banger.errors import NotFound
from banger.store.db import Store
from banger.vmm.base import VMHandle
from banger.vms.rootdisk import describe_root_disk
from banger.vms.spec import VMRecord, VMState


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class VMRepository:
    def __init__(self, store: Store, vms_dir: Path) -> None:
        self._store = store
        self._vms_dir = vms_dir

    def vm_dir(self, vm_id: str) -> Path:
        return self._vms_dir / vm_id

    def _record(self, r: sqlite3.Row) -> VMRecord:
        handle = json.loads(r["handle"]) if r["handle"] else None
        vm_dir = self.vm_dir(r["id"])
        return VMRecord(
            id=r["id"],
            name=r["name"],
            state=r["state"],
            image_id=r["image_id"],
            image_name=r["image_name"],
            kernel=r["kernel"],
            vcpus=r["vcpus"],
            memory_mib=r["memory_mib"],
            disk_size_bytes=r["disk_size"],
            init_mode=r["init_mode"],
            network=r["network"],
            error=r["error"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            started_at=r["started_at"],
            pid=handle["pid"] if handle else None,
            ssh_host=handle["ssh_host"] if handle else None,
            ssh_port=handle["ssh_port"] if handle else None,
            vmm=handle["driver"] if handle else None,
            root_disk=describe_root_disk(vm_dir),
            dir=vm_dir,
            console_log=vm_dir / "console.log",
        )

    # --- reads -----------------------------------------------------------------------------------

    def all(self) -> list[VMRecord]:
        return [self._record(r) for r in self._store.query("SELECT * FROM vms ORDER BY created_at")]

    def find(self, vm_id: str) -> VMRecord | None:
        r = self._store.query_one("SELECT * FROM vms WHERE id = ?", (vm_id,))
        return None if r is None else self._record(r)

    def get(self, vm_id: str) -> VMRecord:
        vm = self.find(vm_id)
        if vm is None:
            raise NotFound(f"vm {vm_id!r} not found")
        return vm

    def ids(self) -> set[str]:
        return {r["id"] for r in self._store.query("SELECT id FROM vms")}

    def names(self) -> set[str]:
        return {r["name"] for r in self._store.query("SELECT name FROM vms")}

    def handle(self, vm_id: str) -> VMHandle | None:
        r = self._store.query_one("SELECT handle FROM vms WHERE id = ?", (vm_id,))
        if r is None or not r["handle"]:
            return None
        return VMHandle.from_json(json.loads(r["handle"]))

    def users_of(self, kind: str, ident: str) -> list[str]:
        """Names of the VMs built on image `ident` (kind "image") or kernel `ident` ("kernel")."""
        if kind == "image":
            rows = self._store.query("SELECT name FROM vms WHERE image_id = ?", (ident,))
        elif kind == "kernel":
            rows = self._store.query("SELECT name FROM vms WHERE kernel = ?", (ident,))
        else:
            return []
        return [r["name"] for r in rows]

    # --- writes ----------------------------------------------------------------------------------

    def insert(self, vm: VMRecord) -> None:
        """A new VM (state `created`, no handle): its stored columns from the record."""
        with self._store.tx() as c:
            c.execute(
                "INSERT INTO vms (id, name, state, image_id, image_name, kernel, vcpus,"
                " memory_mib, disk_size, init_mode, network, error, handle, created_at,"
                " updated_at, started_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL,NULL,?,?,NULL)",
                (
                    vm.id, vm.name, vm.state, vm.image_id, vm.image_name, vm.kernel, vm.vcpus,
                    vm.memory_mib, vm.disk_size_bytes, vm.init_mode, vm.network, vm.created_at,
                    vm.updated_at,
                ),
            )  # fmt: skip

    def set_state(
        self,
        vm_id: str,
        state: VMState,
        *,
        error: str | None,
        handle: VMHandle | None,
        started: bool = False,
    ) -> None:
        """For the state machine only. `started`: the VMM was (re)launched now."""
        stamp = now()
        with self._store.tx() as c:
            c.execute(
                "UPDATE vms SET state = ?, error = ?, handle = ?, updated_at = ?,"
                " started_at = CASE WHEN ? THEN ? ELSE started_at END WHERE id = ?",
                (
                    state,
                    error,
                    json.dumps(handle.to_json()) if handle is not None else None,
                    stamp,
                    started,
                    stamp,
                    vm_id,
                ),
            )

    def set_handle(self, vm_id: str, handle: VMHandle) -> None:
        """A running VM's handle as its driver updated it (the state does not change)."""
        self._store.execute(
            "UPDATE vms SET handle = ? WHERE id = ? AND handle IS NOT NULL",
            (json.dumps(handle.to_json()), vm_id),
        )

    def set_sizing(
        self,
        vm_id: str,
        *,
        vcpus: int | None = None,
        memory_mib: int | None = None,
        disk_size_bytes: int | None = None,
    ) -> None:
        """Change the sizes given (None keeps a value); always bumps `updated_at`."""
        with self._store.tx() as c:
            c.execute(
                "UPDATE vms SET vcpus = COALESCE(?, vcpus), memory_mib = COALESCE(?, memory_mib),"
                " disk_size = COALESCE(?, disk_size), updated_at = ? WHERE id = ?",
                (vcpus, memory_mib, disk_size_bytes, now(), vm_id),
            )

    def delete(self, vm_id: str) -> None:
        with self._store.tx() as c:
            c.execute("DELETE FROM vms WHERE id = ?", (vm_id,))
