"""Sealed requests and answers (cocoon.crypto.seal): what opens, and everything that must not."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.crypto.seal import (
    MAX_SEAL_KEYS,
    RECORD_HEADER,
    SEAL_KEYS_OVERHEAD,
    SEAL_OVERHEAD,
    WRAPPED_SIZE,
    KeyUnwrapper,
    KeyWrapper,
    ResponseOpener,
    ResponseSealer,
    decode_keys,
    encode_keys,
    new_seal_key,
    open_request,
    record_events,
    route_info,
    seal_body,
    seal_public_bytes,
    sealed_size,
)
from cocoon.errors import ProtocolError, SealBroken
from cocoon.wire.messages import SEAL_KEYS_MAX

BODY = b'{"model":"m","messages":[{"role":"user","content":"the canary sings"}]}'
INFO = route_info("chat", "m", True)


def sealed_for(n: int = 2) -> tuple[list[KeyUnwrapper], bytes, list[bytes], bytes]:
    """A body sealed for ``n`` workers: their unwrappers, the sealed body, each one's
    wrapped key, and the response key."""
    keys = [new_seal_key() for _ in range(n)]
    body = seal_body(BODY, INFO)
    wrapper = KeyWrapper()
    wrapped = [wrapper.wrap(body.content_key, seal_public_bytes(k), INFO) for k in keys]
    return [KeyUnwrapper(k) for k in keys], body.data, wrapped, body.response_key


def test_a_sealed_request_opens_at_each_worker_it_is_sealed_to_and_nowhere_else() -> None:
    workers, data, wrapped, response_key = sealed_for(2)
    assert len(data) == sealed_size(len(BODY)) == len(BODY) + SEAL_OVERHEAD
    assert all(len(w) == WRAPPED_SIZE for w in wrapped)
    assert b"canary" not in data
    for worker, key in zip(workers, wrapped, strict=True):
        assert open_request(data, key, worker, INFO) == (BODY, response_key)
    with pytest.raises(SealBroken, match="did not unwrap"):
        open_request(data, wrapped[0], workers[1], INFO)  # another worker's key
    with pytest.raises(SealBroken, match="did not unwrap"):
        open_request(data, wrapped[0], KeyUnwrapper(new_seal_key()), INFO)
    for other in (route_info("chat", "other", True), route_info("completions", "m", True),
                  route_info("chat", "m", False)):
        with pytest.raises(SealBroken):
            open_request(data, wrapped[0], workers[0], other)


def test_every_flipped_byte_of_a_sealed_request_or_its_key_is_refused() -> None:
    workers, data, wrapped, _ = sealed_for(1)
    for i in range(0, len(data), 7):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(SealBroken):
            open_request(bytes(bad), wrapped[0], workers[0], INFO)
    for i in range(len(wrapped[0])):
        bad = bytearray(wrapped[0])
        bad[i] ^= 0x01
        with pytest.raises(SealBroken):
            open_request(data, bytes(bad), workers[0], INFO)
    with pytest.raises(SealBroken, match="too short"):
        open_request(data[:40], wrapped[0], workers[0], INFO)


def test_a_wrong_sized_worker_key_is_refused() -> None:
    with pytest.raises(SealBroken, match="not 32"):
        KeyWrapper().wrap(bytes(32), b"\x01" * 31, INFO)


def test_a_session_key_wraps_many_requests_and_is_renewed_by_count_and_age() -> None:
    now = [0.0]
    key = new_seal_key()
    public = seal_public_bytes(key)
    wrapper = KeyWrapper(lambda: now[0], uses=3, seconds=60.0)
    unwrapper = KeyUnwrapper(key)

    def session_of() -> tuple[bytes, bytes]:
        body = seal_body(BODY, INFO)
        wrapped = wrapper.wrap(body.content_key, public, INFO)
        assert open_request(body.data, wrapped, unwrapper, INFO) == (BODY, body.response_key)
        return wrapped[:80], wrapped[80:]

    first = [session_of() for _ in range(3)]
    assert len({s for s, _ in first}) == 1  # one HPKE exchange for the three
    assert len({rest for _, rest in first}) == 3  # each wrap its own nonce and key
    assert unwrapper.sessions == 1
    fourth = session_of()[0]  # its uses are spent: a new session
    assert fourth != first[0][0]
    now[0] = 59.0
    assert session_of()[0] == fourth
    now[0] = 61.0  # too old
    assert session_of()[0] != fourth
    assert unwrapper.sessions == 3


def test_a_worker_that_forgot_a_session_opens_it_again_from_the_wrapped_key() -> None:
    key = new_seal_key()
    wrapper = KeyWrapper()
    body = seal_body(BODY, INFO)
    wrapped = wrapper.wrap(body.content_key, seal_public_bytes(key), INFO)
    for unwrapper in (KeyUnwrapper(key), KeyUnwrapper(key)):  # a fresh one knows none
        assert open_request(body.data, wrapped, unwrapper, INFO)[0] == BODY


def test_a_session_key_cannot_carry_a_content_key_to_another_route_or_worker() -> None:
    workers, data, wrapped, _ = sealed_for(2)
    assert open_request(data, wrapped[0], workers[0], INFO)[0] == BODY  # session now open
    with pytest.raises(SealBroken, match="did not unwrap"):  # an open session, another route
        open_request(data, wrapped[0], workers[0], route_info("chat", "m", False))
    # the session of worker 0 spliced onto worker 1's wrap (and the reverse)
    for a, b in ((0, 1), (1, 0)):
        spliced = wrapped[a][:80] + wrapped[b][80:]
        for w in workers:
            with pytest.raises(SealBroken):
                open_request(data, spliced, w, INFO)


def test_wrapped_keys_travel_by_worker_and_anything_else_is_refused() -> None:
    keys = {"w1": b"a" * WRAPPED_SIZE, "wörker-2": b"b" * WRAPPED_SIZE}
    assert decode_keys(encode_keys(keys)) == keys
    assert decode_keys(b"") == {}
    full = {f"w{i}": bytes(WRAPPED_SIZE) for i in range(MAX_SEAL_KEYS)}
    assert decode_keys(encode_keys(full)) == full
    assert SEAL_KEYS_OVERHEAD == SEAL_KEYS_MAX  # the wire's request limit knows it
    with pytest.raises(ValueError):
        encode_keys({**full, "one more": bytes(WRAPPED_SIZE)})
    data = encode_keys(keys)
    for bad in (data[:-1], data + b"x", bytes([9]) + data[1:], bytes([3]) + data[1:],
                encode_keys({"w": bytes(WRAPPED_SIZE)})[:1] + b"\x00\x01\xff"
                + bytes(WRAPPED_SIZE)):
        with pytest.raises(ProtocolError):
            decode_keys(bad)


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


def test_records_opened_one_at_a_time_hash_as_sealed_and_a_too_short_one_is_corrupt() -> None:
    key = bytes(range(32))
    records, sealer = stream_of(PIECES, key)
    one_by_one = ResponseOpener(key)
    assert [one_by_one.open(r) for r in records] == PIECES
    assert one_by_one.transcript == sealer.transcript and one_by_one.records == 3
    assert one_by_one.complete
    short = (15).to_bytes(4, "big") + b"\x00\x01" + bytes(15)  # whole, but under a tag
    with pytest.raises(SealBroken, match="corrupt"):
        ResponseOpener(key).open(short)


def test_a_record_is_aes_256_gcm_under_the_response_key_its_index_the_nonce() -> None:
    key = bytes(range(32))
    records, _ = stream_of(PIECES, key)
    header, ciphertext = records[1][:RECORD_HEADER], records[1][RECORD_HEADER:]
    assert header == (len(PIECES[1]) + 16).to_bytes(4, "big") + (2).to_bytes(2, "big")
    assert AESGCM(key).decrypt((1).to_bytes(12, "big"), ciphertext, header) == PIECES[1]


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
