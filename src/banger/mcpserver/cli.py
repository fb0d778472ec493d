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
@click.option(
    "--host",
    metavar="ssh://[USER@]HOST[:PORT]",
    help="Serve the sandboxes of the daemon on this host (default: the global --host / "
    "BANGER_HOST, else this machine's).",
)
def mcp(roots: tuple[Path, ...], host: str | None) -> None:
    """Run a Model Context Protocol server on stdio: tools to create sandboxes, run commands,
    read and write files, ship a git checkout in and export the changes as a patch.

    Register it with an MCP client as the command `banger mcp` (see README.md)."""
    from banger.client import target
    from banger.client.ssh_host import parse_host
    from banger.mcpserver.server import build_server
    from banger.rpc.errors import BadRequest
    from banger.sdk.daemon import DaemonConnection, connect_daemon

    if host:
        try:
            target.set_remote(parse_host(host))  # errors name it; checked before serving
        except BadRequest as e:
            raise click.BadParameter(e.message, param_hint="--host") from None
    remote = target.current_remote()
    url = remote.url if remote is not None else None

    def daemon_factory() -> DaemonConnection:
        return connect_daemon(url) if url is not None else connect_daemon()

    build_server(workspace_roots=list(roots) or None, daemon_factory=daemon_factory).run("stdio")
