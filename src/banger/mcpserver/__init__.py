"""`banger mcp`: a Model Context Protocol server (stdio) over the SDK, for coding agents.

Named `mcpserver`, not `mcp`, so it never shadows the official `mcp` package it is built on.
"""
