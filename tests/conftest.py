"""Shared fixtures: an isolated XDG environment and a real `bangerd` running in it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.paths import Paths
from banger.rpc.client import Client
from tests.skip_policy import apply_skip_policy as _apply_skip_policy


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """The skip policy; and a failing test keeps its daemon and console logs in the report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    _apply_skip_policy(report)
    if report.failed and report.when in ("call", "teardown"):
        from tests.evidence import failure_sections

        values = getattr(item, "funcargs", {}).values()
        envs = {id(v): v for v in values if isinstance(v, BangerEnv)}
        for env in envs.values():
            report.sections.extend(failure_sections(env.paths.state_dir))


@dataclass
class BangerEnv:
    root: Path
    env: dict[str, str]

    @property
    def paths(self) -> Paths:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return Paths.from_env()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def write_config(self, text: str) -> None:
        cfg = self.paths.config_file
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(text)

    def banger(
        self, *args: str, input: str | None = None, timeout: float = 600, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run the real CLI in this environment."""
        proc = subprocess.run(
            [sys.executable, "-m", "banger.cli.main", *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"banger {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def client(self) -> Client:
        c = Client(self.paths.socket)
        c.connect()
        return c


def make_env(prefix: str, *, cache_home: Path | None = None, network: str = "user") -> BangerEnv:
    """Isolated XDG dirs under a fresh short root in /tmp (sockets live below it and sun_path is
    limited to 108 bytes). `cache_home` shares an image cache (see `debian_image`)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    env = dict(os.environ)
    env.update(
        {
            "XDG_CONFIG_HOME": str(root / "cfg"),
            "XDG_STATE_HOME": str(root / "st"),
            "XDG_CACHE_HOME": str(cache_home or root / "cache"),
            "XDG_RUNTIME_DIR": str(root / "run"),
            "NO_COLOR": "1",
            # Isolated user mode even on a host with a real system install (docs/privileges.md).
            "BANGER_MODE": "user",
            # Test daemons run as root but must never touch the host's network: user-mode unless
            # a test opts into bridged networking inside a namespace it created (tests/network).
            "BANGER_NETWORK": network,
            "BANGER_CHECK_RESULTS": "1",  # every result checked against its schema (docs/rpc.md)
        }
    )
    env.pop("BANGER_LOG_LEVEL", None)
    (root / "run").mkdir(mode=0o700)
    return BangerEnv(root=root, env=env)


@pytest.fixture
def banger_env() -> Iterator[BangerEnv]:
    be = make_env("bg-")
    yield be
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


def _stop_daemon(be: BangerEnv, *, check_leftovers: bool = True) -> None:
    """Stop the env's daemon; then nothing may refer to its root any more (no bangerd, QEMU or
    tool process, no mount): whatever is found is killed and fails the test (tests/evidence.py).
    Callers that keep VMs running on purpose delete them first, as a user would."""
    from tests.evidence import leftovers

    pid_file = be.paths.pid_file
    stuck: list[str] = []
    if pid_file.exists():
        try:
            with be.client() as c:
                c.call("shutdown", timeout=30)
        except Exception as e:  # the daemon may already be gone: say so, the check below judges
            print(f"shutdown of the test daemon in {be.root}: {e}")
        deadline = time.monotonic() + 30
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_file.exists():  # its cmdline does not name the root: kill it by its pid file
            with contextlib.suppress(ValueError, ProcessLookupError):
                pid = int(pid_file.read_text())
                os.kill(pid, 9)
                stuck.append(f"bangerd {pid} did not stop within 30 s of shutdown")
    if check_leftovers:
        left = stuck + leftovers(be.root)
        assert not left, "left behind by the test or by banger:\n" + "\n".join(left)


@pytest.fixture
def daemon(banger_env: BangerEnv) -> Iterator[BangerEnv]:
    """A real bangerd in the isolated environment (started the way the CLI starts it)."""
    banger_env.banger("daemon", "start", check=True, timeout=30)
    yield banger_env


@dataclass(frozen=True)
class BuiltImage:
    record: dict[str, object]
    rootfs: Path
    # An XDG_CACHE_HOME whose blob cache holds the built image: point a test env's
    # XDG_CACHE_HOME here and its `image pull debian-bookworm` / ensure() takes seconds.
    cache_home: Path


@pytest.fixture(scope="session")
def debian_image() -> Iterator[BuiltImage]:
    """The built-in offline `debian-bookworm`, built once per session (mmdebstrap, ~40 s).

    Tests that need it either `image register --rootfs <rootfs>` it (instant, read-only base) or
    share `cache_home`. Treat `rootfs` as read-only.
    """
    import json

    be = make_env("bg-deb-")
    try:
        p = be.banger("image", "pull", "debian-bookworm", "--json", check=True, timeout=1800)
        rec = json.loads(p.stdout)
    finally:
        _stop_daemon(be)
    yield BuiltImage(record=rec, rootfs=Path(rec["rootfs"]), cache_home=be.root / "cache")
    shutil.rmtree(be.root, ignore_errors=True)


@pytest.fixture(scope="session")
def debian_systemd_image(debian_image: BuiltImage) -> Iterator[BuiltImage]:
    """The built-in `debian-bookworm-systemd` (debian-bookworm + systemd-sysv), built once per
    session into `debian_image`'s cache: an env sharing that `cache_home` pulls either image in
    a fraction of a second (`image pull debian-bookworm-systemd`)."""
    import json

    be = make_env("bg-debsd-", cache_home=debian_image.cache_home)
    try:
        p = be.banger(
            "image", "pull", "debian-bookworm-systemd", "--json", check=True, timeout=1800
        )
        rec = json.loads(p.stdout)
    finally:
        _stop_daemon(be)
    yield BuiltImage(record=rec, rootfs=Path(rec["rootfs"]), cache_home=debian_image.cache_home)
    shutil.rmtree(be.root, ignore_errors=True)
