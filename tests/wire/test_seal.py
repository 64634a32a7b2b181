"""Sealed requests and answers (cocoon.crypto.seal): what opens, and everything that must not."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.crypto.seal import (
    RECORD_HEADER,
    SEAL_OVERHEAD,
    ResponseOpener,
    ResponseSealer,
    new_seal_key,
    open_request,
    record_events,
    seal_public_bytes,
    seal_request,
    sealed_size,
)
from cocoon.errors import ProtocolError, SealBroken

BODY = b'{"model":"m","messages":[{"role":"user","content":"the canary sings"}]}'
ROUTE: dict[str, Any] = {"endpoint": "chat", "model": "m", "stream": True}


def sealed() -> tuple[Any, bytes, bytes]:
    key = new_seal_key()
    payload, response_key = seal_request(BODY, seal_public_bytes(key), **ROUTE)
    return key, payload, response_key


def test_a_sealed_request_opens_only_at_its_worker_with_the_same_route() -> None:
    key, payload, response_key = sealed()
    assert len(payload) == sealed_size(len(BODY)) == len(BODY) + SEAL_OVERHEAD
    assert b"canary" not in payload
    body, got_key = open_request(payload, key, **ROUTE)
    assert (body, got_key) == (BODY, response_key)
    with pytest.raises(SealBroken, match="did not open"):
        open_request(payload, new_seal_key(), **ROUTE)
    for changed in ({"model": "other"}, {"endpoint": "completions"}, {"stream": False}):
        with pytest.raises(SealBroken):
            open_request(payload, key, **{**ROUTE, **changed})


def test_every_flipped_byte_of_a_sealed_request_is_refused() -> None:
    key, payload, _ = sealed()
    for i in range(0, len(payload), 7):
        bad = bytearray(payload)
        bad[i] ^= 0x01
        with pytest.raises(SealBroken):
            open_request(bytes(bad), key, **ROUTE)
    with pytest.raises(SealBroken, match="too short"):
        open_request(payload[:40], key, **ROUTE)


def test_a_wrong_sized_worker_key_is_refused() -> None:
    with pytest.raises(SealBroken, match="not 32"):
        seal_request(BODY, b"\x01" * 31, **ROUTE)


def stream_of(pieces: list[bytes], key: bytes) -> tuple[list[bytes], ResponseSealer]:
    sealer = ResponseSealer(key)
    return [sealer.seal(p, events=i + 1) for i, p in enumerate(pieces)], sealer


PIECES = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]


def test_records_open_in_order_also_joined_or_split() -> None:
    key = bytes(range(32))
    records, sealer = stream_of(PIECES, key)
    assert record_events(b"".join(records)) == 1 + 2 + 3
    joined = ResponseOpener(key)
    assert joined.open(b"".join(records)) == b"".join(PIECES)
    assert joined.transcript == sealer.transcript and joined.records == 3
    split = ResponseOpener(key)
    whole = b"".join(records)
    out = b"".join(split.open(whole[i:i + 5]) for i in range(0, len(whole), 5))
    assert out == b"".join(PIECES) and split.complete
    half = ResponseOpener(key)
    half.open(whole[:-3])
    assert not half.complete


@pytest.mark.parametrize("attack", ["drop", "reorder", "replay", "alter", "header", "key"])
def test_a_dropped_reordered_replayed_or_altered_record_does_not_open(attack: str) -> None:
    key = bytes(range(32))
    records, _ = stream_of(PIECES, key)
    opener = ResponseOpener(bytes(32) if attack == "key" else key)
    if attack == "drop":
        records = [records[0], records[2]]
    elif attack == "reorder":
        records = [records[1], records[0], records[2]]
    elif attack == "replay":
        records = [records[0], records[0]]
    elif attack == "alter":
        records[1] = records[1][:-1] + bytes([records[1][-1] ^ 1])
    elif attack == "header":  # claim more events than were sealed
        records[1] = records[1][:4] + b"\x00\x09" + records[1][6:]
    delivered = []
    with pytest.raises(SealBroken):
        for r in records:
            delivered.append(opener.open(r))
    # what was delivered is exactly the records before the broken one, nothing of it
    assert b"".join(delivered) == b"".join(PIECES[:len(delivered)])
    assert len(delivered) < len(records)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=8), st.data())
def test_any_cut_of_any_stream_opens_to_a_prefix(pieces: list[bytes], data: st.DataObject
                                                   ) -> None:
    key = bytes(32)
    records, _ = stream_of(pieces, key)
    whole = b"".join(records)
    cut = data.draw(st.integers(0, len(whole)))
    opener = ResponseOpener(key)
    got = opener.open(whole[:cut])
    assert b"".join(pieces).startswith(got)
    assert opener.complete == (cut in {sum(len(r) for r in records[:i])
                                       for i in range(len(records) + 1)})


def test_the_proxys_count_refuses_what_is_not_whole_records() -> None:
    records, _ = stream_of(PIECES, bytes(32))
    with pytest.raises(ProtocolError):
        record_events(records[0][:RECORD_HEADER - 1])
    with pytest.raises(ProtocolError):
        record_events(records[0][:-1])
    with pytest.raises(ProtocolError):
        record_events(b"\x00\x00\x00\x01\x00\x01" + b"x")  # shorter than a tag
