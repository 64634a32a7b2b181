"""The message set: encode/decode round trips, strict schema rejections, and fuzzing."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon.errors import ProtocolError
from cocoon.wire import messages
from cocoon.wire.framing import FrameDecoder, encode_frame
from cocoon.wire.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Announce,
    Cancel,
    Catalog,
    CatalogEntry,
    Chunk,
    Credit,
    End,
    Error,
    Head,
    Hello,
    JobReport,
    JobReports,
    Payment,
    Ping,
    Pong,
    Request,
    Roster,
    Route,
    Sealed,
    Statement,
    WorkerInfo,
    decode,
    encode,
)

U64_MAX = 2**64 - 1

# --- strategies, derived from the dataclass fields ------------------------------------

u64 = st.integers(min_value=0, max_value=U64_MAX)
short_text = st.text(max_size=100)

catalog_entries = st.builds(CatalogEntry, short_text, u64, u64, u64)
worker_infos = st.builds(WorkerInfo, short_text, short_text, st.binary(max_size=48),
                         st.lists(short_text, max_size=4).map(tuple), st.binary(max_size=64))
job_reports = st.builds(JobReport, u64, u64, u64, u64, u64)

# one strategy per field annotation the schema knows (annotations are strings: PEP 563)
FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "int": u64,
    "str": short_text,
    "bytes": st.binary(max_size=300),
    "bool": st.booleans(),
    "tuple[str, ...]": st.lists(short_text, max_size=8).map(tuple),
    "tuple[CatalogEntry, ...]": st.lists(catalog_entries, max_size=8).map(tuple),
    "tuple[WorkerInfo, ...]": st.lists(worker_infos, max_size=8).map(tuple),
    "tuple[JobReport, ...]": st.lists(job_reports, max_size=8).map(tuple),
}

# The classes this suite knows; a message added to MESSAGE_TYPES but not here fails
# test_every_message_type_has_a_strategy.
KNOWN_MESSAGES: tuple[type[Any], ...] = (
    Hello, Announce, Catalog, Request, Head, Chunk, End, Error, Cancel, Credit, Ping, Pong,
    Roster, Statement, Payment, JobReports, Route, Sealed,
)


def _strategy_for(cls: type[Any]) -> st.SearchStrategy[Any]:
    return st.builds(cls, *(FIELD_STRATEGIES[str(f.type)] for f in dataclasses.fields(cls)))


MESSAGE_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    cls: _strategy_for(cls) for cls in KNOWN_MESSAGES
}
any_message = st.one_of(*MESSAGE_STRATEGIES.values())

SAMPLES: dict[type[Any], Any] = {
    Hello: Hello(PROTOCOL_VERSION, "client", "node-1", 1 << 20, 64),
    Announce: Announce(("m1", "m2"), 4, "llama", "0:" + "ab" * 32),
    Catalog: Catalog((CatalogEntry("m1", 1, 0, 4), CatalogEntry("m2", 2, 1, 8))),
    Request: Request(1, "chat", "m1", True, 30_000, b'{"x": 1}'),
    Head: Head(1, "w1"),
    Chunk: Chunk(1, b"data"),
    End: End(1, 10, 20, 3, 4),
    Error: Error(1, "engine_error", "boom", ""),
    Cancel: Cancel(1, "client went away"),
    Credit: Credit(1, 32),
    Ping: Ping(7),
    Pong: Pong(7),
    Roster: Roster((WorkerInfo("w1", "fake-tdx", b"\x01" * 32, ("m1",)),)),
    Statement: Statement(b"voucher", 100, 40, 10, 0, b"chain voucher"),
    Payment: Payment("0:" + "cd" * 32, b"voucher boc"),
    JobReports: JobReports((JobReport(7, 10, 20, 3, 4), JobReport(2**64 - 1, 1, 0, 0, 0))),
    Route: Route(1, "w1", b"0\x82certificate"),
    Sealed: Sealed(1, "w1", b"sealed body"),
}


def wire_list(msg: Any) -> list[Any]:
    """The msgpack array a message encodes to, as Python values."""
    raw = msgpack.unpackb(encode(msg), raw=False)
    assert isinstance(raw, list)
    return raw


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def same(a: Any, b: Any) -> bool:
    """Deep equality that also distinguishes bool/int, bytes/str and list/tuple."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


# --- coverage of the message set ------------------------------------------------------


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGE_TYPES.values()) == set(MESSAGE_STRATEGIES)
    assert set(MESSAGE_TYPES.values()) == set(SAMPLES)
    for cls in MESSAGE_TYPES.values():
        for f in dataclasses.fields(cls):
            assert str(f.type) in FIELD_STRATEGIES, f"{cls.__name__}.{f.name}: {f.type}"


