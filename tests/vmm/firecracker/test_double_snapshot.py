"""The contract double's snapshot rules are Firecracker v1.16.1's (sources cited in fc_double.py):
create only on a paused VM, load only on a fresh process, one memory source, the real status
codes and fault messages, and a failed load ends the process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.vmm.firecracker.fc_double import (
    CREATE_WHILE_RUNNING_FAULT,
    LOAD_AFTER_CONFIG_FAULT,
    LOAD_MISSING_MEM,
    LOAD_TOO_MANY_MEM,
    POST_BOOT_FAULT,
    PRE_BOOT_FAULT,
    FirecrackerDouble,
)

HERE = Path(__file__).resolve().parent


def call(fc: FirecrackerDouble, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode() if body is not None else b""
    return fc.handle(method, path, raw)


def fault(answer: Any) -> str:
    assert isinstance(answer, dict) and set(answer) == {"fault_message"}, answer
    return str(answer["fault_message"])


def booted(tmp_path: Path) -> FirecrackerDouble:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF" + b"\0" * 60)
    root = tmp_path / "root.img"
    root.write_bytes(b"\0" * 4096)
    fc = FirecrackerDouble(cwd=tmp_path)
    for path, body in (
        ("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
        ("/boot-source", {"kernel_image_path": "vmlinux"}),
        (
            "/drives/rootfs",
            {
                "drive_id": "rootfs",
                "path_on_host": "root.img",
                "is_root_device": True,
                "is_read_only": False,
            },
        ),
    ):
        assert call(fc, "PUT", path, body)[0] == 204
    assert call(fc, "PUT", "/actions", {"action_type": "InstanceStart"})[0] == 204
    fc.write_page(3, b"guest data")
    return fc


def snapshot(fc: FirecrackerDouble, kind: str = "Full") -> dict[str, str]:
    body = {"snapshot_type": kind, "snapshot_path": "vm.state", "mem_file_path": "vm.mem"}
    return body


def test_create_is_refused_while_running_and_accepted_when_paused(tmp_path: Path) -> None:
    fc = booted(tmp_path)
    status, answer = call(fc, "PUT", "/snapshot/create", snapshot(fc))
    assert (status, fault(answer)) == (400, CREATE_WHILE_RUNNING_FAULT)
    assert not (tmp_path / "vm.state").exists()
    assert call(fc, "PATCH", "/vm", {"state": "Paused"})[0] == 204
    assert call(fc, "PUT", "/snapshot/create", snapshot(fc))[0] == 204
    assert (tmp_path / "vm.mem").stat().st_size == 128 << 20
    assert fc.state == "Paused"  # creating does not resume


def test_create_before_boot_is_a_pre_boot_refusal(tmp_path: Path) -> None:
    status, answer = call(FirecrackerDouble(cwd=tmp_path), "PUT", "/snapshot/create", {
        "snapshot_path": "s", "mem_file_path": "m"})  # fmt: skip
    assert (status, fault(answer)) == (400, POST_BOOT_FAULT)


def saved_pair(tmp_path: Path) -> Path:
    """A paused double's snapshot files in tmp_path/src; returns that directory."""
    src = tmp_path / "src"
    src.mkdir()
    fc = booted(src)
    assert call(fc, "PATCH", "/vm", {"state": "Paused"})[0] == 204
    assert call(fc, "PUT", "/snapshot/create", snapshot(fc))[0] == 204
    return src


def load_body(src: Path, **extra: Any) -> dict[str, Any]:
    return {
        "snapshot_path": str(src / "vm.state"),
        "mem_backend": {"backend_type": "File", "backend_path": str(src / "vm.mem")},
        **extra,
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
        ("/boot-source", {"kernel_image_path": "src/vmlinux"}),
        ("/vsock", {"guest_cid": 3, "uds_path": "v.sock"}),
    ],
)
def test_load_after_any_boot_resource_is_refused(
    tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    src = saved_pair(tmp_path)
    fc = FirecrackerDouble(cwd=tmp_path)
    assert call(fc, "PUT", path, body)[0] == 204
    status, answer = call(fc, "PUT", "/snapshot/load", load_body(src))
    assert (status, fault(answer)) == (400, LOAD_AFTER_CONFIG_FAULT)
    assert not fc.fatal  # refused before restoring: the process lives on
    assert fc.state == "Not started"


def test_load_after_logger_and_metrics_restores_the_recorded_state(tmp_path: Path) -> None:
    src = saved_pair(tmp_path)
    (tmp_path / "fc.log").touch()
    (tmp_path / "fc.metrics").touch()
    fc = FirecrackerDouble(cwd=src)
    assert call(fc, "PUT", "/logger", {"log_path": "../fc.log"})[0] == 204
    assert call(fc, "PUT", "/metrics", {"metrics_path": "../fc.metrics"})[0] == 204
    assert call(fc, "PUT", "/snapshot/load", load_body(src, track_dirty_pages=True))[0] == 204
    assert fc.state == "Paused"  # without resume_vm
    assert fc.read_page(3) == b"guest data"
    assert fc.resources["machine-config"]["track_dirty_pages"] is True
    assert fc.resources["drives"]["rootfs"]["path_on_host"] == "root.img"
    # Post-boot now: a second load is refused, a resume is fine.
    status, answer = call(fc, "PUT", "/snapshot/load", load_body(src))
    assert (status, fault(answer)) == (400, PRE_BOOT_FAULT)
    assert call(fc, "PATCH", "/vm", {"state": "Resumed"})[0] == 204
    assert fc.state == "Running"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mem_backend": None}, LOAD_MISSING_MEM),
        ({"mem_file_path": "vm.mem"}, LOAD_TOO_MANY_MEM),
    ],
)
def test_load_needs_exactly_one_memory_source(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    src = saved_pair(tmp_path)
    body = {k: v for k, v in {**load_body(src), **change}.items() if v is not None}
    status, answer = call(FirecrackerDouble(cwd=tmp_path), "PUT", "/snapshot/load", body)
    assert (status, fault(answer)) == (400, message)


def test_diff_holds_only_the_pages_dirtied_since_the_last_snapshot(tmp_path: Path) -> None:
    fc = booted(tmp_path)
    fc.resources["machine-config"]["track_dirty_pages"] = True
    assert call(fc, "PATCH", "/vm", {"state": "Paused"})[0] == 204
    assert call(fc, "PUT", "/snapshot/create", snapshot(fc))[0] == 204
    fc.write_page(7, b"new")
    body = {"snapshot_type": "Diff", "snapshot_path": "d.state", "mem_file_path": "d.mem"}
    assert call(fc, "PUT", "/snapshot/create", body)[0] == 204
    with (tmp_path / "d.mem").open("rb") as f:
        data_start = os.lseek(f.fileno(), 0, os.SEEK_DATA)
        assert data_start == 7 * 4096
        assert os.lseek(f.fileno(), data_start, os.SEEK_HOLE) == 8 * 4096


def _free_sock() -> Path:
    return Path(tempfile.mkdtemp(prefix="bgdl-", dir="/tmp")) / "api.sock"


async def test_a_failed_load_ends_the_process(tmp_path: Path) -> None:
    sock = _free_sock()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fake_firecracker.py"), "--api-sock", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            await asyncio.sleep(0.02)
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            r = await c.put("/snapshot/load", json=load_body(tmp_path / "absent"))
        assert r.status_code == 400
        assert r.json()["fault_message"].startswith(
            "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state "
            "from file: Failed to open snapshot file: No such file or directory"
        )
        assert proc.wait(timeout=30) == 1  # FcExitCode::GenericError
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(sock.parent, ignore_errors=True)
