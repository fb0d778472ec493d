"""`banger vm health|ping|stats|ports`: guest observability (joined to `vm` in cli/vm.py)."""

from __future__ import annotations

import time
from typing import Any

import click

from banger.cli.complete import vm_names
from banger.cli.connect import call
from banger.cli.output import escape_controls, print_json, print_table
from banger.units import format_bytes


def _echo(line: str, *, err: bool = False) -> None:
    # Probe results quote the guest (mount points, errors): never let them drive the terminal.
    click.echo(escape_controls(line), err=err)


def _size(n: int | None) -> str:
    return "-" if n is None else format_bytes(n)


@click.command("health", short_help="Check the guest's control channel and SSH.")
@click.argument("name", metavar="VM", shell_complete=vm_names)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def health(name: str, as_json: bool) -> None:
    """Is the guest up and serving? (control channel and SSH, with latencies)"""
    from banger.cli.main import ExitCode

    result = call("vm.health", {"ref": name})
    if as_json:
        print_json(result)
    else:
        rows = [
            [
                c["name"],
                "ok" if c["ok"] else "FAIL",
                f"{c['latency_ms']:.1f} ms" if c.get("latency_ms") is not None else "-",
                c.get("error") or "",
            ]
            for c in result["checks"]
        ]
        print_table(["CHECK", "STATUS", "LATENCY", "DETAIL"], rows)
    if not result["healthy"]:
        raise ExitCode(1)


@click.command("ping")
@click.argument("name", metavar="VM", shell_complete=vm_names)
def ping(name: str) -> None:
    """Cheap liveness check: does the guest's control channel answer?"""
    from banger.cli.main import ExitCode

    result = call("vm.ping", {"ref": name})
    if result["alive"]:
        _echo(f"{result['vm']}: alive ({result['latency_ms']:.1f} ms)")
        return
    _echo(f"{result['vm']}: not answering: {result.get('error')}", err=True)
    raise ExitCode(1)


def _print_stats(s: dict[str, Any]) -> None:
    host = s["host"]
    disks = host.get("disk_allocated_bytes") or {}
    _echo(f"{s['vm']}")
    _echo(
        f"  host   cpu {host['cpu_percent']:.1f}%  rss {_size(host['rss_bytes'])}  "
        + "  ".join(f"{label.replace('_', ' ')} {_size(v)}" for label, v in sorted(disks.items()))
    )
    g = s.get("guest")
    if g is None:
        _echo(f"  guest  unavailable: {s.get('guest_error')}")
        return
    load = " ".join(f"{x:.2f}" for x in g["load"])
    mem = f"{_size(g['mem_used_bytes'])} / {_size(g['mem_total_bytes'])}"
    cpu = f"cpu {g['cpu_percent']:.1f}%"
    _echo(f"  guest  {cpu}  load {load}  mem {mem}  up {g['uptime_seconds']:.0f}s")
    for disk in g["disks"]:
        used, total = _size(disk["used_bytes"]), _size(disk["total_bytes"])
        _echo(f"  disk   {disk['mount']:<6} {used} / {total}")


@click.command("stats", short_help="CPU, memory and disk statistics of a VM.")
@click.argument("name", metavar="VM", shell_complete=vm_names)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--watch", is_flag=True, help="refresh every --interval seconds until Ctrl-C")
@click.option(
    "--interval",
    metavar="SECONDS",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.5, 3600),
    help="seconds between refreshes with --watch",
)
def stats(name: str, as_json: bool, watch: bool, interval: float) -> None:
    """Host (VMM CPU, memory, disk allocation) and guest (load, memory, disks) statistics."""
    try:
        while True:
            result = call("vm.stats", {"ref": name})
            if as_json:
                print_json(result)
            else:
                if watch:
                    click.clear()
                _print_stats(result)
            if not watch:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        if not watch:
            raise
        # Ctrl-C is how --watch ends: a clean exit, not an error.
        click.echo("", err=True)


@click.command("ports", short_help="Listening sockets in guests, with host URLs.")
@click.argument("names", nargs=-1, metavar="[VM]...", shell_complete=vm_names)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def ports(names: tuple[str, ...], as_json: bool) -> None:
    """Listening TCP/UDP sockets in guests (all running VMs by default), with host URLs."""
    rows = call("vm.ports", {"refs": list(names)})
    if as_json:
        print_json(rows)
        return
    if not rows:
        where = ", ".join(names) if names else "any running VM"
        _echo(f"no listening sockets in {where}")
        return
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["vm"], "-", "-", "-", "-", f"error: {r['error']}"])
            continue
        process = r["process"] or ""
        if r.get("pid"):
            process = f"{process}[{r['pid']}]"
        table.append(
            [r["vm"], r["proto"], r["address"], r["port"], process or "-", r["url"] or "-"]
        )
    print_table(["VM", "PROTO", "ADDRESS", "PORT", "PROCESS", "URL"], table)


COMMANDS = (health, ping, stats, ports)