def test_type_ids_are_stable() -> None:
    assert {tid: cls.__name__ for tid, cls in MESSAGE_TYPES.items()} == {
        1: "Hello", 2: "Announce", 3: "Catalog", 4: "Request", 5: "Head", 6: "Chunk",
        7: "End", 8: "Error", 9: "Cancel", 10: "Credit", 11: "Ping", 12: "Pong", 13: "Roster",
        14: "Statement", 15: "Payment", 16: "JobReports", 17: "Route", 18: "Sealed",
    }
    for tid, cls in MESSAGE_TYPES.items():
        assert tid == cls.TYPE


# --- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(cls: type[Any], data: st.DataObject) -> None:
    msg = data.draw(MESSAGE_STRATEGIES[cls])
    payload = encode(msg)
    out = decode(payload)
    assert type(out) is cls
    assert out == msg
    raw = wire_list(msg)
    assert raw[0] == cls.TYPE
    fields = dataclasses.fields(cls)
    tail = getattr(cls, "OPTIONAL_TAIL", 0)  # left off when all defaults (Error's usage)
    left_off = tail and all(getattr(msg, f.name) == f.default for f in fields[-tail:])
    assert len(raw) == len(fields) + 1 - (tail if left_off else 0)
    assert encode(out) == payload  # canonical: re-encoding gives the same bytes


@pytest.mark.parametrize("msg", list(SAMPLES.values()), ids=lambda m: type(m).__name__)
def test_round_trip_samples(msg: Any) -> None:
    assert decode(encode(msg)) == msg


def test_boundary_integers_round_trip() -> None:
    for v in (0, 1, 2**32, U64_MAX):
        assert decode(encode(End(v, v, v, v, v))) == End(v, v, v, v, v)


def test_chunk_hot_path_encoding_matches_generic_layout() -> None:
    assert encode(Chunk(5, b"abc")) == pack([Chunk.TYPE, 5, b"abc"])


def test_wire_layout_of_nested_catalog() -> None:
    msg = Catalog((CatalogEntry("m", 1, 2, 3),))
    assert wire_list(msg) == [3, [["m", 1, 2, 3, 0, 0]]]
    priced = Catalog((CatalogEntry("m", 1, 2, 3, 2_000_000, 8_000_000),))
    assert wire_list(priced) == [3, [["m", 1, 2, 3, 2_000_000, 8_000_000]]]
    assert decode(encode(priced)) == priced


def test_features_travel_in_announce_roster_and_request() -> None:
    """Protocol 5: what a worker offers besides inference, and what a request needs."""
    plain = Announce(("m",), 4, "llama")
    assert wire_list(plain) == [2, ["m"], 4, "llama"]  # no tail: as before
    offers = Announce(("m",), 4, "llama-cpp", features=("train", "lora"))
    assert wire_list(offers) == [2, ["m"], 4, "llama-cpp", "", 0, b"", ["train", "lora"]]
    assert decode(encode(offers)) == offers
    roster = Roster((WorkerInfo("w1", "fake-tdx", b"", ("m",), b"cert", ("train",)),))
    assert wire_list(roster) == [13, [["w1", "fake-tdx", b"", ["m"], b"cert", ["train"]]]]
    assert decode(encode(roster)) == roster
    with pytest.raises(ProtocolError, match="worker info"):  # a protocol-4 roster entry
        decode(msgpack.packb([13, [["w1", "fake-tdx", b"", ["m"], b"cert"]]]))
    job = Request(1, "fine_tune", "m", True, 0, b"{}", 900, requires="train")
    assert decode(encode(job)) == job


# --- schema rejections ----------------------------------------------------------------


