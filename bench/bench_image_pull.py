"""Image pull: banger vs `skopeo copy` + `umoci raw unpack` + `mkfs.ext4 -d`, in one run.

    .venv/bin/python bench/bench_image_pull.py [--runs 3]

Both sides pull the same three-layer gzip image (~85 MB uncompressed, thousands of files, made
from host directories) from the same local docker-registry on 127.0.0.1 and end with an ext4
of the same size. Cold = empty caches; cached = blobs already local (skopeo: the OCI dir kept;
banger: its blob cache, pulled under a new name). banger also gets a "warm blobs, rebuild" row
(another --size, so the built rootfs cannot be reused). Medians of --runs; ratios printed.
Goals from the issue: banger cold <= 0.8x the pipeline cold, cached re-pull <= 0.05x cold.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.images.conftest import _start  # noqa: E402  (the same registry the tests run)
from tests.images.ocifix import Registry  # noqa: E402

SOURCES = ["/usr/lib/python3", "/usr/share/perl", "/usr/share/i18n", "/usr/libexec"]
REPO = "bench/hostdirs"
TAG = "v1"


def _layer_from_dir(src: str, dest: Path) -> str:
    """Write a gzip layer of `src`; returns its diff id (sha256 of the uncompressed tar)."""
    raw = dest.with_suffix(".raw")
    with tarfile.open(raw, "w") as tf:
        tf.add(src, arcname=src.lstrip("/"))
    data = raw.read_bytes()
    dest.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
    raw.unlink()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_fixture(reg: Registry, work: Path) -> dict[str, object]:
    layers, diff_ids = [], []
    for i, src in enumerate(SOURCES):
        blob = work / f"layer{i}.tar.gz"
        diff_ids.append(_layer_from_dir(src, blob))
        data = blob.read_bytes()
        layers.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": reg.push_blob(REPO, data),
                "size": len(data),
            }
        )
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": reg.push_blob(REPO, cfg),
            "size": len(cfg),
        },
        "layers": layers,
    }
    reg.push_manifest(REPO, TAG, manifest)
    total = sum(int(str(x["size"])) for x in layers)
    return {"layers": len(layers), "compressed_bytes": total}


def _timed(fn: Callable[..., object], *args: object) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({p.returncode}): {p.stderr.strip()[-500:]}")


def pipeline(
    reg: Registry, oci_dir: Path, out_dir: Path, size_bytes: int, scratch: Path | None = None
) -> None:
    """skopeo → umoci → mkfs; the unpacked tree goes to `scratch` (e.g. tmpfs) when given."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tree = (scratch or out_dir) / "rootfs"
    if tree.exists():
        shutil.rmtree(tree)
    _run(
        [
            "skopeo", "copy", "--src-tls-verify=false",
            f"docker://{reg.host}/{REPO}:{TAG}", f"oci:{oci_dir}:{TAG}",
        ]
    )  # fmt: skip
    _run(["umoci", "raw", "unpack", "--image", f"{oci_dir}:{TAG}", str(tree)])
    img = out_dir / "rootfs.ext4"
    with img.open("wb") as f:
        f.truncate(size_bytes)
    _run(["mkfs.ext4", "-F", "-q", "-d", str(tree), str(img)])
    if scratch is not None:
        shutil.rmtree(tree)


