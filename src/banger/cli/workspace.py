"""`banger vm workspace prepare|export`: ship a checkout into a VM, bring its changes back."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click

from banger.cli.complete import vm_names
from banger.cli.output import GuestOutput, dim, escape_controls, print_json

CHUNK = 64 * 1024


def _show_stage(fields: dict[str, Any]) -> None:
    stage = fields.get("stage")
    if stage and sys.stderr.isatty():
        print(dim(f"  {escape_controls(str(stage))}…"), file=sys.stderr)


def call(method: str, params: dict[str, Any], *, progress: bool = False) -> Any:
    """An RPC call; with `progress`, the workspace stages as dim lines on a terminal."""
    from banger.cli import connect

    return connect.call(method, params, on_progress=_show_stage if progress else None)


def print_plan(plan: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(plan)
        return
    from banger.units import format_bytes

    extra = " + untracked" if plan["include_untracked"] else ""
    click.echo(
        f"mode: {plan['mode']}{extra} · {len(plan['files'])} file(s) · "
        f"{format_bytes(plan['total_bytes'])} → {plan['guest_path']}"
    )
    click.echo(
        escape_controls(f"repo: {plan['repo_root']} @ {(plan['base_commit'] or 'no commit')[:12]}")
    )
    # File names come from the checkout, which may come from anywhere: escaped.
    for f in plan["files"]:
        click.echo(f"  {escape_controls(f)}")
    for f in plan["deleted"]:
        click.echo(f"  (deleted) {escape_controls(f)}")


def local_plan(path: str, **opts: Any) -> dict[str, Any]:
    """The dry-run plan, computed here: it needs the checkout only, never the VM."""
    from banger.workspace.plan import PrepareOptions, make_plan

    plan, _ = make_plan(Path(path).resolve(), PrepareOptions(**opts))
    return plan.model_dump(mode="json")


def prepare_options(f: Any) -> Any:
    """The options of `vm workspace prepare` and `vm run`: the command receives them as keyword
    arguments named like PrepareOptions' fields, plus `dry_run`."""
    for deco in reversed(
        [
            click.option(
                "--include-untracked", is_flag=True, help="also ship untracked, non-ignored files"
            ),
            click.option("--readonly", is_flag=True, help="drop write bits in the guest checkout"),
            click.option(
                "--mode",
                type=click.Choice(["overlay", "full_copy"]),
                default="overlay",
                show_default=True,
                help="overlay: HEAD's history + your changes; full_copy: the whole tree as is",
            ),
            click.option("--branch", help="create and check out this branch in the guest"),
            click.option(
                "--from", "from_ref", help="start --branch at this commit instead of HEAD"
            ),
            click.option(
                "--shallow", is_flag=True, help="ship HEAD's snapshot only, not its history"
            ),
            click.option("--dry-run", is_flag=True, help="list the files and mode; touch nothing"),
            click.option(
                "--guest-path",
                default="/root/repo",
                show_default=True,
                help="where the checkout goes in the guest",
            ),
        ]
    ):
        f = deco(f)
    return f


@click.group("workspace", short_help="Ship a checkout into a VM; export its changes as a patch.")
def workspace() -> None:
    """Ship a git checkout into a VM and export the guest's changes as a patch."""


@workspace.command("prepare")
@click.argument("vm_ref", metavar="VM", shell_complete=vm_names)
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@prepare_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def prepare_cmd(vm_ref: str, path: str, as_json: bool, dry_run: bool, **opts: Any) -> None:
    """Copy the checkout at PATH into VM (default /root/repo) as a real git repository."""
    if dry_run:
        print_plan(local_plan(path, **opts), as_json=as_json)
        return
    result = prepare_workspace(vm_ref, path, opts)
    if as_json:
        print_json(result)
        return
    print_prepared(result)


