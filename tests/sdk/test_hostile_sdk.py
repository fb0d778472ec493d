"""Hostile input to the SDK and to `banger mcp`'s tools, one case per row.

Each case asserts the exact error code (or the exact refusal), that the daemon still answers
`ping` afterwards, and that a sentinel directory outside the state dir is untouched. No guest is
booted: every case is refused before one would be.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver.exceptions import ToolError

from banger.mcpserver.server import MAX_WRITE_BYTES, build_server
from banger.sdk import AsyncSandbox, BangerError, LocalDaemon
from tests.conftest import BangerEnv, _stop_daemon, make_env


@dataclass
class World:
    env: BangerEnv
    daemon: LocalDaemon
    sentinel: Path
    root: Path  # the MCP server's only workspace root


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    be = make_env("bghsdk-")
    be.banger("daemon", "start", check=True, timeout=30)
    sentinel = be.root / "outside" / "sentinel"
    sentinel.mkdir(parents=True)
    (sentinel / "keep.txt").write_text("untouched\n")
    os.chmod(sentinel, 0o750)
    root = be.root / "wsroot"
    root.mkdir()
    (root / "escape").symlink_to(sentinel)
    yield World(be, LocalDaemon(socket_path=be.paths.socket), sentinel, root)
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


Action = Callable[[World], Awaitable[Any]]


def sdk(fn: Callable[[AsyncSandbox], Awaitable[Any]]) -> Action:
    """A call on a handle for a sandbox that does not exist (nothing connects before it)."""

    async def go(w: World) -> Any:
        return await fn(AsyncSandbox("ghost", daemon=w.daemon))

    return go


def create(**kw: Any) -> Action:
    async def go(w: World) -> Any:
        return await AsyncSandbox.create(daemon=w.daemon, **kw)

    return go


def connect(name: str) -> Action:
    async def go(w: World) -> Any:
        return await AsyncSandbox.connect(name, daemon=w.daemon)

    return go


def tool(name: str, args: dict[str, Any] | Callable[[World], dict[str, Any]]) -> Action:
    async def go(w: World) -> Any:
        server = build_server(daemon_factory=lambda: w.daemon, workspace_roots=[w.root])
        return await server.call_tool(name, args(w) if callable(args) else args)

    return go


BIG = "a" * (MAX_WRITE_BYTES + 1)

# (id, action, expected: an SDK error code, or "tool:" + text the tool error must contain)
CASES: list[tuple[str, Action, str]] = [
    ("connect-traversal-name", connect("../../etc/passwd"), "not_found"),
    ("connect-empty-name", connect(""), "bad_request"),
    ("connect-newline-name", connect("a\nb"), "bad_request"),
    ("connect-command-substitution", connect("$(reboot)"), "not_found"),
    ("connect-huge-name", connect("x" * 5000), "bad_request"),
    ("create-name-with-space", create(name="bad name!"), "bad_request"),
    ("create-name-traversal", create(name="../x"), "bad_request"),
    ("create-name-too-long", create(name="x" * 200), "bad_request"),
    ("create-vcpu-zero", create(name="x", vcpu=0), "bad_request"),
    ("create-vcpu-65", create(name="x", vcpu=65), "bad_request"),
    ("create-memory-tiny", create(name="x", memory=1), "bad_request"),
    ("create-image-traversal", create(name="x", image="../../etc"), "not_found"),
    # Egress rules (egress issue): checked by the daemon like `vm create --allow`.
    ("create-allow-tld-wildcard", create(name="x", allow=["*.com"]), "bad_request"),
    ("create-allow-nft-injection", create(name="x", allow=['a.com"} flush']), "bad_request"),
    ("create-allow-in-user-mode", create(name="x", allow=["pypi.org"]), "bad_request"),
    ("run-empty-line", sdk(lambda s: s.run("   ")), "bad_request"),
    ("run-empty-argv", sdk(lambda s: s.run([])), "bad_request"),
    ("run-nul-in-argv", sdk(lambda s: s.run(["echo", "a\0b"])), "bad_request"),
    ("run-env-name-with-equals", sdk(lambda s: s.run("true", env={"A=B": "x"})), "bad_request"),
    ("run-env-name-injection", sdk(lambda s: s.run("true", env={"X;reboot": "x"})), "bad_request"),
    ("run-env-value-nul", sdk(lambda s: s.run("true", env={"X": "a\0"})), "bad_request"),
    ("run-cwd-empty", sdk(lambda s: s.run("true", cwd="")), "bad_request"),
    ("run-timeout-negative", sdk(lambda s: s.run("true", timeout=-1)), "bad_request"),
    ("run-output-limit-negative", sdk(lambda s: s.run("true", output_limit=-5)), "bad_request"),
    ("run-in-missing-sandbox", sdk(lambda s: s.run("true")), "not_found"),
    ("files-read-empty-path", sdk(lambda s: s.files.read("")), "bad_request"),
    ("files-write-nul-path", sdk(lambda s: s.files.write("/root/a\0b", b"x")), "bad_request"),
    ("files-remove-root", sdk(lambda s: s.files.remove("/")), "bad_request"),
    ("files-remove-root-dotted", sdk(lambda s: s.files.remove("/root/..")), "bad_request"),
    ("files-read-missing-sandbox", sdk(lambda s: s.files.read("/etc/passwd")), "not_found"),
    (
        "workspace-into-missing-sandbox",
        sdk(lambda s: s.workspace.prepare("/etc")),
        "not_found",
    ),
    (
        "mcp-run-missing-sandbox",
        tool("run_command", {"sandbox": "ghost", "command": "id"}),
        "tool:code not_found",
    ),  # fmt: skip
    (
        "mcp-run-timeout-zero",
        tool("run_command", {"sandbox": "ghost", "command": "id", "timeout_seconds": 0}),
        "tool:timeout_seconds",
    ),  # fmt: skip
    (
        "mcp-run-output-cap-too-big",
        tool("run_command", {"sandbox": "ghost", "command": "id", "max_output_bytes": 1 << 30}),
        "tool:max_output_bytes",
    ),  # fmt: skip
    (
        "mcp-empty-sandbox-name",
        tool("run_command", {"sandbox": "", "command": "id"}),
        "tool:sandbox",
    ),  # fmt: skip
    (
        "mcp-read-cap-too-big",
        tool("read_file", {"sandbox": "ghost", "path": "/x", "max_bytes": 1 << 40}),
        "tool:max_bytes",
    ),  # fmt: skip
    (
        "mcp-write-bad-base64",
        tool(
            "write_file", {"sandbox": "ghost", "path": "/x", "content": "!!", "encoding": "base64"}
        ),
        "tool:not valid base64",
    ),  # fmt: skip
    (
        "mcp-write-too-big",
        tool("write_file", {"sandbox": "ghost", "path": "/x", "content": BIG}),
        "tool:write_file takes at most",
    ),  # fmt: skip
    (
        "mcp-write-mode-out-of-range",
        tool("write_file", {"sandbox": "ghost", "path": "/x", "content": "", "mode": 0o17777}),
        "tool:mode",
    ),  # fmt: skip
    (
        "mcp-workspace-outside-root",
        tool("prepare_workspace", lambda w: {"sandbox": "ghost", "path": str(w.sentinel)}),
        "tool:outside the directories",
    ),  # fmt: skip
    (
        "mcp-workspace-symlink-escape",
        tool("prepare_workspace", lambda w: {"sandbox": "ghost", "path": str(w.root / "escape")}),
        "tool:outside the directories",
    ),  # fmt: skip
    (
        "mcp-workspace-dotdot-escape",
        tool("prepare_workspace", lambda w: {"sandbox": "ghost", "path": f"{w.root}/../outside"}),
        "tool:outside the directories",
    ),  # fmt: skip
    ("mcp-create-bad-name", tool("create_sandbox", {"name": "a;b"}), "tool:code bad_request"),
    ("mcp-create-vcpu-zero", tool("create_sandbox", {"vcpu": 0}), "tool:vcpu"),
    (
        "mcp-create-allow-bad-rule",
        tool("create_sandbox", {"allow": ["a..b"]}),
        "tool:code bad_request",
    ),  # fmt: skip
    ("mcp-delete-missing", tool("delete_sandbox", {"sandbox": "ghost"}), "tool:code not_found"),
    ("mcp-export-missing", tool("export_patch", {"sandbox": "ghost"}), "tool:code not_found"),
    ("mcp-unknown-tool", tool("format_host_disk", {}), "tool:Unknown tool"),
]


def snapshot(p: Path) -> tuple[int, str, list[str]]:
    return (
        stat.S_IMODE(p.stat().st_mode),
        (p / "keep.txt").read_text(),
        sorted(os.listdir(p)),
    )


@pytest.mark.parametrize(("action", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_hostile_input_is_refused(world: World, action: Action, expected: str) -> None:
    before = snapshot(world.sentinel)
    if expected.startswith("tool:"):
        with pytest.raises(ToolError) as te:
            await action(world)
        assert expected.removeprefix("tool:") in str(te.value)
    else:
        with pytest.raises(BangerError) as be:
            await action(world)
        assert be.value.code == expected, be.value
    assert await world.daemon.call("ping", timeout=10)
    assert snapshot(world.sentinel) == before
