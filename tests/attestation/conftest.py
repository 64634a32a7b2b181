"""Fixtures for attestation tests: real TDX quotes and collateral, times inside their validity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cocoon.attestation.tdx import parse_quote

QUOTE_PATH = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "tdx-quote-v4.dat"
if not QUOTE_PATH.exists():  # the checkout may sit elsewhere than /work/main
    QUOTE_PATH = Path("/work/shared/testdata/tdx-quote-v4.dat")
QUOTE_B_PATH = QUOTE_PATH.with_name("tdx-quote-v4-b.dat")
COLLATERAL_B_PATH = QUOTE_PATH.with_name("tdx-quote-v4-b.collateral.json")


@pytest.fixture(scope="session")
def real_quote() -> bytes:
    if not QUOTE_PATH.exists():
        pytest.skip(f"{QUOTE_PATH} missing")
    return QUOTE_PATH.read_bytes()


@pytest.fixture(scope="session")
def valid_at(real_quote: bytes) -> datetime:
    """max(not_before) + 1 day, checked to lie before min(not_after)."""
    certs = parse_quote(real_quote).certificates()
    at = max(c.not_valid_before_utc for c in certs) + timedelta(days=1)
    assert at < min(c.not_valid_after_utc for c in certs)
    return at


@pytest.fixture(scope="session")
def real_quote_b() -> bytes:
    """Phala dcap-qvl's sample TDX quote (FMSPC 20a06f000000)."""
    if not QUOTE_B_PATH.exists():
        pytest.skip(f"{QUOTE_B_PATH} missing")
    return QUOTE_B_PATH.read_bytes()


@pytest.fixture(scope="session")
def real_collateral_b() -> bytes:
    """The Intel collateral dcap-qvl ships for ``real_quote_b`` (its combined JSON shape)."""
    if not COLLATERAL_B_PATH.exists():
        pytest.skip(f"{COLLATERAL_B_PATH} missing")
    return COLLATERAL_B_PATH.read_bytes()


@pytest.fixture(scope="session")
def collateral_b_at() -> datetime:
    """Inside every window of the b collateral: TCB info 2025-09-02T07:41:59Z..2025-10-02T
    07:41:59Z, QE identity from 07:10:03Z, PCK CRL 2025-09-02T07:03:51Z..2025-10-02T07:03:51Z."""
    return datetime(2025, 9, 15, 12, 0, tzinfo=UTC)
