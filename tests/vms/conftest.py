"""A module-scoped banger environment with a running daemon whose image cache already holds the
built-in debian-bookworm (from the session `debian_image` fixture), so VM tests boot quickly."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BangerEnv, BuiltImage, _stop_daemon


def make_env(cache_home: Path) -> BangerEnv:
    root = Path(tempfile.mkdtemp(prefix="bgvm-", dir="/tmp"))
    env = dict(os.environ)
    env.update(
        {
            "XDG_CONFIG_HOME": str(root / "cfg"),
            "XDG_STATE_HOME": str(root / "st"),
            "XDG_CACHE_HOME": str(cache_home),
            "XDG_RUNTIME_DIR": str(root / "run"),
            "NO_COLOR": "1",
            "BANGER_NETWORK": "user",
        }
    )
    env.pop("BANGER_LOG_LEVEL", None)
    (root / "run").mkdir(mode=0o700)
    be = BangerEnv(root=root, env=env)
    # Lean guests: the host-aware default (RAM/8) is more than these tests need.
    be.write_config('[vm_defaults]\nmemory_mib = 512\ndisk_size = "2G"\n')
    return be


@pytest.fixture(scope="module")
def vmenv(debian_image: BuiltImage) -> Iterator[BangerEnv]:
    be = make_env(debian_image.cache_home)
    be.banger("daemon", "start", check=True, timeout=30)
    yield be
    # Leave no guest behind, whatever the tests did.
    be.banger("vm", "prune", "-f", timeout=120)
    for vm in list_vms(be):
        be.banger("vm", "delete", vm["name"], timeout=120)
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


def list_vms(be: BangerEnv) -> list[dict[str, object]]:
    import json

    p = be.banger("vm", "list", "--json", check=True, timeout=60)
    out = json.loads(p.stdout)
    assert isinstance(out, list)
    return out
