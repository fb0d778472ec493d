"""The `banger` CLI: one module per command group; talks only to the daemon."""
