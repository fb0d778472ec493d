"""Kept so the path docs/remote.md used to name still imports: the SDK's remote daemon now
lives in banger.sdk.remote (below it nothing imports the CLI)."""

from banger.sdk.remote import RemoteDaemon

__all__ = ["RemoteDaemon"]
