"""Numbered forward-only schema migrations. Append new ones; never edit an applied one.

Numbers are reserved per area so parallel work does not collide:
1 base · 2 images · 3 kernels · 4 vms · 5 network · 6 workspace · 7 egress · 8 snapshots ·
9+ later.
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
        2,
        "images",
        """
        -- One row per image: pulled/built/promoted ones are managed (files under images/<id>),
        -- registered ones point at the user's files.
        CREATE TABLE images (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            rootfs      TEXT NOT NULL,
            size_bytes  INTEGER NOT NULL,
            digest      TEXT,
            source      TEXT NOT NULL,
            managed     INTEGER NOT NULL,
            created_at  TEXT NOT NULL,
            config      TEXT NOT NULL,
            kernel_ref  TEXT,
            kernel      TEXT,
            initrd      TEXT,
            modules_dir TEXT
        ) STRICT;
        """,
    ),
    Migration(
        4,
        "vms",
        """
        -- One row per VM. `handle` is the VMM driver's JSON handle (pid, sockets, ssh port) while
        -- the VM runs, so a restarted daemon re-adopts it; NULL when stopped.
        CREATE TABLE vms (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            state       TEXT NOT NULL,
            image_id    TEXT NOT NULL,
            image_name  TEXT NOT NULL,
            kernel      TEXT NOT NULL,
            vcpus       INTEGER NOT NULL,
            memory_mib  INTEGER NOT NULL,
            disk_size   INTEGER NOT NULL,
            init_mode   TEXT NOT NULL,
            network     TEXT NOT NULL,
            error       TEXT,
            handle      TEXT,
            created_at  TEXT NOT NULL,
            updated_at  TEXT NOT NULL,
            started_at  TEXT
        ) STRICT;
        CREATE INDEX vms_image ON vms (image_id);
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
    Migration(
        6,
        "workspace",
        """
        -- Workspaces prepared in a VM: where they came from on the host, where they live in the
        -- guest, and the commit the guest checkout started from (export's default base).
        CREATE TABLE vm_workspaces (
            vm_id        TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
            guest_path   TEXT NOT NULL,
            host_path    TEXT NOT NULL,
            repo_name    TEXT NOT NULL,
            head_commit  TEXT,
            base_commit  TEXT,
            mode         TEXT NOT NULL,
            options_json TEXT NOT NULL,
            prepared_at  TEXT NOT NULL,
            PRIMARY KEY (vm_id, guest_path)
        ) STRICT;
        """,
    ),
    Migration(
        7,
        "egress",
        """
        -- Per-VM egress policy (networking: egress issue): open or restricted, the allow rules
        -- (a JSON list of rule texts) and a generation bumped on every change (flows admitted
        -- under an older one are checked again, so a disallowed destination is cut).
        CREATE TABLE vm_egress (
            vm_id       TEXT PRIMARY KEY,
            mode        TEXT NOT NULL CHECK (mode IN ('open', 'restricted')),
            rules       TEXT NOT NULL,
            generation  INTEGER NOT NULL,
            updated_at  TEXT NOT NULL
        ) STRICT;
        -- What a restricted VM tried and was denied, seen on the host (banger's resolver and the
        -- nftables drop rule's counters), aggregated per destination.
        CREATE TABLE vm_egress_denied (
            vm_id       TEXT NOT NULL,
            target      TEXT NOT NULL,
            port        INTEGER NOT NULL,
            proto       TEXT NOT NULL,
            reason      TEXT NOT NULL,
            count       INTEGER NOT NULL,
            first_seen  TEXT NOT NULL,
            last_seen   TEXT NOT NULL,
            PRIMARY KEY (vm_id, target, port, proto)
        ) STRICT;
        """,
    ),
    Migration(
        8,
        "snapshots",
        """
        -- Saved machines of a VM (snapshots issue): checkpoints (`vm snapshot create`) and the
        -- suspend image (`vm suspend`, tag '@suspend'). RAM, device state and frozen disk layers
        -- live under `dir`; `saved` is the driver's SavedMachine JSON once `state` is 'ready'.
        -- A row is written 'pending' before any file: a crash leaves a pending row whose dir the
        -- next start removes, never a checkpoint that looks whole and is not.
        CREATE TABLE vm_snapshots (
            vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
            tag         TEXT NOT NULL,
            kind        TEXT NOT NULL CHECK (kind IN ('checkpoint', 'suspend')),
            state       TEXT NOT NULL CHECK (state IN ('pending', 'ready')),
            dir         TEXT NOT NULL,
            saved       TEXT,
            size_bytes  INTEGER NOT NULL DEFAULT 0,
            paused_ms   INTEGER,
            created_at  TEXT NOT NULL,
            PRIMARY KEY (vm_id, tag)
        ) STRICT;
        -- Warm-create templates: a READY machine saved after the first boot of one combination
        -- of image, kernel, init mode, sizing and driver (`key` hashes them).
        CREATE TABLE vm_templates (
            key         TEXT PRIMARY KEY,
            image_id    TEXT NOT NULL,
            kernel      TEXT NOT NULL,
            driver      TEXT NOT NULL,
            combination TEXT NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('pending', 'ready')),
            dir         TEXT NOT NULL,
            saved       TEXT,
            size_bytes  INTEGER NOT NULL DEFAULT 0,
            created_at  TEXT NOT NULL,
            uses        INTEGER NOT NULL DEFAULT 0
        ) STRICT;
        CREATE INDEX vm_templates_image ON vm_templates (image_id);
        """,
    ),
]
