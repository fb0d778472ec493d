"""`banger mcp`: serve the MCP tools on stdin/stdout (an MCP client starts it)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(short_help="Serve sandboxes to coding agents (Model Context Protocol, stdio).")
@click.option(
    "--workspace-root",
    "roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A host directory prepare_workspace may ship (repeatable; default: the current one).",
)
def mcp(roots: tuple[Path, ...]) -> None:
    """Run a Model Context Protocol server on stdio: tools to create sandboxes, run commands,
    read and write files, ship a git checkout in and export the changes as a patch.

    Register it with an MCP client as the command `banger mcp` (see README.md)."""
    from banger.mcpserver.server import build_server

    build_server(workspace_roots=list(roots) or None).run("stdio")
