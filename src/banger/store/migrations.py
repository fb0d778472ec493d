"""Numbered forward-only schema migrations. Append new ones; never edit an applied one.

Numbers are reserved per area so parallel work does not collide:
1 base · 2 images · 3 kernels · 4 vms · 5 network · 6 workspace · 7+ later.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "base",
        """
        CREATE TABLE daemon_meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT;
        """,
    ),
    Migration(
        5,
        "network",
        """
        -- One row per VM that has used host networking: its guest address (kept until the VM is
        -- deleted, so a VM keeps its IP across restarts) and whether it wants NAT.
        CREATE TABLE vm_network (
            vm_id        TEXT PRIMARY KEY,
            ip           TEXT UNIQUE,
            nat          INTEGER NOT NULL DEFAULT 0,
            allocated_at TEXT NOT NULL
        ) STRICT;
        CREATE TABLE network_meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT;
        """,
    ),
]
