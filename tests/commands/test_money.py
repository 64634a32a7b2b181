"""TON as a person types and reads it: exact parsing, formatting, ISO-8601 dates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cocoon.errors import ConfigError
from cocoon.money import MAX_NANOTON, format_ton, iso_utc, parse_ton


@pytest.mark.parametrize(("text", "nano"), [
    ("1.5", 1_500_000_000),
    ("0.000000186", 186),
    ("0.000000001", 1),
    ("10", 10 * 10**9),
    ("2.", 2 * 10**9),
    (".5", 500_000_000),
    (" 3.25 ", 3_250_000_000),
    ("1000000000", 10**18),
    ("0.100000000", 100_000_000),
])
def test_parse_ton_is_exact(text: str, nano: int) -> None:
    assert parse_ton(text) == nano


@pytest.mark.parametrize(("text", "why"), [
    ("0.0000000001", "at most 9 decimals"),
    ("1.1234567891", "at most 9 decimals"),
    ("-1", "positive"),
    ("-0.5", "positive"),
    ("+1", "without a sign"),
    ("0", "positive"),
    ("0.000000000", "positive"),
    ("abc", "not an amount of TON"),
    ("", "not an amount of TON"),
    (".", "not an amount of TON"),
    ("1e9", "not an amount of TON"),
    ("1_000", "not an amount of TON"),
    ("1,5", "not an amount of TON"),
    ("inf", "not an amount of TON"),
    ("nan", "not an amount of TON"),
    ("1.2.3", "not an amount of TON"),
    ("0x10", "not an amount of TON"),
    (str(2**120), "more than a TON message can carry"),
])
def test_parse_ton_rejects_with_a_typed_error(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as ei:
        parse_ton(text, what="topup")
    assert str(ei.value).startswith("topup")


def test_zero_only_when_allowed() -> None:
    assert parse_ton("0", allow_zero=True) == 0
    assert parse_ton("0.0", allow_zero=True) == 0
    with pytest.raises(ConfigError, match="zero or a positive"):
        parse_ton("-2", allow_zero=True)


@pytest.mark.parametrize(("nano", "text"), [
    (1_500_000_000, "1.5 TON"),
    (186, "0.000000186 TON"),
    (0, "0 TON"),
    (10 * 10**9, "10 TON"),
    (-50_000_000, "-0.05 TON"),
    (MAX_NANOTON, f"{MAX_NANOTON // 10**9}.{MAX_NANOTON % 10**9:09d} TON"),
])
def test_format_ton(nano: int, text: str) -> None:
    assert format_ton(nano) == text


@given(st.integers(min_value=1, max_value=MAX_NANOTON))
def test_what_is_printed_parses_back_to_the_same_nanoton(nano: int) -> None:
    assert parse_ton(format_ton(nano).removesuffix(" TON")) == nano


def test_iso_utc() -> None:
    assert iso_utc(1796591490) == "2026-12-06T21:11:30Z"
    assert iso_utc(0) is None and iso_utc(None) is None
