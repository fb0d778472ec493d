"""The lifecycle world without QEMU: the real VMService over an in-memory `Driver`
(tests/vms/memdriver.py), real disks, host keys and SQLite in a temp dir, and doubles of the
collaborators (images, kernels, network, guest tools). The `world` and `bridged` fixtures
(tests/vms/conftest.py) give each test a fresh one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from banger.config import Config
from banger.errors import NotFound
from banger.guest import payload
from banger.paths import Paths
from banger.request import RequestContext
from banger.store.db import Store
from banger.vmm.base import Alive
from banger.vmm.registry import DriverRegistry
from banger.vms.ports import GuestTools
from banger.vms.service import CreateRequest, VMService
from tests.vms.memdriver import MemDriver

# --- doubles of the collaborators (images, kernels, network, guest tools) ------------------------


@dataclass(frozen=True)
class FakeImage:
    id: str
    name: str
    rootfs: Path
    kernel_ref: str | None = None


@dataclass(frozen=True)
class FakeKernel:
    name: str
    initrd: Path | None
    vmlinux: Path | None
    boot_image: Path


class NotFoundHere(NotFound):
    pass


@dataclass
class FakeImages:
    images: dict[str, FakeImage]

    async def get(self, ref: str) -> FakeImage:
        for img in self.images.values():
            if ref in (img.id, img.name):
                return img
        raise NotFoundHere(f"image {ref!r} not found")

    async def ensure(self, name: str, ctx: RequestContext) -> FakeImage:
        return await self.get(name)


@dataclass
class FakeKernels:
    kernels: dict[str, FakeKernel]

    async def get(self, name: str) -> FakeKernel:
        if name not in self.kernels:
            raise NotFoundHere(f"kernel {name!r} not found")
        return self.kernels[name]

    async def ensure(self, name: str, ctx: RequestContext) -> FakeKernel:
        return await self.get(name)


@dataclass(frozen=True)
class FakeAttached:
    ip: str
    prefix: int
    gateway: str
    dns: tuple[str, ...]
    mac: str
    tap: str


@dataclass
class FakeNetwork:
    """The network service's side of a VM: which VMs are attached, published, NATed."""

    mode: Literal["user", "bridge"] = "bridge"
    attached: set[str] = field(default_factory=set)
    published_vms: set[str] = field(default_factory=set)
    nat_on: set[str] = field(default_factory=set)
    reconciled: list[str] = field(default_factory=list)
    fail_attach: Exception | None = None
    fail_publish: Exception | None = None

    async def attach(self, vm_id: str, name: str) -> FakeAttached:
        if self.fail_attach is not None:
            raise self.fail_attach
        self.attached.add(vm_id)
        return FakeAttached("10.9.0.2", 24, "10.9.0.1", ("10.9.0.1",), "52:54:00:00:00:02", "tap0")

    async def published(
        self, vm_id: str, name: str, kind: str, ssh_host: str, ssh_port: int
    ) -> None:
        if self.fail_publish is not None:
            raise self.fail_publish
        self.published_vms.add(vm_id)

    async def detach(self, vm_id: str) -> None:
        self.attached.discard(vm_id)
        self.published_vms.discard(vm_id)

    async def forget(self, vm_id: str) -> None:
        await self.detach(vm_id)
        self.nat_on.discard(vm_id)

    async def reconcile(self, running: Any) -> None:
        self.reconciled = [vm.name for vm in running]

    def guest_ip(self, vm_id: str) -> str | None:
        return "10.9.0.2" if vm_id in self.attached else None

    def nat(self, vm_id: str) -> bool:
        return vm_id in self.nat_on

    async def set_nat(self, vm_id: str, enabled: bool) -> None:
        (self.nat_on.add if enabled else self.nat_on.discard)(vm_id)

    def policy(self, vm_id: str) -> Any:
        from banger.network.egress import Policy

        return Policy("open")

    async def set_egress(
        self, vm_id: str, allow: Any = (), disallow: Any = (), mode: Any = None
    ) -> Any:
        return self.policy(vm_id)


