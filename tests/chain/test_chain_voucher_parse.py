"""Parsing and verifying on-chain voucher bodies (cocoon.chain.vouchers), no node needed.

A body BOC comes from a peer: whatever the bytes, parse_voucher either returns a voucher or
raises VoucherInvalid, and a voucher that was tampered with never verifies."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell

from cocoon.chain import vouchers as v
from cocoon.ledger.errors import VoucherInvalid

SEED = hashlib.sha256(b"voucher-parse").digest()
PUB = v.public_key(SEED)
OTHER_PUB = v.public_key(hashlib.sha256(b"someone else").digest())
CHAN = "0:" + "ab" * 32
MASTER_CHAN = "-1:" + "01" * 32


def signed(kind: v.ChannelKind = "client", channel: str = CHAN, seqno: int = 7,
           cumulative: int = 123_456_789, query_id: int | None = 99) -> v.ChainVoucher:
    return v.sign_voucher(SEED, kind, channel, seqno, cumulative, query_id=query_id)


def body(op: int, payload: Cell, *, signature: bytes | None = None, query_id: int = 1,
         extra_bits: int = 0, extra_ref: bool = False) -> bytes:
    """A voucher body built by hand, optionally with trailing bits or a second ref."""
    b = Builder().store_uint(op, 32).store_uint(query_id, 64)
    b = b.store_bytes(signature if signature is not None else v.sign_payload(payload, SEED))
    b = b.store_ref(payload)
    if extra_bits:
        b = b.store_uint(0, extra_bits)
    if extra_ref:
        b = b.store_ref(Builder().end_cell())
    return v.cell_boc(b.end_cell())


def payload(op: int = v.OP_CLIENT_CHARGE, *, channel: str = CHAN, seqno: int = 7,
            cumulative: int = 5, extra_bits: int = 0, extra_ref: bool = False) -> Cell:
    b = (Builder().store_uint(op, 32).store_address(Address(channel)).store_uint(seqno, 64)
         .store_coins(cumulative))
    if extra_bits:
        b = b.store_uint(1, extra_bits)
    if extra_ref:
        b = b.store_ref(Builder().end_cell())
    return b.end_cell()


# --- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["client", "worker"])
@pytest.mark.parametrize(
    ("channel", "seqno", "cumulative", "query_id"),
    [(CHAN, 7, 123_456_789, 99), (CHAN, 0, 0, 0), (MASTER_CHAN, 2**64 - 1, 2**120 - 1, 2**64 - 1),
     (CHAN, 1, 1, None)],
)
def test_round_trip(kind: v.ChannelKind, channel: str, seqno: int, cumulative: int,
                    query_id: int | None) -> None:
    original = signed(kind, channel, seqno, cumulative, query_id)
    parsed = v.parse_voucher(original.body_boc())
    assert parsed == original
    assert parsed.op == v.VOUCHER_OPS[kind]
    assert parsed.query_id == (seqno if query_id is None else query_id)
    assert v.verify_voucher(parsed, PUB) is parsed
    assert parsed.body_boc() == original.body_boc()


def test_round_trip_of_a_user_friendly_channel() -> None:
    """The channel comes back in raw form; the payload cell (what is signed) is the same."""
    friendly = Address(CHAN).to_str(is_user_friendly=True)
    original = signed(channel=friendly)
    parsed = v.parse_voucher(original.body_boc())
    assert parsed.channel == CHAN
    assert parsed.payload().hash == original.payload().hash
    v.verify_voucher(parsed, PUB)


def test_the_two_kinds_are_not_interchangeable() -> None:
    client = signed("client")
    worker = signed("worker")
    assert client.signature != worker.signature
    swapped = dataclasses.replace(client, signature=worker.signature)
    with pytest.raises(VoucherInvalid):
        v.verify_voucher(swapped, PUB)
    relabelled = dataclasses.replace(worker, kind="client")
    with pytest.raises(VoucherInvalid):
        v.verify_voucher(relabelled, PUB)


# --- verification ---------------------------------------------------------------------------

@pytest.mark.parametrize("pubkey", [OTHER_PUB, b"", PUB[:31], PUB + b"\x00", b"\x00" * 32])
def test_wrong_key(pubkey: bytes) -> None:
    parsed = v.parse_voucher(signed().body_boc())
    with pytest.raises(VoucherInvalid, match="bad signature"):
        v.verify_voucher(parsed, pubkey)


@pytest.mark.parametrize(
    "change",
    [{"seqno": 8}, {"cumulative": 123_456_790}, {"channel": "0:" + "ac" + "ab" * 31},
     {"kind": "worker"}, {"signature": b"\x00" * 64}, {"signature": b"\x01" * 63}],
)
def test_any_signed_field_changed_fails(change: dict[str, object]) -> None:
    tampered = dataclasses.replace(v.parse_voucher(signed().body_boc()), **change)
    with pytest.raises(VoucherInvalid):
        v.verify_voucher(tampered, PUB)


def test_query_id_is_not_signed() -> None:
    """As in the contract: the signature covers the payload cell, not the body's query_id."""
    original = signed(query_id=1)
    moved = v.parse_voucher(dataclasses.replace(original, query_id=2).body_boc())
    assert moved.query_id == 2
    assert v.verify_voucher(moved, PUB) is moved


