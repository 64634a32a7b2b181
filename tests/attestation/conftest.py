"""Fixtures for attestation tests: the real TDX quote and a time inside its validity."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cocoon.attestation.tdx import parse_quote

QUOTE_PATH = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "tdx-quote-v4.dat"
if not QUOTE_PATH.exists():  # the checkout may sit elsewhere than /work/main
    QUOTE_PATH = Path("/work/shared/testdata/tdx-quote-v4.dat")


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
