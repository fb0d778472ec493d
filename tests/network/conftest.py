"""Network tests run inside network namespaces they create: the host's own network is untouched."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from tests.netns import add_netns


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Creates fresh network namespaces (loopback up); all deleted afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail(
            "needs root and iproute2 to create a network namespace: "
            "run the suite as root after scripts/setup-host.sh"
        )
    made: list[str] = []

    def make() -> str:
        name = f"bgt-{secrets.token_hex(4)}"
        add_netns(name)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=20)


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return make_netns()


def in_ns(ns: str, *argv: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        input=input,
        check=False,
    )