# --- malformed bodies -----------------------------------------------------------------------

def test_every_truncation_is_invalid() -> None:
    boc = signed().body_boc()
    for n in range(len(boc)):
        with pytest.raises(VoucherInvalid):
            v.parse_voucher(boc[:n])


@pytest.mark.parametrize("kind", ["client", "worker"])
def test_every_byte_flip_is_caught(kind: v.ChannelKind) -> None:
    """Each single-byte change either fails to parse (VoucherInvalid only), or fails to
    verify, or leaves the signed statement as it was (BOC bits the parser ignores, or the
    unsigned query_id): no flip yields a different statement that verifies."""
    original = signed(kind)
    statement = (original.kind, original.channel, original.seqno, original.cumulative)
    boc = original.body_boc()
    outcomes = {"invalid": 0, "unverified": 0, "same statement": 0}
    for i in range(len(boc)):
        for mask in [1 << bit for bit in range(8)] + [0xFF]:
            flipped = bytearray(boc)
            flipped[i] ^= mask
            try:
                parsed = v.parse_voucher(bytes(flipped))
            except VoucherInvalid:
                outcomes["invalid"] += 1
                continue
            try:
                v.verify_voucher(parsed, PUB)
            except VoucherInvalid:
                outcomes["unverified"] += 1
                continue
            assert (parsed.kind, parsed.channel, parsed.seqno, parsed.cumulative) == statement, (
                f"byte {i} ^ {mask:#x} verified as {parsed!r}")
            assert parsed.signature == original.signature
            outcomes["same statement"] += 1
    assert outcomes["invalid"] > 0 and outcomes["unverified"] > 0
    # most changes are caught; only header bits and the 8 query_id bytes may slip through
    assert outcomes["same statement"] < 9 * 20


def test_trailing_bits_in_body() -> None:
    with pytest.raises(VoucherInvalid, match="trailing"):
        v.parse_voucher(body(v.OP_CLIENT_CHARGE, payload(), extra_bits=1))


def test_trailing_ref_in_body() -> None:
    with pytest.raises(VoucherInvalid, match="trailing"):
        v.parse_voucher(body(v.OP_CLIENT_CHARGE, payload(), extra_ref=True))


def test_trailing_bits_in_payload() -> None:
    with pytest.raises(VoucherInvalid, match="trailing"):
        v.parse_voucher(body(v.OP_CLIENT_CHARGE, payload(extra_bits=3)))


def test_trailing_ref_in_payload() -> None:
    with pytest.raises(VoucherInvalid, match="trailing"):
        v.parse_voucher(body(v.OP_CLIENT_CHARGE, payload(extra_ref=True)))


def test_hand_built_body_parses() -> None:
    """The builders above make valid bodies when not asked to break them (guards the tests)."""
    parsed = v.parse_voucher(body(v.OP_WORKER_PAYOUT, payload(v.OP_WORKER_PAYOUT), query_id=3))
    assert (parsed.kind, parsed.channel, parsed.seqno, parsed.cumulative, parsed.query_id) == (
        "worker", CHAN, 7, 5, 3)
    v.verify_voucher(parsed, PUB)


