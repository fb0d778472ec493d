"""`banger ssh-config` and the generated file, checked with OpenSSH's own parser (`ssh -G`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from banger.network import sshconfig
from banger.network.sshconfig import UserModeAlias
from tests.conftest import BangerEnv, BuiltImage, _stop_daemon
from tests.vms.conftest import make_vm_env


def ssh_g(host: str, *, config: Path) -> dict[str, str]:
    """Effective options for `host` as OpenSSH computes them (no connection is made)."""
    out = subprocess.run(
        ["ssh", "-G", "-F", str(config), host],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    opts: dict[str, str] = {}
    for line in out.splitlines():
        k, _, v = line.partition(" ")
        opts.setdefault(k, v)
    return opts


def test_rendered_config_routes_vm_names(tmp_path: Path) -> None:
    key, kh = tmp_path / "ssh" / "id_ed25519", tmp_path / "ssh" / "known_hosts"
    conf = tmp_path / "ssh_config"
    text = sshconfig.render(key, kh, [UserModeAlias("usr", 40123)])
    assert sshconfig.write_if_changed(conf, text) is True
    assert sshconfig.write_if_changed(conf, text) is False
    assert conf.stat().st_mode & 0o777 == 0o600

    bridged = ssh_g("devbox.vm", config=conf)
    assert bridged["hostname"] == "devbox.vm" and bridged["port"] == "22"
    assert bridged["user"] == "root"
    assert bridged["identityfile"] == str(key)
    assert bridged["userknownhostsfile"] == str(kh)
    assert bridged["stricthostkeychecking"] == "true"

    user_mode = ssh_g("usr.vm", config=conf)
    assert user_mode["hostname"] == "127.0.0.1" and user_mode["port"] == "40123"
    assert user_mode["hostkeyalias"] == "usr.vm"
    assert user_mode["identityfile"] == str(key)

    # Other hosts are untouched.
    assert ssh_g("example.com", config=conf).get("identityfile") != str(key)


def test_bad_alias_entries_are_skipped(tmp_path: Path) -> None:
    text = sshconfig.render(
        tmp_path / "k",
        tmp_path / "kh",
        [UserModeAlias("bad name\nHost *", 1), UserModeAlias("x", 0)],
    )
    assert "bad name" not in text and "Port 0" not in text


def test_cli_prints_path_and_include_line(banger_env: BangerEnv) -> None:
    p = banger_env.banger("ssh-config", check=True)
    conf = banger_env.paths.config_dir / "ssh_config"
    assert f"banger ssh_config: {conf}" in p.stdout
    assert f"Include {conf}" in p.stdout


def test_install_is_idempotent_and_uninstall_restores(banger_env: BangerEnv) -> None:
    home = banger_env.root / "home"
    (home / ".ssh").mkdir(parents=True)
    user_conf = home / ".ssh" / "config"
    original = "Host example\n  User alice\n"
    user_conf.write_text(original)
    user_conf.chmod(0o644)
    banger_env.env["HOME"] = str(home)

    p = banger_env.banger("ssh-config", "--install", check=True)
    assert "added to" in p.stdout
    first = user_conf.read_text()
    conf = banger_env.paths.config_dir / "ssh_config"
    assert first.startswith(sshconfig.BEGIN + f"\nInclude {conf}\n")
    assert first.endswith(original)
    assert user_conf.stat().st_mode & 0o777 == 0o644
    assert conf.exists()  # the base file exists even before the daemon ever ran

    p = banger_env.banger("ssh-config", "--install", check=True)
    assert "already in" in p.stdout
    assert user_conf.read_text() == first

    # OpenSSH itself (reading the user's file, as it would from ~; it takes the home directory
    # from passwd, not $HOME, hence -F) applies banger's settings to *.vm and keeps the user's own.
    opts = ssh_g("devbox.vm", config=user_conf)
    assert opts["user"] == "root"
    assert opts["identityfile"] == str(banger_env.paths.ssh_dir / "id_ed25519")
    assert ssh_g("example", config=user_conf)["user"] == "alice"

    p = banger_env.banger("ssh-config", "--uninstall", check=True)
    assert "removed from" in p.stdout
    assert user_conf.read_text() == original
    p = banger_env.banger("ssh-config", "--uninstall", check=True)
    assert "was not in" in p.stdout
    assert user_conf.read_text() == original


def test_install_creates_ssh_dir_and_follows_symlink(banger_env: BangerEnv) -> None:
    home = banger_env.root / "home2"
    home.mkdir()
    banger_env.env["HOME"] = str(home)
    banger_env.banger("ssh-config", "--install", check=True)
    assert (home / ".ssh").stat().st_mode & 0o777 == 0o700
    assert (home / ".ssh" / "config").read_text().startswith(sshconfig.BEGIN)

    dotfiles = banger_env.root / "dotfiles-ssh-config"
    dotfiles.write_text("Host x\n")
    (home / ".ssh" / "config").unlink()
    (home / ".ssh" / "config").symlink_to(dotfiles)
    banger_env.banger("ssh-config", "--install", check=True)
    assert (home / ".ssh" / "config").is_symlink()
    assert dotfiles.read_text().startswith(sshconfig.BEGIN)


@pytest.mark.slow
def test_generated_config_connects_to_a_real_guest_only_with_its_pinned_key(
    debian_image: BuiltImage,
) -> None:
    """`ssh <name>.vm` through the generated file reaches a real guest (its key was pinned at
    create), `banger vm ssh` too; and with the pin gone OpenSSH refuses instead of learning the
    key (`StrictHostKeyChecking yes`, not `accept-new`)."""
    be = make_vm_env(debian_image.cache_home)
    try:
        be.banger("image", "pull", "debian-bookworm", check=True, timeout=600)
        be.banger("vm", "create", "--name", "sshc", check=True, timeout=600)
        conf = be.paths.config_dir / "ssh_config"
        known_hosts = be.paths.ssh_dir / "known_hosts"
        assert "StrictHostKeyChecking yes" in conf.read_text()
        assert "sshc.vm " in known_hosts.read_text()

        plain = _ssh(conf, "sshc.vm", "echo via-config-$(hostname)")
        assert plain.returncode == 0, plain.stderr
        assert plain.stdout == "via-config-sshc\n"
        via_cli = be.banger("vm", "ssh", "sshc", "--", "echo via-cli", timeout=120)
        assert via_cli.returncode == 0, via_cli.stderr
        assert via_cli.stdout == "via-cli\n"
        # The daemon's umask 077 stays on the host: the guest's own tree keeps its usual modes.
        modes = _ssh(conf, "sshc.vm", "stat -c '%a %n' / /tmp /etc/passwd /.banger /.banger/bin")
        assert modes.stdout.splitlines() == [
            "755 /",
            "1777 /tmp",
            "644 /etc/passwd",
            "755 /.banger",
            "755 /.banger/bin",
        ], modes.stderr

        # The same config with an empty known_hosts: no pin, no connection, nothing learned.
        empty = be.root / "empty_known_hosts"
        empty.write_text("")
        unpinned = be.root / "ssh_config_unpinned"
        unpinned.write_text(conf.read_text().replace(str(known_hosts), str(empty)))
        refused = _ssh(unpinned, "sshc.vm", "echo should-not-run")
        assert refused.returncode == 255
        assert "should-not-run" not in refused.stdout
        assert "Host key verification failed" in refused.stderr
        assert empty.read_text() == ""
    finally:
        be.banger("vm", "delete", "sshc", timeout=120)
        _stop_daemon(be)
        shutil.rmtree(be.root, ignore_errors=True)


def _ssh(config: Path, host: str, command: str) -> subprocess.CompletedProcess[str]:
    """Plain OpenSSH with only `config` (BatchMode: a prompt would be a failure)."""
    return subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", host, "--", command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
