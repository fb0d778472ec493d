"""`d.network`: host networking for VMs, the `.vm` DNS server and banger's ssh_config.

Modes (config `network`): `bridge` (TAP on the host bridge, static guest IP, optional NAT),
`user` (QEMU slirp with localhost forwards; rootless), `auto` (bridge when the daemon can
administer the network: root, /dev/net/tun, `ip` and `nft` present; user otherwise).

The VM service calls, per VM: `attach` before launching a bridged VM (address, TAP, NAT, DNS),
`published` once a VM runs (ssh_config alias; DNS for bridged VMs), `detach` after it stopped
(TAP and rules removed, DNS record dropped), `forget` when it is deleted (address released), and
`reconcile` once at daemon start with the VMs still running (leaked TAPs/rules removed, DNS and
ssh_config rebuilt). Every privileged step goes through `self.privops`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from banger.network import sshconfig
from banger.network.dns import DNSServer
from banger.network.ipam import IPAM
from banger.network.nat import NatRule
from banger.network.privops import LocalPrivOps, PrivOps, validate_bridge, validate_interface
from banger.network.tap import guest_mac, tap_name
from banger.rpc.errors import BadRequest

if TYPE_CHECKING:
    from banger.daemon.app import Daemon

log = logging.getLogger("banger.network")

Mode = Literal["bridge", "user"]
# network_meta key: set while banger (not the admin) turned ip_forward on, so only banger undoes it.
_FORWARD_KEY = "ip_forward_enabled_by_banger"


@dataclass(frozen=True)
class GuestNetwork:
    """The static configuration a bridged guest applies (written to its seed disk)."""

    ip: str
    prefix: int
    gateway: str
    dns: tuple[str, ...]
    mac: str
    tap: str

    def to_seed(self) -> dict[str, Any]:
        return {
            "mode": "static",
            "address": f"{self.ip}/{self.prefix}",
            "ip": self.ip,
            "prefix": self.prefix,
            "gateway": self.gateway,
            "dns": list(self.dns),
            "mac": self.mac,
        }


@dataclass(frozen=True)
class RunningVM:
    """What reconcile needs to know about a VM that survived a daemon restart."""

    vm_id: str
    name: str
    kind: Literal["tap", "user", "none"]
    ssh_host: str = ""
    ssh_port: int = 22


@dataclass
class _Active:
    vm_id: str
    name: str
    kind: str
    ip: str | None
    tap: str | None
    ssh_host: str
    ssh_port: int


def can_administer_network() -> bool:
    return (
        os.geteuid() == 0
        and os.path.exists("/dev/net/tun")
        and shutil.which("ip") is not None
        and shutil.which("nft") is not None
    )


class NetworkService:
    def __init__(self, d: Daemon, privops: PrivOps | None = None) -> None:
        self.d = d
        cfg = d.config
        self.bridge = validate_bridge(cfg.bridge_name)
        iface = validate_interface(cfg.bridge_ip, cfg.cidr)
        self.gateway = str(iface.ip)
        self.prefix = iface.network.prefixlen
        self.privops: PrivOps = privops or LocalPrivOps()
        self.ipam = IPAM(d.store, self.gateway, self.prefix)
        self.dns = DNSServer("127.0.0.1", cfg.dns_port)
        self.dns_error: str | None = None
        self.mode: Mode = self._resolve_mode(cfg.network)
        if cfg.network == "auto" and d.paths.is_system:
            self.mode = "bridge"  # bangerd-root administers the network for the owner daemon
        self._active: dict[str, _Active] = {}
        self._lock = asyncio.Lock()

    @staticmethod
    def _resolve_mode(setting: str) -> Mode:
        if setting == "bridge":
            return "bridge"
        if setting == "user":
            return "user"
        return "bridge" if can_administer_network() else "user"

    # --- paths -------------------------------------------------------------------------------

    @property
    def ssh_config_path(self) -> Path:
        return self.d.paths.ssh_config_file

    @property
    def ssh_key_path(self) -> Path:
        cfg = self.d.config.ssh_key_path
        return Path(cfg) if cfg else self.d.paths.ssh_dir / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.d.paths.ssh_dir / "known_hosts"

    # --- service lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        # Only bridged VMs have names to serve; a user-mode daemon leaves the port alone.
        if self.mode == "bridge":
            await self._start_dns()
        self._write_ssh_config()
        log.info(
            "network ready",
            extra={"mode": self.mode, "bridge": self.bridge, "dns_port": self.dns.port},
        )

    async def _start_dns(self) -> None:
        try:
            await self.dns.start()
        except OSError as e:
            # Another daemon (or tool) holds the port: VMs still work, names just do not resolve.
            self.dns_error = f"DNS server not started on 127.0.0.1:{self.dns.port}: {e.strerror}"
            log.warning(self.dns_error)

    async def stop(self) -> None:
        # VMs outlive the daemon: their TAPs and rules stay; only the DNS socket goes.
        await self.dns.stop()

    # --- per-VM hooks (called by the VM service) -----------------------------------------------

    async def attach(self, vm_id: str, name: str) -> GuestNetwork:
        """Prepare host networking for a bridged VM about to launch; returns the guest config."""
        async with self._lock:
            ip = await asyncio.to_thread(self.ipam.allocate, vm_id)
            tap = tap_name(vm_id)
            await self.privops.ensure_bridge(self.bridge, self.gateway, self.prefix)
            await self.privops.ensure_tap(tap, self.bridge, os.geteuid())
            self._active[vm_id] = _Active(vm_id, name, "tap", ip, tap, ip, 22)
            try:
                await self._sync_nat()
            except BaseException:
                self._active.pop(vm_id, None)
                await self.privops.delete_tap(tap)
                raise
            self.dns.set(name, ip)
            return GuestNetwork(
                ip=ip,
                prefix=self.prefix,
                gateway=self.gateway,
                dns=(self.d.config.default_dns,),
                mac=guest_mac(vm_id),
                tap=tap,
            )

    async def published(
        self, vm_id: str, name: str, kind: str, ssh_host: str, ssh_port: int
    ) -> None:
        """The VM runs: make `ssh <name>.vm` reach it (alias in banger's ssh_config)."""
        async with self._lock:
            cur = self._active.get(vm_id)
            ip = cur.ip if cur else None
            tap = cur.tap if cur else None
            self._active[vm_id] = _Active(vm_id, name, kind, ip, tap, ssh_host, ssh_port)
            if ip is not None:
                self.dns.set(name, ip)
            self._write_ssh_config()

    async def detach(self, vm_id: str) -> None:
        """The VM stopped (or never started): remove its TAP, NAT rules and DNS record."""
        async with self._lock:
            cur = self._active.pop(vm_id, None)
            tap = cur.tap if cur and cur.tap else tap_name(vm_id)
            if cur is not None:
                self.dns.remove(cur.name)
            if self.mode == "bridge" or (cur is not None and cur.tap):
                await self._delete_tap_when_released(tap)
                await self._sync_nat()
            self._write_ssh_config()

    async def _delete_tap_when_released(self, tap: str, timeout: float = 5.0) -> None:
        """Delete the TAP, retrying while a just-killed VMM still holds it open (EBUSY)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.privops.delete_tap(tap)
                return
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)

    async def forget(self, vm_id: str) -> None:
        """The VM is deleted: detach, then release its address for reuse."""
        await self.detach(vm_id)
        await asyncio.to_thread(self.ipam.release, vm_id)

    async def rename(self, vm_id: str, new_name: str) -> None:
        async with self._lock:
            cur = self._active.get(vm_id)
            if cur is None:
                return
            self.dns.remove(cur.name)
            cur.name = new_name
            if cur.ip:
                self.dns.set(new_name, cur.ip)
            self._write_ssh_config()

    def nat(self, vm_id: str) -> bool:
        return self.ipam.nat(vm_id)

    async def set_nat(self, vm_id: str, enabled: bool) -> None:
        """Record the VM's NAT wish; applied at once when it runs bridged."""
        if enabled and self.mode != "bridge":
            raise BadRequest(
                "NAT needs bridged networking, but this daemon uses user-mode networking (guests "
                'already reach the outside through QEMU); set `network = "bridge"` as root'
            )
        async with self._lock:
            await asyncio.to_thread(self.ipam.set_nat, vm_id, enabled)
            if vm_id in self._active:
                await self._sync_nat()

    def guest_ip(self, vm_id: str) -> str | None:
        """The running VM's address, else the one it keeps for its next bridged start."""
        cur = self._active.get(vm_id)
        if cur is not None and cur.ip:
            return cur.ip
        return self.ipam.lookup(vm_id)

    def url_host(self, vm_id: str, guest_port: int) -> tuple[str, int] | None:
        """Where a user on this host reaches a guest port: (`<name>.vm`, port) when bridged."""
        cur = self._active.get(vm_id)
        if cur is None or cur.ip is None:
            return None
        return (f"{cur.name}.vm", guest_port)

    async def reconcile(self, running: Sequence[RunningVM]) -> None:
        """After a daemon restart: keep what running VMs use, remove every other trace."""
        async with self._lock:
            self._active.clear()
            records: dict[str, str] = {}
            for vm in running:
                ip = self.ipam.lookup(vm.vm_id) if vm.kind == "tap" else None
                tap = tap_name(vm.vm_id) if vm.kind == "tap" else None
                host = vm.ssh_host or (ip or "127.0.0.1")
                self._active[vm.vm_id] = _Active(
                    vm.vm_id, vm.name, vm.kind, ip, tap, host, vm.ssh_port
                )
                if ip is not None:
                    records[vm.name] = ip
            self.dns.replace_all(records)
            if self.mode == "bridge" or any(a.tap for a in self._active.values()):
                keep = {a.tap for a in self._active.values() if a.tap}
                for tap in await self.privops.list_taps():
                    if tap not in keep:
                        log.info("removing leaked TAP", extra={"tap": tap})
                        await self.privops.delete_tap(tap)
                await self._sync_nat()
            self._write_ssh_config()

    # --- internals -----------------------------------------------------------------------------

    async def _sync_nat(self) -> None:
        """Make the nftables table and ip_forward match the running bridged VMs' NAT wishes."""
        bridged = [a for a in self._active.values() if a.tap and a.ip]
        rules = [NatRule(a.ip, a.tap) for a in bridged if a.ip and a.tap and self.ipam.nat(a.vm_id)]
        if bridged:
            await self.privops.sync_nat(self.bridge, rules)
        else:
            await self.privops.remove_nat_table()
        await self._sync_forwarding(bool(rules))

    async def _sync_forwarding(self, needed: bool) -> None:
        ours = self.ipam.meta_get(_FORWARD_KEY) == "1"
        if needed and not ours and not await self.privops.get_ip_forward():
            await self.privops.set_ip_forward(True)
            await asyncio.to_thread(self.ipam.meta_set, _FORWARD_KEY, "1")
        elif not needed and ours:
            # Only undo what banger did: an admin-enabled ip_forward is left alone.
            await self.privops.set_ip_forward(False)
            await asyncio.to_thread(self.ipam.meta_set, _FORWARD_KEY, None)

    def _write_ssh_config(self) -> None:
        aliases = [
            sshconfig.UserModeAlias(a.name, a.ssh_port, a.ssh_host)
            for a in self._active.values()
            if a.ssh_host and a.ssh_port
        ]
        text = sshconfig.render(self.ssh_key_path, self.known_hosts_path, aliases)
        try:
            sshconfig.write_if_changed(self.ssh_config_path, text)
        except OSError as e:
            log.warning("cannot write ssh_config", extra={"error": str(e)})
