"""`banger vm create|start|stop|restart|kill|delete|prune|set|list|show|logs|ssh`."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from banger.cli.output import dim, print_json, print_table, style
from banger.units import format_bytes


def _client() -> Any:
    from banger.cli.connect import client

    return client()


def _call(method: str, params: dict[str, Any], **kw: Any) -> Any:
    with _client() as c:
        return c.call(method, params, **kw)


def _err(text: str) -> None:
    print(text, file=sys.stderr)


class _Stages:
    """Live stage display on stderr: a rich spinner line on a TTY, plain lines otherwise."""

    LABELS = {
        "resolve": "resolving image and kernel",
        "disks": "preparing disks",
        "boot": "booting",
        "wait_guest": "waiting for the guest",
        "wait_ssh": "waiting for SSH",
        "stop": "stopping",
    }

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.status: Any = None
        self.last = ""
        if self.tty:
            from rich.console import Console

            self.console = Console(stderr=True)
            self.status = self.console.status("starting")
            self.status.start()

    def __call__(self, ev: dict[str, Any]) -> None:
        stage = str(ev.get("stage", ""))
        if stage == "spec":
            self._print(f"spec: {ev.get('detail', '')}")
            return
        label = self.LABELS.get(stage)
        if label is None:
            # image build / kernel import progress from ensure(): show its message as detail
            msg = ev.get("message") or ev.get("detail") or ""
            if msg and self.status is not None:
                self.status.update(f"{self.last} {dim(str(msg)[:60])}")
            return
        cur, total = ev.get("current"), ev.get("total")
        counter = f"[{cur}/{total}] " if cur and total else ""
        self.last = f"{counter}{label}"
        if self.status is not None:
            self.status.update(self.last)
        else:
            _err(self.last)

    def _print(self, text: str) -> None:
        if self.status is not None:
            self.console.print(text)
        else:
            _err(text)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


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
@click.option("--name", help="VM name (a DNS label); generated when omitted")
@click.option("--image", help="image name or id (default: config default_image)")
@click.option("--kernel", help="kernel name (default: the image's, else config default_kernel)")
@click.option("--vcpu", type=click.IntRange(1, 64), help="vCPUs (default: host-aware)")
@click.option("--memory", type=click.IntRange(128), help="memory in MiB (default: host-aware)")
@click.option("--disk-size", help="work disk size, e.g. 8G (default 8G)")
@click.option(
    "--init",
    type=click.Choice(["auto", "systemd", "minimal"]),
    default="auto",
    show_default=True,
    help="guest init: the image's systemd, banger's minimal supervisor, or auto",
)
@click.option("--no-start", is_flag=True, help="create the VM without booting it")
@click.option("--nat", is_flag=True, help="outbound NAT for a bridged VM (masquerade)")
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
    nat: bool,
    as_json: bool,
) -> None:
    """Create a VM (and boot it, waiting until SSH answers)."""
    params = _create_params(name, image, kernel, vcpu, memory, disk_size, init, no_start)
    if nat:
        params["nat"] = True
    stages = _Stages()
    try:
        rec = _call("vm.create", params, on_progress=stages)
    finally:
        stages.close()
    if as_json:
        print_json(rec)
        return
    if no_start:
        print(f"created {rec['name']} (stopped; start it with `banger vm start {rec['name']}`)")
    else:
        print(f"{style(rec['name'], '1')} ready in {stages.elapsed():.1f}s")


def _each(
    method: str, refs: tuple[str, ...], extra: dict[str, Any], verb: str, stages: bool = False
) -> None:
    """Act on several VMs at once; print one line per VM; exit 1 if any failed."""
    progress: Callable[[dict[str, Any]], None] | None = None
    display = _Stages() if stages and len(refs) == 1 else None
    progress = display
    try:
        result = _call(method, {"refs": list(refs), **extra}, on_progress=progress)
    finally:
        if display is not None:
            display.close()
    if isinstance(result, dict) and "results" in result:
        failed = False
        for r in result["results"]:
            if r["ok"]:
                print(f"{r['vm']}: {verb}")
            else:
                failed = True
                _err(f"{r['vm']}: {r['error']['message']}")
        if failed:
            from banger.cli.main import ExitCode

            raise ExitCode(1)
        return
    print(f"{result['name']}: {verb}")


@vm.command()
@click.argument("refs", nargs=-1, required=True)
def start(refs: tuple[str, ...]) -> None:
    """Start stopped VMs."""
    _each("vm.start", refs, {}, "running", stages=True)


@vm.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="graceful seconds")
def stop(refs: tuple[str, ...], timeout: float) -> None:
    """Stop running VMs gracefully (forced after --timeout)."""
    _each("vm.stop", refs, {"timeout": timeout}, "stopped")


@vm.command()
@click.argument("refs", nargs=-1, required=True)
def restart(refs: tuple[str, ...]) -> None:
    """Stop then start VMs."""
    _each("vm.restart", refs, {}, "restarted", stages=True)


@vm.command()
@click.argument("refs", nargs=-1, required=True)
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
@click.argument("refs", nargs=-1, required=True)
def delete(refs: tuple[str, ...]) -> None:
    """Stop VMs and remove their disks (irreversible)."""
    _each("vm.delete", refs, {}, "deleted")


@vm.command()
@click.option("-f", "--force", is_flag=True, help="do not ask for confirmation")
def prune(force: bool) -> None:
    """Delete every VM that is not running."""
    vms = [v for v in _call("vm.list", {}) if v["state"] != "running"]
    if not vms:
        print("nothing to prune")
        return
    print_table(["NAME", "STATE", "IMAGE"], [[v["name"], v["state"], v["image_name"]] for v in vms])
    if not force and not click.confirm(f"delete these {len(vms)} VM(s)?", default=False):
        from banger.cli.main import ExitCode

        raise ExitCode(1)
    _each("vm.delete", tuple(v["id"] for v in vms), {}, "deleted")


@vm.command(name="set")
@click.argument("refs", nargs=-1, required=True)
@click.option("--vcpu", type=click.IntRange(1, 64))
@click.option("--memory", type=click.IntRange(128), help="MiB")
@click.option("--disk-size", help="grow the work disk to this size (e.g. 16G)")
@click.option(
    "--nat/--no-nat",
    default=None,
    help="outbound NAT for a bridged VM (applied at once, even while it runs)",
)
def set_(
    refs: tuple[str, ...],
    vcpu: int | None,
    memory: int | None,
    disk_size: str | None,
    nat: bool | None,
) -> None:
    """Change vCPUs, memory or work disk size of stopped VMs, or NAT of any VM."""
    extra: dict[str, Any] = {}
    for k, v in (("vcpu", vcpu), ("memory", memory), ("disk_size", disk_size), ("nat", nat)):
        if v is not None:
            extra[k] = v
    _each("vm.set", refs, extra, "updated")


def _age(created: str) -> str:
    try:
        t = time.mktime(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return "?"
    s = max(0, int(time.time() - t))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _endpoint(v: dict[str, Any]) -> str:
    if v["state"] != "running":
        return "-"
    if v.get("ip"):
        return str(v["ip"])
    return f"{v.get('ssh_host')}:{v.get('ssh_port')}"


@vm.command(name="list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json: bool) -> None:
    """List VMs."""
    vms = _call("vm.list", {})
    if as_json:
        print_json(vms)
        return
    rows = [
        [
            v["name"],
            v["state"],
            v["image_name"],
            v["vcpus"],
            f"{v['memory_mib']} MiB",
            _endpoint(v),
            _age(v["created_at"]),
        ]
        for v in vms
    ]
    print_table(["NAME", "STATE", "IMAGE", "VCPU", "MEMORY", "IP/PORT", "AGE"], rows)


def _network_line(v: dict[str, Any]) -> str:
    """`tap 172.16.0.2 (web.vm, NAT)` for bridged VMs; the attachment kind otherwise."""
    if v["network"] != "tap":
        return str(v["network"])
    extra = [f"{v['name']}.vm"] + (["NAT"] if v.get("nat") else [])
    return f"tap {v.get('ip') or '(no address yet)'} ({', '.join(extra)})"


@vm.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
def show(ref: str, as_json: bool) -> None:
    """Show one VM."""
    v = _call("vm.show", {"ref": ref})
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
    if v.get("error"):
        fields.append(("error", v["error"]))
    width = max(len(k) for k, _ in fields)
    for k, val in fields:
        print(f"{k.ljust(width)}  {val}")


@vm.command()
@click.argument("ref")
@click.option("-f", "--follow", is_flag=True, help="keep printing new console output")
@click.option("-n", "--bytes", "max_bytes", type=int, default=256 * 1024, show_default=True)
def logs(ref: str, follow: bool, max_bytes: int) -> None:
    """Print a VM's serial console log."""
    r = _call("vm.logs", {"ref": ref, "max_bytes": max_bytes})
    sys.stdout.write(r["content"])
    sys.stdout.flush()
    if not follow:
        return
    # The daemon and the CLI share a host: follow the file itself.
    pos = int(r["size"])
    path = r["path"]
    try:
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(0, 2)
                    if f.tell() < pos:
                        pos = 0  # truncated / recreated
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            time.sleep(0.25)
    except KeyboardInterrupt:
        return


@vm.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("ref")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(ref: str, command: tuple[str, ...]) -> None:
    """SSH into a VM; with `-- cmd …` run the command and return its exit status."""
    from banger.guest.ssh import SSHTarget, ssh_argv

    target = SSHTarget.from_json(_call("vm.ssh", {"ref": ref}))
    remote = list(command) if command else None
    tty = remote is None and sys.stdin.isatty()
    argv = ssh_argv(target, remote, tty=tty)
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
