"""`AsyncSandbox`: a banger sandbox (a microVM) driven from asyncio.

    >>> async with await AsyncSandbox.create(image="debian-bookworm") as sbx:
    ...     r = await sbx.run("uname -a")
    ...     print(r.exit_code, r.stdout)
    ...     await sbx.files.write("/root/data.bin", b"\\x00\\x01")
    ...     r = await sbx.run(["ls", "-l", "/root/data.bin"])     # a list keeps its words

Leaving the `async with` deletes the sandbox unless it was created with `keep=True` (or came
from `connect()`, which keeps by default). Every daemon error is a `BangerError` subclass
carrying the RPC `code` and `op_id`.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from banger.sdk.command import Command, CommandResult, OutputCallback, OutputSink, shell_line
from banger.sdk.daemon import DaemonConnection, connect_daemon
from banger.sdk.errors import BadRequest, CommandFailed
from banger.sdk.files import AsyncFiles
from banger.sdk.guest import GuestSession
from banger.sdk.models import Port, PreparedWorkspace, SandboxInfo, Stats, WorkspacePatch

# A command's timeout when none is given (seconds); None in `run(timeout=None)` means no limit.
DEFAULT_TIMEOUT = 600.0
_UNSET: Any = object()


def _resolve_daemon(daemon: DaemonConnection | None, host: str | None = None) -> DaemonConnection:
    if daemon is not None and host is not None:
        raise BadRequest("give either daemon= or host=, not both")
    return daemon if daemon is not None else connect_daemon(host)


class AsyncWorkspace:
    """`sandbox.workspace`: ship a host git checkout in, bring the changes back as a patch."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sbx = sandbox

    async def prepare(
        self,
        path: str | os.PathLike[str],
        *,
        guest_path: str | None = None,
        include_untracked: bool | None = None,
        mode: Literal["git", "full_copy"] | None = None,
        branch: str | None = None,
        readonly: bool | None = None,
    ) -> PreparedWorkspace:
        """Ship the checkout at host `path` to the sandbox (default `/root/repo`): a real git
        repository at your HEAD with your uncommitted changes on top (docs/workspace.md).

        >>> ws = await sbx.workspace.prepare("./myrepo")
        >>> await sbx.run("make test", cwd=ws.guest_path)
        """
        params: dict[str, Any] = {"vm": self._sbx.name, "path": str(Path(path).resolve())}
        for key, value in (
            ("guest_path", guest_path),
            ("include_untracked", include_untracked),
            ("mode", mode),
            ("branch", branch),
            ("readonly", readonly),
        ):
            if value is not None:
                params[key] = value
        from banger.sdk.remote import RemoteDaemon

        daemon = self._sbx.daemon
        if isinstance(daemon, RemoteDaemon):
            # The remote daemon cannot read this machine's checkout: shipped from here.
            opts = {k: v for k, v in params.items() if k not in ("vm", "path")}
            if opts.get("mode") == "git":
                opts["mode"] = "overlay"
            result = await daemon.prepare_workspace(self._sbx.name, params["path"], opts)
        else:
            result = await daemon.call("vm.workspace.prepare", params)
        return PreparedWorkspace.from_json(result)

    async def export(
        self, *, guest_path: str | None = None, base_commit: str | None = None
    ) -> WorkspacePatch:
        """Every change made in the sandbox's checkout, as a patch for `git apply`.

        >>> patch = await sbx.workspace.export()
        >>> subprocess.run(["git", "apply"], input=patch.patch, cwd="./myrepo", check=True)
        """
        params: dict[str, Any] = {"vm": self._sbx.name}
        if guest_path is not None:
            params["guest_path"] = guest_path
        if base_commit is not None:
            params["base_commit"] = base_commit
        return WorkspacePatch.from_json(await self._sbx.daemon.call("vm.workspace.export", params))


