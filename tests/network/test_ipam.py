"""Guest address allocation against a real SQLite store with the real migrations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.errors import OperationFailed
from banger.network.ipam import IPAM
from banger.store.db import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "banger.db")
    s.open()
    yield s
    s.close()


def test_allocation_is_deterministic_and_sticky(store: Store) -> None:
    ipam = IPAM(store, "172.16.0.1", 24)
    assert ipam.allocate("a") == "172.16.0.2"
    assert ipam.allocate("b") == "172.16.0.3"
    assert ipam.allocate("a") == "172.16.0.2"  # same VM, same address
    assert ipam.lookup("b") == "172.16.0.3"
    assert ipam.lookup("nope") is None


def test_released_address_is_reused_only_after_release(store: Store) -> None:
    ipam = IPAM(store, "172.16.0.1", 24)
    ips = [ipam.allocate(f"vm{i}") for i in range(3)]
    assert ips == ["172.16.0.2", "172.16.0.3", "172.16.0.4"]
    assert ipam.allocate("vm3") == "172.16.0.5"
    ipam.release("vm1")
    assert ipam.lookup("vm1") is None
    assert ipam.allocate("new") == "172.16.0.3"
    assert ipam.allocate("newer") == "172.16.0.6"


def test_gateway_is_skipped_wherever_it_is(store: Store) -> None:
    ipam = IPAM(store, "10.9.0.3", 29)  # hosts .1-.6; .3 is the bridge
    got = [ipam.allocate(f"v{i}") for i in range(5)]
    assert got == ["10.9.0.1", "10.9.0.2", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
    with pytest.raises(OperationFailed, match="no free guest address"):
        ipam.allocate("one-too-many")


def test_never_duplicated_under_concurrency(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.open()
    ipam = IPAM(store, "172.16.0.1", 24)
    got: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(20):
            ip = ipam.allocate(f"t{n}-{i}")
            with lock:
                got.append(ip)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 80 == len(set(got))
    store.close()


def test_subnet_change_reallocates_out_of_range_addresses(store: Store) -> None:
    assert IPAM(store, "172.16.0.1", 24).allocate("a") == "172.16.0.2"
    assert IPAM(store, "10.20.0.1", 24).allocate("a") == "10.20.0.2"


def test_nat_flag_survives_allocation_and_goes_with_release(store: Store) -> None:
    ipam = IPAM(store, "172.16.0.1", 24)
    assert ipam.nat("a") is False
    ipam.set_nat("a", True)
    assert ipam.nat("a") is True
    assert ipam.lookup("a") is None  # a NAT wish does not consume an address
    assert ipam.allocate("a") == "172.16.0.2"
    assert ipam.nat("a") is True
    ipam.set_nat("a", False)
    assert ipam.nat("a") is False and ipam.lookup("a") == "172.16.0.2"
    ipam.release("a")
    assert ipam.nat("a") is False and ipam.allocations() == {}
