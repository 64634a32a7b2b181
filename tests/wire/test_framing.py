"""Length-prefixed framing: ``encode_frame`` and the incremental ``FrameDecoder``."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.errors import FrameTooLarge, ProtocolError
from cocoon.wire.framing import DEFAULT_MAX_FRAME, HEADER_SIZE, FrameDecoder, encode_frame

payloads = st.lists(st.binary(min_size=1, max_size=300), min_size=0, max_size=12)

THREE = [b"a", b"hello world", bytes(range(256)) * 2]
THREE_STREAM = b"".join(encode_frame(p) for p in THREE)


def feed_bytewise(dec: FrameDecoder, data: bytes) -> list[bytes]:
    out: list[bytes] = []
    for i in range(len(data)):
        out += dec.feed(data[i : i + 1])
    return out


# --- encode_frame -------------------------------------------------------------------


def test_encode_frame_layout() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    big = b"x" * 70_000
    assert encode_frame(big) == struct.pack(">I", 70_000) + big


def test_encode_frame_refuses_empty() -> None:
    with pytest.raises(ProtocolError) as info:
        encode_frame(b"")
    assert type(info.value) is ProtocolError


def test_encode_frame_refuses_oversize() -> None:
    assert encode_frame(b"x" * 10, max_frame=10) == b"\x00\x00\x00\x0a" + b"x" * 10
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 11, max_frame=10)
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * (DEFAULT_MAX_FRAME + 1))


# --- FrameDecoder -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_round_trip_bulk(frames: list[bytes]) -> None:
    dec = FrameDecoder()
    assert dec.feed(b"".join(encode_frame(p) for p in frames)) == frames
    assert dec.buffered == 0


@settings(max_examples=200, deadline=None)
@given(payloads)
def test_bytewise_feeding_equals_bulk(frames: list[bytes]) -> None:
    stream = b"".join(encode_frame(p) for p in frames)
    bulk = FrameDecoder().feed(stream)
    dec = FrameDecoder()
    assert feed_bytewise(dec, stream) == bulk == frames
    assert dec.buffered == 0


@settings(max_examples=300, deadline=None)
@given(payloads, st.data())
def test_arbitrary_splits(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    dec = FrameDecoder()
    out: list[bytes] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += dec.feed(stream[prev:cut])
        prev = cut
    assert out == frames
    assert dec.buffered == 0


def test_every_split_point_of_three_frames() -> None:
    for i in range(len(THREE_STREAM) + 1):
        dec = FrameDecoder()
        first = dec.feed(THREE_STREAM[:i])
        assert first == THREE[: len(first)]  # exactly the frames wholly inside the prefix
        pending = i - sum(len(p) + HEADER_SIZE for p in first)
        if len(first) < len(THREE):
            assert pending < len(encode_frame(THREE[len(first)]))
        else:
            assert pending == 0
        assert 0 <= dec.buffered <= pending
        assert first + dec.feed(THREE_STREAM[i:]) == THREE, i
        assert dec.buffered == 0


def test_every_pair_of_split_points_of_three_small_frames() -> None:
    frames = [b"a", b"bc", b"def"]
    stream = b"".join(encode_frame(p) for p in frames)
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            dec = FrameDecoder()
            out = dec.feed(stream[:i]) + dec.feed(stream[i:j]) + dec.feed(stream[j:])
            assert out == frames, (i, j)


def test_partial_frame_is_held() -> None:
    dec = FrameDecoder()
    wire = encode_frame(b"hello")
    assert dec.feed(wire[:6]) == []
    assert 2 <= dec.buffered <= 6  # the header may already be parsed
    assert dec.feed(wire[6:] + wire[:2]) == [b"hello"]
    assert dec.buffered == 2
    assert dec.feed(wire[2:]) == [b"hello"]
    assert dec.buffered == 0


def test_frame_of_exactly_max_frame_is_accepted() -> None:
    dec = FrameDecoder(max_frame=16)
    assert dec.feed(encode_frame(b"y" * 16)) == [b"y" * 16]


def test_oversize_header_rejected_before_payload() -> None:
    dec = FrameDecoder(max_frame=16)
    header = struct.pack(">I", 17)
    assert dec.feed(header[:3]) == []  # not yet a whole header: nothing to judge
    with pytest.raises(FrameTooLarge):
        dec.feed(header[3:])  # no payload byte has arrived


def test_oversize_header_rejected_in_one_feed() -> None:
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(struct.pack(">I", DEFAULT_MAX_FRAME + 1))


def test_oversize_header_after_valid_frame() -> None:
    dec = FrameDecoder(max_frame=16)
    with pytest.raises(FrameTooLarge):
        dec.feed(encode_frame(b"ok") + struct.pack(">I", 1000))


def test_zero_length_frame_rejected() -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(b"\x00\x00\x00\x00")
    assert type(info.value) is ProtocolError
    dec = FrameDecoder()
    assert dec.feed(encode_frame(b"ok") + b"\x00\x00") == [b"ok"]
    with pytest.raises(ProtocolError):
        dec.feed(b"\x00\x00")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_decoder_buffers_at_most_max_frame_plus_3(chunks: list[bytes]) -> None:
    """Whatever a peer sends, a decoder holds less than one header plus one maximal frame."""
    max_frame = 32
    dec = FrameDecoder(max_frame=max_frame)
    try:
        for chunk in chunks:
            for payload in dec.feed(chunk):
                assert 1 <= len(payload) <= max_frame
            assert dec.buffered <= max_frame + HEADER_SIZE - 1
    except ProtocolError:
        pass
