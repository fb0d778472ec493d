"""`banger vm egress NAME [--json] [--follow]`: a VM's egress policy and what it tried to reach."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from banger.cli.complete import VM_REF
from banger.cli.connect import call
from banger.cli.output import escape_controls, print_json, print_table

FOLLOW_INTERVAL = 1.0


def _echo(line: str) -> None:
    # Names come from the guest's DNS queries: escaped before they reach the terminal.
    click.echo(escape_controls(line))


def _summary(r: dict[str, Any]) -> None:
    rules = ", ".join(r["rules"]) or "none"
    state = "enforced" if r["enforced"] else "not enforced now (VM stopped or NAT off)"
    if r["mode"] == "open":
        _echo(f"{r['vm']}: egress open (NAT {'on' if r['nat'] else 'off'}; no rules)")
    else:
        _echo(f"{r['vm']}: egress restricted to {rules} ({state})")
    if r["resolved"]:
        _echo("")
        print_table(
            ["NAME", "ADDRESSES", "EXPIRES IN"],
            [
                [escape_controls(n["name"]), ", ".join(n["addresses"]), f"{n['expires_in']}s"]
                for n in r["resolved"]
            ],
        )
    _echo("")
    if not r["denied"]:
        _echo("no denied attempts")
        return
    print_table(
        ["DENIED", "PORT", "PROTO", "COUNT", "FIRST SEEN", "LAST SEEN", "REASON"],
        [_denied_row(d) for d in r["denied"]],
        cut=0,
    )


def _denied_row(d: dict[str, Any]) -> list[Any]:
    return [
        escape_controls(d["target"]),
        d["port"],
        d["proto"],
        d["count"],
        d["first_seen"],
        d["last_seen"],
        d["reason"],
    ]


@click.command("egress", short_help="A VM's egress policy, resolved names, denied attempts.")
@VM_REF
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("-f", "--follow", is_flag=True, help="then print each new denied attempt (Ctrl-C)")
def egress_cmd(ref: str, as_json: bool, follow: bool) -> None:
    """The VM's egress policy, the names resolved for it and what it was denied (seen on the
    host: banger's resolver and the nftables drop rule)."""
    r = call("vm.egress", {"ref": ref})
    if as_json and not follow:
        print_json(r)
        return
    if as_json:
        click.echo(json.dumps(r, sort_keys=True))
    else:
        _summary(r)
    if not follow:
        return
    seen = {(d["target"], d["port"], d["proto"]): d["count"] for d in r["denied"]}
    try:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            for d in call("vm.egress", {"ref": ref})["denied"]:
                key = (d["target"], d["port"], d["proto"])
                if seen.get(key) == d["count"]:
                    continue
                seen[key] = d["count"]
                if as_json:
                    click.echo(json.dumps(d, sort_keys=True))
                else:
                    _echo(
                        f"{d['last_seen']} denied {d['target']} {d['proto']}/{d['port']} "
                        f"x{d['count']} ({d['reason']})"
                    )
    except KeyboardInterrupt:
        return
