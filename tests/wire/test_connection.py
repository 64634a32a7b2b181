"""The sans-IO Connection: handshake, multiplexing, flow control, cancel, close."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cocoon.errors import FlowControlError, FrameTooLarge, ProtocolError
from cocoon.wire.connection import Connection, State
from cocoon.wire.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from cocoon.wire.messages import (
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
    Message,
    Ping,
    Pong,
    Request,
    decode,
    encode,
)

Deliver = Callable[[Connection, bytes], list[Message]]


def bulk(conn: Connection, data: bytes) -> list[Message]:
    return conn.receive_data(data)


def bytewise(conn: Connection, data: bytes) -> list[Message]:
    out: list[Message] = []
    for i in range(len(data)):
        out += conn.receive_data(data[i : i + 1])
    return out


def in_pieces(size: int) -> Deliver:
    def deliver(conn: Connection, data: bytes) -> list[Message]:
        out: list[Message] = []
        for i in range(0, len(data), size):
            out += conn.receive_data(data[i : i + size])
        return out

    return deliver


def frame(msg: Message) -> bytes:
    return encode_frame(encode(msg))


def frames(*msgs: Message) -> bytes:
    return b"".join(frame(m) for m in msgs)


def sent(conn: Connection) -> list[Message]:
    """Decode what ``conn`` queued for its transport (and take it)."""
    dec = FrameDecoder()
    return [decode(p) for p in dec.feed(conn.data_to_send())]


def hello(window: int = 64, *, version: int = PROTOCOL_VERSION, max_frame: int = 1 << 20) -> Hello:
    return Hello(version, "peer", "peer-1", max_frame, window)


def req(req_id: int, model: str = "m") -> Request:
    return Request(req_id, "chat", model, True, 30_000, b'{"messages": []}')


def end(req_id: int) -> End:
    return End(req_id, 1, 2, 0, 0)


@dataclass
class Pair:
    """Two connections and a lossless in-order pipe between them. ``a`` usually requests."""

    a: Connection
    b: Connection
    deliver: Deliver = bulk

    def to_b(self) -> list[Message]:
        return self.deliver(self.b, self.a.data_to_send())

    def to_a(self) -> list[Message]:
        return self.deliver(self.a, self.b.data_to_send())


def make_pair(
    *,
    window_a: int = 8,
    window_b: int = 8,
    max_streams_b: int = 4096,
    deliver: Deliver = bulk,
    handshake: bool = True,
) -> Pair:
    pair = Pair(
        Connection(role="client", node_id="a", window=window_a),
        Connection(role="proxy", node_id="b", window=window_b, max_streams=max_streams_b),
        deliver,
    )
    if handshake:
        pair.a.initiate()
        pair.b.initiate()
        assert [type(m) for m in pair.to_b()] == [Hello]
        assert [type(m) for m in pair.to_a()] == [Hello]
        assert pair.a.is_open and pair.b.is_open
    return pair


def open_conn(window: int = 8, peer_window: int = 8, **kw: Any) -> Connection:
    """A connection whose handshake is done against a raw, hand-driven peer."""
    conn = Connection(role="proxy", node_id="me", window=window, **kw)
    conn.initiate()
    conn.data_to_send()
    assert conn.receive_data(frame(hello(peer_window))) == [hello(peer_window)]
    assert conn.is_open
    return conn


def assert_closed_by(conn: Connection, data: bytes, exc: type[ProtocolError]) -> None:
    with pytest.raises(exc):
        conn.receive_data(data)
    assert conn.state is State.CLOSED
    with pytest.raises(ProtocolError):
        conn.receive_data(frame(Ping(1)))


# --- handshake ------------------------------------------------------------------------


def test_handshake_exchanges_hellos() -> None:
    pair = make_pair(handshake=False, window_a=6, window_b=10)
    assert pair.a.state is State.IDLE
    pair.a.initiate()
    assert pair.a.state is State.HELLO_SENT
    assert pair.to_b() == [Hello(PROTOCOL_VERSION, "client", "a", DEFAULT_MAX_FRAME, 6)]
    assert pair.b.state is State.HELLO_RECEIVED
    assert not pair.b.is_open
    pair.b.initiate()
    assert pair.b.is_open
    assert pair.to_a() == [Hello(PROTOCOL_VERSION, "proxy", "b", DEFAULT_MAX_FRAME, 10)]
    assert pair.a.is_open
    assert pair.a.peer is not None and pair.a.peer.node_id == "b" and pair.a.peer.window == 10
    assert pair.b.peer is not None and pair.b.peer.role == "client"


def test_simultaneous_hellos() -> None:
    pair = make_pair(handshake=False)
    pair.a.initiate()
    pair.b.initiate()
    pair.to_b()
    pair.to_a()
    assert pair.a.is_open and pair.b.is_open


def test_initiate_twice_is_an_error() -> None:
    conn = Connection(role="x", node_id="x")
    conn.initiate()
    with pytest.raises(ProtocolError):
        conn.initiate()


def test_window_below_two_refused_locally() -> None:
    with pytest.raises(ValueError):
        Connection(role="x", node_id="x", window=1)
    Connection(role="x", node_id="x", window=2)


BEFORE_HANDSHAKE = [
    Ping(1), Pong(1), req(1), Head(1, "w"), Chunk(1, b"x"), end(1), Error(1, "c", "m", ""),
    Cancel(1, "r"), Credit(1, 4), Announce(("m",), 1, "e"), Catalog(()),
]


@pytest.mark.parametrize("msg", BEFORE_HANDSHAKE, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("initiated", [False, True], ids=["idle", "hello-sent"])
def test_messages_before_handshake_are_rejected(msg: Message, initiated: bool) -> None:
    conn = Connection(role="x", node_id="x")
    if initiated:
        conn.initiate()
    assert_closed_by(conn, frame(msg), ProtocolError)


@pytest.mark.parametrize("msg", BEFORE_HANDSHAKE, ids=lambda m: type(m).__name__)
def test_messages_between_their_hello_and_ours_are_rejected(msg: Message) -> None:
    conn = Connection(role="x", node_id="x")
    assert conn.receive_data(frame(hello())) == [hello()]
    assert conn.state is State.HELLO_RECEIVED
    assert_closed_by(conn, frame(msg), ProtocolError)


@pytest.mark.parametrize("msg", BEFORE_HANDSHAKE, ids=lambda m: type(m).__name__)
def test_send_before_handshake_is_refused(msg: Message) -> None:
    conn = Connection(role="x", node_id="x")
    conn.initiate()
    conn.data_to_send()
    with pytest.raises(ProtocolError):
        conn.send(msg)
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, 2**64 - 1])
def test_version_mismatch_rejected(version: int) -> None:
    conn = Connection(role="x", node_id="x")
    conn.initiate()
    assert_closed_by(conn, frame(hello(version=version)), ProtocolError)
    assert conn.peer is None


def test_second_hello_rejected() -> None:
    conn = open_conn()
    assert_closed_by(conn, frame(hello()), ProtocolError)


def test_two_hellos_before_ours_rejected() -> None:
    conn = Connection(role="x", node_id="x")
    with pytest.raises(ProtocolError):
        conn.receive_data(frames(hello(), hello()))
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("window", [0, 1])
def test_hello_with_small_window_rejected(window: int) -> None:
    conn = Connection(role="x", node_id="x")
    conn.initiate()
    assert_closed_by(conn, frame(hello(window)), ProtocolError)


def test_hello_with_tiny_max_frame_rejected() -> None:
    conn = Connection(role="x", node_id="x")
    assert_closed_by(conn, frame(hello(max_frame=1023)), ProtocolError)


def test_hello_with_window_two_accepted() -> None:
    conn = open_conn(peer_window=2)
    conn.receive_data(frame(req(1)))
    assert conn.credit(1) == 2


def test_connection_sends_hello_and_credit_itself() -> None:
    conn = open_conn()
    with pytest.raises(ProtocolError):
        conn.send(hello())
    with pytest.raises(ProtocolError):
        conn.send(Credit(1, 1))


# --- request / response flow ----------------------------------------------------------


def test_request_chunk_end_flow() -> None:
    pair = make_pair()
    pair.a.send(req(1))
    assert pair.a.has_outgoing(1)
    assert pair.to_b() == [req(1)]
    assert pair.b.has_incoming(1)
    assert pair.b.open_streams == 1
    pair.b.send(Head(1, "worker-1"))
    pair.b.send(Chunk(1, b"one"))
    pair.b.send(Chunk(1, b"two"))
    pair.b.send(End(1, 5, 2, 1, 0))
    assert not pair.b.has_incoming(1)
    assert pair.to_a() == [Head(1, "worker-1"), Chunk(1, b"one"), Chunk(1, b"two"),
                           End(1, 5, 2, 1, 0)]
    assert not pair.a.has_outgoing(1)
    assert pair.a.open_streams == pair.b.open_streams == 0


def test_request_error_flow() -> None:
    pair = make_pair()
    pair.a.send(req(3))
    pair.to_b()
    pair.b.send(Error(3, "model_not_found", "nope", "model"))
    assert pair.to_a() == [Error(3, "model_not_found", "nope", "model")]
    assert not pair.a.has_outgoing(3)
    # the id may be reused once the stream is over
    pair.a.send(req(3))
    assert pair.to_b() == [req(3)]


def test_streams_are_independent_and_bidirectional() -> None:
    pair = make_pair()
    pair.a.send(req(1))
    pair.a.send(req(2))
    pair.b.send(Announce(("m",), 2, "e"))
    pair.to_b()
    pair.b.send(req(1))  # b requests from a with the same id: the other direction's space
    pair.b.send(Chunk(2, b"x"))
    pair.b.send(Chunk(1, b"y"))
    assert pair.to_a() == [Announce(("m",), 2, "e"), req(1), Chunk(2, b"x"), Chunk(1, b"y")]
    pair.a.send(Chunk(1, b"z"))
    pair.a.send(end(1))
    assert pair.to_b() == [Chunk(1, b"z"), end(1)]
    assert pair.a.has_outgoing(1) and pair.a.has_outgoing(2) and not pair.a.has_incoming(1)


def test_sending_on_unknown_stream_refused() -> None:
    conn = open_conn()
    for msg in (Chunk(1, b"x"), end(1), Error(1, "c", "m", "")):
        with pytest.raises(ProtocolError):
            conn.send(msg)
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    "msg", [Chunk(9, b"x"), end(9), Error(9, "c", "m", "")], ids=lambda m: type(m).__name__
)
def test_response_for_unknown_stream_rejected(msg: Message) -> None:
    conn = open_conn()
    conn.send(req(1))
    assert_closed_by(conn, frame(msg), ProtocolError)


@pytest.mark.parametrize("msg", [Chunk(1, b"x"), end(1)], ids=lambda m: type(m).__name__)
def test_response_after_end_rejected(msg: Message) -> None:
    conn = open_conn()
    conn.send(req(1))
    assert conn.receive_data(frame(end(1))) == [end(1)]
    assert_closed_by(conn, frame(msg), ProtocolError)


def test_duplicate_req_id_received() -> None:
    conn = open_conn()
    assert conn.receive_data(frame(req(1))) == [req(1)]
    assert_closed_by(conn, frame(req(1, model="other")), ProtocolError)


def test_duplicate_req_id_sent() -> None:
    conn = open_conn()
    conn.send(req(1))
    conn.data_to_send()
    with pytest.raises(ProtocolError):
        conn.send(req(1))
    assert conn.data_to_send() == b""


def test_reused_req_id_after_end_received() -> None:
    conn = open_conn()
    conn.receive_data(frame(req(1)))
    conn.send(end(1))
    assert conn.receive_data(frame(req(1))) == [req(1)]


def test_ping_answered_with_pong() -> None:
    pair = make_pair()
    pair.a.send(Ping(12345))
    assert pair.to_b() == [Ping(12345)]
    assert pair.to_a() == [Pong(12345)]
    assert pair.b.data_to_send() == b""


def test_ping_burst_answered_in_order() -> None:
    conn = open_conn()
    assert conn.receive_data(frames(Ping(1), Ping(2), Ping(3))) == [Ping(1), Ping(2), Ping(3)]
    assert sent(conn) == [Pong(1), Pong(2), Pong(3)]


def test_max_streams_enforced() -> None:
    pair = make_pair(max_streams_b=3)
    for i in range(3):
        pair.a.send(req(i))
    assert len(pair.to_b()) == 3
    pair.b.send(end(0))  # a finished stream frees its slot
    pair.to_a()
    pair.a.send(req(3))
    assert pair.to_b() == [req(3)]
    pair.a.send(req(4))
    with pytest.raises(ProtocolError):
        pair.to_b()
    assert pair.b.state is State.CLOSED


def test_close_returns_open_streams() -> None:
    pair = make_pair()
    pair.a.send(req(1))
    pair.a.send(req(2))
    pair.to_b()
    pair.b.send(req(7))
    pair.b.send(end(2))
    pair.to_a()
    assert pair.a.open_streams == 2
    out, inc = pair.a.close()
    assert sorted(out) == [1] and inc == [7]
    assert pair.a.state is State.CLOSED and pair.a.open_streams == 0
    assert not pair.a.is_open
    with pytest.raises(ProtocolError):
        pair.a.receive_data(frame(Ping(1)))
    with pytest.raises(ProtocolError):
        pair.a.send(Ping(1))
    assert pair.a.close() == ([], [])


def test_protocol_error_closes_for_good() -> None:
    conn = open_conn()
    with pytest.raises(ProtocolError):
        conn.receive_data(b"\x00\x00\x00\x02\xc1\xc1")  # 0xc1 is never valid msgpack
    assert conn.state is State.CLOSED
    with pytest.raises(ProtocolError):
        conn.receive_data(b"")
    with pytest.raises(ProtocolError):
        conn.receive_data(frame(Ping(1)))
    with pytest.raises(ProtocolError):
        conn.send(Ping(1))


def test_framing_error_closes() -> None:
    conn = open_conn()
    assert_closed_by(conn, b"\x00\x00\x00\x00", ProtocolError)


# --- flow control ---------------------------------------------------------------------


def test_responder_sends_exactly_window_chunks() -> None:
    pair = make_pair(window_a=8, window_b=3)  # the requester's window governs
    pair.a.send(req(1))
    pair.to_b()
    assert pair.b.credit(1) == 8
    for i in range(8):
        pair.b.send(Chunk(1, bytes([i])))
        assert pair.b.credit(1) == 7 - i
    queued = pair.b.data_to_send()
    with pytest.raises(FlowControlError):
        pair.b.send(Chunk(1, b"over"))
    assert pair.b.data_to_send() == b""  # the refused chunk was not queued
    assert pair.b.credit(1) == 0
    assert pair.a.receive_data(queued) == [Chunk(1, bytes([i])) for i in range(8)]


def test_credit_returned_in_half_window_batches() -> None:
    pair = make_pair(window_a=8)
    pair.a.send(req(1))
    pair.to_b()
    for i in range(8):
        pair.b.send(Chunk(1, bytes([i])))
    assert len(pair.to_a()) == 8
    for _ in range(3):
        pair.a.consumed(1)
        assert pair.a.data_to_send() == b""  # below half a window: nothing yet
    pair.a.consumed(1)
    assert pair.to_b() == [Credit(1, 4)]
    assert pair.b.credit(1) == 4
    # the responder continues, exactly as far as the credit goes
    for i in range(4):
        pair.b.send(Chunk(1, bytes([8 + i])))
    with pytest.raises(FlowControlError):
        pair.b.send(Chunk(1, b"over"))
    assert pair.to_a() == [Chunk(1, bytes([8 + i])) for i in range(4)]
    pair.a.consumed(1, 3)
    assert pair.a.data_to_send() == b""
    pair.a.consumed(1)
    assert pair.to_b() == [Credit(1, 4)]
    assert pair.b.credit(1) == 4
    pair.a.consumed(1, 4)  # the reader is now empty: the full window is available again
    assert pair.to_b() == [Credit(1, 4)]
    assert pair.b.credit(1) == 8
    for i in range(8):
        pair.b.send(Chunk(1, bytes([12 + i])))
    assert pair.b.credit(1) == 0
    assert pair.to_a() == [Chunk(1, bytes([12 + i])) for i in range(8)]


@pytest.mark.parametrize(("window", "batch"), [(2, 1), (3, 1), (7, 3), (64, 32)])
def test_credit_batch_size(window: int, batch: int) -> None:
    pair = make_pair(window_a=window)
    pair.a.send(req(1))
    pair.to_b()
    for _ in range(window):
        pair.b.send(Chunk(1, b"x"))
    pair.to_a()
    for _ in range(batch - 1):
        pair.a.consumed(1)
    assert pair.a.data_to_send() == b""
    pair.a.consumed(1)
    assert pair.to_b() == [Credit(1, batch)]
    assert pair.b.credit(1) == batch


def test_consumed_many_at_once_grants_all() -> None:
    pair = make_pair(window_a=8)
    pair.a.send(req(1))
    pair.to_b()
    for _ in range(7):
        pair.b.send(Chunk(1, b"x"))
    pair.to_a()
    pair.a.consumed(1, 7)
    assert pair.to_b() == [Credit(1, 7)]
    assert pair.b.credit(1) == 8


def test_consumed_for_unknown_stream_is_ignored() -> None:
    conn = open_conn()
    conn.consumed(5, 100)
    assert conn.data_to_send() == b""


def test_overrun_by_malicious_peer() -> None:
    conn = open_conn(window=4)
    conn.send(req(1))
    for i in range(4):
        assert conn.receive_data(frame(Chunk(1, bytes([i])))) == [Chunk(1, bytes([i]))]
    assert_closed_by(conn, frame(Chunk(1, b"over")), FlowControlError)


def test_overrun_in_one_burst() -> None:
    conn = open_conn(window=4)
    conn.send(req(1))
    with pytest.raises(FlowControlError):
        conn.receive_data(frames(*(Chunk(1, b"x") for _ in range(5))))
    assert conn.state is State.CLOSED


def test_overrun_after_credit_granted() -> None:
    conn = open_conn(window=4)
    conn.send(req(1))
    conn.receive_data(frames(*(Chunk(1, b"x") for _ in range(4))))
    conn.consumed(1, 2)
    assert sent(conn)[-1] == Credit(1, 2)
    assert len(conn.receive_data(frames(Chunk(1, b"y"), Chunk(1, b"y")))) == 2
    assert_closed_by(conn, frame(Chunk(1, b"z")), FlowControlError)


def test_overrun_on_cancelled_stream_still_an_error() -> None:
    conn = open_conn(window=4)
    conn.send(req(1))
    conn.send(Cancel(1, "bye"))
    assert conn.receive_data(frames(*(Chunk(1, b"x") for _ in range(4)))) == []
    assert_closed_by(conn, frame(Chunk(1, b"x")), FlowControlError)


def test_overrun_is_per_stream() -> None:
    conn = open_conn(window=2)
    conn.send(req(1))
    conn.send(req(2))
    got = conn.receive_data(frames(Chunk(1, b"a"), Chunk(2, b"b"), Chunk(1, b"c"),
                                   Chunk(2, b"d")))
    assert len(got) == 4
    assert_closed_by(conn, frame(Chunk(2, b"e")), FlowControlError)


@pytest.mark.parametrize("n", [0, 9])
def test_invalid_credit_rejected(n: int) -> None:
    conn = open_conn(window=8, peer_window=8)
    conn.receive_data(frame(req(1)))
    conn.send(Chunk(1, b"x"))
    assert_closed_by(conn, frame(Credit(1, n)), FlowControlError)


def test_credit_for_unknown_or_finished_stream_is_harmless() -> None:
    conn = open_conn()
    assert conn.receive_data(frame(Credit(42, 1))) == [Credit(42, 1)]
    conn.receive_data(frame(req(1)))
    conn.send(end(1))
    assert conn.receive_data(frame(Credit(1, 4))) == [Credit(1, 4)]
    assert conn.is_open
    assert conn.credit(1) == 0


def test_asymmetric_windows() -> None:
    """Each direction uses the window of the side that receives the chunks."""
    pair = make_pair(window_a=8192, window_b=2)
    pair.a.send(req(1))
    pair.b.send(req(1))
    pair.to_b()
    pair.to_a()
    assert pair.b.credit(1) == 8192
    assert pair.a.credit(1) == 2
    for _ in range(8192):
        pair.b.send(Chunk(1, b"x"))
    assert len(pair.to_a()) == 8192
    pair.a.consumed(1, 4096)
    assert pair.to_b() == [Credit(1, 4096)]  # a legitimate grant above 1024 * b's window
    assert pair.b.credit(1) == 4096


# --- cancel ---------------------------------------------------------------------------


@pytest.mark.parametrize("final", [end(1), Error(1, "cancelled", "gone", ""),
                                   Error(1, "cancelled", "gone", "", 5, 6, 1, 2)],
                         ids=["end", "error", "error-with-usage"])
def test_cancel_drops_in_flight_but_delivers_final(final: Message) -> None:
    pair = make_pair(window_a=8)
    pair.a.send(req(1))
    pair.to_b()
    pair.b.send(Head(1, "w"))
    before = [Chunk(1, b"before-%d" % i) for i in range(4)]
    for chunk in before:
        pair.b.send(chunk)
    assert pair.to_a() == [Head(1, "w"), *before]
    pair.b.send(Chunk(1, b"in-flight-1"))
    pair.b.send(Chunk(1, b"in-flight-2"))
    pair.a.send(Cancel(1, "client left"))
    assert pair.a.has_outgoing(1)  # kept until the responder ends it
    assert pair.to_a() == []  # in-flight chunks dropped quietly
    pair.a.consumed(1, 4)  # half a window, but the stream is cancelled: no credit
    assert pair.to_b() == [Cancel(1, "client left")]
    assert pair.b.has_incoming(1)
    pair.b.send(final)
    assert pair.to_a() == [final]  # the final End/Error still arrives: it reports usage
    assert not pair.a.has_outgoing(1)
    assert pair.a.open_streams == 0
    # forgotten: anything more on that stream is a protocol error
    assert_closed_by(pair.a, frame(Chunk(1, b"late")), ProtocolError)


def test_cancel_twice_sends_once() -> None:
    pair = make_pair()
    pair.a.send(req(1))
    pair.to_b()
    pair.a.send(Cancel(1, "one"))
    pair.a.send(Cancel(1, "two"))
    assert pair.to_b() == [Cancel(1, "one")]


def test_cancel_for_unknown_stream_is_harmless_on_both_sides() -> None:
    pair = make_pair()
    pair.a.send(Cancel(99, "never opened"))
    assert pair.a.data_to_send() == b""
    assert pair.b.receive_data(frame(Cancel(99, "never opened"))) == []
    assert pair.a.is_open and pair.b.is_open


def test_cancel_crossing_end_is_harmless_on_both_sides() -> None:
    pair = make_pair()
    pair.a.send(req(1))
    pair.to_b()
    pair.b.send(Chunk(1, b"x"))
    pair.b.send(end(1))  # the responder finishes ...
    pair.a.send(Cancel(1, "bye"))  # ... while the requester gives up
    assert pair.to_a() == [end(1)]  # the chunk is dropped; the End (its usage) arrives
    assert not pair.a.has_outgoing(1)
    assert pair.to_b() == []  # a Cancel for a stream b already ended: dropped
    assert pair.a.is_open and pair.b.is_open
    pair.a.send(Cancel(1, "again"))  # finished stream: nothing to say
    assert pair.a.data_to_send() == b""


# --- whole conversations --------------------------------------------------------------


def conversation(deliver: Deliver) -> list[tuple[str, list[Message]]]:
    """A scripted exchange touching every message type; returns each delivery's events."""
    pair = make_pair(window_a=4, window_b=6, handshake=False, deliver=deliver)
    log: list[tuple[str, list[Message]]] = []

    def a_to_b() -> None:
        log.append(("b", pair.to_b()))

    def b_to_a() -> None:
        log.append(("a", pair.to_a()))

    pair.a.initiate()
    a_to_b()
    pair.b.initiate()
    pair.b.send(Catalog((CatalogEntry("m", 1, 0, 2),)))
    b_to_a()
    pair.a.send(req(1))
    pair.a.send(req(2))
    pair.a.send(Ping(5))
    pair.a.send(Announce(("m",), 1, "e"))
    a_to_b()
    pair.b.send(Head(1, "w"))
    pair.b.send(Head(2, "w"))
    for i in range(4):
        pair.b.send(Chunk(1, b"s1-%d" % i))
        pair.b.send(Chunk(2, b"s2-%d" % i))
    pair.b.send(req(9))
    b_to_a()
    pair.a.consumed(1, 2)
    pair.a.consumed(2, 1)
    pair.a.send(Cancel(2, "enough"))
    pair.a.send(Chunk(9, b"reverse"))
    pair.a.send(End(9, 1, 1, 0, 0))
    a_to_b()
    pair.b.send(Chunk(1, b"s1-4"))
    pair.b.send(Chunk(1, b"s1-5"))
    pair.b.send(End(1, 3, 6, 0, 0))
    pair.b.send(Error(2, "cancelled", "ok", ""))
    pair.b.send(Pong(6))
    b_to_a()
    a_to_b()
    assert pair.a.open_streams == pair.b.open_streams == 0
    return log


