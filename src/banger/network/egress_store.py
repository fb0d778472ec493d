"""Egress policies and denied attempts in the daemon's store (tables of migration 7)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from banger.network.egress import Mode, Policy, parse_rules
from banger.store.db import Store

MAX_DENIED_ROWS = 1000  # per VM: a guest probing endless names cannot grow the store forever


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class DeniedRow:
    target: str
    port: int
    proto: str
    reason: str
    count: int
    first_seen: str
    last_seen: str

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "port": self.port,
            "proto": self.proto,
            "reason": self.reason,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


class EgressStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def policy(self, vm_id: str) -> tuple[Policy, int]:
        """The VM's policy and generation (open, 1 when it never had one)."""
        row = self.store.query_one(
            "SELECT mode, rules, generation FROM vm_egress WHERE vm_id = ?", (vm_id,)
        )
        if row is None:
            return Policy("open"), 1
        rules = tuple(parse_rules(json.loads(row["rules"])))
        mode: Mode = "restricted" if row["mode"] == "restricted" else "open"
        return Policy(mode, rules), int(row["generation"])

    def set_policy(self, vm_id: str, policy: Policy) -> int:
        """Store the policy; returns the new generation."""
        with self.store.tx() as c:
            row = c.execute("SELECT generation FROM vm_egress WHERE vm_id = ?", (vm_id,)).fetchone()
            gen = (int(row["generation"]) % (2**31 - 2)) + 1 if row is not None else 1
            c.execute(
                "INSERT INTO vm_egress (vm_id, mode, rules, generation, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(vm_id) DO UPDATE SET mode = excluded.mode, "
                "rules = excluded.rules, generation = excluded.generation, "
                "updated_at = excluded.updated_at",
                (vm_id, policy.mode, json.dumps([r.text for r in policy.rules]), gen, _now()),
            )
        return gen

    def forget(self, vm_id: str) -> None:
        with self.store.tx() as c:
            c.execute("DELETE FROM vm_egress WHERE vm_id = ?", (vm_id,))
            c.execute("DELETE FROM vm_egress_denied WHERE vm_id = ?", (vm_id,))

    def record_denied(
        self, vm_id: str, target: str, port: int, proto: str, reason: str, count: int = 1
    ) -> None:
        now = _now()
        with self.store.tx() as c:
            exists = c.execute(
                "SELECT 1 FROM vm_egress_denied WHERE vm_id = ? AND target = ? AND port = ? "
                "AND proto = ?",
                (vm_id, target, port, proto),
            ).fetchone()
            if exists is None:
                n = c.execute(
                    "SELECT COUNT(*) AS n FROM vm_egress_denied WHERE vm_id = ?", (vm_id,)
                ).fetchone()["n"]
                if n >= MAX_DENIED_ROWS:
                    target, port, proto, reason = "(other)", 0, "any", "row limit reached"
            c.execute(
                "INSERT INTO vm_egress_denied (vm_id, target, port, proto, reason, count, "
                "first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(vm_id, target, port, proto) DO UPDATE SET "
                "count = count + excluded.count, last_seen = excluded.last_seen, "
                "reason = excluded.reason",
                (vm_id, target, port, proto, reason, count, now, now),
            )

    def denied(self, vm_id: str) -> list[DeniedRow]:
        rows = self.store.query(
            "SELECT * FROM vm_egress_denied WHERE vm_id = ? ORDER BY last_seen DESC, target",
            (vm_id,),
        )
        return [
            DeniedRow(
                r["target"], r["port"], r["proto"], r["reason"], r["count"],
                r["first_seen"], r["last_seen"],
            )
            for r in rows
        ]  # fmt: skip
