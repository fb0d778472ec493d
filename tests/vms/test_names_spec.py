"""VM names and sizing defaults (no guests booted)."""

from __future__ import annotations

import pytest

from banger.config import Config
from banger.vms import spec
from banger.vms.names import ADJECTIVES, NOUNS, InvalidName, generate_name, validate_name


@pytest.mark.parametrize("name", ["a", "web-1", "0day", "x" * 63, "a-b-c"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "vm name is required"),
        ("x" * 64, "is 64 characters; max is 63"),
        ("Web", "invalid character 'W' at position 1"),
        ("web_1", "invalid character '_' at position 4"),
        ("wéb", "invalid character 'é' at position 2"),
        ("-web", "cannot start or end with '-'"),
        ("web-", "cannot start or end with '-'"),
    ],
)
def test_invalid_names_say_what_and_where(name: str, message: str) -> None:
    with pytest.raises(InvalidName, match=message):
        validate_name(name)


@pytest.mark.parametrize(
    ("name", "suggested"),
    [("Bad_Name", "bad-name"), ("my app", "my-app"), ("-web-", "web"), ("Web__1", "web-1")],
)
def test_invalid_names_suggest_the_nearest_valid_one(name: str, suggested: str) -> None:
    with pytest.raises(InvalidName, match=f"; try '{suggested}'$"):
        validate_name(name)
    assert validate_name(suggested) == suggested


def test_no_suggestion_without_a_usable_name() -> None:
    with pytest.raises(InvalidName) as info:
        validate_name("___")
    assert "try" not in str(info.value)


def test_generated_names_are_valid_adjective_noun_and_avoid_taken() -> None:
    taken = {f"{a}-{n}" for a in ADJECTIVES for n in NOUNS} - {"calm-otter"}
    assert generate_name(taken) == "calm-otter"
    name = generate_name(set())
    adjective, noun = name.split("-")
    assert adjective in ADJECTIVES and noun in NOUNS
    assert validate_name(name) == name
    # everything taken: still a fresh valid name
    crowded = generate_name(taken | {"calm-otter"})
    assert crowded not in taken and validate_name(crowded)


def test_sizing_flag_beats_config_beats_host_aware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec, "host_cpus", lambda: 16)
    monkeypatch.setattr(spec, "host_memory_mib", lambda: 32768)
    s = spec.resolve_sizing(Config())
    assert (s.vcpus, s.vcpus_from) == (4, "auto")
    assert (s.memory_mib, s.memory_from) == (4096, "auto")
    assert (s.disk_size_bytes, s.disk_from) == (8 << 30, "builtin")
    cfg = Config.model_validate({"vm_defaults": {"vcpu": 2, "memory_mib": 1024, "disk_size": "4G"}})
    s = spec.resolve_sizing(cfg)
    assert (s.vcpus, s.memory_mib, s.disk_size_bytes) == (2, 1024, 4 << 30)
    assert s.vcpus_from == s.memory_from == s.disk_from == "config"
    s = spec.resolve_sizing(cfg, vcpus=3, memory_mib=700, disk_size="1G")
    assert (s.vcpus, s.memory_mib, s.disk_size_bytes, s.vcpus_from) == (3, 700, 1 << 30, "flag")
    assert s.line() == "3 vCPU (flag) · 700 MiB (flag) · 1.0 GiB work disk (flag)"


def test_sizing_caps_and_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec, "host_cpus", lambda: 64)
    monkeypatch.setattr(spec, "host_memory_mib", lambda: 512 * 1024)
    s = spec.resolve_sizing(Config())
    assert (s.vcpus, s.memory_mib) == (4, 8192)  # capped
    monkeypatch.setattr(spec, "host_cpus", lambda: 2)
    monkeypatch.setattr(spec, "host_memory_mib", lambda: 2048)
    s = spec.resolve_sizing(Config())
    assert (s.vcpus, s.vcpus_from) == (1, "builtin")  # 2/4 rounds to 0: the floor
    assert (s.memory_mib, s.memory_from) == (512, "builtin")  # 2048/8 = 256 < floor


def test_bad_disk_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not understood"):
        spec.resolve_sizing(Config(), disk_size="lots")
