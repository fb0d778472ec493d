"""The SDK's daemon on another host (`connect_daemon(host="ssh://…")`).

RPC: one `ssh … -- host banger daemon dial-stdio` per request (closing it early, on a timeout or
cancellation, makes the remote daemon cancel, as a closed socket does locally). Guests: asyncssh
through `ssh -W guest:port host` as its proxy command, with the guest key and pinned known_hosts
read from the remote into memory (never written on this machine; docs/remote.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import TYPE_CHECKING, Any

from banger.client.ssh_host import RemoteHost, parse_host
from banger.client.ssh_transport import DIAL_COMMAND, STDERR_TAIL
from banger.rpc import PROTOCOL_VERSION
from banger.sdk.errors import (
    BadRequest,
    BangerError,
    DaemonUnavailable,
    OperationFailed,
    from_wire,
)

if TYPE_CHECKING:
    import asyncssh

MAX_LINE_BYTES = 1 << 30
# A guest endpoint as the daemon answers it: an address or name, never an ssh option.
_GUEST_HOST = re.compile(r"[A-Za-z0-9_.:\[\]][A-Za-z0-9_.:\[\]-]{0,252}")
# Guest key and known_hosts are small; anything bigger is not what we asked for.
MAX_KEY_FILE = 64 * 1024


class RemoteDaemon:
    """A daemon reached over OpenSSH (the user's ~/.ssh/config, agent, ProxyJump apply)."""

    def __init__(self, host: str | RemoteHost) -> None:
        try:
            self.remote = host if isinstance(host, RemoteHost) else parse_host(host)
        except Exception as e:
            raise BadRequest(getattr(e, "message", str(e))) from None
        self._files: dict[str, bytes] = {}

    @property
    def description(self) -> str:
        return f"daemon on {self.remote.url}"

    def _named(self, e: BangerError) -> BangerError:
        if not e.message.startswith("on ssh://"):
            e.message = f"on {self.remote.url}: {e.message}"
            e.args = (e.message,)
        return e

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        try:
            return await asyncio.wait_for(self._call(method, params), timeout)
        except BangerError as e:
            raise self._named(e) from None

    async def _spawn(self, argv: list[str]) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=MAX_LINE_BYTES,
                process_group=0,
            )
        except OSError as e:
            raise DaemonUnavailable(f"cannot run {argv[0]!r}: {e}") from None

    async def _call(self, method: str, params: dict[str, Any] | None) -> Any:
        proc = await self._spawn(self.remote.ssh_argv(list(DIAL_COMMAND)))
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            request: dict[str, Any] = {"version": PROTOCOL_VERSION, "method": method}
            if params:
                request["params"] = params
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
            while True:
                line = await proc.stdout.readline()
                if not line:
                    code = await proc.wait()
                    said = (await proc.stderr.read()).decode(errors="replace").strip()
                    said = said[-STDERR_TAIL:]
                    if code == 255:
                        raise DaemonUnavailable(f"ssh could not reach the host: {said}")
                    raise OperationFailed(
                        f"the daemon closed the connection during {method} (exit {code}"
                        + (f": {said})" if said else ")")
                    )
                msg = json.loads(line)
                if not isinstance(msg, dict) or ("progress" in msg and "ok" not in msg):
                    continue
                if msg.get("ok"):
                    return msg.get("result")
                raise from_wire(msg.get("error"))
        finally:
            # Closing ssh's stdin (and ending it) is how the remote daemon learns to cancel.
            with contextlib.suppress(Exception):
                proc.stdin.close()
            if proc.returncode is None:
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except (TimeoutError, asyncio.CancelledError):
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
                    raise

    async def read_remote_file(self, path: str) -> bytes:
        """A small file of the remote (the guest key, known_hosts), cached per path."""
        if path in self._files:
            return self._files[path]
        proc = await self._spawn(self.remote.ssh_argv(["cat", "--", path]))
        out, err = await proc.communicate(b"")
        if proc.returncode != 0:
            raise DaemonUnavailable(
                f"on {self.remote.url}: cannot read {path}: "
                f"{err.decode(errors='replace').strip()[-STDERR_TAIL:]}"
            )
        if len(out) > MAX_KEY_FILE:
            raise OperationFailed(f"on {self.remote.url}: {path} is larger than expected")
        self._files[path] = out
        return out

    async def connect_guest(self, target: dict[str, Any]) -> asyncssh.SSHClientConnection:
        import asyncssh

        from banger.sdk.daemon import connect_guest_ssh

        host, port = str(target.get("host", "")), int(target.get("port", 0))
        if not _GUEST_HOST.fullmatch(host) or not 0 < port < 65536:
            raise OperationFailed(f"the daemon's vm.ssh answer has a bad endpoint {host!r}:{port}")
        key = await self.read_remote_file(str(target["key_path"]))
        known = await self.read_remote_file(str(target["known_hosts_path"]))
        # -W: ssh on this machine forwards its stdio to the guest's port as the remote sees it.
        proxy = self.remote.forward_argv(host, port)
        try:
            return await connect_guest_ssh(
                target,
                proxy_command=proxy,
                client_keys=[asyncssh.import_private_key(key)],
                known_hosts=asyncssh.import_known_hosts(known.decode(errors="replace")),
            )
        except BangerError as e:
            raise self._named(e) from None

    async def prepare_workspace(self, vm: str, path: str, opts: dict[str, Any]) -> dict[str, Any]:
        """The checkout is on this machine: plan and stream it from here through the remote
        host (as the CLI does), then record it in the remote daemon."""
        from pathlib import Path

        from banger.client.remote_workspace import record_params
        from banger.guest.ssh import SSHTarget
        from banger.workspace.plan import PrepareOptions, make_plan
        from banger.workspace.ship import prepare
        from banger.workspace.transport import SSHGuestExec

        options = PrepareOptions(**opts)
        try:
            plan, _ = await asyncio.to_thread(make_plan, Path(path).resolve(), options)
        except Exception as e:
            raise BadRequest(getattr(e, "message", str(e))) from None
        info = await self.call("vm.ssh", {"ref": vm})
        target = SSHTarget.from_json(info.get("target", info))
        remote = self.remote
        guest = SSHGuestExec(target, via=lambda argv: remote.ssh_argv(argv))
        try:
            result = await prepare(guest, plan)
        except Exception as e:
            raise self._named(OperationFailed(getattr(e, "message", str(e)))) from None
        await self.call("vm.workspace.record", record_params(vm, plan, options))
        return {"vm": target.vm_name, **result.model_dump(mode="json")}
