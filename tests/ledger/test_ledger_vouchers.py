"""Vouchers: canonical encoding, signatures, and the monotonic book."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from cocoon.ledger import (
    SignedVoucher,
    Voucher,
    VoucherBook,
    VoucherInvalid,
    VoucherOrder,
    VoucherRegression,
    VoucherReplay,
    compare,
    sign,
    verify,
    voucher_payload,
)
from cocoon.ledger.vouchers import DOMAIN, public_key_bytes

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = public_key_bytes(KEY)
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def voucher(seqno: int = 1, nano: int = 100, tokens: int = 50, **kw: object) -> Voucher:
    fields: dict[str, object] = {
        "kind": "client_charge",
        "channel": "EQclient",
        "seqno": seqno,
        "cumulative_nanoton": nano,
        "cumulative_tokens": tokens,
        "signer_pubkey": PUB,
    }
    fields.update(kw)
    return Voucher(**fields)  # type: ignore[arg-type]


def test_payload_layout_is_fixed() -> None:
    v = voucher(seqno=7, nano=2**100 + 5, tokens=9, channel="ab")
    payload = voucher_payload(v)
    assert payload[:16] == DOMAIN
    assert payload[16:20] == bytes.fromhex("bb63ff93")
    assert int.from_bytes(payload[20:28], "big") == 7
    assert int.from_bytes(payload[28:44], "big") == 2**100 + 5
    assert int.from_bytes(payload[44:52], "big") == 9
    assert payload[52:84] == PUB
    assert payload[84:86] == b"\x00\x02" and payload[86:] == b"ab"
    worker = dataclasses.replace(v, kind="worker_payout")
    assert voucher_payload(worker)[16:20] == bytes.fromhex("a040ad28")


@given(
    st.sampled_from(["client_charge", "worker_payout"]),
    st.text(max_size=40),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=2**128 - 1),
    st.integers(min_value=0, max_value=2**64 - 1),
)
def test_round_trip(kind: str, channel: str, seqno: int, nano: int, tokens: int) -> None:
    v = Voucher(kind, channel, seqno, nano, tokens, PUB)  # type: ignore[arg-type]
    signed = sign(v, KEY)
    parsed = SignedVoucher.from_bytes(signed.to_bytes())
    assert parsed == signed
    assert verify(parsed, PUB) == v


def test_forged_signature_rejected() -> None:
    signed = sign(voucher(), KEY)
    forged = SignedVoucher(signed.voucher, bytes(64))
    with pytest.raises(VoucherInvalid):
        verify(forged, PUB)
    flipped = bytearray(signed.signature)
    flipped[0] ^= 1
    with pytest.raises(VoucherInvalid):
        verify(SignedVoucher(signed.voucher, bytes(flipped)), PUB)


def test_wrong_key_rejected() -> None:
    signed = sign(voucher(), KEY)
    with pytest.raises(VoucherInvalid):
        verify(signed, public_key_bytes(OTHER))
    # signed by another key that claims to be the expected signer
    impostor = SignedVoucher(voucher(), OTHER.sign(voucher_payload(voucher())))
    with pytest.raises(VoucherInvalid):
        verify(impostor, PUB)
    with pytest.raises(ValueError):
        sign(voucher(), OTHER)  # signer_pubkey must match the key


@pytest.mark.parametrize(
    "change",
    [
        {"seqno": 2},
        {"cumulative_nanoton": 101},
        {"cumulative_tokens": 51},
        {"channel": "EQother"},
        {"kind": "worker_payout"},
    ],
)
def test_tampered_field_rejected(change: dict[str, object]) -> None:
    signed = sign(voucher(), KEY)
    tampered = SignedVoucher(dataclasses.replace(signed.voucher, **change), signed.signature)  # type: ignore[arg-type]
    with pytest.raises(VoucherInvalid):
        verify(tampered, PUB)


def test_tampered_bytes_rejected() -> None:
    data = bytearray(sign(voucher(), KEY).to_bytes())
    for i in range(0, len(data), 7):
        corrupt = bytearray(data)
        corrupt[i] ^= 0x40
        with pytest.raises(VoucherInvalid):
            verify(SignedVoucher.from_bytes(bytes(corrupt)), PUB)
    with pytest.raises(VoucherInvalid):
        SignedVoucher.from_bytes(bytes(data[:-1]))
    with pytest.raises(VoucherInvalid):
        SignedVoucher.from_bytes(b"garbage")


def test_book_accepts_strictly_newer_only() -> None:
    book = VoucherBook()
    assert book.accept(sign(voucher(1, 100, 50), KEY), PUB).seqno == 1
    with pytest.raises(VoucherReplay):
        book.accept(sign(voucher(1, 100, 50), KEY), PUB)  # exact replay
    with pytest.raises(VoucherReplay):
        book.accept(sign(voucher(0, 200, 60), KEY), PUB)  # older seqno
    with pytest.raises(VoucherRegression):
        book.accept(sign(voucher(2, 99, 60), KEY), PUB)  # nanoTON went down
    with pytest.raises(VoucherRegression):
        book.accept(sign(voucher(2, 100, 49), KEY), PUB)  # tokens went down
    with pytest.raises(VoucherInvalid):
        book.accept(SignedVoucher(voucher(2, 200, 60), bytes(64)), PUB)
    last = book.last("client_charge", "EQclient")
    assert last is not None and last.voucher.seqno == 1  # failures changed nothing
    book.accept(sign(voucher(2, 100, 50), KEY), PUB)  # newer, equal amounts: fine
    book.accept(sign(voucher(5, 300, 70), KEY), PUB)  # gaps in seqno are fine
    book.accept(sign(voucher(1, 1, 1, channel="EQother"), KEY), PUB)  # channels independent
    assert len(book) == 2


def test_regression_is_a_replay() -> None:
    assert issubclass(VoucherRegression, VoucherReplay)


def test_compare() -> None:
    a, b = voucher(1, 100, 50), voucher(2, 150, 60)
    assert compare(a, a) is VoucherOrder.EQUAL
    assert compare(None, None) is VoucherOrder.EQUAL
    assert compare(a, b) is VoucherOrder.REMOTE_NEWER
    assert compare(b, a) is VoucherOrder.LOCAL_NEWER
    assert compare(None, a) is VoucherOrder.REMOTE_NEWER
    assert compare(a, None) is VoucherOrder.LOCAL_NEWER
    assert compare(a, voucher(1, 101, 50)) is VoucherOrder.CONFLICT  # same seqno, other amount
    assert compare(a, voucher(2, 90, 60)) is VoucherOrder.CONFLICT  # newer but lower
    assert compare(a, voucher(2, 150, 60, channel="x")) is VoucherOrder.CONFLICT


def test_voucher_ranges_validated() -> None:
    for bad in ({"seqno": -1}, {"seqno": 2**64}, {"nano": 2**128}, {"tokens": -1}):
        with pytest.raises(ValueError):
            voucher(**bad)
    with pytest.raises(ValueError):
        voucher(signer_pubkey=b"short")
    with pytest.raises(ValueError):
        voucher(kind="refund")
