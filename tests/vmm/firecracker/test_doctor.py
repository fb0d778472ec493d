"""`banger doctor`: the Firecracker version against the supported range, and the VMM choice."""

from __future__ import annotations

import json
from pathlib import Path

from banger.vmm.accel import kvm_verdict
from banger.vmm.firecracker import SUPPORTED_RANGE
from tests.conftest import BangerEnv


def _checks(banger_env: BangerEnv, path: str) -> dict[str, dict[str, str]]:
    banger_env.env["PATH"] = path
    proc = banger_env.banger("doctor", "--json")
    return {c["name"]: c for c in json.loads(proc.stdout)}


def test_doctor_reports_version_range_and_choice(
    banger_env: BangerEnv, fake_bin_dir: Path, tmp_path: Path
) -> None:
    base = banger_env.env["PATH"]
    checks = _checks(banger_env, f"{fake_bin_dir}:{base}")
    fc = checks["firecracker"]
    assert fc["status"] == "PASS"
    assert "firecracker 1.16.1" in fc["detail"] and SUPPORTED_RANGE in fc["detail"]
    verdict = kvm_verdict()
    vmm = checks["vmm"]["detail"]
    if verdict.usable:
        assert vmm.startswith("VMs run on firecracker")
    else:
        assert vmm.startswith("VMs run on qemu") and verdict.reason in vmm

    # A release outside the range is flagged.
    old = tmp_path / "old"
    old.mkdir()
    (old / "firecracker").write_text("#!/bin/sh\necho 'Firecracker v1.7.0'\n")
    (old / "firecracker").chmod(0o755)
    fc = _checks(banger_env, f"{old}:{base}")["firecracker"]
    assert fc["status"] == "WARN" and "outside the supported range" in fc["detail"]


def test_doctor_fails_when_firecracker_is_forced_but_cannot_run(banger_env: BangerEnv) -> None:
    banger_env.write_config('vmm = "firecracker"\njailer_enabled = true\n')
    banger_env.env["PATH"] = "/usr/bin:/bin:/usr/sbin:/sbin"
    proc = banger_env.banger("doctor", "--json")
    assert proc.returncode == 1
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks["vmm"]["status"] == "FAIL"
    assert "not installed" in checks["vmm"]["detail"]
    assert checks["jailer"]["status"] == "FAIL"
    assert "jailer_uid / jailer_gid are not set" in checks["jailer"]["detail"]
