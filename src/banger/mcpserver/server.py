"""The MCP tools: sandboxes for agents, built on `banger.sdk.AsyncSandbox`.

Every failure is a tool error (`isError`), its text the daemon's message with the RPC code and
op id, so an agent can read what went wrong and a person can find it in the daemon log.
Everything an agent can make the server hold is bounded: command output, file reads and
writes, and host paths for workspaces (only under the roots the server was given).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from banger import __version__
from banger.sdk import AsyncSandbox, BangerError, CommandTimeout, SandboxInfo
from banger.sdk.daemon import DaemonConnection, connect_daemon

# Per stream of a command's output, by default and at most (what reaches the model's context).
DEFAULT_OUTPUT_BYTES = 64 * 1024
MAX_OUTPUT_BYTES = 1024 * 1024
DEFAULT_READ_BYTES = 256 * 1024
MAX_READ_BYTES = 8 * 1024 * 1024
MAX_WRITE_BYTES = 8 * 1024 * 1024
MAX_PATCH_BYTES = 8 * 1024 * 1024
DEFAULT_TIMEOUT = 120.0
MAX_TIMEOUT = 3600.0

INSTRUCTIONS = """\
banger sandboxes are Linux microVMs with root, SSH and a persistent /root. Create one with
create_sandbox, run commands with run_command (a string is a shell line; a list keeps each
argument separate), move files with read_file/write_file. To work on a host git checkout, call
prepare_workspace (it lands at /root/repo by default), run commands there, then export_patch
returns the changes as a patch for `git apply`. Delete sandboxes you no longer need."""


SandboxName = Annotated[str, Field(min_length=1, max_length=64, description="sandbox name")]


class SandboxView(BaseModel):
    name: str
    state: str
    image: str
    vcpus: int
    memory_mib: int
    ip: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, info: SandboxInfo) -> SandboxView:
        return cls(
            name=info.name,
            state=info.state,
            image=info.image,
            vcpus=info.vcpus,
            memory_mib=info.memory_mib,
            ip=info.ip,
            error=info.error,
        )


class SandboxList(BaseModel):
    sandboxes: list[SandboxView]


class CommandOutput(BaseModel):
    exit_code: int
    stdout: str
    stderr: str
    stdout_truncated: bool = Field(description="stdout was longer than max_output_bytes")
    stderr_truncated: bool = Field(description="stderr was longer than max_output_bytes")


class FileContent(BaseModel):
    path: str
    encoding: Literal["utf-8", "base64"]
    content: str
    size: int = Field(description="bytes returned")
    truncated: bool = Field(description="the file is longer than max_bytes")


class Written(BaseModel):
    path: str
    bytes_written: int


class Deleted(BaseModel):
    name: str
    deleted: bool


class Workspace(BaseModel):
    sandbox: str
    guest_path: str
    base_commit: str | None


class Patch(BaseModel):
    sandbox: str
    guest_path: str
    base_commit: str | None
    files: list[dict[str, Any]]
    patch: str = Field(
        description="unified diff for `git apply` (binary files as git binary patches)"
    )
    truncated: bool


def tool_error(e: BangerError) -> ToolError:
    """The daemon's message, its RPC code and op id (when there is one)."""
    where = f"code {e.code}" + (f", op id {e.op_id}" if e.op_id else "")
    return ToolError(f"{e.message} ({where})")


class Sandboxes:
    """The AsyncSandbox handles of this server (one SSH connection each, reused across calls)."""

    def __init__(self, daemon_factory: Callable[[], DaemonConnection]) -> None:
        self._factory = daemon_factory
        self._daemon: DaemonConnection | None = None
        self._open: dict[str, AsyncSandbox] = {}

    @property
    def daemon(self) -> DaemonConnection:
        if self._daemon is None:
            self._daemon = self._factory()
        return self._daemon

    async def get(self, name: str) -> AsyncSandbox:
        sbx = self._open.get(name)
        if sbx is None:
            sbx = await AsyncSandbox.connect(name, daemon=self.daemon)
            self._open[name] = sbx
        return sbx

    def add(self, sbx: AsyncSandbox) -> None:
        self._open[sbx.name] = sbx

    async def forget(self, name: str) -> None:
        sbx = self._open.pop(name, None)
        if sbx is not None:
            await sbx.close()

    async def close(self) -> None:
        for name in list(self._open):
            await self.forget(name)


