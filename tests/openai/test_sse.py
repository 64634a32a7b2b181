"""SseDecoder and encode_event: OpenAI-style server-sent events."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.errors import UpstreamError
from cocoon.openai.sse import DONE, SseDecoder, count_events, encode_event, encode_events

MAX_EVENT = 8 * 1024 * 1024


def bulk(data: bytes) -> list[bytes]:
    dec = SseDecoder()
    return dec.feed(data) + dec.close()


def bytewise(data: bytes) -> list[bytes]:
    dec = SseDecoder()
    out: list[bytes] = []
    for i in range(len(data)):
        out += dec.feed(data[i : i + 1])
    return out + dec.close()


STREAM = (
    b": keep-alive comment\n"
    b"event: message\n"
    b"id: 1\n"
    b"retry: 1000\n"
    b'data: {"a":1}\n'
    b"\n"
    b"data:no-space\n"
    b"\n"
    b"data: line1\n"
    b"data: line2\n"
    b"\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a":1}', b"no-space", b"line1\nline2", DONE]


def test_bulk_decoding() -> None:
    assert bulk(STREAM) == EXPECTED


def test_byte_by_byte_equals_bulk() -> None:
    assert bytewise(STREAM) == bulk(STREAM) == EXPECTED


def test_crlf_line_endings() -> None:
    data = STREAM.replace(b"\n", b"\r\n")
    assert bulk(data) == EXPECTED
    assert bytewise(data) == EXPECTED


def test_crlf_split_between_cr_and_lf() -> None:
    dec = SseDecoder()
    assert dec.feed(b"data: x\r") == []
    assert dec.feed(b"\n\r") == []
    assert dec.feed(b"\n") == [b"x"]


def test_events_are_returned_as_soon_as_complete() -> None:
    dec = SseDecoder()
    assert dec.feed(b"data: a") == []
    assert dec.feed(b"\n") == []
    assert dec.feed(b"\n") == [b"a"]
    assert dec.feed(b"data: b\n\ndata: c\n\ndata: d") == [b"b", b"c"]
    assert dec.close() == [b"d"]


def test_multi_line_data_joined_by_newline() -> None:
    assert bulk(b"data: a\ndata: b\ndata: c\n\n") == [b"a\nb\nc"]
    assert bulk(b"data:\ndata: x\n\n") == [b"\nx"]


def test_comments_and_other_fields_ignored() -> None:
    data = b":c1\nevent: e\nid: 9\nretry: 5\nfoo: bar\n\n:c2\n\ndata: x\nid: 2\n\n"
    # Blocks without any data line produce no event.
    assert bulk(data) == [b"x"]


def test_data_without_space_and_extra_spaces() -> None:
    assert bulk(b"data:x\n\n") == [b"x"]
    assert bulk(b"data:  x\n\n") == [b" x"]  # only one leading space is removed
    assert bulk(b"data: \n\n") == [b""]


def test_done_marker() -> None:
    assert DONE == b"[DONE]"
    assert bulk(b"data: [DONE]\n\n") == [DONE]
    assert bulk(encode_event(DONE)) == [DONE]


def test_close_flushes_final_event_without_blank_line() -> None:
    dec = SseDecoder()
    assert dec.feed(b"data: one\n\ndata: last") == [b"one"]
    assert dec.close() == [b"last"]

    dec = SseDecoder()
    assert dec.feed(b"data: a\ndata: b\n") == []
    assert dec.close() == [b"a\nb"]


def test_close_with_nothing_pending() -> None:
    dec = SseDecoder()
    assert dec.close() == []
    assert dec.feed(b"data: x\n\n") == [b"x"]
    assert dec.close() == []
    dec = SseDecoder()
    assert dec.feed(b": only a comment") == []
    assert dec.close() == []


def test_encode_event() -> None:
    assert encode_event(b'{"x":1}') == b'data: {"x":1}\n\n'


def test_multi_line_data_is_encoded_on_several_data_lines() -> None:
    pretty = b'{\n  "a": 1\n}'
    assert encode_event(pretty) == b'data: {\ndata:   "a": 1\ndata: }\n\n'
    assert bulk(encode_event(pretty)) == [pretty]


def test_count_events_counts_whole_events_whatever_their_data() -> None:
    events = [b'{"a":1}', b"line1\nline2", b"", b'{"text":"data: x\\n\\n"}', DONE]
    encoded = encode_events(events)
    assert count_events(encoded) == len(events)
    assert bulk(encoded) == events
    assert count_events(b"") == 0


def test_a_long_event_in_many_pieces_is_kept_whole() -> None:
    dec = SseDecoder()
    pieces = [b"data: "] + [b"%06d" % i for i in range(10_000)]
    for p in pieces:
        assert dec.feed(p) == []
    assert dec.feed(b"\n\ndata: next") == [b"".join(pieces)[6:]]
    assert dec.close() == [b"next"]


def test_oversize_unterminated_line_raises() -> None:
    dec = SseDecoder()
    with pytest.raises(UpstreamError) as ei:
        dec.feed(b"data: " + b"x" * MAX_EVENT)
    assert ei.value.code == "upstream_error"
    assert ei.value.status == 502


def test_oversize_event_across_many_lines_raises() -> None:
    dec = SseDecoder()
    line = b"data: " + b"y" * (1024 * 1024) + b"\n"
    with pytest.raises(UpstreamError):
        for _ in range(9):
            dec.feed(line)


def test_oversize_fed_in_small_pieces_raises() -> None:
    dec = SseDecoder()
    dec.feed(b"data: ")
    piece = b"z" * (1024 * 1024)
    with pytest.raises(UpstreamError):
        for _ in range(9):
            dec.feed(piece)


def test_many_small_events_in_one_big_feed_are_fine() -> None:
    events = [b"%07d" % i + b"p" * 1000 for i in range(10_000)]  # ~10 MB in one feed
    data = b"".join(encode_event(e) for e in events)
    assert len(data) > MAX_EVENT
    dec = SseDecoder()
    assert dec.feed(data) == events


def test_event_just_below_limit_is_accepted() -> None:
    payload = b"q" * (MAX_EVENT - 16)
    dec = SseDecoder()
    assert dec.feed(encode_event(payload)) == [payload]


single_line = st.binary(max_size=200).filter(lambda b: b"\n" not in b and b"\r" not in b)
any_data = st.binary(max_size=200).filter(lambda b: b"\r" not in b)


@settings(deadline=None)
@given(payloads=st.lists(any_data, max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_encoded_events_round_trip_and_count(payloads: list[bytes], cuts: list[int]) -> None:
    stream = encode_events(payloads)
    assert count_events(stream) == len(payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec = SseDecoder()
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out += dec.feed(stream[a:b])
    assert out + dec.close() == payloads


@settings(deadline=None)
@given(
    payloads=st.lists(single_line, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_round_trip_split_at_random_points(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_event(p) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec = SseDecoder()
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out += dec.feed(stream[a:b])
    out += dec.close()
    assert out == payloads


@settings(deadline=None)
@given(payloads=st.lists(single_line, min_size=1, max_size=5))
def test_round_trip_crlf_and_comments_interleaved(payloads: list[bytes]) -> None:
    stream = b"".join(b": ping\r\n" + encode_event(p).replace(b"\n", b"\r\n") for p in payloads)
    assert bytewise(stream) == payloads
