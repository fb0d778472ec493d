"""`banger version`: this CLI's version, commit and build time, and the daemon's when it runs."""

from __future__ import annotations

import platform

import click

from banger.cli.output import print_json


@click.command(short_help="Version, commit and build time of the CLI and the daemon.")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def version(as_json: bool) -> None:
    """Version, commit and build time of this CLI, and of the daemon if it runs (never starts
    one: a daemon older than the CLI shows up here as a different commit)."""
    from banger.buildinfo import build_info
    from banger.cli import connect

    cli_info = build_info()
    if connect.current_remote() is not None:
        daemon = connect.remote_ping()  # the remote's daemon (its dial-stdio starts it)
    else:
        daemon = connect.ping(connect.resolve_paths())
    if as_json:
        print_json(
            {"cli": {**cli_info.as_dict(), "python": platform.python_version()}, "daemon": daemon}
        )
        return
    click.echo(f"banger   {cli_info.version}")
    click.echo(f"commit   {cli_info.commit or 'unknown'}")
    click.echo(f"built    {cli_info.built or 'unknown'}")
    click.echo(f"python   {platform.python_version()}")
    if daemon is None:
        click.echo("daemon   not running")
        return
    commit = str(daemon.get("commit") or "unknown")[:8]
    click.echo(f"daemon   {daemon.get('version')} (commit {commit}, pid {daemon.get('pid')})")
