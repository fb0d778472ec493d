"""`banger vm create|start|stop|restart|kill|delete|prune|set|list|show|logs|ssh|fork`."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from banger.cli.complete import (
    ALLOW_OPTION,
    COLD_OPTION,
    IMAGE_OPTION,
    NAT_OPTION,
    NEW_VM_NAME,
    VM_REF,
    VM_REFS,
    kernel_names,
)
from banger.cli.connect import call
from banger.cli.output import (
    GuestOutput,
    age,
    boot_note,
    home_relative,
    print_fields,
    print_json,
    print_table,
    style,
)
from banger.cli.progress import Stages
from banger.cli.types import MEMORY, SECONDS
from banger.rpc.client import Interrupted
from banger.units import format_bytes


def _err(text: str) -> None:
    print(text, file=sys.stderr)


@click.group()
def vm() -> None:
    """Create, run and manage VMs."""


def _create_params(
    name: str | None,
    image: str | None,
    kernel: str | None,
    vcpu: int | None,
    memory: int | None,
    disk_size: str | None,
    init: str,
    no_start: bool,
) -> dict[str, Any]:
    p: dict[str, Any] = {"init": init, "no_start": no_start}
    for k, v in (
        ("name", name),
        ("image", image),
        ("kernel", kernel),
        ("vcpu", vcpu),
        ("memory", memory),
        ("disk_size", disk_size),
    ):
        if v is not None:
            p[k] = v
    return p


@vm.command()
@NEW_VM_NAME
@IMAGE_OPTION
@click.option(
    "--kernel",
    metavar="KERNEL",
    shell_complete=kernel_names,
    help="kernel name (default: the image's, else config default_kernel)",
)
@click.option("--vcpu", type=click.IntRange(1, 64), metavar="N", help="vCPUs (default: host-aware)")
@click.option("--memory", type=MEMORY, help="memory in MiB, or e.g. 2G (default: host-aware)")
@click.option("--disk-size", metavar="SIZE", help="work disk size, e.g. 8G (default 8G)")
@click.option(
    "--init",
    type=click.Choice(["auto", "systemd", "minimal"]),
    default="auto",
    show_default=True,
    help="guest init: the image's systemd, banger's minimal supervisor, or auto",
)
@click.option("--no-start", is_flag=True, help="create the VM without booting it")
@COLD_OPTION
@NAT_OPTION
@ALLOW_OPTION
@click.option("--json", "as_json", is_flag=True, help="print the VM as JSON")
def create(
    name: str | None,
    image: str | None,
    kernel: str | None,
    vcpu: int | None,
    memory: int | None,
    disk_size: str | None,
    init: str,
    no_start: bool,
    cold: bool,
    nat: bool,
    allow: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a VM (and boot it, waiting until SSH answers).

    The first boot of an image + kernel + init + sizing leaves a template; later creates of the
    same wake from it (warm, much faster) unless `--cold`."""
    params = _create_params(name, image, kernel, vcpu, memory, disk_size, init, no_start)
    if cold:
        params["cold"] = True
    if nat:
        params["nat"] = True
    if allow:
        params["allow"] = list(allow)
    stages = Stages()
    try:
        rec = call("vm.create", params, on_progress=stages)
    except Interrupted as e:
        stages.close()
        _err(stages.interrupted(e))
        from banger.cli.main import ExitCode

        raise ExitCode(130) from None
    finally:
        stages.close()
    if as_json:
        print_json(rec)
        return
    if no_start:
        print(f"created {rec['name']} (stopped; start it with `banger vm start {rec['name']}`)")
    else:
        print(f"{style(rec['name'], '1')} ready in {stages.elapsed():.1f}s{boot_note(rec)}")