def rejects(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(payload)


@pytest.mark.parametrize("tid", [0, 13, 99, -1, U64_MAX, -(2**63)])
def test_unknown_type_id(tid: int) -> None:
    rejects(pack([tid, 1]))
    rejects(pack([tid]))


@pytest.mark.parametrize("msg", list(SAMPLES.values()), ids=lambda m: type(m).__name__)
def test_type_id_must_be_an_int(msg: Any) -> None:
    tid, *fields = wire_list(msg)
    for bad in (float(tid), str(tid), bytes([tid]), [tid], None):
        rejects(pack([bad, *fields]))


def test_type_id_true_is_not_hello() -> None:
    _, *fields = wire_list(SAMPLES[Hello])
    assert decode(pack([1, *fields])) == SAMPLES[Hello]
    rejects(pack([True, *fields]))  # True == 1 in Python, but it is not an integer here


@pytest.mark.parametrize("msg", list(SAMPLES.values()), ids=lambda m: type(m).__name__)
def test_wrong_arity(msg: Any) -> None:
    raw = wire_list(msg)
    decode(pack(raw))  # sanity: the unmodified array is valid
    if not getattr(type(msg), "OPTIONAL_TAIL", 0):  # else the short form is valid too
        rejects(pack(raw[:-1]))
    rejects(pack([*raw, 0]))
    rejects(pack([*raw, raw[-1]]))
    rejects(pack(raw[:1]))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param([6, 1, 5], id="int-for-bytes"),
        pytest.param([6, 1, "text"], id="str-for-bytes"),
        pytest.param([6, 1, None], id="nil-for-bytes"),
        pytest.param([6, True, b""], id="bool-for-int"),
        pytest.param([11, False], id="bool-for-int-ping"),
        pytest.param([6, -1, b""], id="negative-int"),
        pytest.param([11, -(2**63)], id="most-negative-int"),
        pytest.param([11, 1.0], id="float-for-int"),
        pytest.param([11, float(2**64)], id="float-2**64-for-int"),
        pytest.param([11, "1"], id="str-for-int"),
        pytest.param([11, None], id="nil-for-int"),
        pytest.param([11, [1]], id="list-for-int"),
        pytest.param([11, {"a": 1}], id="map-for-int"),
        pytest.param([11, msgpack.ExtType(1, b"x")], id="ext-for-int"),
        pytest.param([5, 1, b"worker"], id="bytes-for-str"),
        pytest.param([5, 1, 7], id="int-for-str"),
        pytest.param([5, 1, "w" * 4097], id="str-too-long"),
        pytest.param([4, 1, "chat", "m", 1, 0, b""], id="int-for-bool"),
        pytest.param([4, 1, "chat", "m", None, 0, b""], id="nil-for-bool"),
        pytest.param([2, "m1", 1, "e"], id="str-for-str-list"),
        pytest.param([2, ["m1", 2], 1, "e"], id="int-in-str-list"),
        pytest.param([2, [b"m1"], 1, "e"], id="bytes-in-str-list"),
        pytest.param([2, ["m"] * 4097, 1, "e"], id="str-list-too-long"),
        pytest.param([3, [["m", 1, 2]]], id="catalog-entry-short"),
        pytest.param([3, [["m", 1, 2, 3, 4]]], id="catalog-entry-long"),
        pytest.param([3, [[1, 1, 2, 3]]], id="catalog-entry-int-model"),
        pytest.param([3, [["m", -1, 2, 3]]], id="catalog-entry-negative"),
        pytest.param([3, [["m", 1, True, 3]]], id="catalog-entry-bool"),
        pytest.param([3, ["m"]], id="catalog-entry-not-a-list"),
        pytest.param([3, {"m": 1}], id="catalog-not-a-list"),
        pytest.param([3, [{"model": "m"}]], id="catalog-entry-map"),
    ],
)
def test_wrong_field_type(raw: list[Any]) -> None:
    rejects(pack(raw))


def test_u64_range_is_exact() -> None:
    assert decode(pack([11, U64_MAX])) == Ping(U64_MAX)
    # MessagePack cannot carry an integer above 2**64-1, so the validator's upper bound is
    # checked directly; it must hold for values built in Python too.
    with pytest.raises(OverflowError):
        pack([11, U64_MAX + 1])
    with pytest.raises(ProtocolError):
        messages._u64(U64_MAX + 1)
    with pytest.raises(ProtocolError):
        messages._u64(-1)


def test_string_limit_boundary() -> None:
    assert decode(pack([5, 1, "w" * 4096])) == Head(1, "w" * 4096)


def test_non_utf8_string_rejected() -> None:
    # [5, 1, <fixstr of 2 bytes: ff fe>] -- a Head whose worker string is not UTF-8
    rejects(b"\x93\x05\x01\xa2\xff\xfe")
    # the same inside a str8 and inside a list of strings (Announce.models)
    rejects(b"\x93\x05\x01\xd9\x02\xc3\x28")
    rejects(b"\x94\x02\x91\xa1\x80\x01\xa1e")
    # sanity: the same layout with valid UTF-8 decodes
    assert decode(b"\x93\x05\x01\xa2ok") == Head(1, "ok")


