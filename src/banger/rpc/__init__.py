"""The versioned JSON-lines RPC between `banger` and `bangerd` (see docs/rpc.md)."""

PROTOCOL_VERSION = 1
