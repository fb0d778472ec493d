"""`banger vm run` (the one-command sandbox) and `banger vm exec` (a command in the workspace)."""

from __future__ import annotations

import contextlib
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from banger.cli.complete import (
    ALLOW_OPTION,
    COLD_OPTION,
    IMAGE_OPTION,
    NAT_OPTION,
    NEW_VM_NAME,
    vm_names,
)
from banger.cli.output import boot_note, dim, print_error
from banger.cli.workspace import (
    call,
    local_plan,
    prepare_options,
    prepare_workspace,
    print_plan,
    print_prepared,
)


class DashDashCommand(click.Command):
    """Keeps everything after the first `--` as the guest command (click would mix it with PATH)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            ctx.meta["guest_cmd"] = args[i + 1 :]
            args = args[:i]
        else:
            ctx.meta["guest_cmd"] = []
        return super().parse_args(ctx, args)


def remote_script(workdir: str | None, cmd: Sequence[str]) -> str:
    """A POSIX sh line: cd into the workspace, then the command (or a login shell)."""
    cd = f"cd -- {shlex.quote(workdir)} && " if workdir else ""
    if cmd:
        # Not `exec CMD`: a command killed by a signal (Ctrl-C at the terminal) would end the
        # session by signal, which ssh reports as 255, its "connection failed" status. The shell
        # stays (no-op traps: the terminal's INT/QUIT reach it too) and exits 128+N instead.
        # The same rule as `vm ssh VM -- CMD…`: one word is a shell line, several are quoted.
        from banger.cli.vm import remote_line

        return cd + "trap : INT QUIT && " + remote_line(cmd) + "; exit"
    return cd + 'exec "${SHELL:-/bin/sh}" -l'


def ssh_command(vm: str, script: str, *, tty: bool) -> list[str]:
    from banger.client.target import via_remote
    from banger.guest.ssh import SSHTarget, ssh_argv

    info = call("vm.ssh", {"ref": vm})
    target = SSHTarget.from_json(info.get("target", info))
    # ssh joins remote words with spaces for the login shell: pass one pre-quoted line.
    return via_remote(ssh_argv(target, [script], tty=tty), tty=tty)


@contextlib.contextmanager
def _ignore_sigint() -> Iterator[None]:
    # Ctrl-C belongs to the remote side while ssh runs; ssh itself exits when the session ends.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def run_ssh(vm: str, workdir: str | None, cmd: Sequence[str], *, tty: bool) -> int:
    argv = ssh_command(vm, remote_script(workdir, cmd), tty=tty)
    with _ignore_sigint():
        proc = subprocess.run(argv, check=False)
    if proc.returncode == 255:
        print_error(f"ssh to vm {vm} failed (exit 255); check `banger vm logs {vm}`")
    return proc.returncode


def attached() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def reminder(vm: str) -> None:
    click.echo(dim(f"vm {vm} is still running (stop it with `banger vm stop {vm}`)"), err=True)


def _exit(code: int) -> None:
    if code:
        raise SystemExit(code)  # the guest command's status, verbatim


def _kept(vm: str) -> dict[str, Any] | None:
    """The VM's record when a failed create kept it (boot failures do), else None."""
    from banger.rpc.errors import RPCError

    try:
        rec = call("vm.show", {"ref": vm})
    except RPCError:
        return None
    return rec if isinstance(rec, dict) else None


def _create_vm(
    name: str | None,
    image: str | None,
    nat: bool,
    allow: tuple[str, ...] = (),
    cold: bool = False,
) -> dict[str, Any]:
    """`vm.create` with live stages on stderr; the VM's name comes from its spec line."""
    from banger.cli import connect
    from banger.cli.progress import Stages
    from banger.rpc.client import Interrupted
    from banger.rpc.errors import RPCError

    params: dict[str, Any] = {
        "name": name,
        "image": image,
        "nat": nat or None,
        "allow": list(allow) or None,
        "cold": cold or None,
    }
    stages = Stages(name)
    try:
        with stages:
            result = connect.call(
                "vm.create", {k: v for k, v in params.items() if v}, on_progress=stages
            )
    except Interrupted as e:
        click.echo(stages.interrupted(e), err=True)
        raise SystemExit(130) from None
    except RPCError as e:
        # Only a VM this create made can be "kept"; with an existing --name the error is about
        # the user's other VM, which must not be pointed at for deletion.
        kept = stages.name if stages.spec_seen else None
        rec = _kept(kept) if kept else None
        if kept and rec is not None:
            log = str(rec.get("console_log") or "")
            where = "" if not log or log in e.message else f"; console log: {log}"
            e.message = (
                f"{e.message.rstrip()}\n(vm {kept} is kept for inspection{where}; "
                f"`banger vm logs {kept}`, then `banger vm delete {kept}`)"
            )
        raise
    vm = result.get("vm", result) if isinstance(result, dict) else {}
    if not isinstance(vm, dict) or "name" not in vm:
        raise click.ClickException(f"vm.create returned no VM name: {result!r}")
    # The stage spinner vanishes on a terminal: say the boot is done, as `vm create` does.
    click.echo(f"{vm['name']} ready in {stages.elapsed():.1f}s{boot_note(vm)}", err=True)
    return vm


