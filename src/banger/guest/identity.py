"""Give a restored guest its own identity, and its clock back, over the control channel.

A resumed, rolled-back or forked guest wakes with the clock of the moment it was saved, and a
fork wakes with its parent's hostname, address and SSH host key. The host sends the guest agent
(guest/payload.py CTL_SCRIPT) one command per line; each answers `ok` or `error <why>` and can be
repeated safely, so a failure part way is reported and a retry finishes the job.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

OpenControl = Callable[[float], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# The agent's READY line is at most a few dozen bytes; replies are `ok` or a short error.
_MAX_LINE = 4096


class IdentityError(Exception):
    """The guest refused or did not answer; the message names the command and the guest's words."""


@dataclass(frozen=True)
class GuestAddress:
    address: str  # e.g. 172.30.0.12
    prefix: int
    gateway: str | None
    mac: str | None


@dataclass(frozen=True)
class GuestIdentity:
    hostname: str
    machine_id: str
    host_key_private: str  # OpenSSH private key text
    host_key_public: str
    # Bridged VMs only: the new address (user-mode guests all have slirp's fixed one).
    address: GuestAddress | None = None


def identity_commands(ident: GuestIdentity) -> list[str]:
    """The command lines that give a guest `ident` (validated here: nothing else reaches it)."""
    if not _HOSTNAME_RE.match(ident.hostname):
        raise ValueError(f"invalid hostname {ident.hostname!r}")
    if not _MACHINE_ID_RE.match(ident.machine_id):
        raise ValueError("a machine id is 32 lowercase hex digits")
    lines = [f"hostname {ident.hostname}", f"machineid {ident.machine_id}"]
    if ident.address is not None:
        a = ident.address
        addr = ipaddress.IPv4Interface(f"{a.address}/{a.prefix}")
        gw = str(ipaddress.IPv4Address(a.gateway)) if a.gateway else "-"
        if a.mac is not None and not _MAC_RE.match(a.mac):
            raise ValueError(f"invalid MAC {a.mac!r}")
        lines.append(f"addr {addr.with_prefixlen} {gw} {a.mac or '-'}")
    priv = base64.b64encode(ident.host_key_private.encode()).decode()
    pub = base64.b64encode(ident.host_key_public.strip().encode() + b"\n").decode()
    lines.append(f"hostkey {priv} {pub}")
    return lines


async def _session(open_control: OpenControl, lines: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise IdentityError(f"the guest agent did not answer within {timeout:.0f}s")
        return remaining

    reader, writer = await open_control(left())
    try:
        # Every session opens with the agent's READY line.
        while True:
            raw = await asyncio.wait_for(reader.readline(), left())
            if not raw:
                raise IdentityError("the guest agent closed the control channel")
            if raw.startswith(b"READY"):
                break
        for line in lines:
            writer.write(line.encode() + b"\n")
            await asyncio.wait_for(writer.drain(), left())
            answer = await asyncio.wait_for(reader.readline(), left())
            if len(answer) > _MAX_LINE:
                answer = answer[:_MAX_LINE]
            text = answer.decode(errors="replace").strip()
            if text != "ok":
                verb = line.split(" ", 1)[0]
                raise IdentityError(f"guest {verb}: {text or 'no answer'}")
    except TimeoutError:
        raise IdentityError(f"the guest agent did not answer within {timeout:.0f}s") from None
    except ValueError:  # a line over the stream's limit: not our agent's answer
        raise IdentityError("the guest agent sent an overlong line") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def set_clock(open_control: OpenControl, timeout: float, now: float | None = None) -> None:
    """Set the guest's clock to the host's (whole seconds: what busybox `date -s` takes)."""
    epoch = int(time.time() if now is None else now)
    await _session(open_control, [f"time {epoch}"], timeout)


async def reidentify(open_control: OpenControl, ident: GuestIdentity, timeout: float) -> None:
    """Hostname, machine id, address (bridged), a new SSH host key (sshd restarts), clock."""
    await _session(open_control, [*identity_commands(ident), f"time {int(time.time())}"], timeout)