EXPECTED_CONVERSATION: list[tuple[str, list[Message]]] = [
    ("b", [Hello(PROTOCOL_VERSION, "client", "a", DEFAULT_MAX_FRAME, 4)]),
    ("a", [Hello(PROTOCOL_VERSION, "proxy", "b", DEFAULT_MAX_FRAME, 6),
           Catalog((CatalogEntry("m", 1, 0, 2),))]),
    ("b", [req(1), req(2), Ping(5), Announce(("m",), 1, "e")]),
    ("a", [Pong(5), Head(1, "w"), Head(2, "w"),
           *[c for i in range(4) for c in (Chunk(1, b"s1-%d" % i), Chunk(2, b"s2-%d" % i))],
           req(9)]),
    ("b", [Credit(1, 2), Cancel(2, "enough"), Chunk(9, b"reverse"), End(9, 1, 1, 0, 0)]),
    ("a", [Chunk(1, b"s1-4"), Chunk(1, b"s1-5"), End(1, 3, 6, 0, 0),
           Error(2, "cancelled", "ok", ""), Pong(6)]),
    ("b", []),
]


@pytest.mark.parametrize(
    "deliver", [bulk, bytewise, in_pieces(2), in_pieces(3), in_pieces(7), in_pieces(1000)],
    ids=["bulk", "bytewise", "by2", "by3", "by7", "by1000"],
)
def test_conversation_independent_of_delivery_split(deliver: Deliver) -> None:
    assert conversation(deliver) == EXPECTED_CONVERSATION


