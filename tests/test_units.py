"""Size strings from flags, config and RPC params: exact, bounded, clear errors."""

from __future__ import annotations

import pytest

from banger.units import MAX_SIZE, parse_size


def test_sizes_are_exact() -> None:
    assert parse_size("16T") == MAX_SIZE == 16 << 40
    assert parse_size("0.5K") == 512
    assert parse_size("12345678901234") == 12345678901234  # no float rounding


@pytest.mark.parametrize("text", ["0.0001", "0.1", "0"])
def test_below_one_byte_is_refused(text: str) -> None:
    # A float check before rounding let "0.0001" through as a 0-byte disk.
    with pytest.raises(ValueError, match="at least one byte"):
        parse_size(text)


@pytest.mark.parametrize("text", ["17T", "99999999999999T", "9" * 60])
def test_huge_sizes_are_refused(text: str) -> None:
    # These reached SQLite ("int too large to convert") or truncate ("File too large").
    with pytest.raises(ValueError, match="16 TiB maximum"):
        parse_size(text)


def test_long_digit_strings_are_not_understood() -> None:
    # float() turned 400 digits into infinity: OverflowError, an internal error in the daemon.
    with pytest.raises(ValueError, match="not understood"):
        parse_size("9" * 400 + "T")
