"""Entry point of `banger`. Subcommand modules load lazily (see cli/lazy.py)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from banger.cli.lazy import LazyGroup

if TYPE_CHECKING:
    from banger.errors import BangerError

COMMANDS = {
    "daemon": "banger.cli.daemon_cmd:daemon",
    "doctor": "banger.cli.doctor_cmd:doctor",
    "image": "banger.cli.image:image",
    "kernel": "banger.cli.kernel:kernel",
    "vm": "banger.cli.vm:vm",
    "completion": "banger.cli.completion:completion",
    "system": "banger.cli.system:system",
    "ssh-config": "banger.cli.ssh_config:ssh_config",
    "ps": "banger.cli.vm:ps",
    "version": "banger.cli.version_cmd:version",
    "mcp": "banger.mcpserver.cli:mcp",
    "rpc": "banger.cli.rpc_cmd:rpc",
}


# Commands about this machine (its install, its tools, its ssh config), never a remote daemon's.
LOCAL_ONLY = frozenset({"system", "doctor", "ssh-config"})


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from banger.buildinfo import build_info

    click.echo(build_info().line("banger"))
    ctx.exit()


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    "-V",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version, commit and build time, and exit.",
)
@click.option(
    "--host",
    "-H",
    envvar="BANGER_HOST",
    metavar="ssh://[USER@]HOST[:PORT]",
    help="Use the daemon on this host, over OpenSSH (env BANGER_HOST; docs/remote.md).",
)
@click.pass_context
def cli(ctx: click.Context, host: str | None) -> None:
    """One-command development sandboxes on microVMs."""
    if host and ctx.invoked_subcommand in LOCAL_ONLY:
        raise click.UsageError(
            f"`banger {ctx.invoked_subcommand}` is about the machine it runs on, not a daemon: "
            f"run it on the host itself (`ssh HOST banger {ctx.invoked_subcommand}`), or unset "
            "--host / BANGER_HOST"
        )
    if host:
        from banger.client.ssh_host import parse_host
        from banger.client.target import set_remote
        from banger.rpc.errors import BadRequest

        try:
            set_remote(parse_host(host))
        except BadRequest as e:
            raise click.BadParameter(e.message, param_hint="--host / BANGER_HOST") from None


class ExitCode(Exception):
    """Leave with this status without printing anything (e.g. a guest command's exit status)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _suggest_command(e: click.UsageError) -> None:
    """`No such command 'shwo'.` → `… Did you mean 'show'?` (click 8.1 suggests options only)."""
    import difflib
    import re

    m = re.fullmatch(r"No such command '(.+)'\.", e.message)
    if m is None or e.ctx is None or not isinstance(e.ctx.command, click.Group):
        return
    names = e.ctx.command.list_commands(e.ctx)
    close = difflib.get_close_matches(m.group(1), names, n=3, cutoff=0.6)
    if close:
        e.message += " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


def _interrupted_message(cause: BaseException | None) -> str:
    """What Ctrl-C did: a request in flight was cancelled by the daemon (see rpc.client)."""
    from banger.rpc.client import Interrupted

    if not isinstance(cause, Interrupted):
        return "aborted"
    if cause.completed:
        return "interrupted, but the operation had already finished"
    if cause.cleaned:
        return "interrupted; the daemon cancelled the operation (nothing half-made is left)"
    return (
        "interrupted; the daemon is still cancelling the operation "
        "(`banger daemon status` shows its log)"
    )


def _on_host(message: str) -> str:
    """Errors name the remote host the command talked to (`on ssh://u@h:p: …`)."""
    # Not imported when no command needed it (`--version` stays fast): then no host was set.
    target = sys.modules.get("banger.client.target")
    remote = getattr(target, "REMOTE", None)
    if remote is None:
        return message
    return f"on {remote.url}: {message}"


def _print_failure(e: BangerError) -> None:
    """A service's message, then the command to run next when the CLI knows one."""
    from banger.cli.hints import hint_for
    from banger.cli.output import print_error, print_hint
    from banger.rpc.errmap import to_rpc  # also for errors raised in this process
    from banger.rpc.errors import RPCError

    wire = e if isinstance(e, RPCError) else to_rpc(e)
    print_error(_on_host(e.message), wire.op_id)
    hint = hint_for(wire.method, wire.code, e.message)
    if hint:
        print_hint(hint)


def main(argv: list[str] | None = None) -> int:
    from banger.errors import BangerError
    from banger.rpc.errors import RPCError

    target = sys.modules.get("banger.client.target")
    if target is not None:  # a previous in-process run's host must not leak into this one
        target.set_remote(None)
    try:
        cli.main(args=argv, prog_name="banger", standalone_mode=False)
    except ExitCode as e:
        return e.code
    except (RPCError, BangerError) as e:
        if isinstance(e, BangerError):
            _print_failure(e)
        else:  # a wire-only error (busy, bad_version, unknown_method): no hint applies
            from banger.cli.output import print_error

            print_error(_on_host(e.message), e.op_id)
        return 1
    except click.exceptions.Abort as e:
        print(_interrupted_message(e.__cause__), file=sys.stderr)
        return 130
    except click.ClickException as e:
        if isinstance(e, click.UsageError):
            _suggest_command(e)
        else:
            e.message = _on_host(e.message)
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # config errors and the like: one clear line, no traceback
        from banger.cli.output import print_error
        from banger.config import ConfigError
        from banger.rpc.client import DaemonUnreachable

        if isinstance(e, ConfigError | OSError | ValueError | DaemonUnreachable):
            print_error(_on_host(str(e)))
            return 1
        if os.environ.get("BANGER_TRACEBACK"):
            raise
        print_error(
            f"internal error: {type(e).__name__}: {e} "
            "(a bug in banger; BANGER_TRACEBACK=1 shows the traceback)"
        )
        return 1
    return 0


if __name__ == "__main__":
    # Run the importable module's main, not __main__'s: commands raise banger.cli.main.ExitCode,
    # which is a different class from __main__.ExitCode under `python -m banger.cli.main`.
    from banger.cli.main import main as _main

    sys.exit(_main())