# --- random fuzz: a handshaken connection fed arbitrary valid messages ---------------

small_id = st.integers(0, 3)
peer_messages = st.one_of(
    st.builds(Request, small_id, st.just("chat"), st.just("m"), st.booleans(), st.just(0),
              st.just(b"{}")),
    st.builds(Chunk, small_id, st.binary(max_size=4)),
    st.builds(End, small_id, st.just(0), st.just(0), st.just(0), st.just(0)),
    st.builds(Error, small_id, st.just("c"), st.just("m"), st.just("")),
    st.builds(Cancel, small_id, st.just("r")),
    st.builds(Credit, small_id, st.integers(0, 20)),
    st.builds(Head, small_id, st.just("w")),
    st.builds(Ping, st.integers(0, 10)),
    st.builds(Pong, st.integers(0, 10)),
    st.builds(Hello, st.integers(0, 2), st.just("p"), st.just("p"), st.just(1 << 20),
              st.integers(0, 8)),
)
local_actions = st.one_of(
    st.builds(Request, small_id, st.just("chat"), st.just("m"), st.just(True), st.just(0),
              st.just(b"{}")),
    st.builds(Chunk, small_id, st.just(b"c")),
    st.builds(End, small_id, st.just(0), st.just(0), st.just(0), st.just(0)),
    st.builds(Cancel, small_id, st.just("r")),
    small_id,  # consumed(req_id)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(peer_messages.map(lambda m: ("peer", m)),
                          local_actions.map(lambda m: ("local", m))), max_size=30))
