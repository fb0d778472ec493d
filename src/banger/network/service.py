"""NetworkService: host networking for VMs, the `.vm` DNS server and banger's ssh_config.

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
import contextlib
import ipaddress
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dnslib import QTYPE, RCODE, DNSRecord

from banger.config import Config
from banger.errors import InvalidInput
from banger.network import sshconfig
from banger.network.dns import DNSServer
from banger.network.egress import Mode as EgressMode
from banger.network.egress import Policy, unsafe_address, updated
from banger.network.egress_dns import EgressResolver, ask_upstream, host_nameservers
from banger.network.egress_store import EgressStore
from banger.network.ipam import IPAM
from banger.network.nat import Admit, DnsRedirect, EgressSpec, NatRule
from banger.network.privops import (
    MAX_ADMITS,
    LocalPrivOps,
    PrivOps,
    validate_bridge,
    validate_interface,
)
from banger.network.tap import guest_mac, tap_name
from banger.paths import Paths
from banger.store.db import Store
from banger.validation import parse_upstream

log = logging.getLogger("banger.network")

Mode = Literal["bridge", "user"]
# network_meta key: set while banger (not the admin) turned ip_forward on, so only banger undoes it.
_FORWARD_KEY = "ip_forward_enabled_by_banger"
# An answer is admitted for at least this long, so a connection opened right after it gets through.
ADMIT_MIN_SECONDS = 30
ADMIT_MAX_SECONDS = 86400
HARVEST_INTERVAL = 2.0  # how often the drop rule's counters are read into `vm egress`


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
    def __init__(
        self, paths: Paths, config: Config, store: Store, privops: PrivOps | None = None
    ) -> None:
        self.paths = paths
        self.config = config
        cfg = config
        self.bridge = validate_bridge(cfg.bridge_name)
        iface = validate_interface(cfg.bridge_ip, cfg.cidr)
        self.gateway = str(iface.ip)
        self.prefix = iface.network.prefixlen
        self.privops: PrivOps = privops or LocalPrivOps()
        self.ipam = IPAM(store, self.gateway, self.prefix)
        self.dns = DNSServer("127.0.0.1", cfg.dns_port)
        self.dns_error: str | None = None
        self.mode: Mode = self._resolve_mode(cfg.network)
        if cfg.network == "auto" and paths.is_system:
            self.mode = "bridge"  # bangerd-root administers the network for the owner daemon
        self._active: dict[str, _Active] = {}
        self._lock = asyncio.Lock()
        self.egress = EgressStore(store)
        self.resolver = EgressResolver(self._egress_answer)
        # vm id -> (address, port) -> (expiry on the monotonic clock, the name it answered)
        self._admitted: dict[str, dict[tuple[str, int | None], tuple[float, str]]] = {}
        # vm id -> (address, proto, port) -> packets already counted from its denied set
        self._baseline: dict[str, dict[tuple[str, str, int], int]] = {}
        self._rendered: set[str] = set()  # VMs whose egress chain is in the table right now
        self._harvester: asyncio.Task[None] | None = None

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
        return self.paths.ssh_config_file

    @property
    def ssh_key_path(self) -> Path:
        cfg = self.config.ssh_key_path
        return Path(cfg) if cfg else self.paths.ssh_dir / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.paths.ssh_dir / "known_hosts"

    # --- service lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        # Only bridged VMs have names to serve; a user-mode daemon leaves the port alone.
        if self.mode == "bridge":
            await self._start_dns()
            self._harvester = asyncio.create_task(self._harvest_loop())
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
        # VMs outlive the daemon: their TAPs and rules stay; only the DNS sockets go.
        if self._harvester is not None:
            self._harvester.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._harvester
        await self.dns.stop()
        await self.resolver.stop()

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
                dns=(self.config.default_dns,),
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
            self._admitted.pop(vm_id, None)  # a restarted VM asks its resolver again
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
        await asyncio.to_thread(self.egress.forget, vm_id)

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
            raise InvalidInput(
                "NAT needs bridged networking, but this daemon uses user-mode networking (guests "
                'already reach the outside through QEMU); set `network = "bridge"` as root'
            )
        async with self._lock:
            await asyncio.to_thread(self.ipam.set_nat, vm_id, enabled)
            if vm_id in self._active:
                await self._sync_nat()

    # --- egress policy ---------------------------------------------------------------------------

    def policy(self, vm_id: str) -> Policy:
        return self.egress.policy(vm_id)[0]

    async def set_egress(
        self,
        vm_id: str,
        allow: Sequence[str] = (),
        disallow: Sequence[str] = (),
        mode: EgressMode | None = None,
    ) -> Policy:
        """Change the VM's policy; applied at once (one table rebuild) when it runs bridged.

        An allow rule needs NAT (the policy limits NAT egress), so it turns NAT on."""
        async with self._lock:
            current = self.policy(vm_id)
            new = updated(current, allow, disallow, mode)
            if new.restricted and self.mode != "bridge":
                raise InvalidInput(
                    "egress rules need bridged networking (the host enforces them on banger's "
                    'bridge), but this daemon uses user-mode networking; set `network = "bridge"`'
                )
            if new == current and mode is None and not allow and not disallow:
                return current
            await asyncio.to_thread(self.egress.set_policy, vm_id, new)
            if new.restricted and not self.ipam.nat(vm_id):
                await asyncio.to_thread(self.ipam.set_nat, vm_id, True)
            # Addresses admitted for names no rule allows any more (or on another port) go now.
            keep = {
                key: (exp, name)
                for key, (exp, name) in self._admitted.get(vm_id, {}).items()
                if any(r.port == key[1] for r in new.name_rules(name))
            }
            self._admitted[vm_id] = keep
            if vm_id in self._active:
                await self._sync_nat()
            return new

    async def egress_report(self, vm_id: str, name: str) -> dict[str, Any]:
        """`vm egress`: the policy, the names resolved for the VM, what it was denied."""
        policy, _ = self.egress.policy(vm_id)
        async with self._lock:
            if vm_id in self._rendered:
                await self._harvest(vm_id)
        active = self._active.get(vm_id)
        now = time.monotonic()
        names: dict[str, dict[str, float]] = {}
        for (ip, _port), (expires, qname) in self._admitted.get(vm_id, {}).items():
            if expires > now:
                left = names.setdefault(qname, {})
                left[ip] = max(left.get(ip, 0.0), expires - now)
        return {
            "vm": name,
            "mode": policy.mode,
            "rules": [r.text for r in policy.rules],
            "nat": self.nat(vm_id),
            "enforced": vm_id in self._rendered,
            "running": active is not None,
            "resolved": [
                {
                    "name": qname,
                    "addresses": sorted(ips, key=ipaddress.IPv4Address),
                    "expires_in": math.ceil(max(ips.values())),
                }
                for qname, ips in sorted(names.items())
            ],
            "denied": [row.to_json() for row in self.egress.denied(vm_id)],
        }

    def _upstreams(self) -> list[tuple[str, int]]:
        configured = self.config.upstream_dns
        if configured:
            return [parse_upstream(u) for u in configured]
        return host_nameservers()

    def _vm_by_ip(self, ip: str) -> _Active | None:
        for a in self._active.values():
            if a.ip == ip and a.tap:
                return a
        return None

    async def _egress_answer(self, data: bytes, src: str) -> bytes | None:
        """Answer one query from a guest: the policy decides, admitted addresses go in first."""
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None
        reply = request.reply()
        reply.header.aa = 0
        vm = self._vm_by_ip(src)
        if vm is None or len(request.questions) != 1:
            reply.header.rcode = RCODE.REFUSED
            return bytes(reply.pack())
        policy = self.policy(vm.vm_id)
        q = request.questions[0]
        qname = str(q.qname).rstrip(".").lower()
        rules = policy.name_rules(qname)
        if not policy.restricted or not rules:
            log.info("egress: name refused", extra={"vm": vm.name, "qname": qname})
            await asyncio.to_thread(
                self.egress.record_denied, vm.vm_id, qname[:253], 53, "dns", "name not allowed"
            )
            reply.header.rcode = RCODE.REFUSED
            return bytes(reply.pack())
        if q.qtype != QTYPE.A:
            return bytes(reply.pack())  # IPv4 only: other types get an empty answer
        try:
            upstream = DNSRecord.parse(await ask_upstream(data, self._upstreams()))
        except Exception as e:
            log.warning("egress: upstream DNS failed", extra={"qname": qname, "error": str(e)})
            reply.header.rcode = RCODE.SERVFAIL
            return bytes(reply.pack())
        if upstream.header.rcode != RCODE.NOERROR:
            reply.header.rcode = upstream.header.rcode
            return bytes(reply.pack())
        admits: list[Admit] = []
        refused: list[str] = []
        for rr in upstream.rr:
            if rr.rtype == QTYPE.CNAME:
                reply.add_answer(rr)
                continue
            if rr.rtype != QTYPE.A:
                continue
            ip = str(rr.rdata)
            if unsafe_address(ip) and not policy.covered_by_cidr(ip):
                refused.append(ip)  # DNS rebinding: an allowed name must not lead inside
                continue
            ttl = min(max(int(rr.ttl), ADMIT_MIN_SECONDS), ADMIT_MAX_SECONDS)
            admits += [Admit(ip, r.port, ttl) for r in rules]
            reply.add_answer(rr)
        for ip in refused:
            log.info("egress: private answer refused", extra={"qname": qname, "address": ip})
            await asyncio.to_thread(
                self.egress.record_denied, vm.vm_id, f"{qname[:200]} -> {ip}", 53, "dns",
                "answer is a private, loopback or link-local address",
            )  # fmt: skip
        if refused and not admits:
            del reply.rr[:]
            reply.header.rcode = RCODE.REFUSED
            return bytes(reply.pack())
        if admits:
            async with self._lock:
                now = time.monotonic()
                known = self._admitted.setdefault(vm.vm_id, {})
                for key in [k for k, (exp, _) in known.items() if exp <= now]:
                    del known[key]  # expired in nftables too: forget it here
                # Only what is new or past half its admission goes to nft (a process per call):
                # a guest asking the same name again is answered without touching the table.
                stale = sorted(
                    {
                        a
                        for a in admits
                        if known.get((a.ip, a.port), (0.0, ""))[0] - now < a.timeout / 2
                    }
                )
                stale = stale[:MAX_ADMITS]  # one answer is bounded; so is one admission
                if stale and vm.vm_id in self._rendered:
                    await self.privops.egress_admit(vm.vm_id, stale)
                for a in stale:
                    known[(a.ip, a.port)] = (now + a.timeout, qname)
        return bytes(reply.pack())

    async def _harvest(self, vm_id: str) -> None:
        """Read the VM's denied set into the store (caller holds the lock)."""
        try:
            found = await self.privops.egress_denied(vm_id)
        except Exception as e:
            log.warning("egress: cannot read denied set", extra={"vm_id": vm_id, "error": str(e)})
            return
        base = self._baseline.setdefault(vm_id, {})
        for d in found:
            key = (d.ip, d.proto, d.port)
            delta = d.packets - base.get(key, 0)
            base[key] = d.packets
            if delta > 0:
                reason = "DNS outside banger's resolver" if d.port == 53 else "address not allowed"
                await asyncio.to_thread(
                    self.egress.record_denied, vm_id, d.ip, d.port, d.proto, reason, delta
                )

    async def _harvest_loop(self) -> None:
        while True:
            await asyncio.sleep(HARVEST_INTERVAL)
            try:
                async with self._lock:
                    for vm_id in sorted(self._rendered):
                        await self._harvest(vm_id)
            except Exception:
                log.exception("egress harvest failed")

    async def _ensure_resolver(self) -> bool:
        if self.resolver.running:
            return True
        try:
            await self.resolver.start(self.gateway)
            return True
        except OSError as e:
            # Restricted guests then get no DNS at all (the policy fails closed), and it is said.
            log.error("egress resolver not started", extra={"error": str(e)})
            return False

    def _egress_specs(self, nat_ips: set[str]) -> list[EgressSpec]:
        now = time.monotonic()
        specs = []
        for a in self._active.values():
            if not a.tap or not a.ip or a.ip not in nat_ips:
                continue
            policy, gen = self.egress.policy(a.vm_id)
            if not policy.restricted:
                continue
            admitted = tuple(
                Admit(ip, port, min(ADMIT_MAX_SECONDS, math.ceil(exp - now)))
                for (ip, port), (exp, _) in self._admitted.get(a.vm_id, {}).items()
                if exp - now >= 1
            )
            cidrs = tuple((r.value, r.port) for r in policy.cidr_rules())
            specs.append(EgressSpec(a.vm_id, a.ip, gen, cidrs, admitted[:MAX_ADMITS]))
        return specs

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
                await self._remove_leaked_taps({a.tap for a in self._active.values() if a.tap})
                try:
                    await self._sync_nat()
                except Exception as e:
                    # The daemon still starts (VMs, DNS and ssh_config work); NAT/egress for the
                    # running VMs is what is missing until the next VM change re-syncs it.
                    log.warning("reconcile: cannot restore NAT rules", extra={"error": str(e)})
            self._write_ssh_config()

    async def _remove_leaked_taps(self, keep: set[str]) -> None:
        try:
            taps = await self.privops.list_taps()
        except Exception as e:
            log.warning("reconcile: cannot list TAPs", extra={"error": str(e)})
            return
        for tap in taps:
            if tap in keep:
                continue
            log.info("removing leaked TAP", extra={"tap": tap})
            try:
                await self.privops.delete_tap(tap)
            except Exception as e:
                log.warning("reconcile: cannot remove TAP", extra={"tap": tap, "error": str(e)})

    # --- internals -----------------------------------------------------------------------------

    async def _sync_nat(self) -> None:
        """Make the nftables table and ip_forward match the running bridged VMs' NAT wishes."""
        bridged = [a for a in self._active.values() if a.tap and a.ip]
        rules = [NatRule(a.ip, a.tap) for a in bridged if a.ip and a.tap and self.ipam.nat(a.vm_id)]
        # The rebuild resets the drop counters: read them first so no denied attempt is lost.
        for vm_id in sorted(self._rendered):
            await self._harvest(vm_id)
        egress = self._egress_specs({r.ip for r in rules})
        dns: DnsRedirect | None = None
        if egress and await self._ensure_resolver():
            dns = DnsRedirect(self.gateway, self.resolver.port, (self.config.default_dns,))
        if bridged:
            await self.privops.sync_nat(self.bridge, rules, egress, dns)
        else:
            await self.privops.remove_nat_table()
        self._rendered = {e.tag for e in egress}
        self._baseline = {}
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