class AsyncSandbox:
    """A handle on one sandbox. Get one from `create()` or `connect()`."""

    def __init__(self, name: str, *, daemon: DaemonConnection, keep: bool = False) -> None:
        self.name = name
        self.daemon = daemon
        self.keep = keep
        self._guest = GuestSession(daemon, name)
        self.files = AsyncFiles(self._guest)
        self.workspace = AsyncWorkspace(self)

    def __repr__(self) -> str:
        return f"AsyncSandbox({self.name!r})"

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        *,
        image: str | None = None,
        kernel: str | None = None,
        name: str | None = None,
        vcpu: int | None = None,
        memory: int | None = None,
        disk_size: str | None = None,
        nat: bool = False,
        allow: Sequence[str] = (),
        init: Literal["auto", "systemd", "minimal"] = "auto",
        cold: bool = False,
        keep: bool = False,
        daemon: DaemonConnection | None = None,
        host: str | None = None,
    ) -> AsyncSandbox:
        """Create and boot a sandbox; returns once it answers SSH.

        `image`/`kernel` default to the config's defaults (offline Debian, the host's kernel),
        `memory` is MiB, `disk_size` the work disk (e.g. "4G"). `allow`: egress rules (names,
        `*.wildcards`, IPv4 CIDRs, optional `:port`); any rule restricts the sandbox's egress to
        them (bridged networking; implies `nat`). `keep=True`: leaving a `with` block does not
        delete it.

        `host="ssh://me@box"` uses the daemon on that host (docs/remote.md).

        >>> sbx = await AsyncSandbox.create(name="ci-1", vcpu=2, memory=1024)
        """
        d = _resolve_daemon(daemon, host)
        params: dict[str, Any] = {"init": init, "nat": nat}
        if cold:
            params["cold"] = True  # no warm-create template (docs/snapshots.md)
        if isinstance(allow, str):
            raise TypeError("allow must be a list of rules, e.g. allow=['pypi.org']")
        if allow:
            params["allow"] = list(allow)
        for key, value in (
            ("name", name),
            ("image", image),
            ("kernel", kernel),
            ("vcpu", vcpu),
            ("memory", memory),
            ("disk_size", disk_size),
        ):
            if value is not None:
                params[key] = value
        record = await d.call("vm.create", params)
        return cls(str(record["name"]), daemon=d, keep=keep)

    @classmethod
    async def connect(
        cls,
        name: str,
        *,
        keep: bool = True,
        daemon: DaemonConnection | None = None,
        host: str | None = None,
    ) -> AsyncSandbox:
        """A handle on an existing sandbox (NotFound when there is none by that name).

        Leaving a `with` block does not delete it unless `keep=False`.
        """
        d = _resolve_daemon(daemon, host)
        record = await d.call("vm.show", {"ref": name})
        return cls(str(record["name"]), daemon=d, keep=keep)

    @staticmethod
    async def list(
        *, daemon: DaemonConnection | None = None, host: str | None = None
    ) -> list[SandboxInfo]:
        """Every sandbox the daemon knows, running or not."""
        d = _resolve_daemon(daemon, host)
        return [SandboxInfo.from_json(r) for r in await d.call("vm.list") if isinstance(r, dict)]

    async def info(self) -> SandboxInfo:
        """The sandbox as the daemon sees it now (state, image, sizes)."""
        return SandboxInfo.from_json(await self.daemon.call("vm.show", {"ref": self.name}))

    async def stop(self, *, timeout: float = 30.0) -> None:
        """Shut the guest down (its /root work disk is kept)."""
        await self._guest.close()
        await self.daemon.call("vm.stop", {"refs": [self.name], "timeout": timeout})

    async def start(self) -> None:
        """Boot a stopped sandbox again."""
        await self._guest.close()
        await self.daemon.call("vm.start", {"refs": [self.name]})

    async def delete(self) -> None:
        """Delete the sandbox and its disks."""
        await self._guest.close()
        await self.daemon.call("vm.delete", {"refs": [self.name]})

    async def close(self) -> None:
        """Close the SSH connection (the sandbox keeps running)."""
        await self._guest.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.keep:
            await self.close()
        else:
            await self.delete()

    # --- commands --------------------------------------------------------------------------

    async def run(
        self,
        cmd: Command,
        *,
        timeout: float | None = _UNSET,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        output_limit: int | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run a command in the sandbox over its shared SSH connection.

        `cmd`: a str is a shell line; a list is an argv whose words stay separate (each is
        quoted). `timeout` (seconds, default 600, None for none): past it the command's whole
        process group is killed and `CommandTimeout` raised. `on_stdout`/`on_stderr` get the
        output as it arrives. `output_limit`: keep at most that many bytes of each stream in
        the result (the callbacks still see everything). `check=True`: raise `CommandFailed` on
        a non-zero exit. Concurrent calls run concurrently.

        >>> r = await sbx.run(["printf", "%s\\n", "a b", "c;d"])
        >>> r.stdout
        'a b\\nc;d\\n'
        >>> await sbx.run("cat > /root/in.txt", stdin=b"data")
        """
        if timeout is _UNSET:
            timeout = DEFAULT_TIMEOUT
        if timeout is not None and timeout <= 0:
            raise BadRequest(f"timeout must be positive seconds, not {timeout}")
        if output_limit is not None and output_limit < 0:
            raise BadRequest(f"output_limit must be >= 0 bytes, not {output_limit}")
        line = shell_line(cmd, env=env, cwd=cwd)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        out = OutputSink(on_stdout, output_limit)
        err = OutputSink(on_stderr, output_limit)
        code = await self._guest.run(line, stdin=data, timeout=timeout, out=out, err=err)
        so, se = out.value(), err.value()
        result = CommandResult(
            exit_code=code,
            stdout=so.decode(errors="replace"),
            stderr=se.decode(errors="replace"),
            stdout_bytes=so,
            stderr_bytes=se,
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
        )
        if check and code != 0:
            raise CommandFailed(
                f"command exited {code} in sandbox {self.name}: {result.stderr.strip()[-500:]}",
                result=result,
            )
        return result

    # --- observability ---------------------------------------------------------------------

    async def ports(self) -> builtins.list[Port]:
        """The sandbox's listening sockets, with a URL from this host where there is one."""
        rows = await self.daemon.call("vm.ports", {"refs": [self.name]})
        return [Port.from_json(r) for r in rows if isinstance(r, dict) and "error" not in r]

    async def stats(self) -> Stats:
        """CPU, memory and disk use of the VM process and inside the guest."""
        return Stats.from_json(await self.daemon.call("vm.stats", {"ref": self.name}))
