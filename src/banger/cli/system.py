"""`banger system install|status|restart|uninstall`: the two-process system install."""

from __future__ import annotations

from pathlib import Path

import click

from banger.cli.output import print_json


def _root(prefix: str | None) -> Path:
    from banger.paths import system_root

    if prefix is None:
        return system_root()
    p = Path(prefix)
    if not p.is_absolute():
        raise click.BadParameter(f"{prefix!r} is not an absolute path", param_hint="--prefix")
    return p


def _fail(e: Exception) -> click.ClickException:
    return click.ClickException(str(e))


prefix_option = click.option(
    "--prefix",
    type=str,
    default=None,
    help="act on an install below this directory instead of / (testing; nothing is started)",
)


@click.group(short_help="Install banger system-wide under systemd.")
def system() -> None:
    """System install: bangerd as the owner user, bangerd-root as root, under systemd."""


@system.command()
@click.option("--owner", required=True, help="the user bangerd runs as (the only CLI user)")
@prefix_option
@click.option("--no-start", is_flag=True, help="write files and units, do not start them")
def install(owner: str, prefix: str | None, no_start: bool) -> None:
    """Install banger system-wide (run with sudo)."""
    from banger.privhelper.install import InstallFailed
    from banger.privhelper.install import install as do_install

    try:
        report = do_install(owner, _root(prefix), start=not no_start)
    except InstallFailed as e:
        raise _fail(e) from None
    click.echo(f"banger installed for {report.info.owner_user} (uid {report.info.owner_uid})")
    for p in report.written:
        click.echo(f"  wrote   {p}")
    click.echo(f"  {report.note}")


@system.command()
@prefix_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(prefix: str | None, as_json: bool) -> None:
    """Show the install, both units and whether their sockets answer."""
    from banger.paths import InstallError
    from banger.privhelper.install import status as get_status

    try:
        st = get_status(_root(prefix))
    except InstallError as e:
        raise _fail(e) from None
    if as_json:
        print_json(st)
    elif not st["installed"]:
        click.echo(f"banger is not installed system-wide ({st['install_file']} is missing)")
    else:
        click.echo(f"owner        {st['owner']} (uid {st['owner_uid']})")
        click.echo(f"version      {st['version']} (installed {st['installed_at']})")
        for name, u in st["units"].items():
            answer = f"answers (pid {u['pid']})" if u["answers"] else "not answering"
            click.echo(f"{name:<12} {u['state']}, {answer}, socket {u['socket']}")
    if not st["installed"]:
        raise SystemExit(3)


@system.command()
@prefix_option
def restart(prefix: str | None) -> None:
    """Restart bangerd-root then bangerd (running VMs keep running)."""
    from banger.privhelper.install import InstallFailed
    from banger.privhelper.install import restart as do_restart

    try:
        do_restart(_root(prefix))
    except InstallFailed as e:
        raise _fail(e) from None
    click.echo("bangerd-root and bangerd restarted")


@system.command()
@prefix_option
@click.option("--purge", is_flag=True, help="also delete /var/lib/banger, caches and /etc/banger")
def uninstall(prefix: str | None, purge: bool) -> None:
    """Stop and remove the units and install record (run with sudo)."""
    from banger.privhelper.install import InstallFailed
    from banger.privhelper.install import uninstall as do_uninstall

    try:
        removed = do_uninstall(_root(prefix), purge=purge)
    except InstallFailed as e:
        raise _fail(e) from None
    for p in removed:
        click.echo(f"  removed {p}")
    click.echo(
        "banger uninstalled" + (" and purged" if purge else " (state kept; --purge drops it)")
    )
