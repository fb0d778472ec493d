"""The guest agent's identity commands (guest/payload.py CTL_SCRIPT) driven by guest/identity.py.

The agent runs on the host here, inside fresh UTS, network and mount namespaces (a TAP as eth0,
tmpfs over /etc and /run), so hostname, addresses and files change only there. The clock and the
sshd restart need a real guest: the snapshot e2e tests cover them.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from banger.guest import payload
from banger.guest.identity import (
    GuestAddress,
    GuestIdentity,
    IdentityError,
    _session,
    identity_commands,
)

BUSYBOX = Path("/bin/busybox")

# What the namespaced agent reports back after the session, one probe per line.
PROBE = (
    "hostname; cat /etc/hostname; grep '^127.0.1.1' /etc/hosts; cat /etc/machine-id; "
    "ip -4 -o addr show dev eth0 | awk '{print $4}'; ip route | grep ^default; "
    "ip link show dev eth0 | grep -o 'ether [0-9a-f:]*'"
)


def _tree(tmp: Path) -> Path:
    seed = tmp / "seed"
    (seed / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, seed / "bin/busybox")
    (seed / "ctl.sh").write_text(payload.CTL_SCRIPT)
    return seed


async def _agent(seed: Path) -> asyncio.subprocess.Process:
    # Namespaces first; then the agent with its stdin/stdout as the control channel; then, once
    # the host closes the channel, the probe of what the agent changed.
    script = (
        "set -e; mount -t tmpfs tmpfs /etc; mount -t tmpfs tmpfs /run; "
        "echo '127.0.0.1 localhost' >/etc/hosts; "
        "/sbin/ip tuntap add dev eth0 mode tap; /sbin/ip link set eth0 up; "
        f"sh {seed}/ctl.sh minimal; set +e; echo --probe--; {PROBE}"
    )
    return await asyncio.create_subprocess_exec(
        "unshare", "--uts", "--net", "--mount", "--fork", "--",
        str(seed / "bin/busybox"), "sh", "-c", script,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await _agent(_tree(tmp_path))
    yield proc
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def _opener(proc: asyncio.subprocess.Process):  # type: ignore[no-untyped-def]
    class _Writer:
        """The agent's stdin as far as _session uses it; closing it ends the agent's loop."""

        def write(self, data: bytes) -> None:
            assert proc.stdin is not None
            proc.stdin.write(data)

        async def drain(self) -> None:
            assert proc.stdin is not None
            await proc.stdin.drain()

        def close(self) -> None:
            assert proc.stdin is not None
            proc.stdin.close()

        async def wait_closed(self) -> None:
            return None

    async def open_control(_timeout: float):  # type: ignore[no-untyped-def]
        assert proc.stdout is not None
        return proc.stdout, _Writer()

    return open_control


async def _probe(proc: asyncio.subprocess.Process) -> list[str]:
    assert proc.stdout is not None
    out = (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
    await asyncio.wait_for(proc.wait(), 30)
    return out.split("--probe--\n", 1)[1].splitlines()


IDENT = GuestIdentity(
    hostname="fork-2",
    machine_id="0123456789abcdef0123456789abcdef",
    host_key_private="unused here",
    host_key_public="unused here",
    address=GuestAddress("172.30.9.7", 24, "172.30.9.1", "52:54:00:12:34:56"),
)


async def test_identity_commands_change_hostname_machine_id_and_address(
    agent: asyncio.subprocess.Process,
) -> None:
    lines = [line for line in identity_commands(IDENT) if not line.startswith("hostkey")]
    await _session(_opener(agent), lines, timeout=30)
    probe = await _probe(agent)
    assert probe[:4] == ["fork-2", "fork-2", "127.0.1.1 fork-2", IDENT.machine_id]
    assert probe[4] == "172.30.9.7/24"
    assert probe[5].startswith("default via 172.30.9.1 dev eth0")
    assert probe[6] == "ether 52:54:00:12:34:56"


async def test_identity_commands_are_idempotent(agent: asyncio.subprocess.Process) -> None:
    lines = [line for line in identity_commands(IDENT) if not line.startswith("hostkey")]
    await _session(_opener(agent), lines + lines, timeout=30)
    probe = await _probe(agent)
    assert probe[2] == "127.0.1.1 fork-2"  # replaced, not appended twice
    assert probe[4] == "172.30.9.7/24"  # one address, not two


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        ("hostname Bad_Name", "guest hostname: error hostname: not a hostname"),
        ("hostname -rf", "guest hostname: error hostname: not a hostname"),
        ("machineid 1234", "guest machineid: error machineid: not 32 hex digits"),
        ("machineid $(reboot)", "guest machineid: error machineid: not hex"),
        ("time soon", "guest time: error time: not a number of seconds"),
        ("addr 1.2.3.4/24;id - -", "guest addr: error addr: bad characters"),
        ("hostkey %%% x", "guest hostkey: error hostkey: not base64"),
    ],
    ids=["hostname-case", "hostname-option", "machineid-short", "machineid-subst", "time-word",
         "addr-semicolon", "hostkey-not-base64"],
)  # fmt: skip
async def test_agent_refuses_bad_arguments(
    agent: asyncio.subprocess.Process, line: str, answer: str
) -> None:
    with pytest.raises(IdentityError) as exc:
        await _session(_opener(agent), [line], timeout=30)
    assert str(exc.value) == answer
    probe = await _probe(agent)
    assert probe[0] != "Bad_Name"


def test_identity_commands_validate_before_sending() -> None:
    with pytest.raises(ValueError, match="invalid hostname"):
        identity_commands(GuestIdentity("x_y", "0" * 32, "k", "p"))
    with pytest.raises(ValueError, match="machine id"):
        identity_commands(GuestIdentity("x", "Z" * 32, "k", "p"))
    with pytest.raises(ValueError, match="invalid MAC"):
        identity_commands(
            GuestIdentity("x", "0" * 32, "k", "p", GuestAddress("10.0.0.2", 24, None, "zz"))
        )
    last = identity_commands(GuestIdentity("x", "0" * 32, "KEY", "PUB"))[-1]
    _, priv, pub = last.split()
    assert base64.b64decode(priv) == b"KEY" and base64.b64decode(pub) == b"PUB\n"
