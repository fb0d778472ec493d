"""The contract double itself: its routes, body validation and state rules come from the spec."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.vmm.firecracker.fc_double import (
    POST_BOOT_FAULT,
    PRE_BOOT_FAULT,
    SPEC_PATH,
    FirecrackerDouble,
    load_routes,
)

# The sha256 /work/shared/firecracker/SOURCE.md records for the v1.16.1 copy.
SPEC_SHA256 = "a514abec7b29700c5ca8bdaebbb960e4ffb46fe1fd4869094c6c63630a6fa41c"


def call(fc: FirecrackerDouble, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode() if body is not None else b""
    return fc.handle(method, path, raw)


def fault(answer: Any) -> str:
    assert isinstance(answer, dict) and set(answer) == {"fault_message"}, answer
    return str(answer["fault_message"])


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF" + b"\0" * 60)
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"MZ" + b"\0" * 62)
    root = tmp_path / "root.ext4"
    root.write_bytes(b"\0" * 4096)
    return {"kernel": kernel, "bz": bz, "root": root}


def configured(files: dict[str, Path]) -> FirecrackerDouble:
    fc = FirecrackerDouble()
    assert call(fc, "PUT", "/boot-source", {"kernel_image_path": str(files["kernel"])})[0] == 204
    body = {
        "drive_id": "rootfs",
        "path_on_host": str(files["root"]),
        "is_root_device": True,
        "is_read_only": False,
    }
    assert call(fc, "PUT", "/drives/rootfs", body)[0] == 204
    return fc


def test_spec_copy_is_the_recorded_v1_16_1_file() -> None:
    assert hashlib.sha256(SPEC_PATH.read_bytes()).hexdigest() == SPEC_SHA256


def test_route_table_is_every_operation_in_the_spec() -> None:
    routes, definitions, version = load_routes()
    spec = yaml.safe_load(SPEC_PATH.read_text())
    expected = {(m.upper(), p) for p, ms in spec["paths"].items() for m in ms}
    assert {(r.method, r.template) for r in routes} == expected
    assert len(routes) == 38 and version == "1.16.1"
    # YAML 1.1 would turn the `Off` log level into False.
    assert "Off" in definitions["Logger"]["properties"]["level"]["enum"]
    phases = {(r.method, r.template): r.phase for r in routes}
    assert phases[("PUT", "/boot-source")] == "pre"
    assert phases[("PATCH", "/drives/{drive_id}")] == "post"
    assert phases[("PATCH", "/vm")] == "post"
    assert phases[("PUT", "/logger")] == phases[("PUT", "/metrics")] == "pre"


def test_unknown_route_and_wrong_method_are_400() -> None:
    fc = FirecrackerDouble()
    status, answer = call(fc, "GET", "/nope")
    assert status == 400 and "Invalid request method and/or path" in fault(answer)
    status, answer = call(fc, "PATCH", "/boot-source", {"kernel_image_path": "x"})
    assert status == 400


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/machine-config", {"vcpu_count": 2}, "'mem_size_mib' is a required property"),
        ("/machine-config", {"vcpu_count": 0, "mem_size_mib": 128}, "less than the minimum"),
        ("/machine-config", {"vcpu_count": 1, "mem_size_mib": "512"}, "is not of type 'integer'"),
        ("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "memory": 1}, "Additional"),
        ("/logger", {"level": "Loud"}, "is not one of"),
        ("/vsock", {"guest_cid": 2, "uds_path": "v.sock"}, "less than the minimum"),
        ("/actions", {"action_type": "Reboot"}, "is not one of"),
        ("/drives/rootfs", {"drive_id": "rootfs"}, "'is_root_device' is a required property"),
    ],
)
def test_bodies_are_validated_against_the_definitions(path: str, body: Any, needle: str) -> None:
    fc = FirecrackerDouble()
    status, answer = call(fc, "PUT", path, body)
    assert status == 400
    assert needle in fault(answer)
    assert fc.calls[-1].status == 400 and fc.calls[-1].body == body


def test_not_json_and_missing_body() -> None:
    fc = FirecrackerDouble()
    assert fc.handle("PUT", "/logger", b"{nope")[0] == 400
    assert "Empty request body" in fault(call(fc, "PUT", "/logger")[1])


def test_path_id_must_match_body_id(files: dict[str, Path]) -> None:
    fc = FirecrackerDouble()
    body = {"drive_id": "a", "path_on_host": str(files["root"]), "is_root_device": True,
            "is_read_only": False}  # fmt: skip
    status, answer = call(fc, "PUT", "/drives/b", body)
    assert status == 400 and "does not match" in fault(answer)


def test_instance_start_prerequisites(files: dict[str, Path], tmp_path: Path) -> None:
    fc = FirecrackerDouble()
    start = {"action_type": "InstanceStart"}
    assert "without kernel configuration" in fault(call(fc, "PUT", "/actions", start)[1])
    missing = {"kernel_image_path": str(tmp_path / "absent")}
    assert "cannot be opened" in fault(call(fc, "PUT", "/boot-source", missing)[1])
    assert call(fc, "PUT", "/boot-source", {"kernel_image_path": str(files["kernel"])})[0] == 204
    assert "root block device" in fault(call(fc, "PUT", "/actions", start)[1])
    drive = {"drive_id": "rootfs", "path_on_host": str(tmp_path / "absent"),
             "is_root_device": True, "is_read_only": False}  # fmt: skip
    assert "No such file" in fault(call(fc, "PUT", "/drives/rootfs", drive)[1])
    drive["path_on_host"] = str(files["root"])
    assert call(fc, "PUT", "/drives/rootfs", drive)[0] == 204
    other = dict(drive, drive_id="other")
    assert "root block device already exists" in fault(call(fc, "PUT", "/drives/other", other)[1])
    assert call(fc, "PUT", "/boot-source", {"kernel_image_path": str(files["bz"])})[0] == 204
    assert "ELF" in fault(call(fc, "PUT", "/actions", start)[1])
    assert call(fc, "PUT", "/boot-source", {"kernel_image_path": str(files["kernel"])})[0] == 204
    assert call(fc, "PUT", "/actions", start)[0] == 204
    assert call(fc, "GET", "/")[1]["state"] == "Running"


def test_pre_boot_and_post_boot_rules(files: dict[str, Path]) -> None:
    fc = configured(files)
    assert fault(call(fc, "PATCH", "/vm", {"state": "Paused"})[1]) == POST_BOOT_FAULT
    ctrl = {"action_type": "SendCtrlAltDel"}
    assert fault(call(fc, "PUT", "/actions", ctrl)[1]) == POST_BOOT_FAULT
    patch = {"drive_id": "rootfs", "path_on_host": str(files["root"])}
    assert fault(call(fc, "PATCH", "/drives/rootfs", patch)[1]) == POST_BOOT_FAULT
    flush = {"action_type": "FlushMetrics"}
    assert fault(call(fc, "PUT", "/actions", flush)[1]) == POST_BOOT_FAULT
    assert call(fc, "PUT", "/actions", {"action_type": "InstanceStart"})[0] == 204

    for path, body in [
        ("/machine-config", {"vcpu_count": 2, "mem_size_mib": 256}),
        ("/boot-source", {"kernel_image_path": str(files["kernel"])}),
        ("/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(files["root"]),
                            "is_root_device": True, "is_read_only": False}),
        ("/vsock", {"guest_cid": 3, "uds_path": "/tmp/x.sock"}),
        ("/logger", {"level": "Debug"}),
        ("/metrics", {"metrics_path": str(files["root"])}),
        ("/actions", {"action_type": "InstanceStart"}),
    ]:  # fmt: skip
        status, answer = call(fc, "PUT", path, body)
        assert (status, fault(answer)) == (400, PRE_BOOT_FAULT), path
    assert call(fc, "PATCH", "/vm", {"state": "Paused"})[0] == 204
    assert call(fc, "GET", "/")[1]["state"] == "Paused"
    assert call(fc, "PATCH", "/vm", {"state": "Resumed"})[0] == 204
    assert call(fc, "PATCH", "/drives/rootfs", patch)[0] == 204
    assert call(fc, "PUT", "/actions", ctrl)[0] == 204


def test_answers_follow_the_spec(files: dict[str, Path]) -> None:
    fc = configured(files)
    info = call(fc, "GET", "/")[1]
    assert info == {"app_name": "Firecracker", "id": "anonymous-instance",
                    "state": "Not started", "vmm_version": "1.16.1"}  # fmt: skip
    assert call(fc, "GET", "/version")[1] == {"firecracker_version": "1.16.1"}
    assert call(fc, "GET", "/machine-config")[1]["vcpu_count"] == 1  # documented default
    cfg = call(fc, "GET", "/vm/config")[1]
    assert cfg["drives"][0]["drive_id"] == "rootfs"
    assert cfg["boot-source"]["kernel_image_path"] == str(files["kernel"])
    # Every request was recorded with its outcome.
    assert [(c.method, c.path, c.status) for c in fc.calls][-3:] == [
        ("GET", "/version", 200),
        ("GET", "/machine-config", 200),
        ("GET", "/vm/config", 200),
    ]


def test_metrics_only_once_and_files_must_exist(tmp_path: Path) -> None:
    fc = FirecrackerDouble()
    target = tmp_path / "m"
    assert "No such file" in fault(call(fc, "PUT", "/metrics", {"metrics_path": str(target)})[1])
    assert "No such file" in fault(call(fc, "PUT", "/logger", {"log_path": str(target)})[1])
    target.touch()
    assert call(fc, "PUT", "/metrics", {"metrics_path": str(target)})[0] == 204
    assert "Reinitialization" in fault(
        call(fc, "PUT", "/metrics", {"metrics_path": str(target)})[1]
    )
