"""Remote daemons: `BANGER_HOST=ssh://[user@]host[:port]` / `--host` (docs/remote.md).

This package is the remote host's side (`banger daemon dial-stdio`); the client's side (the ssh
dialing, which daemon a process talks to) is banger.client, the SDK's is banger.sdk.remote."""
