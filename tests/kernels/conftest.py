"""Shared fixtures: the host's Debian kernel imported once, catalog tarballs, a loopback server."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.kernels import importer, localstore, publish
from tests import hostkernel

KVER = hostkernel.newest_version()
HOST_KERNEL = Path(f"/boot/vmlinuz-{KVER}")
HOST_MODULES = Path(f"/lib/modules/{KVER}")


@pytest.fixture
def _host_kernel_installed() -> None:
    """A host without the Debian kernel is a broken set-up: fail, never skip."""
    if not KVER:
        pytest.fail(hostkernel.MISSING)


needs_host_kernel = pytest.mark.usefixtures("_host_kernel_installed")


def import_host_kernel(kernels_dir: Path, staging: Path, name: str) -> Path:
    """Import the host kernel the way the daemon does (staged, then published)."""
    staged = localstore.staging_dir(staging, name)
    prep = importer.import_files(staged, kernel=HOST_KERNEL, initrd=None, modules=HOST_MODULES)
    localstore.write_manifest(
        staged,
        name=name,
        distro="debian-12",
        arch="x86_64",
        kernel_version=prep.kernel_version,
        fmt=prep.fmt,
        source=f"host:{HOST_KERNEL}",
        initrd_generated=prep.initrd_generated,
    )
    return localstore.publish(staged, kernels_dir, name, replace=False)


@pytest.fixture(scope="session")
def host_kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not KVER:
        pytest.fail(hostkernel.MISSING)
    root = tmp_path_factory.mktemp("hostkernel")
    return import_host_kernel(root / "kernels", root / "staging", "debian-host")


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def _link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def hostile_tarballs(kernel: bytes) -> dict[str, bytes]:
    """Tarballs that carry a valid kernel plus one member trying to write outside the tree."""
    ok = _file("vmlinuz", kernel)
    dev = tarfile.TarInfo("modules/null")
    dev.type = tarfile.CHRTYPE
    dev.devmajor, dev.devminor = 1, 3
    return {
        "hostile-traversal": _tar([ok, _file("../../escaped-traversal", b"pwned")]),
        "hostile-absolute": _tar([ok, _file("/tmp/banger-escaped-absolute", b"pwned")]),
        "hostile-symlink": _tar([ok, _link("modules", "../../../../tmp")]),
        "hostile-symlink-dir": _tar(
            [ok, _link("modules", "."), _link("modules/evil", "/etc/passwd")]
        ),
        "hostile-via-link": _tar(
            [ok, _link("escape", "sub/../.."), _file("escape/escaped-via-link", b"pwned")]
        ),
        "hostile-hardlink": _tar([ok, _link("modules.dep", "/etc/passwd", hard=True)]),
        "hostile-device": _tar([ok, (dev, None)]),
    }


@dataclass
class Served:
    root: Path
    url: str
    catalog_url: str
    entries: dict[str, dict[str, object]]


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        # /truncated/<file>: announce the full length, send half, hang up (an interrupted pull).
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        # /slow/<file>: dribble the file out (a pull the client gives up on half way).
        if self.path.startswith("/slow/"):
            data = (Path(self.directory) / self.path.removeprefix("/slow/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(0, len(data), 64 << 10):
                    self.wfile.write(data[i : i + (64 << 10)])
                    self.wfile.flush()
                    time.sleep(0.05)  # the slow download is what the tests cancel
            except OSError:
                pass
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, host_kernel_dir: Path) -> Iterator[Served]:
    """A loopback HTTP server with a catalog: good (zst, gz), wrong-sha, hostile, truncated."""
    root = tmp_path_factory.mktemp("served")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: _Handler(*a, directory=str(root))
    )
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/"
    entries: dict[str, dict[str, object]] = {}
    for comp in ("zst", "gz"):
        name = f"debian-{comp}"
        out = root / f"{name}-x86_64.tar.{comp}"
        sha, size = publish.make_tarball(host_kernel_dir, out, compression=comp)
        entry = publish.catalog_entry(host_kernel_dir, out.name, sha, size, f"host kernel, {comp}")
        entry["name"] = name
        entries[name] = entry
    good = entries["debian-zst"]
    entries["wrong-sha"] = {**good, "name": "wrong-sha", "tarball_sha256": "0" * 64}
    entries["truncated"] = {
        **good,
        "name": "truncated",
        "tarball_url": url + "truncated/" + str(good["tarball_url"]),
    }
    entries["slow"] = {
        **good,
        "name": "slow",
        "tarball_url": url + "slow/" + str(good["tarball_url"]),
    }
    kernel = (host_kernel_dir / "vmlinuz").read_bytes()
    for name, blob in hostile_tarballs(kernel).items():
        (root / f"{name}.tar").write_bytes(blob)
        entries[name] = {
            "name": name,
            "distro": "evil",
            "kernel_version": KVER,
            "tarball_url": f"{name}.tar",
            "tarball_sha256": hashlib.sha256(blob).hexdigest(),
            "size_bytes": len(blob),
        }
    (root / "catalog.json").write_text(
        json.dumps(
            {"version": 1, "entries": sorted(entries.values(), key=lambda e: str(e["name"]))}
        )
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Served(root=root, url=url, catalog_url=url + "catalog.json", entries=entries)
    server.shutdown()
    server.server_close()
