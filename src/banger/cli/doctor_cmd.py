"""`banger doctor`: explain what this host lacks. Runs locally; needs no daemon."""

from __future__ import annotations

import click

from banger.cli.output import print_json, style


@click.command(short_help="Check what this host has and lacks, with hints.")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def doctor(as_json: bool) -> None:
    """Check the host: VMM, KVM, disk tools, SSH, networking, state dir."""
    from banger.config import load_config
    from banger.doctor import run_checks
    from banger.paths import Paths

    paths = Paths.detect()
    checks = run_checks(paths, load_config(paths.config_file))
    if paths.is_system:
        from banger.privhelper.install import doctor_checks

        checks += doctor_checks(paths)
    if as_json:
        print_json([c.__dict__ for c in checks])
    else:
        colours = {"PASS": "32", "WARN": "33", "FAIL": "1;31"}
        for c in checks:
            click.echo(f"{style(c.status, colours[c.status])}  {c.name:<12} {c.detail}")
            if c.hint and c.status != "PASS":
                click.echo(f"      {'':<12} hint: {c.hint}")
    if any(c.status == "FAIL" for c in checks):
        from banger.cli.main import ExitCode

        raise ExitCode(1)
