"""Test helpers: write OCI layers and images, push them to a real registry over its HTTP API."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


@dataclass
class Entry:
    name: str
    kind: str = "file"  # file | dir | symlink | hardlink | char | block | fifo
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    link: str = ""
    major: int = 0
    minor: int = 0
    mtime: int = 1_700_000_000
    xattrs: dict[str, str] = field(default_factory=dict)


TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def tar_bytes(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = TAR_TYPES[e.kind]
            ti.mode = e.mode
            ti.uid, ti.gid = e.uid, e.gid
            ti.mtime = e.mtime
            ti.linkname = e.link
            ti.devmajor, ti.devminor = e.major, e.minor
            if e.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def compress(raw: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(raw, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Registry:
    url: str  # http://127.0.0.1:PORT
    root: Path  # storage root dir
    log: Path
    auth: tuple[str, str] | None = None
    # What fixture pushes authenticate with (basic credentials, or a bearer-token flow).
    push_auth: Any = None

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=self.push_auth or self.auth, timeout=30)

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha(data)
        with self._client() as c:
            r = c.post(f"/v2/{repo}/blobs/uploads/")
            assert r.status_code == 202, r.text
            loc = r.headers["location"]
            sep = "&" if "?" in loc else "?"
            r = c.put(
                f"{loc}{sep}digest={digest}",
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code == 201, r.text
        return digest

    def push_manifest(self, repo: str, ref: str, doc: dict[str, Any]) -> str:
        body = json.dumps(doc).encode()
        with self._client() as c:
            r = c.put(
                f"/v2/{repo}/manifests/{ref}",
                content=body,
                headers={"Content-Type": doc["mediaType"]},
            )
            assert r.status_code == 201, r.text
        return sha(body)

    def push_image(
        self,
        repo: str,
        tag: str,
        layers: list[tuple[list[Entry], str]],
        config: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Push layers (entries, compression) and a config; returns digests for assertions."""
        descs, diff_ids = [], []
        for entries, kind in layers:
            raw = tar_bytes(entries)
            blob = compress(raw, kind)
            diff_ids.append(sha(raw))
            descs.append(
                {
                    "mediaType": LAYER_MEDIA[kind],
                    "digest": self.push_blob(repo, blob),
                    "size": len(blob),
                }
            )
        cfg = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": config or {},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": self.push_blob(repo, cfg),
                "size": len(cfg),
            },
            "layers": descs,
        }
        digest = self.push_manifest(repo, tag, manifest)
        size = len(json.dumps(manifest).encode())
        return {"manifest": digest, "size": size, "layers": descs, "config": manifest["config"]}

    def blob_data_path(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def blob_gets(self, repo: str) -> list[str]:
        """Blob digests fetched with GET from `repo`, from the registry's access log."""
        text = self.log.read_text(errors="replace")
        return re.findall(rf'"GET /v2/{re.escape(repo)}/blobs/(sha256:[0-9a-f]{{64}})', text)


def debugfs(image: Path, request: str) -> str:
    p = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    )
    return p.stdout


def stat_inode(image: Path, path: str) -> dict[str, Any]:
    """Type, mode, uid, gid (and device numbers) of `path` inside an ext4 image."""
    out = debugfs(image, f"stat {path}")
    m = re.search(r"Type: (\w+)[\w ]*?\s+Mode:\s+(\d+)", out)
    assert m, f"debugfs stat {path}: {out!r}"
    u = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    assert u
    info: dict[str, Any] = {
        "type": m.group(1),
        "mode": int(m.group(2), 8),
        "uid": int(u.group(1)),
        "gid": int(u.group(2)),
        "raw": out,
    }
    links = re.search(r"Links:\s+(\d+)", out)
    info["links"] = int(links.group(1)) if links else None
    ino = re.search(r"Inode:\s+(\d+)", out)
    info["inode"] = int(ino.group(1)) if ino else None
    dev = re.search(r"Device major/minor number:\s+(\d+):(\d+)", out)
    if dev:
        info["dev"] = (int(dev.group(1)), int(dev.group(2)))
    return info


def ls(image: Path, path: str) -> list[str]:
    out = debugfs(image, f"ls -p {path}")
    names = []
    for line in out.splitlines():
        # `/inode/mode/uid/gid/name/size/`
        parts = line.strip().strip("/").split("/")
        if len(parts) >= 6 and parts[4] not in (".", ".."):
            names.append(parts[4])
    return sorted(names)


def cat(image: Path, path: str) -> bytes:
    p = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=True
    )
    return p.stdout


class FlakyProxy:
    """An HTTP proxy in front of a real registry that answers 503 to chosen blob GETs."""

    def __init__(self, upstream: str, fail_times: int) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.upstream = upstream
        self.fail_times = fail_times
        self.blob_gets: list[tuple[str, int]] = []
        self._failed: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _relay(self, method: str) -> None:
                path = self.path
                if method == "GET" and "/blobs/" in path:
                    seen = outer._failed.get(path, 0)
                    if seen < outer.fail_times:
                        outer._failed[path] = seen + 1
                        outer.blob_gets.append((path, 503))
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    outer.blob_gets.append((path, 200))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                r = httpx.request(method, outer.upstream + path, headers=headers, timeout=30)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                body = b"" if method == "HEAD" else r.content
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._relay("GET")

            def do_HEAD(self) -> None:
                self._relay("HEAD")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
