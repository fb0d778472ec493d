"""What the VM service needs from its collaborators, as small Protocols (the daemon passes the
real services; lifecycle tests pass doubles). Nothing here imports the daemon."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from banger.guest import payload
from banger.request import RequestContext
from banger.vmm.base import Alive

if TYPE_CHECKING:
    from banger.network.egress import Policy
    from banger.network.service import RunningVM


class Image(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def rootfs(self) -> Path: ...
    @property
    def kernel_ref(self) -> str | None: ...


class Kernel(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def initrd(self) -> Path | None: ...
    @property
    def vmlinux(self) -> Path | None: ...
    @property
    def boot_image(self) -> Path: ...


class Images(Protocol):
    async def get(self, ref: str) -> Image: ...
    async def ensure(self, name: str, ctx: RequestContext) -> Image: ...


class Kernels(Protocol):
    async def get(self, name: str) -> Kernel: ...
    async def ensure(self, name: str, ctx: RequestContext) -> Kernel: ...


class Attached(Protocol):
    """A bridged VM's host side (its TAP) and guest configuration."""

    @property
    def ip(self) -> str: ...
    @property
    def prefix(self) -> int: ...
    @property
    def gateway(self) -> str: ...
    @property
    def dns(self) -> tuple[str, ...]: ...
    @property
    def mac(self) -> str: ...
    @property
    def tap(self) -> str: ...


class Network(Protocol):
    """The bridge/NAT/DNS service (absent when the daemon runs without one)."""

    @property
    def mode(self) -> Literal["user", "bridge"]: ...
    async def attach(self, vm_id: str, name: str) -> Attached: ...
    async def published(
        self, vm_id: str, name: str, kind: str, ssh_host: str, ssh_port: int
    ) -> None: ...
    async def detach(self, vm_id: str) -> None: ...
    async def forget(self, vm_id: str) -> None: ...
    async def reconcile(self, running: Sequence[RunningVM]) -> None: ...
    def guest_ip(self, vm_id: str) -> str | None: ...
    def nat(self, vm_id: str) -> bool: ...
    async def set_nat(self, vm_id: str, enabled: bool) -> None: ...
    def policy(self, vm_id: str) -> Policy: ...
    async def set_egress(
        self,
        vm_id: str,
        allow: Sequence[str] = (),
        disallow: Sequence[str] = (),
        mode: Literal["open", "restricted"] | None = None,
    ) -> Policy: ...


def _build_seed(out: Path, cfg: payload.SeedConfig) -> None:
    payload.build_seed(out, cfg)


def _client_key(key_path: Path) -> str:
    from banger.guest.ssh import ensure_client_key

    return ensure_client_key(key_path)


def _vsock_agent(cache_dir: Path) -> Path:
    from banger.guest.vsockd import ensure_vsockd

    return ensure_vsockd(cache_dir)


async def _wait_ssh(host: str, port: int, timeout: float, alive: Alive) -> float:
    from banger.guest.ssh import wait_ssh_banner

    return await wait_ssh_banner(host, port, timeout, alive)


@dataclass(frozen=True)
class GuestTools:
    """The boot's work that is neither the driver nor the network: the seed disk, the client
    key, the vsock agent for vsock drivers and the SSH banner wait. Real by default; lifecycle
    unit tests pass fakes so they need no mkfs, no compiler and no sshd."""

    build_seed: Callable[[Path, payload.SeedConfig], None] = _build_seed
    client_key: Callable[[Path], str] = _client_key
    vsock_agent: Callable[[Path], Path] = _vsock_agent
    wait_ssh: Callable[[str, int, float, Alive], Awaitable[float]] = _wait_ssh
