"""Real `docker-registry` instances on 127.0.0.1 for the image tests (one open, one htpasswd)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images.ocifix import Registry
from tests.images.tokenauth import BearerAuth, TokenServer

REGISTRY_BIN = "docker-registry"
READY_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    root: Path, auth: tuple[str, str] | None, extra: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], Registry]:
    if shutil.which(REGISTRY_BIN) is None:
        pytest.fail("docker-registry is not installed (scripts/setup-host.sh installs it)")
    port = _free_port()
    storage = root / "storage"
    storage.mkdir(parents=True)
    # Always our own config: the package's default listens on :5000 with htpasswd.
    config = [
        "version: 0.1",
        "log:",
        "  level: info",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if auth:
        htpasswd = root / "htpasswd"
        subprocess.run(
            ["htpasswd", "-Bbc", str(htpasswd), auth[0], auth[1]], check=True, capture_output=True
        )
        config += ["auth:", "  htpasswd:", "    realm: banger-test", f"    path: {htpasswd}"]
    config += extra or []
    (root / "config.yml").write_text("\n".join(config) + "\n")
    log = root / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            r = httpx.get(f"{url}/v2/", timeout=1)
            if r.status_code in (200, 401):
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"docker-registry did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, Registry(url=url, root=storage, log=log, auth=auth)


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    root = Path(tempfile.mkdtemp(prefix="bg-reg-"))
    proc, reg = _start(root, None)
    yield reg
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[Registry]:
    root = Path(tempfile.mkdtemp(prefix="bg-areg-"))
    proc, reg = _start(root, ("tester", "s3cret-pass"))
    yield reg
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def token_registry() -> Iterator[tuple[Registry, TokenServer]]:
    """A registry in `auth: token` mode and the token server it sends clients to."""
    root = Path(tempfile.mkdtemp(prefix="bg-treg-"))
    tokens = TokenServer(root / "tokens", "tokenuser", "tok-pass")
    tokens.start()
    proc, reg = _start(root / "reg", None, tokens.registry_config())
    reg.auth = (tokens.user, tokens.password)
    reg.push_auth = BearerAuth(tokens.user, tokens.password)
    yield reg, tokens
    proc.terminate()
    proc.wait(10)
    tokens.stop()
    shutil.rmtree(root, ignore_errors=True)