@pytest.mark.parametrize(
    ("outer", "inner"),
    [(v.OP_CLIENT_CHARGE, v.OP_WORKER_PAYOUT), (v.OP_WORKER_PAYOUT, v.OP_CLIENT_CHARGE),
     (0xDEADBEEF, 0xDEADBEEF), (0, 0), (v.OP_CLIENT_CHARGE, 0)],
)
def test_op_mismatch_or_unknown(outer: int, inner: int) -> None:
    with pytest.raises(VoucherInvalid, match="op"):
        v.parse_voucher(body(outer, payload(inner)))


def test_missing_payload_ref() -> None:
    cell = (Builder().store_uint(v.OP_CLIENT_CHARGE, 32).store_uint(0, 64)
            .store_bytes(b"\x00" * 64).end_cell())
    with pytest.raises(VoucherInvalid):
        v.parse_voucher(v.cell_boc(cell))


def test_payload_without_channel_address() -> None:
    """addr_none (two zero bits) where the channel should be."""
    inner = (Builder().store_uint(v.OP_CLIENT_CHARGE, 32).store_uint(0, 2).store_uint(7, 64)
             .store_coins(5).end_cell())
    with pytest.raises(VoucherInvalid):
        v.parse_voucher(body(v.OP_CLIENT_CHARGE, inner))


def test_non_canonical_coins_are_refused() -> None:
    """cumulative stored with a leading zero byte reads back as the same number, but the cell
    (what the signature covers) differs from the canonical one."""
    inner = (Builder().store_uint(v.OP_CLIENT_CHARGE, 32).store_address(Address(CHAN))
             .store_uint(7, 64).store_uint(2, 4).store_uint(5, 16).end_cell())
    with pytest.raises(VoucherInvalid, match="non-canonical"):
        v.parse_voucher(body(v.OP_CLIENT_CHARGE, inner))


def test_two_root_cells_are_refused() -> None:
    """The same two cells, but the BOC header lists the payload as a second root."""
    boc = signed().body_boc()
    # header: magic(4) flags(1) offset_bytes(1) cells(1) roots(1) absent(1) size(1) root list
    assert boc[:4] == bytes.fromhex("b5ee9c72") and boc[4] & 7 == 1 and boc[6:8] == b"\x02\x01"
    two_roots = boc[:7] + b"\x02" + boc[8:11] + b"\x01" + boc[11:]
    assert len(Cell.from_boc(two_roots)) == 2
    with pytest.raises(VoucherInvalid, match="one root"):
        v.parse_voucher(two_roots)


@pytest.mark.parametrize("data", [b"", b"\x00", b"not a boc at all", b"\xb5\xee\x9c\x72",
                                  b"\xb5\xee\x9c\x72" + b"\xff" * 64])
def test_garbage(data: bytes) -> None:
    with pytest.raises(VoucherInvalid, match="malformed"):
        v.parse_voucher(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_voucher_invalid(data: bytes) -> None:
    try:
        parsed = v.parse_voucher(data)
    except VoucherInvalid:
        return
    with pytest.raises(VoucherInvalid):  # random bytes are never signed by our key
        v.verify_voucher(parsed, PUB)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), st.integers(1, 255)),
                min_size=1, max_size=4),
       st.sampled_from(["client", "worker"]))
def test_random_edits_of_a_valid_body(edits: list[tuple[int, int]], kind: v.ChannelKind) -> None:
    original = signed(kind)
    boc = bytearray(original.body_boc())
    for pos, mask in edits:
        boc[pos % len(boc)] ^= mask
    try:
        parsed = v.parse_voucher(bytes(boc))
        v.verify_voucher(parsed, PUB)
    except VoucherInvalid:
        return
    assert (parsed.kind, parsed.channel, parsed.seqno, parsed.cumulative,
            parsed.signature) == (original.kind, original.channel, original.seqno,
                                  original.cumulative, original.signature)
