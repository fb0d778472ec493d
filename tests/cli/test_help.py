"""Every command's --help is complete and consistent (what a user reads before anything else)."""

from __future__ import annotations

from collections.abc import Iterator

import click

from banger.cli.main import cli
from tests.conftest import BangerEnv


def _commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        if cmd.hidden:
            continue
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


def test_every_option_says_what_it_does() -> None:
    missing = [
        f"banger {' '.join(path)} {param.opts[0]}"
        for path, cmd in _commands(cli)
        for param in cmd.params
        if isinstance(param, click.Option) and not param.help and param.name != "help"
    ]
    assert missing == []


def test_listings_offer_json_and_vm_arguments_say_vm() -> None:
    for path, cmd in _commands(cli):
        options = {o for p in cmd.params for o in p.opts}
        if path[-1] in {"list", "show", "catalog", "status", "stats", "ports", "health"}:
            assert "--json" in options, path
        vm_verb = path[0] == "vm" and not isinstance(cmd, click.Group)
        if vm_verb and path[-1] not in {"create", "prune", "list", "run"}:
            args = [p for p in cmd.params if isinstance(p, click.Argument)]
            assert args and (args[0].metavar or "").strip("[]").startswith("VM"), path


def test_command_summaries_are_not_cut_off(banger_env: BangerEnv) -> None:
    for group in ((), ("vm",), ("image",), ("kernel",), ("daemon",), ("system",)):
        out = banger_env.banger(*group, "--help", check=True).stdout
        commands = out.split("Commands:", 1)[1]
        assert "..." not in commands, (group, commands)