def prepare_workspace(vm: str, path: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Ship the checkout at `path`: the daemon reads it when it runs here; a remote daemon
    cannot, so the CLI streams it to the guest through the remote host (client.remote_workspace)."""
    from banger.cli import connect

    if connect.current_remote() is not None:
        from banger.client.remote_workspace import prepare_from_client

        return prepare_from_client(
            vm,
            path,
            opts,
            lambda stage: _show_stage({"stage": stage}),
            on_cancel_wait=connect.cancel_notice,
        )
    result: dict[str, Any] = call(
        "vm.workspace.prepare",
        {"vm": vm, "path": str(Path(path).resolve()), **opts},
        progress=True,
    )
    return result


def print_prepared(result: dict[str, Any]) -> None:
    from banger.units import format_bytes

    base = (result.get("base_commit") or "no commit")[:12]
    click.echo(
        f"prepared {result['repo_name']} in vm {result['vm']} at {result['guest_path']} "
        f"({result['mode']}, {result['files']} file(s), {format_bytes(result['total_bytes'])}, "
        f"base {base}) in {result['seconds']:.1f}s",
        err=True,
    )


class StagedOutput:
    """Where an export's patch collects until it is whole, so a failed or oversized export
    writes nothing: next to a regular `--output` file (renamed over it at the end), else in an
    anonymous temporary file copied to the device, FIFO or stdout at the end. A device or FIFO
    target (`-o /dev/stdout`, `-o /dev/null`) is written through as `>` would: renaming over it
    would replace the device node itself (as root: /dev/null)."""

    def __init__(self, target: Path | None) -> None:
        self.target = target.resolve() if target is not None else None
        self._tmp: Path | None = None
        st: os.stat_result | None = None
        if self.target is not None:
            try:
                st = os.stat(self.target)
            except FileNotFoundError:
                st = None
        self.through = self.target is None or (st is not None and not stat.S_ISREG(st.st_mode))
        if self.through:
            self.file: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 (closed in discard)
            return
        assert self.target is not None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", dir=self.target.parent)
        except OSError as e:
            from banger.rpc.errors import OperationFailed

            raise OperationFailed(
                f"cannot write the patch next to {self.target}: {e.strerror}"
            ) from None
        self._tmp = Path(tmp)
        try:
            # mkstemp makes 0600: keep an existing file's mode, give a new one the umask's.
            if st is not None:
                mode = stat.S_IMODE(st.st_mode)
            else:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
            os.fchmod(fd, mode)
            self.file = os.fdopen(fd, "w+b")
        except BaseException:
            os.close(fd)
            self._tmp.unlink(missing_ok=True)
            raise

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def chunks(self) -> Iterator[bytes]:
        """What was staged, from the start, in bounded chunks."""
        self.file.flush()
        self.file.seek(0)
        while chunk := self.file.read(CHUNK):
            yield chunk

    def commit(self) -> None:
        """Put the whole patch at the target (not for stdout: the caller copies `chunks()`)."""
        assert self.target is not None
        if self.through:
            with open(self.target, "wb") as out:
                for chunk in self.chunks():
                    out.write(chunk)
            return
        assert self._tmp is not None
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self._tmp, self.target)
        self._tmp = None
        dir_fd = os.open(self.target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def discard(self) -> None:
        """Close the stage; an uncommitted staging file is removed."""
        self.file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def write_atomically(path: Path, data: bytes) -> None:
    """Stage next to the target and rename, so a failed write never leaves half a patch."""
    with StagedOutput(path) as stage:
        stage.write(data)
        stage.commit()


def fetch_patch(info: dict[str, Any], stage: StagedOutput) -> dict[str, Any]:
    """Stream the guest's patch into `stage` over banger's SSH, as the daemon resolved it
    (`transfer: "ssh"`); the daemon never holds the patch. Returns what `--json` prints."""
    import asyncio

    from banger.client.target import guest_wrapper
    from banger.guest.ssh import SSHTarget
    from banger.workspace.export import limit_text, stream_export
    from banger.workspace.transport import SSHGuestExec

    # Over a remote host the stream comes through it (client.target).
    guest = SSHGuestExec(SSHTarget.from_json(info["ssh"]), via=guest_wrapper())
    max_bytes = int(info["max_bytes"])
    meta = asyncio.run(
        stream_export(
            guest,
            info["guest_path"],
            info["base_commit"],
            stage.write,
            max_bytes=max_bytes,
            limit=limit_text(max_bytes),
            timeout=None,  # as long as it takes; Ctrl-C stops it (and removes the stage)
        )
    )
    return {
        "vm": info["vm"],
        "guest_path": meta.guest_path,
        "base_commit": meta.base_commit,
        "files": [f.model_dump(mode="json") for f in meta.files],
        "patch_bytes": meta.patch_bytes,
    }


def print_json_with_patch(result: dict[str, Any], stage: StagedOutput) -> None:
    """`print_json({**result, "patch": text})` without holding the patch: the JSON string is
    encoded chunk by chunk (JSON escapes each character on its own, so this is the same text).
    Bytes that are not UTF-8 become U+FFFD; `--output` keeps the exact bytes."""
    import codecs
    import json

    marker = "\0patch\0"
    before, after = json.dumps({**result, "patch": marker}, indent=2, sort_keys=True).split(
        json.dumps(marker)
    )
    out = sys.stdout
    out.write(before + '"')
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in stage.chunks():
        out.write(json.dumps(decoder.decode(chunk))[1:-1])
    out.write(json.dumps(decoder.decode(b"", True))[1:-1] + '"' + after + "\n")
    out.flush()


@workspace.command("export")
@click.argument("vm_ref", metavar="VM", shell_complete=vm_names)
@click.option("--base-commit", help="diff against this commit (default: the prepared HEAD)")
@click.option("--guest-path", help="which workspace (default: the last one prepared)")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="write the patch here")
@click.option("--json", "as_json", is_flag=True, help="print the changed files as JSON")
def export_cmd(
    vm_ref: str, base_commit: str | None, guest_path: str | None, output: str | None, as_json: bool
) -> None:
    """A binary git patch of the guest's changes (stdout: pipe it to `git apply`)."""
    params: dict[str, Any] = {"vm": vm_ref, "transfer": "ssh"}
    if base_commit:
        params["base_commit"] = base_commit
    if guest_path:
        params["guest_path"] = guest_path
    # The stage first: an unwritable --output fails before the daemon or the guest is asked.
    with StagedOutput(Path(output) if output else None) as stage:
        result = fetch_patch(call("vm.workspace.export", params), stage)
        if output:
            stage.commit()
            result["output"] = str(Path(output).resolve())
        if as_json:
            if output:
                print_json(result)
            else:
                print_json_with_patch(result, stage)
            return
        if output:
            n = len(result["files"])
            size = result["patch_bytes"]
            click.echo(f"wrote {size} bytes ({n} changed file(s)) to {output}", err=True)
            return
        # At a terminal the patch is shown with control characters escaped; piped, it is exact.
        sink = GuestOutput(sys.stdout)
        for chunk in stage.chunks():
            sink.write(chunk)
        sink.close()
