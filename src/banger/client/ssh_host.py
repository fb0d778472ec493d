"""The remote host a CLI or SDK talks to, and the OpenSSH argv that reaches it.

A host is `ssh://[user@]host[:port]`, parsed strictly: nothing else in the URL (no path, query,
password or fragment), a user and host of plain characters, a port in 1..65535. OpenSSH runs
with `--` before the host, so nothing in the URL can become an ssh option, and the host may not
start with `-` anyway. `BANGER_SSH_COMMAND` replaces the `ssh` program and its options (split as
a shell would, like GIT_SSH_COMMAND); never through a shell.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from banger.rpc.errors import BadRequest

HOST_ENV = "BANGER_HOST"
SSH_COMMAND_ENV = "BANGER_SSH_COMMAND"
MAX_HOST_URL = 512

# A user as OpenSSH accepts it on the command line, minus anything a shell or ssh reads specially.
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
# A DNS name / ssh_config alias (letters, digits, dot, dash, underscore) or an IPv4 address.
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})")
# An IPv6 address in brackets (hex digits, colons, dots for an embedded IPv4).
_IPV6 = re.compile(r"\[([0-9A-Fa-f:.]{2,45})\]")


@dataclass(frozen=True)
class RemoteHost:
    """A parsed `ssh://` host: what OpenSSH gets (`-l user -p port -- host`)."""

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def url(self) -> str:
        """The canonical URL, as errors show it (`ssh://u@h:p`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"ssh://{user}{host}{port}"

    def ssh_argv(
        self,
        remote: Sequence[str],
        *,
        tty: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> list[str]:
        """`ssh [BANGER_SSH_COMMAND's options] [-l user] [-p port] -T|-tt -- host REMOTE`.

        `remote` words are quoted into ONE line: ssh joins its remote words with spaces for the
        login shell, which would split or expand them otherwise."""
        argv = ssh_program(env)
        if self.user:
            argv += ["-l", self.user]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        argv.append("-tt" if tty else "-T")
        argv += ["--", self.host]
        if remote:
            argv.append(shlex.join(remote))
        return argv

    def forward_argv(self, host: str, port: int, env: Mapping[str, str] | None = None) -> list[str]:
        """`ssh [opts] -W HOST:PORT -- remote`: this process's stdio to HOST:PORT as the remote
        host sees it (the SDK's proxy command to a remote daemon's guest)."""
        argv = ssh_program(env)
        if self.user:
            argv += ["-l", self.user]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        return [*argv, "-W", f"{host}:{port}", "--", self.host]

    def __str__(self) -> str:
        return self.url


def ssh_program(env: Mapping[str, str] | None = None) -> list[str]:
    """`ssh`, or BANGER_SSH_COMMAND split into words (program and options)."""
    environ = os.environ if env is None else env
    raw = environ.get(SSH_COMMAND_ENV, "").strip()
    if not raw:
        return ["ssh"]
    try:
        words = shlex.split(raw)
    except ValueError as e:
        raise BadRequest(f"{SSH_COMMAND_ENV}={raw!r} cannot be split into words: {e}") from None
    if not words or words[0].startswith("-"):
        raise BadRequest(
            f"{SSH_COMMAND_ENV}={raw!r} must start with the ssh program "
            "(e.g. `ssh -i ~/.ssh/lab -o ProxyJump=gw`)"
        )
    return words


def parse_host(url: str) -> RemoteHost:
    """`ssh://[user@]host[:port]` → RemoteHost; BadRequest naming what is wrong otherwise."""
    shown = repr(url[:80]) + ("…" if len(url) > 80 else "")
    hint = "give it as ssh://[user@]host[:port], e.g. ssh://me@buildbox:2222"
    if len(url) > MAX_HOST_URL:
        raise BadRequest(f"host {shown} is longer than {MAX_HOST_URL} characters; {hint}")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise BadRequest(f"host {shown} contains whitespace or a control character; {hint}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise BadRequest(f"host {shown} has no scheme; {hint}")
    if scheme != "ssh":
        raise BadRequest(f"host {shown}: only ssh:// hosts are supported, not {scheme}://")
    for char, what in (("/", "a path"), ("?", "a query"), ("#", "a fragment")):
        if char in rest:
            raise BadRequest(f"host {shown} has {what}; {hint}")
    user: str | None = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if ":" in user:
            raise BadRequest(
                f"host {shown} carries a password; use keys or an agent, not a password in a URL"
            )
        if not _USER.fullmatch(user):
            raise BadRequest(
                f"host {shown}: user {user!r} is not a plain user name "
                "(letters, digits, '.', '_', '-'; not starting with '-' or '.')"
            )
    port: int | None = None
    m = _IPV6.match(rest)
    if m:
        host, tail = m.group(1), rest[m.end() :]
    else:
        host, colon, port_text = rest.partition(":")
        tail = f":{port_text}" if colon else ""
    if tail:
        if not tail.startswith(":") or not tail[1:].isascii() or not tail[1:].isdigit():
            raise BadRequest(f"host {shown}: the port must be a number after ':'; {hint}")
        port = int(tail[1:])
        if not 1 <= port <= 65535 or tail[1:].startswith("0"):
            raise BadRequest(f"host {shown}: port {tail[1:]} is not in 1..65535")
    if not host:
        raise BadRequest(f"host {shown} has no host name; {hint}")
    if host.startswith("-"):
        raise BadRequest(f"host {shown}: a host name may not start with '-' (an ssh option)")
    if not m and not _NAME.fullmatch(host):
        raise BadRequest(
            f"host {shown}: {host!r} is not a host name (letters, digits, '.', '_', '-')"
        )
    return RemoteHost(host=host, user=user, port=port)


def host_from_env(env: Mapping[str, str] | None = None) -> RemoteHost | None:
    """BANGER_HOST, parsed; None when unset or empty."""
    environ = os.environ if env is None else env
    raw = environ.get(HOST_ENV, "")
    return parse_host(raw) if raw else None
