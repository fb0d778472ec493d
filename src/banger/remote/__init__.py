"""Remote daemons: `BANGER_HOST=ssh://[user@]host[:port]` / `--host` (docs/remote.md)."""
