"""A module-scoped banger environment with a running daemon whose image cache already holds the
built-in debian-bookworm (from the session `debian_image` fixture), so VM tests boot quickly."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BangerEnv, BuiltImage, _stop_daemon, make_env
from tests.vms.world import bridged, world

__all__ = ["bridged", "world"]  # fixtures of the in-memory lifecycle world (tests/vms/world.py)


def make_vm_env(cache_home: Path, *, warm: bool = False) -> BangerEnv:
    be = make_env("bgvm-", cache_home=cache_home)
    # Lean guests: the host-aware default (RAM/8) is more than these tests need. Warm creates
    # off unless asked for: these tests hold and kill creates at cold-boot stages.
    be.write_config(
        f"warm_creates = {'true' if warm else 'false'}\n"
        '[vm_defaults]\nmemory_mib = 512\ndisk_size = "2G"\n'
    )
    return be


@pytest.fixture(scope="module")
def vmenv(debian_image: BuiltImage) -> Iterator[BangerEnv]:
    be = make_vm_env(debian_image.cache_home)
    be.banger("daemon", "start", check=True, timeout=30)
    yield be
    # Leave no guest behind, whatever the tests did.
    be.banger("vm", "prune", "-f", timeout=120)
    for vm in list_vms(be):
        be.banger("vm", "delete", str(vm["name"]), timeout=120)
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


def list_vms(be: BangerEnv) -> list[dict[str, object]]:
    import json

    p = be.banger("vm", "list", "--json", check=True, timeout=60)
    out = json.loads(p.stdout)
    assert isinstance(out, list)
    return out
