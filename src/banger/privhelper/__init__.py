"""The root helper (`bangerd-root`) and its client: the privileged half of the system install.

`server.py` is the root process: a Unix socket only the owner (and root) can use, a fixed table of
`priv.*` operations, every argument checked by `rules.py`. `client.py` is the owner daemon's
adapter implementing `banger.network.privops.PrivOps` over that socket. See docs/privileges.md.
"""