@dataclass
class FakeGuest:
    """Seed builder, client key, vsock agent and SSH wait; each can be made to fail."""

    fail_seed: Exception | None = None
    fail_ssh: Exception | None = None
    seeds: list[payload.SeedConfig] = field(default_factory=list)

    def build_seed(self, out: Path, cfg: payload.SeedConfig) -> None:
        if self.fail_seed is not None:
            raise self.fail_seed
        self.seeds.append(cfg)
        out.write_bytes(b"seed")

    async def wait_ssh(self, host: str, port: int, timeout: float, alive: Alive) -> float:
        if self.fail_ssh is not None:
            raise self.fail_ssh
        if not alive():
            raise ConnectionError("the VMM exited")
        return 0.0

    def tools(self, tmp: Path) -> GuestTools:
        agent = tmp / "vsockd"
        return GuestTools(
            build_seed=self.build_seed,
            client_key=lambda _: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest test",
            vsock_agent=lambda _: agent,
            wait_ssh=self.wait_ssh,
        )


# --- the world ----------------------------------------------------------------------------------


@dataclass
class World:
    root: Path
    paths: Paths
    store: Store
    driver: MemDriver
    images: FakeImages
    kernels: FakeKernels
    guest: FakeGuest
    network: FakeNetwork | None
    services: list[VMService] = field(default_factory=list)
    # Warm creates (templates) on: tests/vms/test_warm.py; off elsewhere, so every create boots.
    warm: bool = False

    async def service(self) -> VMService:
        """A VMService over this store and these dirs, started (a daemon start)."""
        config = Config(vmm="qemu", warm_creates=self.warm)
        registry = DriverRegistry(config, factory=lambda _c, _n: self.driver)
        svc = VMService(
            store=self.store,
            paths=self.paths,
            config=config,
            registry=registry,
            images=self.images,
            kernels=self.kernels,
            network=self.network,
            tools=self.guest.tools(self.root),
            monitor_interval=3600,
        )
        await svc.start()
        self.services.append(svc)
        return svc

    def leftovers(self, vm_id: str) -> dict[str, object]:
        """What a failed or cancelled boot must not leave: a live VMM, a runtime dir, a TAP."""
        return {
            "vmms": self.driver.running(),
            "runtime": (self.paths.runtime_dir / "vms" / vm_id).exists(),
            "network": self.network is not None and vm_id in self.network.attached,
        }


CTX = RequestContext(op_id="op-test", method="test")
CLEAN = {"vmms": [], "runtime": False, "network": False}


def make_world(tmp_path: Path, network: FakeNetwork | None) -> World:
    root = tmp_path / "w"
    paths = Paths(
        config_dir=root / "config",
        state_dir=root / "state",
        cache_dir=root / "cache",
        runtime_dir=root / "run",
    )
    paths.ensure()
    store = Store(paths.db_file)
    store.open()
    rootfs = root / "rootfs.ext4"
    with open(rootfs, "wb") as f:
        f.truncate(16 << 20)
    kdir = root / "kernel"
    kdir.mkdir()
    for n in ("vmlinuz", "initrd.img"):
        (kdir / n).write_bytes(b"k")
    kernel = FakeKernel("debian-6.1", kdir / "initrd.img", None, kdir / "vmlinuz")
    bare = FakeKernel("bare", None, None, kdir / "vmlinuz")
    return World(
        root=root,
        paths=paths,
        store=store,
        driver=MemDriver(),
        images=FakeImages({"debian-bookworm": FakeImage("img1", "debian-bookworm", rootfs)}),
        kernels=FakeKernels({"debian-6.1": kernel, "bare": bare}),
        guest=FakeGuest(),
        network=network,
    )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = make_world(tmp_path, None)
    yield w
    for svc in w.services:
        await svc.stop()
    w.store.close()


@pytest.fixture
async def bridged(tmp_path: Path) -> AsyncIterator[World]:
    w = make_world(tmp_path, FakeNetwork())
    yield w
    for svc in w.services:
        await svc.stop()
    w.store.close()


def req(name: str, **kw: Any) -> CreateRequest:
    return CreateRequest(name=name, disk_size="80M", vcpus=1, memory_mib=256, **kw)