class Banger:
    def __init__(self, root: Path, host: str) -> None:
        self.root = root
        self.host = host
        self.env = dict(os.environ)
        self.env.update(
            {
                "XDG_CONFIG_HOME": str(root / "cfg"),
                "XDG_STATE_HOME": str(root / "st"),
                "XDG_CACHE_HOME": str(root / "cache"),
                "XDG_RUNTIME_DIR": str(root / "run"),
                "NO_COLOR": "1",
            }
        )
        (root / "run").mkdir(mode=0o700, parents=True)
        self.cli = [sys.executable, "-m", "banger.cli.main"]
        _run([*self.cli, "daemon", "start"], env=self.env)

    def pull(self, name: str, *extra: str) -> dict[str, object]:
        p = subprocess.run(
            [*self.cli, "image", "pull", f"{self.host}/{REPO}:{TAG}", "--name", name,
             "--json", *extra],
            check=True, capture_output=True, text=True, env=self.env, timeout=900,
        )  # fmt: skip
        rec: dict[str, object] = json.loads(p.stdout)
        return rec

    def size_of(self, name: str) -> int:
        p = subprocess.run(
            [*self.cli, "image", "show", name, "--json"],
            env=self.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return int(json.loads(p.stdout)["size_bytes"])

    def pull_rpc(self, name: str) -> None:
        """The same pull over one RPC call, without the CLI's interpreter start."""
        from banger.rpc.client import Client

        sock = self.root / "run" / "banger" / "bangerd.sock"
        with Client(sock) as c:
            c.call("image.pull", {"ref": f"{self.host}/{REPO}:{TAG}", "name": name})

    def stop(self) -> None:
        subprocess.run([*self.cli, "daemon", "stop"], env=self.env, capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for tool in ("docker-registry", "skopeo", "umoci", "mkfs.ext4"):
        if shutil.which(tool) is None:
            print(f"missing {tool}; run scripts/setup-host.sh", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="bg-bench-img-", dir="/tmp"))
    proc, reg = _start(work / "registry", None)
    try:
        info = push_fixture(reg, work)
        print(f"fixture: {info['layers']} gzip layers, {int(str(info['compressed_bytes'])) >> 20} "
              f"MiB compressed, from {', '.join(SOURCES)}")  # fmt: skip
        keys = ["pipe_cold", "pipe_cached", "pipe_shm_cold", "bg_cold", "bg_cached",
                "bg_cached_rpc", "bg_rebuild", "cli_start"]  # fmt: skip
        rows: dict[str, list[float]] = {k: [] for k in keys}
        size = 0
        for run in range(args.runs):
            bg = Banger(work / f"bg{run}", reg.host)
            try:
                rows["bg_cold"].append(_timed(bg.pull, "cold"))
                size = bg.size_of("cold")
                rows["bg_cached"].append(_timed(bg.pull, "cached"))
                rows["bg_cached_rpc"].append(_timed(bg.pull_rpc, "cached-rpc"))
                rows["cli_start"].append(_timed(_run, [*bg.cli, "--version"], bg.env))
                bigger = str(size + (64 << 20))
                rows["bg_rebuild"].append(_timed(bg.pull, "rebuild", "--size", bigger))
            finally:
                bg.stop()
            oci = work / f"oci{run}"
            out = work / f"pipe{run}"
            rows["pipe_cold"].append(_timed(pipeline, reg, oci, out, size))
            rows["pipe_cached"].append(_timed(pipeline, reg, oci, out, size))
            shutil.rmtree(oci, ignore_errors=True)
            shm = Path(tempfile.mkdtemp(prefix="bg-bench-", dir="/dev/shm"))
            try:
                rows["pipe_shm_cold"].append(_timed(pipeline, reg, oci, out, size, shm))
            finally:
                shutil.rmtree(shm, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(oci, ignore_errors=True)
            shutil.rmtree(work / f"bg{run}", ignore_errors=True)
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"ext4 size {size >> 20} MiB; medians of {args.runs} run(s), seconds:")
        print(f"  pipeline (skopeo+umoci+mkfs)  cold {med['pipe_cold']:.2f}  "
              f"cached {med['pipe_cached']:.2f}  cold, unpacking on tmpfs "
              f"{med['pipe_shm_cold']:.2f}")  # fmt: skip
        print(f"  banger image pull             cold {med['bg_cold']:.2f}  "
              f"cached {med['bg_cached']:.2f}  "
              f"warm blobs + rebuild {med['bg_rebuild']:.2f}")  # fmt: skip
        print(f"  cached over RPC (no CLI start) {med['bg_cached_rpc']:.3f}; "
              f"`banger --version` alone {med['cli_start']:.2f}")  # fmt: skip
        print(f"ratio banger/pipeline cold:     {med['bg_cold'] / med['pipe_cold']:.2f}x "
              "(goal <= 0.8x)")  # fmt: skip
        print(f"ratio banger cached/cold:       {med['bg_cached'] / med['bg_cold']:.3f}x "
              "(goal <= 0.05x)")  # fmt: skip
        print(f"ratio banger/pipeline cold, both unpacking on tmpfs: "
              f"{med['bg_cold'] / med['pipe_shm_cold']:.2f}x")  # fmt: skip
        print(f"ratio banger cached (RPC)/cold: {med['bg_cached_rpc'] / med['bg_cold']:.3f}x")
        print(f"ratio banger rebuild/pipeline cached: "
              f"{med['bg_rebuild'] / med['pipe_cached']:.2f}x")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
