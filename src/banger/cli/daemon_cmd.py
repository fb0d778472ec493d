"""`banger daemon start|stop|status`."""

from __future__ import annotations

import time

import click

from banger.cli.output import print_json
from banger.cli.types import SECONDS
from banger.paths import Paths


@click.group()
def daemon() -> None:
    """Manage the background daemon (bangerd)."""


def _user_mode_paths(verb: str) -> Paths:
    """start/stop manage a user-mode daemon; under a system install systemd owns bangerd."""
    paths = Paths.detect()
    if paths.is_system:
        raise click.ClickException(
            f"banger is installed system-wide: systemd runs bangerd, so `daemon {verb}` does not "
            "apply; use `sudo banger system restart` (or `banger system status`)"
        )
    return paths


@daemon.command()
def start() -> None:
    """Start the daemon in the background (no-op when it runs)."""
    from banger.cli import connect
    from banger.cli.connect import ping, start_daemon

    if (remote := connect.current_remote()) is not None:
        # The remote's dial-stdio starts its daemon as the CLI's auto-start would.
        remote_info = connect.remote_ping() or {}
        click.echo(f"bangerd running on {remote.url} (pid {remote_info.get('pid')})")
        return

    paths = _user_mode_paths("start")
    info = ping(paths)
    if info is not None:
        click.echo(f"bangerd already running (pid {info['pid']})")
        return
    info, started = start_daemon(paths)
    if not started:
        # Another CLI started it a moment before us (we lost the state dir's lock to it).
        click.echo(f"bangerd already running (pid {info['pid']})")
        return
    click.echo(f"bangerd started (pid {info['pid']}, socket {paths.socket})")


@daemon.command()
@click.option(
    "--timeout",
    type=SECONDS,
    metavar="SECONDS",
    default=30.0,
    show_default=True,
    help="how long to wait",
)
def stop(timeout: float) -> None:
    """Stop the daemon gracefully. Running VMs keep running."""
    from banger.cli import connect
    from banger.rpc.client import Client, DaemonUnreachable

    if (host := connect.current_remote()) is not None:
        with connect.client() as remote:
            info = remote.call("shutdown", timeout=timeout)
        click.echo(f"bangerd on {host.url} stopped (pid {info['pid']})")
        return
    paths = _user_mode_paths("stop")
    try:
        with Client(paths.socket) as c:
            info = c.call("shutdown", timeout=timeout)
    except DaemonUnreachable:
        click.echo("bangerd is not running")
        return
    from banger.daemon.lock import holder

    # Stopped means the state dir is free: the socket goes first, the lock when the process ends.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (
        paths.socket.exists() or holder(paths.lock_file) == info["pid"]
    ):
        time.sleep(0.05)
    click.echo(f"bangerd stopped (pid {info['pid']})")


@daemon.command(short_help="Show whether the daemon runs (pid, socket, log, uptime).")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(as_json: bool) -> None:
    """Show whether the daemon runs: pid, socket, log path, version, uptime."""
    from banger.cli import connect
    from banger.cli.connect import ping, resolve_paths

    if connect.current_remote() is not None:
        info = connect.remote_ping()
        paths = None
    else:
        paths = resolve_paths()  # the system daemon's socket under a system install
        info = ping(paths)
    if as_json:
        socket = str(paths.socket) if paths is not None else ""
        print_json({"running": info is not None, **(info or {"socket": socket})})
        return
    if info is None:
        socket = str(paths.socket) if paths is not None else "?"
        click.echo(f"bangerd is not running (socket {socket})")
        raise SystemExit(3)
    click.echo(f"bangerd {info['version']} running")
    click.echo(f"  commit  {info.get('commit') or 'unknown'} (built {info.get('built') or '?'})")
    click.echo(f"  pid     {info['pid']}")
    click.echo(f"  socket  {info['socket']}")
    click.echo(f"  log     {info['log']}")
    click.echo(f"  uptime  {info['uptime_seconds']}s")


@daemon.command("dial-stdio", short_help="Pipe stdin/stdout to the local daemon (for --host).")
def dial_stdio() -> None:
    """Connect stdin/stdout to this machine's daemon socket (what a remote `--host` runs over
    ssh), starting the daemon first as the CLI would (user mode). Always the local daemon."""
    from banger.remote.dial import dial_stdio as run

    run()
