"""A module-scoped banger environment with a running daemon whose image cache already holds the
built-in debian-bookworm (the session `debian_image`), and one SDK sandbox booted in it."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import pytest

from banger.sdk import BangerError, LocalDaemon, Sandbox
from tests.conftest import BangerEnv, BuiltImage, _stop_daemon, make_env


def make_sdk_env(debian_image: BuiltImage, prefix: str) -> BangerEnv:
    be = make_env(prefix, cache_home=debian_image.cache_home)
    # Lean guests: the host-aware default (RAM/8) is more than these tests need.
    be.write_config('[vm_defaults]\nmemory_mib = 512\ndisk_size = "2G"\n')
    be.banger("daemon", "start", check=True, timeout=30)
    be.banger("image", "pull", "debian-bookworm", check=True, timeout=600)
    return be


def teardown_env(be: BangerEnv) -> None:
    """Delete every VM the tests left, stop the daemon, remove the env."""
    import json

    p = be.banger("vm", "list", "--json", timeout=60)
    if p.returncode == 0:
        for vm in json.loads(p.stdout):
            be.banger("vm", "delete", str(vm["name"]), timeout=120)
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


@pytest.fixture(scope="module")
def sdk_env(debian_image: BuiltImage) -> Iterator[BangerEnv]:
    be = make_sdk_env(debian_image, "bgsdk-")
    yield be
    teardown_env(be)


@pytest.fixture(scope="module")
def daemon_conn(sdk_env: BangerEnv) -> LocalDaemon:
    return LocalDaemon(socket_path=sdk_env.paths.socket)


@pytest.fixture(scope="module")
def sbx(daemon_conn: LocalDaemon) -> Iterator[Sandbox]:
    box = Sandbox.create(name="sdk1", daemon=daemon_conn, keep=True)
    yield box
    with contextlib.suppress(BangerError):
        box.delete()
