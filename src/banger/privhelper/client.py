"""The owner daemon's adapter for `banger.network.privops.PrivOps`: each call goes to bangerd-root.

One connection per call (the helper answers one request and closes). The caller's op id (the
daemon request being served) travels with the request, so the helper's log line for it can be
found with the same id as the daemon's.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from banger.network.nat import Admit, Denied, DnsRedirect, EgressSpec, NatRule, admit_to_wire
from banger.request import current_op_id
from banger.rpc import PROTOCOL_VERSION, envelope
from banger.rpc.errors import OperationFailed, from_wire

CALL_TIMEOUT = 90.0


class HelperPrivOps:
    """PrivOps over the root helper's socket (system mode)."""

    def __init__(
        self, socket_path: Path, *, timeout: float = CALL_TIMEOUT, connect_wait: float = 5.0
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.connect_wait = connect_wait

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        request = {
            "version": PROTOCOL_VERSION,
            "method": method,
            "params": params or {},
            "op_id": current_op_id.get() or envelope.new_op_id(),
        }
        reader, writer = await self._connect()
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), self.timeout)
        except (OSError, TimeoutError) as e:
            raise OperationFailed(f"root helper call {method} failed: {e}") from None
        finally:
            writer.close()
        if not line:
            raise OperationFailed(
                f"the root helper closed the connection during {method}; "
                "see `journalctl -u bangerd-root`"
            )
        msg = json.loads(line)
        if msg.get("ok"):
            return msg.get("result")
        raise from_wire(msg.get("error") or {})

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # A helper restart (`banger system restart`) leaves the socket briefly absent: retry.
        deadline = asyncio.get_running_loop().time() + self.connect_wait
        while True:
            try:
                return await asyncio.wait_for(
                    asyncio.open_unix_connection(str(self.socket_path), limit=16 * 1024 * 1024), 5
                )
            except (FileNotFoundError, ConnectionRefusedError) as e:
                if asyncio.get_running_loop().time() >= deadline:
                    raise self._unreachable(e) from None
                await asyncio.sleep(0.1)
            except (OSError, TimeoutError) as e:
                raise self._unreachable(e) from None

    def _unreachable(self, e: BaseException) -> OperationFailed:
        return OperationFailed(
            f"the root helper is not reachable at {self.socket_path} ({e or type(e).__name__}); "
            "run `sudo banger system restart`"
        )

    async def ping(self) -> dict[str, Any]:
        result = await self.call("priv.ping")
        assert isinstance(result, dict)
        return result

    # --- PrivOps ---------------------------------------------------------------------------

    async def ensure_bridge(self, name: str, address: str, prefix: int) -> None:
        await self.call("priv.ensure_bridge", {"name": name, "address": address, "prefix": prefix})

    async def delete_bridge(self, name: str) -> None:
        await self.call("priv.delete_bridge", {"name": name})

    async def ensure_tap(self, name: str, bridge: str, owner_uid: int) -> None:
        await self.call("priv.ensure_tap", {"name": name, "bridge": bridge, "owner_uid": owner_uid})

    async def delete_tap(self, name: str) -> None:
        await self.call("priv.delete_tap", {"name": name})

    async def list_taps(self) -> list[str]:
        return [str(n) for n in await self.call("priv.list_taps")]

    async def sync_nat(
        self,
        bridge: str,
        rules: Sequence[NatRule],
        egress: Sequence[EgressSpec] = (),
        dns: DnsRedirect | None = None,
    ) -> None:
        params: dict[str, Any] = {
            "bridge": bridge,
            "rules": [{"ip": r.ip, "tap": r.tap} for r in rules],
        }
        if egress:
            params["egress"] = [e.to_wire() for e in egress]
        if dns is not None:
            params["dns"] = {
                "gateway": dns.gateway,
                "port": dns.port,
                "resolvers": list(dns.resolvers),
            }
        await self.call("priv.sync_nat", params)

    async def egress_admit(self, tag: str, items: Sequence[Admit]) -> None:
        await self.call(
            "priv.egress_admit", {"tag": tag, "items": [admit_to_wire(a) for a in items]}
        )

    async def egress_denied(self, tag: str) -> list[Denied]:
        rows = await self.call("priv.egress_denied", {"tag": tag})
        return [Denied(r["ip"], r["proto"], int(r["port"]), int(r["packets"])) for r in rows]

    async def remove_nat_table(self) -> None:
        await self.call("priv.remove_nat_table")

    async def list_nat(self) -> list[NatRule]:
        return [NatRule(ip=r["ip"], tap=r["tap"]) for r in await self.call("priv.list_nat")]

    async def get_ip_forward(self) -> bool:
        return bool(await self.call("priv.get_ip_forward"))

    async def set_ip_forward(self, enabled: bool) -> None:
        await self.call("priv.set_ip_forward", {"enabled": enabled})

    # --- beyond networking -------------------------------------------------------------------

    async def signal_process(self, pid: int, signum: int) -> None:
        """Signal a VMM process banger launched that the owner cannot signal itself."""
        name = signal.Signals(signum).name.removeprefix("SIG")
        await self.call("priv.signal_process", {"pid": pid, "signal": name})

    async def ensure_socket_access(self, path: Path) -> None:
        """Hand a socket below banger's runtime dir to the owner (0600)."""
        await self.call("priv.ensure_socket_access", {"path": str(path)})

    async def ensure_netns(self, name: str) -> dict[str, Any]:
        """Have the helper create (once) and record the network namespace `banger-<name>`."""
        result = await self.call("priv.ensure_netns", {"name": name})
        assert isinstance(result, dict)
        return result

    async def jailer_launch(self, params: dict[str, Any]) -> dict[str, Any]:
        """Start the configured jailer on a VM's jail (docs/privileges.md `priv.jailer_launch`).

        Returns `pid` (the jailer, which becomes Firecracker: no --daemonize), `jail_dir` and
        `chroot`. The helper removes the jail when that process exits.
        """
        result = await self.call("priv.jailer_launch", params)
        assert isinstance(result, dict)
        return result
