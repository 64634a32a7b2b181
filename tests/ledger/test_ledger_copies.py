"""A client's / worker's copy of its account: it adopts only verified, newer, consistent
statements from the proxy."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.errors import PaymentError
from cocoon.ledger.copies import AccountCopy
from cocoon.ledger.errors import VoucherInvalid, VoucherRegression, VoucherReplay
from cocoon.ledger.vouchers import Voucher, public_key_bytes, sign

PROXY = Ed25519PrivateKey.generate()


def voucher(seqno: int, nano: int, key: Ed25519PrivateKey = PROXY,
            kind: str = "client_charge") -> bytes:
    v = Voucher(kind, "client:abc", seqno, nano, nano // 2,  # type: ignore[arg-type]
                public_key_bytes(key))
    return sign(v, key).to_bytes()


def test_accepts_newer_and_pins_the_proxy_key() -> None:
    copy = AccountCopy("client_charge")
    copy.accept(voucher(1, 10), deposited=100, charged=10, reserved=0, earned=0)
    copy.accept(voucher(2, 30), deposited=100, charged=30, reserved=5, earned=0)
    snap = copy.snapshot()
    assert snap["voucher"]["seqno"] == 2 and snap["available"] == 100 - 30 - 5
    with pytest.raises(VoucherInvalid):  # another key, even if self-consistent
        copy.accept(voucher(3, 40, Ed25519PrivateKey.generate()), deposited=100, charged=40,
                    reserved=0, earned=0)
    assert copy.rejected == 1 and copy.voucher is not None and copy.voucher.seqno == 2


@pytest.mark.parametrize(("seqno", "nano", "charged", "error"), [
    (2, 35, 35, VoucherReplay),       # same seqno, other amount
    (1, 5, 5, VoucherReplay),         # older
    (3, 20, 20, VoucherRegression),   # newer seqno, smaller amount
    (3, 40, 41, VoucherInvalid),      # stated figure disagrees with the signed one
])
def test_rejects_without_adopting(seqno: int, nano: int, charged: int,
                                  error: type[PaymentError]) -> None:
    copy = AccountCopy("client_charge")
    copy.accept(voucher(2, 30), deposited=100, charged=30, reserved=0, earned=0)
    with pytest.raises(error):
        copy.accept(voucher(seqno, nano), deposited=100, charged=charged, reserved=0,
                    earned=0)
    assert copy.charged == 30 and copy.voucher is not None and copy.voucher.seqno == 2


def test_the_same_statement_again_is_a_no_op() -> None:
    """The proxy re-sends the newest statement when a side reconnects: not a replay."""
    copy = AccountCopy("client_charge")
    first = copy.accept(voucher(2, 30), deposited=100, charged=30, reserved=0, earned=0)
    again = copy.accept(voucher(2, 30), deposited=100, charged=30, reserved=0, earned=0)
    assert again == first and copy.rejected == 0
    with pytest.raises(VoucherReplay):  # same voucher, other figures: not the same statement
        copy.accept(voucher(2, 30), deposited=100, charged=30, reserved=7, earned=0)
    assert copy.rejected == 1 and copy.reserved == 0


def test_tampered_bytes_and_wrong_kind() -> None:
    copy = AccountCopy("worker_payout")
    good = voucher(1, 10, kind="worker_payout")
    bad = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(VoucherInvalid):
        copy.accept(bad, deposited=0, charged=0, reserved=0, earned=10)
    with pytest.raises(VoucherInvalid):
        copy.accept(voucher(1, 10), deposited=0, charged=0, reserved=0, earned=10)
    copy.accept(good, deposited=0, charged=0, reserved=0, earned=10)
    assert copy.snapshot()["earned"] == 10 and copy.rejected == 2
