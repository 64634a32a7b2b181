"""Typed errors of the ledger: pricing, vouchers, reservations.

All derive from :class:`cocoon.errors.PaymentError`. ``status`` is the HTTP status the
client's edge should answer with when the error ends a request.
"""

from __future__ import annotations

from cocoon.errors import PaymentError

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


class PricingError(PaymentError):
    """Prices or token counts are out of range (negative, fee above price, cached > prompt)."""

    status = 500


class InsufficientFunds(PaymentError):
    """The client's available balance cannot cover the reservation (HTTP 402)."""

    status = 402

    def __init__(self, message: str, *, available: int = 0, requested: int = 0) -> None:
        super().__init__(message)
        self.available = available
        self.requested = requested


class ReservationError(PaymentError):
    """A reservation operation does not fit the reservation's state (unknown id, already
    released, reused id with other parameters)."""


class VoucherInvalid(PaymentError):
    """The voucher's signature does not verify under the expected key.

    One error whatever the cause (forged, wrong key, tampered field, wrong signer): what a
    remote peer learns stays opaque; the message says precisely why for logs."""

    status = 400


class VoucherReplay(PaymentError):
    """The voucher is not strictly newer than the last accepted one on its channel."""

    status = 409


class VoucherRegression(VoucherReplay):
    """The voucher is numbered higher but a cumulative amount went down."""


class LedgerError(PaymentError):
    """The ledger file cannot be used (schema from a newer version, failed integrity)."""