def _each(
    method: str,
    refs: tuple[str, ...],
    extra: dict[str, Any],
    verb: str,
    stages: bool = False,
    notes: dict[str, str] | None = None,
) -> None:
    """Act on several VMs at once; print one line per VM (`notes[name]` instead of `verb` when
    given); exit 1 if any failed."""
    notes = notes or {}
    display = Stages() if stages and len(refs) == 1 else None
    try:
        result = call(method, {"refs": list(refs), **extra}, on_progress=display)
    finally:
        if display is not None:
            display.close()
    if isinstance(result, dict) and "results" in result:
        failed = False
        for r in result["results"]:
            if r["ok"]:
                print(f"{r['vm']}: {notes.get(r['vm'], verb)}")
            else:
                failed = True
                _err(f"{r['vm']}: {r['error']['message']}")
        if failed:
            from banger.cli.main import ExitCode

            raise ExitCode(1)
        return
    print(f"{result['name']}: {notes.get(result['name'], verb)}")


@vm.command()
@VM_REFS
def start(refs: tuple[str, ...]) -> None:
    """Start stopped VMs."""
    _each("vm.start", refs, {}, "running", stages=True)


@vm.command()
@VM_REFS
@click.option(
    "--timeout",
    metavar="SECONDS",
    type=SECONDS,
    default=30.0,
    show_default=True,
    help="seconds to wait for a clean shutdown",
)
def stop(refs: tuple[str, ...], timeout: float) -> None:
    """Stop running VMs gracefully (forced after --timeout).

    A suspended VM's saved state is discarded (its next start is a cold boot)."""
    suspended = {v["name"] for v in call("vm.list", {}) if v["state"] == "suspended"}
    notes = {
        name: f"stopped (discarded the saved state (suspend image) of {name})" for name in suspended
    }
    _each("vm.stop", refs, {"timeout": timeout}, "stopped", notes=notes)


@vm.command()
@VM_REFS
def restart(refs: tuple[str, ...]) -> None:
    """Stop then start VMs."""
    _each("vm.restart", refs, {}, "restarted", stages=True)


