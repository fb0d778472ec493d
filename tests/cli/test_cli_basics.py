from __future__ import annotations

from tests.conftest import BangerEnv


def test_status_when_no_daemon(banger_env: BangerEnv) -> None:
    proc = banger_env.banger("daemon", "status")
    assert proc.returncode == 3
    assert "not running" in proc.stdout


def test_doctor_explains_the_host(banger_env: BangerEnv) -> None:
    proc = banger_env.banger("doctor")
    lines = proc.stdout.splitlines()
    names = {line.split()[1] for line in lines if line[:4] in {"PASS", "WARN", "FAIL"}}
    assert {"qemu", "kvm", "firecracker", "mkfs.ext4", "debugfs", "ssh", "ip", "nft"} <= names
    assert "\x1b[" not in proc.stdout  # NO_COLOR and not a TTY: no escape codes
    kvm = next(line for line in lines if line.split()[1:2] == ["kvm"])
    # whatever this host is, doctor must say which accelerator QEMU will use
    assert "QEMU uses" in kvm
    assert proc.returncode == (1 if any(line.startswith("FAIL") for line in lines) else 0)


def test_doctor_fails_on_impossible_accel(banger_env: BangerEnv) -> None:
    banger_env.write_config('accel = "kvm"\nqemu_bin = "/nonexistent/qemu"\n')
    proc = banger_env.banger("doctor")
    assert proc.returncode == 1
    assert any(line.startswith("FAIL") and "qemu" in line for line in proc.stdout.splitlines())


def test_completion_script(banger_env: BangerEnv) -> None:
    out = banger_env.banger("completion", "bash", check=True).stdout
    assert "_BANGER_COMPLETE" in out


def test_help_lists_groups(banger_env: BangerEnv) -> None:
    out = banger_env.banger("--help", check=True).stdout
    for group in ("daemon", "doctor", "image", "kernel", "vm"):
        assert group in out


def test_failed_daemon_start_reports_only_its_own_error(banger_env: BangerEnv) -> None:
    banger_env.write_config("vm_defaults = 3\n")
    first = banger_env.banger("vm", "list")
    assert first.returncode == 1 and "key 'vm_defaults'" in first.stderr
    banger_env.write_config('log_level = "loud"\n')
    second = banger_env.banger("vm", "list")
    # the boot log keeps both failures; the message names only this start's
    assert second.returncode == 1 and "key 'log_level'" in second.stderr
    assert "vm_defaults" not in second.stderr and "Traceback" not in second.stderr
