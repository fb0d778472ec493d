"""`banger mcp` driven over stdio by the official `mcp` client library, against real guests."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult, TextContent

from tests.conftest import BangerEnv, BuiltImage
from tests.sdk.conftest import make_sdk_env, teardown_env
from tests.workspace.conftest import git

pytestmark = pytest.mark.slow

TOOLS = {
    "create_sandbox",
    "list_sandboxes",
    "run_command",
    "read_file",
    "write_file",
    "delete_sandbox",
    "prepare_workspace",
    "export_patch",
}
OP_ID = re.compile(r"op id op-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def mcp_env(debian_image: BuiltImage) -> Iterator[BangerEnv]:
    be = make_sdk_env(debian_image, "bgmcp-")
    yield be
    teardown_env(be)


@asynccontextmanager
async def server(be: BangerEnv, cwd: Path, *args: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "banger.cli.main", "mcp", *args],
        env=be.env,
        cwd=str(cwd),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


async def ok(session: ClientSession, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await session.call_tool(tool, args)
    assert not result.is_error, f"{tool} failed: {text(result)}"
    assert result.structured_content is not None
    # the text content carries the same JSON for clients without structured output
    assert json.loads(text(result)) == result.structured_content
    return dict(result.structured_content)


async def failed(session: ClientSession, tool: str, args: dict[str, Any]) -> str:
    result = await session.call_tool(tool, args)
    assert result.is_error, f"{tool} should have failed: {result}"
    return text(result)


async def test_lists_its_tools_with_schemas(mcp_env: BangerEnv, tmp_path: Path) -> None:
    async with server(mcp_env, tmp_path) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
    assert set(tools) == TOOLS
    run = tools["run_command"]
    assert set(run.input_schema["required"]) == {"sandbox", "command"}
    assert run.output_schema is not None
    assert {"exit_code", "stdout", "stderr", "stdout_truncated"} <= set(
        run.output_schema["properties"]
    )


async def test_failures_are_tool_errors_with_the_daemon_message(
    mcp_env: BangerEnv, tmp_path: Path
) -> None:
    async with server(mcp_env, tmp_path) as s:
        msg = await failed(s, "run_command", {"sandbox": "ghost", "command": "true"})
        assert "ghost" in msg and "not found" in msg and "code not_found" in msg
        assert OP_ID.search(msg)
        msg = await failed(s, "read_file", {"sandbox": "ghost", "path": "/etc/hostname"})
        assert "code not_found" in msg and OP_ID.search(msg)
        msg = await failed(s, "delete_sandbox", {"sandbox": "ghost"})
        assert "code not_found" in msg and OP_ID.search(msg)
        msg = await failed(s, "create_sandbox", {"name": "bad name!"})
        assert "code bad_request" in msg and OP_ID.search(msg)
        outside = tmp_path.parent
        msg = await failed(s, "prepare_workspace", {"sandbox": "ghost", "path": str(outside)})
        assert "outside the directories" in msg and str(tmp_path) in msg
    # the daemon still answers
    with mcp_env.client() as c:
        assert c.call("ping", timeout=10)


async def test_a_sandbox_from_create_to_delete(mcp_env: BangerEnv, tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Ada")
    git(repo, "config", "user.email", "ada@example.test")
    (repo / "main.c").write_text("int main(void) { return 1; }\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first")

    async with server(mcp_env, tmp_path) as s:
        made = await ok(s, "create_sandbox", {"name": "agent1"})
        assert made["name"] == "agent1" and made["state"] == "running"
        listed = await ok(s, "list_sandboxes", {})
        assert [b["name"] for b in listed["sandboxes"]] == ["agent1"]

        r = await ok(
            s,
            "run_command",
            {"sandbox": "agent1", "command": ["printf", "%s\\n", "a b", "c;d"]},
        )
        assert r == {
            "exit_code": 0,
            "stdout": "a b\nc;d\n",
            "stderr": "",
            "stdout_truncated": False,
            "stderr_truncated": False,
        }
        r = await ok(
            s,
            "run_command",
            {"sandbox": "agent1", "command": "echo $X >&2; pwd; exit 4", "cwd": "/tmp",
             "env": {"X": "y z"}},
        )  # fmt: skip
        assert (r["exit_code"], r["stdout"], r["stderr"]) == (4, "/tmp\n", "y z\n")
        r = await ok(
            s,
            "run_command",
            {"sandbox": "agent1", "command": "seq 1 100000", "max_output_bytes": 100},
        )
        assert r["stdout_truncated"] and len(r["stdout"]) == 100
        assert r["stdout"].startswith("1\n2\n3\n")
        msg = await failed(
            s, "run_command", {"sandbox": "agent1", "command": "sleep 60", "timeout_seconds": 1}
        )
        assert "timed out after 1s" in msg and "code timeout" in msg

        w = await ok(
            s, "write_file", {"sandbox": "agent1", "path": "/root/n/hello.txt", "content": "hi\n"}
        )
        assert w == {"path": "/root/n/hello.txt", "bytes_written": 3}
        got = await ok(s, "read_file", {"sandbox": "agent1", "path": "/root/n/hello.txt"})
        assert (got["encoding"], got["content"], got["truncated"]) == ("utf-8", "hi\n", False)
        blob = bytes(range(255, -1, -1))  # starts with 0xff: not UTF-8, so base64
        await ok(
            s,
            "write_file",
            {"sandbox": "agent1", "path": "/root/n/b.bin", "encoding": "base64",
             "content": base64.b64encode(blob).decode()},
        )  # fmt: skip
        got = await ok(s, "read_file", {"sandbox": "agent1", "path": "/root/n/b.bin"})
        assert got["encoding"] == "base64" and base64.b64decode(got["content"]) == blob
        got = await ok(
            s, "read_file", {"sandbox": "agent1", "path": "/root/n/b.bin", "max_bytes": 10}
        )
        assert base64.b64decode(got["content"]) == blob[:10] and got["truncated"]
        msg = await failed(s, "read_file", {"sandbox": "agent1", "path": "/root/missing"})
        assert "no such file" in msg and "code not_found" in msg
        msg = await failed(
            s,
            "write_file",
            {"sandbox": "agent1", "path": "/root/x", "content": "@@@", "encoding": "base64"},
        )
        assert "not valid base64" in msg

        ws = await ok(s, "prepare_workspace", {"sandbox": "agent1", "path": str(repo)})
        assert ws["guest_path"] == "/root/repo"
        r = await ok(
            s,
            "run_command",
            {"sandbox": "agent1", "cwd": "/root/repo",
             "command": "sed -i 's/return 1/return 0/' main.c && echo new > added.txt"},
        )  # fmt: skip
        assert r["exit_code"] == 0, r
        patch = await ok(s, "export_patch", {"sandbox": "agent1"})
        assert not patch["truncated"]
        assert {f["path"] for f in patch["files"]} == {"main.c", "added.txt"}
        subprocess.run(["git", "apply"], input=patch["patch"].encode(), cwd=repo, check=True)
        assert "return 0" in (repo / "main.c").read_text()
        assert (repo / "added.txt").read_text() == "new\n"

        gone = await ok(s, "delete_sandbox", {"sandbox": "agent1"})
        assert gone == {"name": "agent1", "deleted": True}
        msg = await failed(s, "run_command", {"sandbox": "agent1", "command": "true"})
        assert "code not_found" in msg and OP_ID.search(msg)
        assert (await ok(s, "list_sandboxes", {}))["sandboxes"] == []