@click.command(
    "run", cls=DashDashCommand, short_help="A new VM with a checkout: shell or `-- CMD…`."
)
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False))
@NEW_VM_NAME
@IMAGE_OPTION
@click.option("--rm", "remove", is_flag=True, help="delete the VM when the session or command ends")
@COLD_OPTION
@NAT_OPTION
@ALLOW_OPTION
@prepare_options
@click.pass_context
def run_cmd(
    ctx: click.Context,
    /,
    path: str | None,
    name: str | None,
    image: str | None,
    remove: bool,
    cold: bool,
    nat: bool,
    allow: tuple[str, ...],
    dry_run: bool,
    **opts: Any,
) -> None:
    """Create and boot a VM, ship PATH into it, then open a shell there or run `-- CMD…`.

    \b
      banger vm run                       # bare sandbox, interactive shell
      banger vm run ./repo                # checkout at /root/repo, shell in it
      banger vm run ./repo -- make test   # run the command, exit with its status
      banger vm run --rm ./repo -- make   # and delete the VM afterwards
    """
    cmd: list[str] = ctx.meta.get("guest_cmd", [])
    if path is None and (
        opts["branch"] or opts["from_ref"] or opts["include_untracked"] or dry_run
    ):
        raise click.UsageError("--branch/--from/--include-untracked/--dry-run need a PATH")
    plan = local_plan(path, **opts) if path else None  # refuse a non-repo before booting anything
    if dry_run:
        assert plan is not None
        print_plan(plan, as_json=False)
        return
    vm = _create_vm(name, image, nat, allow, cold)
    vm_name = str(vm["name"])
    status = 0
    try:
        workdir = None
        if path:
            result = prepare_workspace(vm_name, path, opts)
            print_prepared(result)
            workdir = result["guest_path"]
        status = run_ssh(vm_name, workdir, cmd, tty=attached() if cmd else True)
    finally:
        if remove:
            try:
                call("vm.delete", {"refs": [vm_name]})
            except Exception as e:  # keep the command's own outcome; say what is left behind
                print_error(f"could not delete vm {vm_name}: {e}")
        else:
            reminder(vm_name)
    _exit(status)


@click.command("exec", cls=DashDashCommand, short_help="Run `-- CMD…` in a VM's workspace.")
@click.argument("vm_ref", metavar="VM", shell_complete=vm_names)
@click.option("--guest-path", help="where to run (default: the last prepared workspace, else ~)")
@click.option("--auto-prepare", is_flag=True, help="re-sync the workspace when host HEAD moved")
@click.pass_context
def exec_cmd(ctx: click.Context, vm_ref: str, guest_path: str | None, auto_prepare: bool) -> None:
    """Run `-- CMD…` in the VM's workspace; exits with the command's status."""
    cmd: list[str] = ctx.meta.get("guest_cmd", [])
    if not cmd:
        raise click.UsageError("give the command after `--`, e.g. `banger vm exec VM -- make test`")
    params: dict[str, Any] = {"vm": vm_ref, "dry_run": True}
    if guest_path:
        params["guest_path"] = guest_path
    state = call("vm.workspace.prepare", params)
    from banger.cli import connect

    if connect.current_remote() is not None:
        state = _remote_exec_state(state)
    recorded = state.get("recorded")
    if state.get("warning"):
        click.echo(f"warning: cannot check the host checkout: {state['warning']}", err=True)
    workdir = guest_path or (recorded["guest_path"] if recorded else None)
    if recorded and state.get("head_moved"):
        old = (recorded.get("head_commit") or "none")[:12]
        new = ((state.get("plan") or {}).get("head_commit") or "none")[:12]
        if auto_prepare:
            click.echo(dim(f"host HEAD moved ({old} → {new}); re-syncing the workspace"), err=True)
            if connect.current_remote() is not None:
                opts = dict(recorded.get("options") or {})
                opts.pop("from_ref", None)
                opts["guest_path"] = recorded["guest_path"]
                result = prepare_workspace(vm_ref, recorded["host_path"], opts)
            else:
                result = call(
                    "vm.workspace.prepare",
                    {"vm": vm_ref, "guest_path": recorded["guest_path"]},
                    progress=True,
                )
            print_prepared(result)
        else:
            click.echo(
                f"warning: host HEAD moved since prepare ({old} → {new}) in "
                f"{recorded['host_path']}; re-sync with --auto-prepare",
                err=True,
            )
    _exit(run_ssh(vm_ref, workdir, cmd, tty=attached()))


def _remote_exec_state(state: dict[str, Any]) -> dict[str, Any]:
    """Over a remote host the recorded checkout is on THIS machine: whether its HEAD moved is
    checked here (the remote daemon's own answer about that path is about its disk)."""
    from banger.workspace.inspect import find_root, host_head

    recorded = state.get("recorded")
    out: dict[str, Any] = {"recorded": recorded, "head_moved": False, "plan": None}
    if not recorded:
        return out
    try:
        head = host_head(find_root(Path(recorded["host_path"])))
    except Exception as e:  # a vanished checkout is a warning, as locally
        out["warning"] = getattr(e, "message", None) or str(e)
        return out
    out["head_moved"] = head != recorded.get("head_commit")
    out["plan"] = {"head_commit": head}
    return out


def register(group: click.Group) -> None:
    from banger.cli.workspace import workspace

    group.add_command(run_cmd)
    group.add_command(exec_cmd)
    group.add_command(workspace)