def _within(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def build_server(
    *,
    daemon_factory: Callable[[], DaemonConnection] = connect_daemon,
    workspace_roots: list[Path] | None = None,
) -> MCPServer[Any]:
    """The MCP server. `workspace_roots`: host directories prepare_workspace may ship (default:
    the current directory)."""
    roots = [p.resolve() for p in (workspace_roots or [Path.cwd()])]
    sandboxes = Sandboxes(daemon_factory)

    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
        try:
            yield None
        finally:
            await sandboxes.close()

    server: MCPServer[Any] = MCPServer(
        "banger",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level="WARNING",
    )

    @server.tool()
    async def create_sandbox(
        name: Annotated[str | None, Field(description="name; generated when omitted")] = None,
        image: Annotated[str | None, Field(description="image; the default when omitted")] = None,
        kernel: Annotated[str | None, Field(description="kernel; the default when omitted")] = None,
        vcpu: Annotated[int | None, Field(ge=1, le=64)] = None,
        memory_mib: Annotated[int | None, Field(ge=128, le=1024 * 1024)] = None,
        disk_size: Annotated[str | None, Field(description='work disk size, e.g. "4G"')] = None,
        nat: Annotated[bool, Field(description="outbound network (bridged mode)")] = False,
        allow: Annotated[
            list[str] | None,
            Field(
                description="egress allow rules (pypi.org, *.githubusercontent.com, "
                "10.0.0.0/8:443); any rule restricts outbound network to them (implies nat)",
                max_length=256,
            ),
        ] = None,
        cold: Annotated[
            bool, Field(description="boot cold even when a warm-create template exists")
        ] = False,
    ) -> SandboxView:
        """Create and boot a sandbox VM; returns when it accepts commands."""
        try:
            sbx = await AsyncSandbox.create(
                name=name,
                image=image,
                kernel=kernel,
                vcpu=vcpu,
                memory=memory_mib,
                disk_size=disk_size,
                nat=nat,
                allow=allow or (),
                cold=cold,
                keep=True,
                daemon=sandboxes.daemon,
            )
            sandboxes.add(sbx)
            return SandboxView.of(await sbx.info())
        except BangerError as e:
            raise tool_error(e) from None

    @server.tool()
    async def list_sandboxes() -> SandboxList:
        """Every sandbox (running or stopped)."""
        try:
            infos = await AsyncSandbox.list(daemon=sandboxes.daemon)
        except BangerError as e:
            raise tool_error(e) from None
        return SandboxList(sandboxes=[SandboxView.of(i) for i in infos])

    @server.tool()
    async def run_command(
        sandbox: SandboxName,
        command: Annotated[
            str | list[str],
            Field(description="a shell line, or a list of arguments kept separate (argv)"),
        ],
        timeout_seconds: Annotated[float, Field(gt=0, le=MAX_TIMEOUT)] = DEFAULT_TIMEOUT,
        cwd: Annotated[str | None, Field(description="directory in the sandbox")] = None,
        env: Annotated[dict[str, str] | None, Field(description="extra environment")] = None,
        stdin: Annotated[str | None, Field(description="text fed to the command")] = None,
        max_output_bytes: Annotated[int, Field(ge=0, le=MAX_OUTPUT_BYTES)] = DEFAULT_OUTPUT_BYTES,
    ) -> CommandOutput:
        """Run a command in a sandbox; exit code, stdout, stderr (each capped, with a flag)."""
        try:
            sbx = await sandboxes.get(sandbox)
            r = await sbx.run(
                command,
                timeout=timeout_seconds,
                cwd=cwd,
                env=env,
                stdin=stdin,
                output_limit=max_output_bytes,
            )
        except CommandTimeout as e:
            raise ToolError(
                f"{e.message} (code timeout); output so far: "
                f"stdout={e.stdout[-2000:]!r} stderr={e.stderr[-2000:]!r}"
            ) from None
        except BangerError as e:
            raise tool_error(e) from None
        return CommandOutput(
            exit_code=r.exit_code,
            stdout=r.stdout,
            stderr=r.stderr,
            stdout_truncated=r.stdout_truncated,
            stderr_truncated=r.stderr_truncated,
        )

    @server.tool()
    async def read_file(
        sandbox: SandboxName,
        path: Annotated[str, Field(min_length=1, description="absolute path in the sandbox")],
        max_bytes: Annotated[int, Field(ge=0, le=MAX_READ_BYTES)] = DEFAULT_READ_BYTES,
    ) -> FileContent:
        """Read a file: UTF-8 text when it is valid text, base64 otherwise; capped at max_bytes."""
        try:
            sbx = await sandboxes.get(sandbox)
            head = await sbx.files.read(path, limit=max_bytes + 1)
        except BangerError as e:
            raise tool_error(e) from None
        data = head[:max_bytes]
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(data).decode(), "base64"
        return FileContent(
            path=path,
            encoding=encoding,  # type: ignore[arg-type]
            content=text,
            size=len(data),
            truncated=len(head) > max_bytes,
        )

    @server.tool()
    async def write_file(
        sandbox: SandboxName,
        path: Annotated[str, Field(min_length=1, description="absolute path in the sandbox")],
        content: str,
        encoding: Literal["utf-8", "base64"] = "utf-8",
        mode: Annotated[int, Field(ge=0, le=0o7777, description="permission bits")] = 0o644,
    ) -> Written:
        """Write a file (parents created; replaced atomically). base64 for binary content."""
        try:
            data = (
                content.encode()
                if encoding == "utf-8"
                else base64.b64decode(content, validate=True)
            )
        except (binascii.Error, ValueError) as e:
            raise ToolError(f"content is not valid base64: {e}") from None
        if len(data) > MAX_WRITE_BYTES:
            raise ToolError(
                f"content is {len(data)} bytes; write_file takes at most {MAX_WRITE_BYTES}"
            )
        try:
            sbx = await sandboxes.get(sandbox)
            n = await sbx.files.write(path, data, mode=mode)
        except BangerError as e:
            raise tool_error(e) from None
        return Written(path=path, bytes_written=n)

    @server.tool()
    async def delete_sandbox(sandbox: SandboxName) -> Deleted:
        """Delete a sandbox and its disks."""
        try:
            sbx = await sandboxes.get(sandbox)
            await sandboxes.forget(sandbox)
            await sbx.delete()
        except BangerError as e:
            raise tool_error(e) from None
        return Deleted(name=sandbox, deleted=True)

    @server.tool()
    async def prepare_workspace(
        sandbox: SandboxName,
        path: Annotated[str, Field(description="host path of a git checkout")],
        guest_path: Annotated[str | None, Field(description="default /root/repo")] = None,
        include_untracked: bool = False,
    ) -> Workspace:
        """Ship a host git checkout (HEAD plus uncommitted changes) into the sandbox."""
        host = Path(os.path.expanduser(path)).resolve()
        if not _within(host, roots):
            allowed = ", ".join(str(r) for r in roots)
            raise ToolError(
                f"{host} is outside the directories this server may ship ({allowed}); "
                "start `banger mcp --workspace-root DIR` to allow another"
            )
        try:
            sbx = await sandboxes.get(sandbox)
            ws = await sbx.workspace.prepare(
                host, guest_path=guest_path, include_untracked=include_untracked
            )
        except BangerError as e:
            raise tool_error(e) from None
        return Workspace(sandbox=sandbox, guest_path=ws.guest_path, base_commit=ws.base_commit)

    @server.tool()
    async def export_patch(
        sandbox: SandboxName,
        guest_path: Annotated[str | None, Field(description="default: the workspace's")] = None,
    ) -> Patch:
        """The changes made in the sandbox's workspace, as a patch for `git apply`."""
        try:
            sbx = await sandboxes.get(sandbox)
            p = await sbx.workspace.export(guest_path=guest_path)
        except BangerError as e:
            raise tool_error(e) from None
        truncated = len(p.patch) > MAX_PATCH_BYTES
        return Patch(
            sandbox=sandbox,
            guest_path=p.guest_path,
            base_commit=p.base_commit,
            files=p.files,
            patch=p.patch[:MAX_PATCH_BYTES].decode(errors="replace"),
            truncated=truncated,
        )

    return server
