"""The client side of the daemon, below the CLI, the SDK and `banger daemon dial-stdio`.

`local`: this machine's daemon (its paths, ping, auto-start). `ssh_host` / `ssh_transport`: a
daemon on another host, reached over OpenSSH. `target`: which of them this process talks to.
`remote_workspace`: a checkout shipped from here to a remote daemon's guest. Imports go
cli / sdk / mcpserver / remote -> client -> rpc, paths (never upwards)."""
