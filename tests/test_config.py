from __future__ import annotations

from pathlib import Path

import pytest

from banger.config import ConfigError, load_config
from banger.paths import Paths
from banger.units import format_bytes, parse_size


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "none.toml")
    assert cfg.accel == "auto"
    assert cfg.dns_port == 42069


def test_unknown_key_is_named(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[vm_defaults]\nvcpus = 2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'vm_defaults.vcpus'"):
        load_config(p)


def test_bad_value_is_named(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('accel = "hyperv"\n[vm_defaults]\ndisk_size = "lots"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "'accel'" in str(e.value)
    assert "vm_defaults.disk_size" in str(e.value)
    assert str(p) in str(e.value)


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("accel = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_log_level_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "c.toml"
    p.write_text('log_level = "info"\n')
    monkeypatch.setenv("BANGER_LOG_LEVEL", "DEBUG")
    assert load_config(p).log_level == "debug"
    monkeypatch.setenv("BANGER_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match="BANGER_LOG_LEVEL"):
        load_config(p)


def test_paths_follow_xdg_and_ignore_relative_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    p = Paths.from_env()
    assert p.db_file == tmp_path / "state" / "banger" / "banger.db"
    assert p.config_file == Path.home() / ".config" / "banger" / "config.toml"
    assert p.socket == tmp_path / "run" / "banger" / "bangerd.sock"
    assert p.oci_cache_dir.name == "oci"


def test_sizes() -> None:
    assert parse_size("8G") == 8 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError, match="not understood"):
        parse_size("8 parsecs")
    assert format_bytes(1536 << 20) == "1.5 GiB"
