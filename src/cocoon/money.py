"""Money and time as a person types and reads them (the command line, error messages).

Inside, money is nanoTON ints (STYLE: money is integers). A person types and reads TON with
decimals (``1.5``, ``0.000000186``): every amount argument goes through :func:`parse_ton` and
every amount printed through :func:`format_ton`. Only ``--json`` output carries nanoTON, in
fields whose names end in ``_nanoton``. Dates are ISO-8601 in UTC (:func:`iso_utc`), never
Unix seconds.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from cocoon.errors import ConfigError

__all__ = ["MAX_NANOTON", "MONEY", "NANO_PER_TON", "format_ton", "iso_utc", "parse_config_ton",
           "parse_ton", "ton_decimal"]

NANO_PER_TON = 10**9
"""nanoTON in one TON: an amount has at most 9 decimals."""
MAX_NANOTON = (1 << 120) - 1
"""The largest amount a TON message or contract field can carry (``Coins``: 120 bits)."""

_AMOUNT = re.compile(r"(?P<sign>[+-]?)(?P<int>\d*)(?:\.(?P<frac>\d*))?")


def parse_ton(text: str, *, allow_zero: bool = False, what: str = "amount") -> int:
    """``"1.5"`` TON -> ``1_500_000_000`` nanoTON, exactly.

    Plain decimal notation only (digits, at most one point, at most 9 decimals: 1 nanoTON is
    0.000000001 TON); no exponent, sign, separators, ``inf`` or ``nan``. Zero only with
    ``allow_zero``. Anything else is a :class:`ConfigError` naming ``what`` and the text."""
    s = text.strip()
    m = _AMOUNT.fullmatch(s)
    if m is None or not (m["int"] or m["frac"]):
        raise ConfigError(f"{what}: not an amount of TON: {text!r} (write TON with decimals, "
                          "e.g. 1.5 or 0.000000186)")
    frac = m["frac"] or ""
    if len(frac) > 9:
        raise ConfigError(f"{what}: at most 9 decimals (1 nanoTON = 0.000000001 TON), got "
                          f"{text!r}")
    nano = int(m["int"] or "0") * NANO_PER_TON + int(frac.ljust(9, "0"))
    if m["sign"] == "-" and nano:
        raise ConfigError(f"{what} must be {'zero or ' if allow_zero else ''}a positive amount "
                          f"of TON, got {text!r}")
    if m["sign"]:
        raise ConfigError(f"{what}: write the amount without a sign, got {text!r}")
    if nano == 0 and not allow_zero:
        raise ConfigError(f"{what} must be a positive amount of TON, got {text!r}")
    if nano > MAX_NANOTON:
        raise ConfigError(f"{what}: {text!r} TON is more than a TON message can carry")
    return nano


def format_ton(nano: int) -> str:
    """``1_500_000_000`` nanoTON -> ``"1.5 TON"`` (exact: every decimal that is there, no
    trailing zeros, no exponent)."""
    whole, frac = divmod(abs(nano), NANO_PER_TON)
    decimals = f".{frac:09d}".rstrip("0") if frac else ""
    return f"{'-' if nano < 0 else ''}{whole}{decimals} TON"


def ton_decimal(nano: int) -> str:
    """``1_500_000_000`` nanoTON -> ``"1.5"``: :func:`format_ton` without the unit (config
    files, JSON fields that say their currency)."""
    return format_ton(nano).removesuffix(" TON")


MONEY: Final = {"money": True}
"""Dataclass field metadata of a config key that is an amount of money: nanoTON inside,
TON with decimals in a TOML file and in ``--set`` (see :func:`parse_config_ton`)."""


def parse_config_ton(value: object, where: str) -> int:
    """A money key's TOML value -> nanoTON. A string of TON with decimals, optionally ending
    in ``TON`` (``"0.05"``, ``"0.000000002 TON"``). A bare number is refused, naming the
    string to write: an integer here once meant nanoTON, and a float cannot hold every
    amount exactly."""
    if isinstance(value, str):
        text = value.strip()
        if text.upper().endswith("TON"):
            text = text[:-3].rstrip()
        return parse_ton(text, allow_zero=True, what=where)
    if type(value) is int and value >= 0:
        raise ConfigError(f'{where}: write TON with decimals, in quotes: "'
                          f'{ton_decimal(value)}" for {value} nanoTON '
                          f"(amounts in config files are TON)")
    raise ConfigError(f'{where}: expected TON with decimals, in quotes (e.g. "1.5"), got '
                      f"{value!r}")


def iso_utc(unix: int | float | None) -> str | None:
    """Unix seconds -> ``"2026-12-06T21:04:10Z"``; None (or 0: "not set") -> None."""
    if not unix:
        return None
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