@pytest.mark.parametrize(
    "obj",
    [None, 5, -5, 1.5, True, "hello", b"bytes", {"a": 1}, {"type": 11, "nonce": 1}],
)
def test_non_array_top_level(obj: object) -> None:
    rejects(pack(obj))


def test_map_top_level_with_int_keys() -> None:
    rejects(b"\x81\x00\x0b")  # {0: 11}: strict_map_key refuses the int key


def test_empty_array() -> None:
    rejects(pack([]))


def test_deep_nesting_rejected() -> None:
    rejects(b"\x91" * 5000 + b"\xc0")  # [[[[...nil...]]]]
    rejects(b"\x92\x02" + b"\x91" * 5000 + b"\xc0")  # Announce-like, absurdly deep


def test_empty_payload_and_trailing_bytes() -> None:
    rejects(b"")
    rejects(pack([11, 1]) + b"\x00")
    rejects(pack([11, 1]) + pack([11, 2]))
    rejects(pack([11, 1])[:-1])


# --- fuzzing --------------------------------------------------------------------------


def decode_or_protocol_error(payload: bytes) -> Any:
    """decode(); return None on ProtocolError. Any other exception escapes and fails."""
    try:
        msg = decode(payload)
    except ProtocolError:
        return None
    assert type(msg) in KNOWN_MESSAGES
    assert decode(encode(msg)) == msg
    return msg


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid encoding with a few bytes flipped, cut, or inserted."""
    payload = bytearray(encode(draw(any_message)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        pos = draw(st.integers(0, max(len(payload) - 1, 0)))
        if op == "flip" and payload:
            payload[pos] = draw(st.integers(0, 255))
        elif op == "cut" and payload:
            del payload[pos]
        elif op == "insert":
            payload.insert(pos, draw(st.integers(0, 255)))
        else:
            del payload[pos:]
    return bytes(payload)


fuzz_payloads = st.one_of(st.binary(max_size=200), mutated_messages())


@settings(max_examples=500, deadline=None)
@given(fuzz_payloads)
def test_decode_arbitrary_bytes_only_raises_protocol_error(payload: bytes) -> None:
    decode_or_protocol_error(payload)


valid_frames = any_message.map(encode).filter(lambda p: len(p) <= 64).map(encode_frame)
stream_pieces = st.one_of(
    st.binary(max_size=24),
    valid_frames,
    st.binary(min_size=1, max_size=64).map(encode_frame),
    mutated_messages().filter(lambda p: 0 < len(p) <= 64).map(encode_frame),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(stream_pieces, max_size=8), st.data())
def test_frame_decoder_pipeline_only_raises_protocol_error(
    pieces: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = FrameDecoder(max_frame=64)
    prev = 0
    try:
        for cut in [*cuts, len(stream)]:
            for payload in dec.feed(stream[prev:cut]):
                assert 1 <= len(payload) <= 64
                decode(payload)
            prev = cut
    except ProtocolError:
        pass


def test_pipeline_decodes_valid_frames() -> None:
    """Sanity for the fuzz above: the pipeline does yield messages when frames are valid."""
    msgs = list(SAMPLES.values())
    stream = b"".join(encode_frame(encode(m)) for m in msgs)
    dec = FrameDecoder(max_frame=1024)
    assert [decode(p) for i in range(len(stream)) for p in dec.feed(stream[i : i + 1])] == msgs


msgpack_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=U64_MAX),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
msgpack_values = st.recursive(
    msgpack_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.text(max_size=5), children, max_size=4),
    ),
    max_leaves=25,
)
# arrays that start with a plausible type id, so the field validators get exercised
message_like = st.builds(
    lambda tid, rest: [tid, *rest],
    st.one_of(st.integers(0, 13), msgpack_leaves),
    st.lists(msgpack_values, max_size=7),
)



@st.composite
def perturbed_wire(draw: st.DrawFn) -> list[Any]:
    """A valid message's array with some fields replaced by arbitrary values."""
    raw = wire_list(draw(any_message))
    for _ in range(draw(st.integers(0, 2))):
        raw[draw(st.integers(1, len(raw) - 1))] = draw(msgpack_values)
    return raw


@settings(max_examples=400, deadline=None)
@given(st.one_of(msgpack_values, message_like, perturbed_wire()))
def test_decode_arbitrary_msgpack_structures(obj: Any) -> None:
    msg = decode_or_protocol_error(pack(obj))
    if msg is not None:
        # accepted => it was exactly the canonical wire form of that message
        assert same(wire_list(msg), obj)