def test_random_traffic_only_raises_protocol_errors(steps: list[tuple[str, Any]]) -> None:
    conn = open_conn(window=4, peer_window=4)
    for who, item in steps:
        if who == "peer":
            try:
                conn.receive_data(frame(item))
            except ProtocolError:
                assert conn.state is State.CLOSED
                with pytest.raises(ProtocolError):
                    conn.receive_data(frame(Ping(1)))
                return
        elif isinstance(item, int):
            conn.consumed(item)
        else:
            # refusing a bad local send is fine; crashing otherwise is not
            with contextlib.suppress(ProtocolError):
                conn.send(item)
        assert conn.is_open
        assert all(conn.credit(i) >= 0 for i in range(4))
    for msg in sent(conn):  # whatever was queued is valid, decodable framing
        assert not isinstance(msg, Hello)


# --- property: many interleaved streams under random consumption ----------------------


@dataclass
class _Stream:
    planned: int
    received: list[bytes] = field(default_factory=list)
    unconsumed: int = 0
    ended: bool = False
    cancelled: bool = False


class FlowMachine(RuleBasedStateMachine):
    """``a`` requests streams from ``b``; bytes cross in random slices, ``a`` consumes at
    random, ``b`` sends only while it has credit. No FlowControlError may ever occur and
    each stream's chunks arrive complete and in order."""

    def __init__(self) -> None:
        super().__init__()
        self.pair: Pair
        self.window = 2
        self.streams: dict[int, _Stream] = {}
        self.next_id = 0
        self.sent_count: dict[int, int] = {}
        self.ab = b""
        self.ba = b""

    @initialize(window=st.integers(2, 9))
    def setup(self, window: int) -> None:
        self.window = window
        self.pair = make_pair(window_a=window, window_b=3)

    def _pump(self) -> None:
        self.ab += self.pair.a.data_to_send()
        self.ba += self.pair.b.data_to_send()

    # requester side

    @rule(planned=st.integers(0, 25))
    def open_stream(self, planned: int) -> None:
        rid = self.next_id
        self.next_id += 1
        self.streams[rid] = _Stream(planned)
        self.pair.a.send(req(rid))
        self._pump()

    @precondition(lambda self: any(s.unconsumed for s in self.streams.values()))
    @rule(data=st.data())
    def consume(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(r for r, s in self.streams.items()
                                               if s.unconsumed)))
        s = self.streams[rid]
        n = data.draw(st.integers(1, s.unconsumed))
        s.unconsumed -= n
        self.pair.a.consumed(rid, n)
        self._pump()

    @precondition(lambda self: bool(self.streams))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.streams)))
        s = self.streams[rid]
        before = len(self.ab)
        self.pair.a.send(Cancel(rid, "bye"))
        self._pump()
        if s.ended or s.cancelled:
            assert len(self.ab) == before  # nothing to say about a finished stream
        s.cancelled = True

    @rule(n=st.integers(0, 200))
    def deliver_to_b(self, n: int) -> None:
        data, self.ab = self.ab[:n], self.ab[n:]
        for msg in self.pair.b.receive_data(data):
            if isinstance(msg, Request):
                self.sent_count[msg.req_id] = 0
            elif isinstance(msg, Cancel):
                self.pair.b.send(End(msg.req_id, 0, 0, 0, 0))  # answer every Cancel
        self._pump()

    # responder side

    @precondition(lambda self: bool(self.sent_count))
    @rule(data=st.data(), k=st.integers(1, 12))
    def respond(self, data: st.DataObject, k: int) -> None:
        b = self.pair.b
        rid = data.draw(st.sampled_from(sorted(self.sent_count)))
        if not b.has_incoming(rid):
            return
        planned = self.streams[rid].planned
        for _ in range(k):
            if self.sent_count[rid] == planned:
                b.send(End(rid, 0, planned, 0, 0))
                break
            if b.credit(rid) <= 0:  # a well-behaved sender
                break
            b.send(Chunk(rid, b"%d:%d" % (rid, self.sent_count[rid])))
            self.sent_count[rid] += 1
        self._pump()

    @rule(n=st.integers(0, 200))
    def deliver_to_a(self, n: int) -> None:
        data, self.ba = self.ba[:n], self.ba[n:]
        for msg in self.pair.a.receive_data(data):
            if isinstance(msg, Chunk):
                s = self.streams[msg.req_id]
                assert not s.cancelled and not s.ended
                s.received.append(msg.data)
                s.unconsumed += 1
            elif isinstance(msg, End):
                s = self.streams[msg.req_id]
                assert not s.ended
                if s.cancelled:  # its final still arrives: the answer to the Cancel
                    assert msg.completion_tokens in (0, s.planned)
                else:
                    assert len(s.received) == s.planned == msg.completion_tokens
                s.ended = True
            else:
                raise AssertionError(f"unexpected {msg}")
        self._pump()

    @invariant()
    def within_window(self) -> None:
        for rid, s in self.streams.items():
            assert s.unconsumed <= self.window  # a slow reader holds at most a window
            assert self.pair.b.credit(rid) <= self.window
            expected = [b"%d:%d" % (rid, i) for i in range(len(s.received))]
            assert s.received == expected  # complete prefix, in order

    def teardown(self) -> None:
        if not hasattr(self, "pair"):
            return
        for _ in range(10_000):
            if not (self.ab or self.ba or self.pair.a.open_streams or self.pair.b.open_streams):
                break
            self.deliver_to_b(len(self.ab))
            for rid in list(self.sent_count):
                self.respond_all(rid)
            self.deliver_to_a(len(self.ba))
            for rid, s in self.streams.items():
                if s.unconsumed:
                    s.unconsumed, n = 0, s.unconsumed
                    self.pair.a.consumed(rid, n)
            self._pump()
            self.within_window()
        else:
            raise AssertionError("streams never finished: flow control deadlocked")
        for s in self.streams.values():
            if s.cancelled:
                assert len(s.received) <= s.planned
            else:
                assert s.ended and len(s.received) == s.planned
        assert self.pair.a.is_open and self.pair.b.is_open

    def respond_all(self, rid: int) -> None:
        b = self.pair.b
        planned = self.streams[rid].planned
        while b.has_incoming(rid):
            if self.sent_count[rid] == planned:
                b.send(End(rid, 0, planned, 0, 0))
            elif b.credit(rid) > 0:
                b.send(Chunk(rid, b"%d:%d" % (rid, self.sent_count[rid])))
                self.sent_count[rid] += 1
            else:
                break
        self._pump()


FlowMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFlowControl = FlowMachine.TestCase


def test_a_request_too_large_for_the_peer_leaves_no_stream_open() -> None:
    conn = Connection(role="client", node_id="me")
    conn.initiate()
    conn.data_to_send()
    conn.receive_data(frame(hello(max_frame=1024)))  # the peer takes small frames only
    big = Request(1, "chat", "m", True, 30_000, b"x" * 2048)
    with pytest.raises(FrameTooLarge):
        conn.send(big)
    assert conn.data_to_send() == b""
    conn.send(req(1))  # the same stream id is free: nothing was registered
    assert decode(conn.data_to_send()[4:]) == req(1)