@vm.command()
@VM_REFS
@click.option(
    "--signal",
    "-s",
    "sig",
    default="KILL",
    show_default=True,
    type=click.Choice(["TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "ABRT"]),
    help="signal for the VMM process",
)
def kill(refs: tuple[str, ...], sig: str) -> None:
    """Force-kill VMs (use when `vm stop` hangs)."""
    _each("vm.kill", refs, {"signal": sig}, "killed")


@vm.command()
@VM_REFS
def delete(refs: tuple[str, ...]) -> None:
    """Stop VMs and remove their disks (irreversible)."""
    _each("vm.delete", refs, {}, "deleted")


@vm.command()
@click.option("-f", "--force", is_flag=True, help="do not ask for confirmation")
def prune(force: bool) -> None:
    """Delete every VM that is not running."""
    # Paused and suspended VMs keep their state: not pruned.
    vms = [v for v in call("vm.list", {}) if v["state"] not in ("running", "paused", "suspended")]
    if not vms:
        print("nothing to prune")
        return
    print_table(["NAME", "STATE", "IMAGE"], [[v["name"], v["state"], v["image_name"]] for v in vms])
    if not force and not click.confirm(f"delete these {len(vms)} VM(s)?", default=False):
        from banger.cli.main import ExitCode

        raise ExitCode(1)
    _each("vm.delete", tuple(v["id"] for v in vms), {}, "deleted")


@vm.command(name="set", short_help="Change vCPUs, memory, disk size, NAT or egress of VMs.")
@VM_REFS
@click.option("--vcpu", type=click.IntRange(1, 64), metavar="N", help="vCPUs")
@click.option("--memory", type=MEMORY, help="memory in MiB, or e.g. 2G")
@click.option("--disk-size", metavar="SIZE", help="grow the work disk to this size, e.g. 16G")
@click.option(
    "--nat/--no-nat",
    default=None,
    help="outbound NAT for a bridged VM (applied at once, even while it runs)",
)
@click.option(
    "--allow", multiple=True, metavar="RULE", help="add an egress allow rule (repeatable; live)"
)
@click.option(
    "--disallow", multiple=True, metavar="RULE", help="remove an egress allow rule (repeatable)"
)
@click.option(
    "--egress",
    type=click.Choice(["open", "restricted"]),
    help="open: NAT without rules; restricted: only what the rules allow (none: nothing)",
)
def set_(
    refs: tuple[str, ...],
    vcpu: int | None,
    memory: int | None,
    disk_size: str | None,
    nat: bool | None,
    allow: tuple[str, ...],
    disallow: tuple[str, ...],
    egress: str | None,
) -> None:
    """Change vCPUs, memory or work disk size of stopped VMs, or NAT and egress of any VM."""
    extra: dict[str, Any] = {}
    for k, v in (
        ("vcpu", vcpu),
        ("memory", memory),
        ("disk_size", disk_size),
        ("nat", nat),
        ("egress", egress),
    ):
        if v is not None:
            extra[k] = v
    if allow:
        extra["allow"] = list(allow)
    if disallow:
        extra["disallow"] = list(disallow)
    _each("vm.set", refs, extra, "updated")


def _endpoint(v: dict[str, Any]) -> str:
    if v["state"] != "running":
        return "-"
    if v.get("ip"):
        return str(v["ip"])
    return f"{v.get('ssh_host')}:{v.get('ssh_port')}"


@vm.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_(as_json: bool) -> None:
    """List VMs."""
    vms = call("vm.list", {})
    if as_json:
        print_json(vms)
        return
    if not vms:
        print(
            "no VMs yet: `banger vm create` boots one, `banger vm run ./repo` one with a checkout"
        )
        return
    rows = [
        [
            v["name"],
            v["state"],
            v["image_name"],
            v["vcpus"],
            f"{v['memory_mib']} MiB",
            _endpoint(v),
            age(v["created_at"]),
            _workspace_cell(v.get("workspaces") or []),
        ]
        for v in vms
    ]
    headers = ["NAME", "STATE", "IMAGE", "VCPU", "MEMORY", "IP/PORT", "AGE", "WORKSPACE"]
    # In a narrow terminal sizes and age give way first (`vm show` has them).
    print_table(headers, rows, droppable=(3, 4, 6))


# `banger ps`: the original's top-level alias of `vm list`.
ps = click.Command(
    "ps",
    callback=list_.callback,
    params=list_.params,
    help="List VMs (the same as `banger vm list`).",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _workspace(w: dict[str, Any]) -> str:
    return f"{home_relative(w['host_path'])} → {w['guest_path']}"


def _workspace_cell(spaces: list[dict[str, Any]]) -> str:
    """The newest workspace, and how many more there are."""
    if not spaces:
        return "-"
    more = f" (+{len(spaces) - 1})" if len(spaces) > 1 else ""
    return _workspace(spaces[0]) + more


def _network_line(v: dict[str, Any]) -> str:
    """`tap 172.16.0.2 (web.vm, NAT)` for bridged VMs; the attachment kind otherwise."""
    if v["network"] != "tap":
        return str(v["network"])
    extra = [f"{v['name']}.vm"] + (["NAT"] if v.get("nat") else [])
    if v.get("egress") == "restricted":
        rules = v.get("egress_rules") or []
        extra.append(f"egress restricted: {', '.join(rules) if rules else 'nothing allowed'}")
    return f"tap {v.get('ip') or '(no address yet)'} ({', '.join(extra)})"


@vm.command()
@VM_REF
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def show(ref: str, as_json: bool) -> None:
    """Show one VM."""
    v = call("vm.show", {"ref": ref})
    if as_json:
        print_json(v)
        return
    fields = [
        ("name", v["name"]),
        ("id", v["id"]),
        ("state", v["state"]),
        ("image", v["image_name"]),
        ("kernel", v["kernel"]),
        ("vcpus", v["vcpus"]),
        ("memory", f"{v['memory_mib']} MiB"),
        ("work disk", format_bytes(v["disk_size_bytes"])),
        ("init", v["init_mode"]),
        ("network", _network_line(v)),
        ("vmm", v.get("vmm") or "-"),
        ("root disk", v.get("root_disk") or "-"),
        ("ssh", _endpoint(v)),
        ("pid", v.get("pid") or "-"),
        ("created", v["created_at"]),
        ("started", v.get("started_at") or "-"),
        ("console log", v["console_log"]),
    ]
    fields += [("workspace", _workspace(w)) for w in v.get("workspaces") or []]
    if v["state"] == "suspended":
        from banger.cli.vm_pause import suspend_image_size

        size = suspend_image_size(v["id"])
        fields.append(("suspend image", format_bytes(size) if size is not None else "missing"))
    if v.get("error"):
        fields.append(("error", v["error"]))
    print_fields(fields)


@vm.command()
@VM_REF
@click.option("-f", "--follow", is_flag=True, help="keep printing new console output")
@click.option(
    "-n",
    "--bytes",
    "max_bytes",
    metavar="BYTES",
    type=click.IntRange(0),
    default=256 * 1024,
    show_default=True,
    help="print at most this much of the end of the log first",
)
def logs(ref: str, follow: bool, max_bytes: int) -> None:
    """Print a VM's serial console log.

    At a terminal, control characters the guest wrote (escape sequences, BEL, lone CR) are shown
    as \\xNN instead of being obeyed; piped or redirected, the log is byte-exact."""
    from banger.cli import connect

    if connect.current_remote() is not None:
        _remote_logs(ref, follow, max_bytes)
        return
    r = call("vm.logs", {"ref": ref, "max_bytes": max_bytes})
    # The console is the guest's: at a terminal its escape sequences are shown, not obeyed;
    # piped, the bytes are exact.
    out = GuestOutput(sys.stdout)
    pos = int(r["size"])
    path = r["path"]
    out.write(_log_tail(path, pos, max_bytes, r["content"]))
    if not follow:
        out.close()
        return
    # The daemon and the CLI share a host: follow the file itself.
    try:
        while True:  # until Ctrl-C
            try:
                with open(path, "rb") as f:
                    f.seek(0, 2)
                    if f.tell() < pos:
                        pos = 0  # truncated / recreated
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except FileNotFoundError:
                if not os.path.isdir(os.path.dirname(path)):
                    # The VM's directory went with it: nothing more will come.
                    out.close()
                    _err(f"\nvm {r['vm']} was deleted; stopped following its console log")
                    return
                chunk = b""
            if chunk:
                out.write(chunk)
            time.sleep(0.25)
    except KeyboardInterrupt:
        # Ctrl-C is how following ends: a clean exit, the prompt on its own line.
        out.close()
        _err("")
        return


# `vm logs -f` over a remote host: how much one poll may bring, and how often it asks.
REMOTE_LOG_CHUNK = 1024 * 1024
REMOTE_LOG_POLL_SECONDS = 0.5


def _remote_logs(ref: str, follow: bool, max_bytes: int) -> None:
    """The console log through the remote daemon (its file is on the remote host): the tail,
    then, with -f, `vm.logs` with an offset on one connection until Ctrl-C or the VM goes."""
    import base64

    from banger.cli import connect
    from banger.rpc.errors import NotFound

    out = GuestOutput(sys.stdout)
    with connect.client() as c:
        size = int(c.call("vm.logs", {"ref": ref, "max_bytes": 0})["size"])
        pos = max(0, size - max_bytes)
        try:
            while True:  # the tail, then (with -f) until Ctrl-C
                try:
                    r = c.call(
                        "vm.logs", {"ref": ref, "max_bytes": REMOTE_LOG_CHUNK, "offset": pos}
                    )
                except NotFound:
                    out.close()
                    _err(f"\nvm {ref} was deleted; stopped following its console log")
                    return
                data = base64.b64decode(r["data_base64"])
                pos = int(r["offset"]) + len(data)
                if data:
                    out.write(data)
                if not follow and (not data or pos >= size):
                    out.close()
                    return
                if len(data) < REMOTE_LOG_CHUNK and follow:
                    time.sleep(REMOTE_LOG_POLL_SECONDS)
        except KeyboardInterrupt:
            out.close()
            _err("")
            return


def _log_tail(path: str, size: int, max_bytes: int, content: str) -> bytes:
    """The log's last `max_bytes` up to `size` as the file has them (the daemon's `content` is
    decoded text); the daemon's text when the file cannot be read here."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, size - max_bytes))
            data = f.read(min(size, max_bytes))
        if len(data) == min(size, max_bytes):
            return data
    except OSError:
        pass
    return content.encode(errors="surrogateescape")


def ssh_remote(command: Sequence[str]) -> list[str] | None:
    """The remote part of ssh's argv for `vm ssh VM [-- CMD…]`; None for an interactive shell."""
    if command[:1] in (["--"], ("--",)):
        command = command[1:]  # click keeps the separator in an UNPROCESSED argument
    return [remote_line(command)] if command else None


def remote_line(command: Sequence[str]) -> str:
    """The line the guest's shell runs for `vm ssh VM -- CMD…`.

    ssh joins its remote words with spaces, so `-- printf '%s\\n' 'a b' 'c;d'` would lose its
    argument boundaries (and run `d` as a command): several words are quoted one by one. A single
    word is a shell command line, as with plain ssh (`vm ssh VM -- 'make && make test'`).
    """
    if len(command) == 1:
        return command[0]
    return shlex.join(command)


@vm.command(
    short_help="SSH into a VM, or run `-- CMD…` there.",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@VM_REF
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(ref: str, command: tuple[str, ...]) -> None:
    """SSH into a VM; with `-- cmd …` run the command and return its exit status."""
    from banger.client.target import via_remote
    from banger.guest.ssh import SSHTarget, ssh_argv

    target = SSHTarget.from_json(call("vm.ssh", {"ref": ref}))
    remote = ssh_remote(command)
    tty = remote is None and sys.stdin.isatty()
    # A remote daemon's guest: the same ssh runs on the remote host, through it (client.target).
    argv = via_remote(ssh_argv(target, remote, tty=tty), tty=tty)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)


# `vm run`, `vm exec` and `vm workspace …` live in their own modules (cli/vm_run.py, workspace.py).
from banger.cli.vm_run import register as _register_run  # noqa: E402

_register_run(vm)

# `vm health`, `vm stats`, `vm ports` (networking & observability) live in cli/vm_observe.py.
from banger.cli.vm_observe import COMMANDS as _OBSERVE_COMMANDS  # noqa: E402

for _cmd in _OBSERVE_COMMANDS:
    vm.add_command(_cmd)

# `vm egress` (the egress policy report) lives in cli/vm_egress.py.
from banger.cli.vm_egress import egress_cmd as _egress_cmd  # noqa: E402

vm.add_command(_egress_cmd)

# `vm snapshot …` (checkpoints) lives in cli/vm_snapshot.py.
from banger.cli.vm_snapshot import snapshot as _snapshot_group  # noqa: E402

vm.add_command(_snapshot_group)

# `vm fork` (issue 14: children of a running VM) lives in cli/vm_fork.py.
from banger.cli.vm_fork import fork_cmd as _fork_cmd  # noqa: E402

vm.add_command(_fork_cmd)

# `vm pause|resume|suspend` live in cli/vm_pause.py.
from banger.cli.vm_pause import COMMANDS as _PAUSE_COMMANDS  # noqa: E402

for _cmd in _PAUSE_COMMANDS:
    vm.add_command(_cmd)
