"""The ledger's failures, re-exported from :mod:`cocoon.errors` (the one tree) so ledger code
and its users can import them from here: pricing, vouchers, reservations, the ledger file.
``status`` is the HTTP status the client's edge answers with when one ends a request."""

from __future__ import annotations

from cocoon.errors import (
    InsufficientFunds,
    LedgerError,
    PaymentError,
    PricingError,
    ReservationError,
    VoucherInvalid,
    VoucherRegression,
    VoucherReplay,
)

__all__ = [
    "InsufficientFunds",
    "LedgerError",
    "PaymentError",
    "PricingError",
    "ReservationError",
    "VoucherInvalid",
    "VoucherRegression",
    "VoucherReplay",
]
