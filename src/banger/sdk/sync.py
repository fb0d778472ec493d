"""`Sandbox`: the blocking face of `AsyncSandbox`, for scripts and test harnesses.

Every call runs the async implementation on one private event loop in a background thread
(shared by all sandboxes of the process), so one SSH connection per sandbox serves every
thread: concurrent `run` calls from several threads run concurrently.

    >>> from banger.sdk import Sandbox
    >>> with Sandbox.create() as sbx:
    ...     print(sbx.run(["echo", "hello world"]).stdout)
    hello world
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import contextlib
import os
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import IO, Any, Literal, TypeVar

from banger.sdk.aio import _UNSET, AsyncSandbox, AsyncWorkspace
from banger.sdk.command import Command, CommandResult, OutputCallback
from banger.sdk.daemon import DaemonConnection
from banger.sdk.files import AsyncFiles, Data, FileInfo
from banger.sdk.models import Port, PreparedWorkspace, SandboxInfo, Stats, WorkspacePatch

T = TypeVar("T")


class _Portal:
    """A daemon thread running one asyncio loop; `call()` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                threading.Thread(target=serve, name="banger-sdk-loop", daemon=True).start()
                ready.wait()
                self._loop = loop
            return self._loop

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self.loop()
        if threading.current_thread().name == "banger-sdk-loop":
            coro.close()
            raise RuntimeError("a Sandbox method was called from an SDK callback; use it outside")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            # Cancel the work on the loop (a request in flight is abandoned: the daemon cancels).
            future.cancel()
            raise

    def stop(self) -> None:
        """At exit: close the SSH connections (bounded), then stop the loop."""
        from banger.sdk.guest import close_all

        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None or not loop.is_running():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)


_portal = _Portal()
atexit.register(_portal.stop)


class Files:
    """`sandbox.files`: read, write, list and remove files; upload/download trees."""

    def __init__(self, files: AsyncFiles) -> None:
        self._files = files

    def read(self, path: str, *, limit: int | None = None) -> bytes:
        """The file's bytes (at most `limit`). `>>> sbx.files.read("/etc/hostname")`"""
        return _portal.call(self._files.read(path, limit=limit))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return _portal.call(self._files.read_text(path, encoding))

    def write(self, path: str, data: Data, *, mode: int = 0o644) -> int:
        """Write bytes, text, or a binary file object (streamed); staged, then renamed.

        >>> with open("big.tar", "rb") as f:
        ...     sbx.files.write("/root/big.tar", f)
        """
        return _portal.call(self._files.write(path, data, mode=mode))

    def list(self, path: str = ".") -> builtins.list[FileInfo]:
        return _portal.call(self._files.list(path))

    def exists(self, path: str) -> bool:
        return _portal.call(self._files.exists(path))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        _portal.call(self._files.remove(path, recursive=recursive))

    def upload(self, local: str | os.PathLike[str], remote: str) -> None:
        """A host file or directory tree into the sandbox.

        >>> sbx.files.upload("src", "/root/src")
        """
        _portal.call(self._files.upload(local, remote))

    def download(self, remote: str, local: str | os.PathLike[str] | IO[bytes]) -> int:
        """A sandbox file (streamed) or tree to the host.

        >>> sbx.files.download("/root/out", "out")
        """
        return _portal.call(self._files.download(remote, local))


class Workspace:
    """`sandbox.workspace`: ship a git checkout in (`prepare`), changes out (`export`)."""

    def __init__(self, workspace: AsyncWorkspace) -> None:
        self._ws = workspace

    def prepare(
        self,
        path: str | os.PathLike[str],
        *,
        guest_path: str | None = None,
        include_untracked: bool | None = None,
        mode: Literal["git", "full_copy"] | None = None,
        branch: str | None = None,
        readonly: bool | None = None,
    ) -> PreparedWorkspace:
        """>>> sbx.workspace.prepare("./myrepo").guest_path
        '/root/repo'"""
        return _portal.call(
            self._ws.prepare(
                path,
                guest_path=guest_path,
                include_untracked=include_untracked,
                mode=mode,
                branch=branch,
                readonly=readonly,
            )
        )

    def export(
        self, *, guest_path: str | None = None, base_commit: str | None = None
    ) -> WorkspacePatch:
        """>>> subprocess.run(["git", "apply"], input=sbx.workspace.export().patch, check=True)"""
        return _portal.call(self._ws.export(guest_path=guest_path, base_commit=base_commit))


class Sandbox:
    """A banger sandbox (a microVM), blocking API. Same surface as `AsyncSandbox`."""

    def __init__(self, inner: AsyncSandbox) -> None:
        self._inner = inner
        self.files = Files(inner.files)
        self.workspace = Workspace(inner.workspace)

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r})"

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def keep(self) -> bool:
        return self._inner.keep

    @property
    def aio(self) -> AsyncSandbox:
        """The underlying AsyncSandbox (its coroutines belong to the SDK's private loop)."""
        return self._inner

    @classmethod
    def create(
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
    ) -> Sandbox:
        """Create and boot a sandbox (see `AsyncSandbox.create`).

        >>> with Sandbox.create(name="ci-1", memory=1024) as sbx:
        ...     sbx.run("make test", check=True)
        """
        return cls(
            _portal.call(
                AsyncSandbox.create(
                    image=image,
                    kernel=kernel,
                    name=name,
                    vcpu=vcpu,
                    memory=memory,
                    disk_size=disk_size,
                    nat=nat,
                    allow=allow,
                    init=init,
                    cold=cold,
                    keep=keep,
                    daemon=daemon,
                    host=host,
                )
            )
        )

    @classmethod
    def connect(
        cls,
        name: str,
        *,
        keep: bool = True,
        daemon: DaemonConnection | None = None,
        host: str | None = None,
    ) -> Sandbox:
        """An existing sandbox by name (`NotFound` otherwise); kept on `with` exit by default.
        `host="ssh://me@box"`: on that host's daemon."""
        return cls(_portal.call(AsyncSandbox.connect(name, keep=keep, daemon=daemon, host=host)))

    @staticmethod
    def list(
        *, daemon: DaemonConnection | None = None, host: str | None = None
    ) -> builtins.list[SandboxInfo]:
        """Every sandbox the daemon knows. `>>> [s.name for s in Sandbox.list()]`"""
        return _portal.call(AsyncSandbox.list(daemon=daemon, host=host))

    def info(self) -> SandboxInfo:
        return _portal.call(self._inner.info())

    def run(
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
        """Run a command (see `AsyncSandbox.run`). Callbacks run on the SDK's loop thread.

        >>> sbx.run(["printf", "%s\\n", "a b", "c;d"]).stdout
        'a b\\nc;d\\n'
        >>> sbx.run("make -j2", cwd="/root/repo", on_stdout=print, timeout=900)
        """
        return _portal.call(
            self._inner.run(
                cmd,
                timeout=timeout,
                env=env,
                cwd=cwd,
                stdin=stdin,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                output_limit=output_limit,
                check=check,
            )
        )

    def ports(self) -> builtins.list[Port]:
        return _portal.call(self._inner.ports())

    def stats(self) -> Stats:
        return _portal.call(self._inner.stats())

    def stop(self, *, timeout: float = 30.0) -> None:
        _portal.call(self._inner.stop(timeout=timeout))

    def start(self) -> None:
        _portal.call(self._inner.start())

    def delete(self) -> None:
        _portal.call(self._inner.delete())

    def close(self) -> None:
        """Close the SSH connection; the sandbox keeps running."""
        _portal.call(self._inner.close())

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        _portal.call(self._inner.__aexit__(*exc))
