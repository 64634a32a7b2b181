"""Peer over real loopback sockets: handshake, streams, flow control, cancel, failures,
keepalive; TcpConnector / TcpListener; the Watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from cocoon.errors import ProtocolError, RequestTimeout, TransportError
from cocoon.transport import OutgoingStream, Peer, TcpConnector, TcpListener, Watchdog
from cocoon.wire import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    Announce,
    Cancel,
    Chunk,
    Connection,
    End,
    Error,
    FrameDecoder,
    Head,
    Hello,
    Message,
    Ping,
    Pong,
    Request,
    decode,
    encode,
    encode_frame,
)

T = 5.0  # generous bound for anything that should happen "now"
BLOCKED = 0.2  # how long something must stay pending to count as blocked


class Recorder:
    """A Handler that queues every message it is given."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()

    async def on_message(self, peer: Peer, msg: Message) -> None:
        self.queue.put_nowait(msg)

    async def get(self) -> Message:
        return await asyncio.wait_for(self.queue.get(), T)


@dataclass
class Side:
    peer: Peer
    handler: Recorder
    task: asyncio.Task[None] | None = None


@dataclass
class Net:
    """Loopback sockets whose server-side halves arrive on ``accepted``."""

    server: asyncio.Server
    port: int
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def dial(self) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter],
                                  tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        client = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), T)
        server_side = await asyncio.wait_for(self.accepted.get(), T)
        self.writers += [client[1], server_side[1]]
        return client, server_side

    def run(self, side: Side) -> asyncio.Task[None]:
        side.task = asyncio.create_task(side.peer.run(side.handler))
        self.tasks.append(side.task)
        return side.task


@contextlib.asynccontextmanager
async def loopback() -> AsyncIterator[Net]:
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.Queue()
    )

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.put_nowait((r, w))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    net = Net(server, server.sockets[0].getsockname()[1], accepted)
    try:
        yield net
    finally:
        for w in net.writers:
            w.close()
        for t in net.tasks:
            if not t.done():
                t.cancel()
        for t in net.tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(t, T)
        for w in net.writers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), T)
        server.close()
        await asyncio.wait_for(server.wait_closed(), T)


def make_peer(pair: tuple[asyncio.StreamReader, asyncio.StreamWriter], role: str,
              node_id: str, window: int = 64, **kw: Any) -> Peer:
    return Peer(pair[0], pair[1], Connection(role=role, node_id=node_id, window=window), **kw)


@dataclass
class Pair:
    a: Side  # the requester ("client")
    b: Side  # the responder ("worker")
    net: Net


@contextlib.asynccontextmanager
async def peer_pair(window_a: int = 64, window_b: int = 64, run: bool = True,
                    **kw: Any) -> AsyncIterator[Pair]:
    async with loopback() as net:
        ca, cb = await net.dial()
        a = Side(make_peer(ca, "client", "node-a", window_a, **kw), Recorder())
        b = Side(make_peer(cb, "worker", "node-b", window_b, **kw), Recorder())
        await asyncio.wait_for(asyncio.gather(a.peer.handshake(), b.peer.handshake()), T)
        if run:
            net.run(a)
            net.run(b)
        try:
            yield Pair(a, b, net)
        finally:
            a.peer.close("test over")
            b.peer.close("test over")


def request(rid: int, body: bytes = b"{}") -> Request:
    return Request(rid, "chat", "m", True, 10_000, body)


async def nxt(stream: OutgoingStream) -> Any:
    return await asyncio.wait_for(stream.next(), T)


async def until_terminal(stream: OutgoingStream) -> list[Any]:
    out = []
    while True:
        ev = await nxt(stream)
        out.append(ev)
        if not isinstance(ev, Head | Chunk):
            return out


async def is_blocked(task: asyncio.Task[Any]) -> bool:
    done, _ = await asyncio.wait({task}, timeout=BLOCKED)
    return not done


async def wait_until(cond: Any, what: str) -> None:
    for _ in range(int(T / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"not {what} within {T:g}s")


def hello_frame(window: int = 4, version: int = PROTOCOL_VERSION) -> bytes:
    return encode_frame(encode(Hello(version, "client", "raw", DEFAULT_MAX_FRAME, window)))


async def read_frames_until_eof(reader: asyncio.StreamReader) -> list[Message]:
    dec = FrameDecoder()
    out: list[Message] = []
    async with asyncio.timeout(T):
        while data := await reader.read(65536):
            out += [decode(p) for p in dec.feed(data)]
    return out


# --- handshake ---------------------------------------------------------------------------

async def test_handshake_both_sides() -> None:
    async with peer_pair(window_a=8, window_b=16, run=False) as p:
        a, b = p.a.peer, p.b.peer
        assert a.conn.is_open and b.conn.is_open
        assert (a.hello.role, a.hello.node_id, a.hello.window) == ("worker", "node-b", 16)
        assert (b.hello.role, b.hello.node_id, b.hello.window) == ("client", "node-a", 8)
        assert a.hello.version == PROTOCOL_VERSION
        assert a.address == f"127.0.0.1:{p.net.port}"
        assert b.address.startswith("127.0.0.1:")
        assert not a.closed and not b.closed


async def test_hello_before_handshake_is_an_assertion() -> None:
    async with loopback() as net:
        ca, _ = await net.dial()
        peer = make_peer(ca, "client", "x")
        with pytest.raises(AssertionError):
            _ = peer.hello


async def test_handshake_timeout_when_peer_is_silent() -> None:
    async with loopback() as net:
        _, server_side = await net.dial()
        victim = make_peer(server_side, "proxy", "victim", handshake_timeout=0.2)
        with pytest.raises(TransportError, match=r"no handshake .* within 0.2s"):
            await asyncio.wait_for(victim.handshake(), T)


async def test_handshake_fails_when_peer_closes() -> None:
    async with loopback() as net:
        (_, raw_w), server_side = await net.dial()
        victim = make_peer(server_side, "proxy", "victim")
        raw_w.close()
        with pytest.raises(TransportError, match="closed during the handshake"):
            await asyncio.wait_for(victim.handshake(), T)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x00",  # empty frame
        hello_frame(version=PROTOCOL_VERSION + 1),
        encode_frame(encode(Ping(1))),  # not a Hello first
        encode_frame(b"\xc1"),  # undecodable msgpack
    ],
    ids=["empty-frame", "wrong-version", "ping-first", "bad-msgpack"],
)
async def test_handshake_garbage_is_protocol_error(data: bytes) -> None:
    async with loopback() as net:
        (_, raw_w), server_side = await net.dial()
        victim = make_peer(server_side, "proxy", "victim")
        raw_w.write(data)
        with pytest.raises(ProtocolError):
            await asyncio.wait_for(victim.handshake(), T)


# --- streams -----------------------------------------------------------------------------

async def test_request_head_chunks_end_in_order() -> None:
    async with peer_pair() as p:
        a, b = p.a.peer, p.b.peer
        stream = a.open_stream(lambda rid: request(rid, b'{"q":1}'))
        req = await p.b.handler.get()
        assert isinstance(req, Request)
        assert req == request(stream.req_id, b'{"q":1}')
        assert b.conn.has_incoming(req.req_id)

        b.send(Head(req.req_id, "worker-1"))
        for i in range(10):
            await asyncio.wait_for(b.send_chunk(req.req_id, b"chunk-%d" % i), T)
        b.finish(End(req.req_id, 3, 10, 1, 0))

        events = await until_terminal(stream)
        assert events[0] == Head(stream.req_id, "worker-1")
        assert events[1:-1] == [Chunk(stream.req_id, b"chunk-%d" % i) for i in range(10)]
        assert events[-1] == End(stream.req_id, 3, 10, 1, 0)
        assert stream.done
        assert not b.conn.has_incoming(req.req_id)
        await wait_until(lambda: not a.conn.has_outgoing(stream.req_id), "stream forgotten")
        assert p.a.handler.queue.empty()  # replies went to the stream, not the handler


async def test_error_ends_stream_and_finish_twice_is_harmless() -> None:
    async with peer_pair() as p:
        a, b = p.a.peer, p.b.peer
        stream = a.open_stream(request)
        req = await p.b.handler.get()
        b.finish(Error(req.req_id, "model_not_found", "nope", "model"))
        b.finish(End(req.req_id, 0, 0, 0, 0))  # already ended: ignored, no ProtocolError
        assert await nxt(stream) == Error(stream.req_id, "model_not_found", "nope", "model")
        assert stream.done
        # The connection is still healthy.
        s2 = a.open_stream(request)
        r2 = await p.b.handler.get()
        b.finish(End(r2.req_id, 1, 1, 0, 0))  # type: ignore[union-attr]
        assert isinstance(await nxt(s2), End)
        assert not a.closed and not b.closed


async def test_many_concurrent_streams_are_demultiplexed() -> None:
    async with peer_pair(window_a=4) as p:
        a, b = p.a.peer, p.b.peer
        streams = [a.open_stream(request) for _ in range(5)]
        assert len({s.req_id for s in streams}) == 5
        reqs = [await p.b.handler.get() for _ in streams]
        assert [r.req_id for r in reqs] == [s.req_id for s in streams]  # type: ignore[union-attr]

        async def respond(rid: int) -> None:
            for i in range(12):
                await b.send_chunk(rid, b"%d:%d" % (rid % 1000, i))
            b.finish(End(rid, 0, 12, 0, 0))

        async def consume(s: OutgoingStream) -> list[bytes]:
            got = []
            while True:
                ev = await nxt(s)
                if isinstance(ev, Chunk):
                    got.append(ev.data)
                    s.consumed()
                else:
                    assert isinstance(ev, End)
                    return got

        async with asyncio.timeout(T):
            results = await asyncio.gather(
                *(respond(r.req_id) for r in reqs),  # type: ignore[union-attr]
                *(consume(s) for s in streams),
            )
        for s, got in zip(streams, results[5:], strict=True):
            assert got == [b"%d:%d" % (s.req_id % 1000, i) for i in range(12)]


async def test_other_messages_go_to_the_handler() -> None:
    async with peer_pair() as p:
        p.b.peer.send(Announce(("m1", "m2"), 4, "fake"))
        assert await p.a.handler.get() == Announce(("m1", "m2"), 4, "fake")


# --- flow control ------------------------------------------------------------------------

async def test_flow_control_blocks_until_consumed() -> None:
    window = 4
    async with peer_pair(window_a=window) as p:
        a, b = p.a.peer, p.b.peer
        stream = a.open_stream(request)
        req = await p.b.handler.get()
        rid = req.req_id  # type: ignore[union-attr]
        assert b.conn.credit(rid) == window

        for i in range(window):  # the whole window goes out without waiting
            await asyncio.wait_for(b.send_chunk(rid, b"%d" % i), T)
        assert b.conn.credit(rid) == 0
        blocked = asyncio.create_task(b.send_chunk(rid, b"late"))
        assert await is_blocked(blocked)

        # The requester has all `window` chunks, and nothing more.
        for i in range(window):
            assert await nxt(stream) == Chunk(rid, b"%d" % i)
        assert stream.pending == 0

        stream.consumed(1)  # half a window is the credit batch: not yet
        assert await is_blocked(blocked)
        stream.consumed(1)
        await asyncio.wait_for(blocked, T)
        assert await nxt(stream) == Chunk(rid, b"late")
        assert b.conn.credit(rid) == 1  # 2 granted, 1 used

        b.finish(End(rid, 0, window + 1, 0, 0))
        assert isinstance(await nxt(stream), End)


async def test_flow_control_sustained_by_consumer() -> None:
    async with peer_pair(window_a=2) as p:
        a, b = p.a.peer, p.b.peer
        stream = a.open_stream(request)
        rid = (await p.b.handler.get()).req_id  # type: ignore[union-attr]

        async def produce() -> None:
            for i in range(200):
                await b.send_chunk(rid, b"x%d" % i)
            b.finish(End(rid, 0, 200, 0, 0))

        producer = asyncio.create_task(produce())
        got = []
        async with asyncio.timeout(T):
            while True:
                ev = await stream.next()
                if isinstance(ev, End):
                    break
                assert isinstance(ev, Chunk)
                # Besides this chunk, at most window-1 chunks (+ the End) can be queued.
                assert stream.pending <= 2
                got.append(ev.data)
                stream.consumed()
            await producer
        assert got == [b"x%d" % i for i in range(200)]


async def test_send_chunk_retry_after_timed_out_wait() -> None:
    async with peer_pair(window_a=2) as p:
        a, b = p.a.peer, p.b.peer
        stream = a.open_stream(request)
        rid = (await p.b.handler.get()).req_id  # type: ignore[union-attr]
        await asyncio.wait_for(b.send_chunk(rid, b"0"), T)
        await asyncio.wait_for(b.send_chunk(rid, b"1"), T)
        with pytest.raises(TimeoutError):  # a sender that gives up waiting for credit...
            await asyncio.wait_for(b.send_chunk(rid, b"2"), 0.05)
        retry = asyncio.create_task(b.send_chunk(rid, b"2"))  # ...and tries again
        try:
            assert await is_blocked(retry)  # still waiting for credit, not cancelled
            stream.consumed(2)
            await asyncio.wait_for(retry, T)
        finally:
            retry.cancel()
        assert [await nxt(stream) for _ in range(3)] == [
            Chunk(rid, b"0"), Chunk(rid, b"1"), Chunk(rid, b"2")]


async def test_finish_wakes_a_sender_blocked_on_credit() -> None:
    async with peer_pair(window_a=2) as p:
        a, b = p.a.peer, p.b.peer
        a.open_stream(request)
        rid = (await p.b.handler.get()).req_id  # type: ignore[union-attr]
        await asyncio.wait_for(b.send_chunk(rid, b"0"), T)
        await asyncio.wait_for(b.send_chunk(rid, b"1"), T)
        blocked = asyncio.create_task(b.send_chunk(rid, b"2"))
        try:
            assert await is_blocked(blocked)
            b.finish(Error(rid, "cancelled", "stopped", ""))
            b.close("bye")
            with pytest.raises(TransportError):
                await asyncio.wait_for(blocked, 1.0)
        finally:
            blocked.cancel()


# --- cancel ------------------------------------------------------------------------------

async def test_cancel_reaches_responder_handler() -> None:
    async with peer_pair() as p:
        a, b = p.a.peer, p.b.peer
        stream = a.open_stream(request)
        rid = (await p.b.handler.get()).req_id  # type: ignore[union-attr]
        await asyncio.wait_for(b.send_chunk(rid, b"first"), T)
        assert await nxt(stream) == Chunk(rid, b"first")

        stream.cancel("user went away")
        assert stream.done
        stream.cancel("again")  # idempotent: no second Cancel
        assert await p.b.handler.get() == Cancel(rid, "user went away")

        # Chunks already in flight and the responder's End are dropped quietly.
        await asyncio.wait_for(b.send_chunk(rid, b"in flight"), T)
        b.finish(Error(rid, "cancelled", "cancelled by the requester", ""))
        await wait_until(lambda: not a.conn.has_outgoing(rid), "cancelled stream ended")
        assert stream.pending == 0
        assert p.b.handler.queue.empty()
        assert not a.closed and not b.closed


async def test_cancel_reason_is_truncated() -> None:
    async with peer_pair() as p:
        stream = p.a.peer.open_stream(request)
        await p.b.handler.get()
        stream.cancel("r" * 1000)
        msg = await p.b.handler.get()
        assert isinstance(msg, Cancel)
        assert msg.reason == "r" * 200


# --- connection loss ---------------------------------------------------------------------

@pytest.mark.parametrize("closer", ["requester", "responder"])
async def test_close_fails_open_streams_and_blocked_sender(closer: str) -> None:
    async with peer_pair(window_a=2) as p:
        a, b = p.a.peer, p.b.peer
        s1 = a.open_stream(request)
        s2 = a.open_stream(request)
        r1 = (await p.b.handler.get()).req_id  # type: ignore[union-attr]
        await p.b.handler.get()
        await asyncio.wait_for(b.send_chunk(r1, b"0"), T)
        await asyncio.wait_for(b.send_chunk(r1, b"1"), T)
        blocked = asyncio.create_task(b.send_chunk(r1, b"2"))
        assert await is_blocked(blocked)

        (a if closer == "requester" else b).close("bye")

        with pytest.raises(TransportError):
            await asyncio.wait_for(blocked, T)
        ev1 = await until_terminal(s1)
        assert ev1[:-1] == [Chunk(r1, b"0"), Chunk(r1, b"1")]
        assert isinstance(ev1[-1], TransportError)
        assert "lost" in str(ev1[-1])
        ev2 = await until_terminal(s2)
        assert len(ev2) == 1 and isinstance(ev2[0], TransportError)
        assert s1.done and s2.done

        await asyncio.wait_for(asyncio.gather(p.a.task, p.b.task), T)  # type: ignore[arg-type]
        assert a.closed and b.closed
        await asyncio.wait_for(a.wait_closed(), T)
        with pytest.raises(TransportError):
            a.open_stream(request)
        with pytest.raises(TransportError):
            b.send(Announce((), 1, "x"))
        with pytest.raises(TransportError):
            await asyncio.wait_for(b.send_chunk(r1, b"x"), T)
        b.finish(End(r1, 0, 0, 0, 0))  # no-op on a closed peer
        s1.consumed()  # no-op on a closed peer


async def test_streams_opened_after_close_reason_is_reported() -> None:
    async with peer_pair() as p:
        stream = p.a.peer.open_stream(request)
        await p.b.handler.get()
        p.a.peer.close("shutting down")
        ev = await nxt(stream)
        assert isinstance(ev, TransportError)
        assert "shutting down" in str(ev)
        assert p.a.peer.close_reason == "shutting down"


async def test_spawn_runs_while_connected_and_logs_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="cocoon.transport.peer")
    async with loopback() as net:
        ca, cb = await net.dial()
        a = Side(make_peer(ca, "client", "a"), Recorder())
        b = Side(make_peer(cb, "worker", "b"), Recorder())
        early = asyncio.sleep(0)
        with pytest.raises(TransportError):
            a.peer.spawn(early, "too-early")
        early.close()
        await asyncio.wait_for(asyncio.gather(a.peer.handshake(), b.peer.handshake()), T)
        net.run(a)
        net.run(b)
        await asyncio.sleep(0)
        ran = asyncio.Event()

        async def boom() -> None:
            ran.set()
            raise ValueError("kaboom")

        task = a.peer.spawn(boom(), "boomer")
        await asyncio.wait_for(task, T)  # the guard swallows the error
        assert ran.is_set()
        assert "task boomer failed" in caplog.text
        assert not a.peer.closed
        stream = a.peer.open_stream(request)
        rid = (await b.handler.get()).req_id  # type: ignore[union-attr]
        b.peer.finish(End(rid, 0, 0, 0, 0))
        assert isinstance(await nxt(stream), End)
        a.peer.close()
        b.peer.close()


# --- garbage from a raw peer -------------------------------------------------------------

@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"\x00\x00\x00\x00", "empty frame"),
        (b"\xff\xff\xff\xff", "limit"),
        (encode_frame(b"\xc1\xc1"), "undecodable"),
        (encode_frame(encode(Chunk(12345, b"x"))), "unknown stream"),
        (hello_frame(), "recv_hello not allowed"),
        (encode_frame(encode(End(999, 0, 0, 0, 0))), "unknown stream"),
    ],
    ids=["empty-frame", "huge-frame", "bad-msgpack", "stray-chunk", "second-hello",
         "stray-end"],
)
async def test_garbage_ends_run_and_fails_streams(
    caplog: pytest.LogCaptureFixture, garbage: bytes, reason: str
) -> None:
    caplog.set_level(logging.WARNING, logger="cocoon.transport.peer")
    async with loopback() as net:
        (raw_r, raw_w), server_side = await net.dial()
        victim = Side(make_peer(server_side, "proxy", "victim"), Recorder())
        raw_w.write(hello_frame())
        assert (await asyncio.wait_for(victim.peer.handshake(), T)).node_id == "raw"
        task = net.run(victim)
        stream = victim.peer.open_stream(request)

        raw_w.write(garbage)
        await asyncio.wait_for(task, T)  # run() returns: the error is logged, not raised
        assert victim.peer.closed
        assert reason in victim.peer.close_reason
        ev = await nxt(stream)
        assert isinstance(ev, TransportError)
        assert reason in str(ev)
        assert any(
            r.levelno == logging.WARNING and reason in r.getMessage() for r in caplog.records
        )
        # The victim hung up after sending its Hello and our Request.
        frames = await read_frames_until_eof(raw_r)
        assert isinstance(frames[0], Hello)
        assert frames[1] == request(stream.req_id)


async def test_credit_overrun_by_raw_peer_is_a_protocol_error() -> None:
    async with loopback() as net:
        (_, raw_w), server_side = await net.dial()
        victim = Side(make_peer(server_side, "client", "victim", window=2), Recorder())
        raw_w.write(hello_frame())
        await asyncio.wait_for(victim.peer.handshake(), T)
        task = net.run(victim)
        stream = victim.peer.open_stream(request)
        rid = stream.req_id
        raw_w.write(b"".join(encode_frame(encode(Chunk(rid, b"%d" % i))) for i in range(3)))
        await asyncio.wait_for(task, T)
        assert "overran its credit" in victim.peer.close_reason
        events = await until_terminal(stream)
        # Chunks decoded before the overrun may or may not be delivered; never the third.
        assert events[:-1] == [Chunk(rid, b"%d" % i) for i in range(len(events) - 1)]
        assert len(events) <= 3
        assert isinstance(events[-1], TransportError)


# --- keepalive ---------------------------------------------------------------------------

async def test_keepalive_drops_a_silent_peer() -> None:
    async with loopback() as net:
        (raw_r, raw_w), server_side = await net.dial()
        victim = Side(
            make_peer(server_side, "proxy", "victim", ping_interval=0.05, idle_timeout=0.3),
            Recorder(),
        )
        raw_w.write(hello_frame())  # complete the handshake, then never answer
        await asyncio.wait_for(victim.peer.handshake(), T)
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = net.run(victim)
        stream = victim.peer.open_stream(request)

        frames = await read_frames_until_eof(raw_r)  # EOF: the victim hung up
        await asyncio.wait_for(task, T)
        elapsed = loop.time() - started
        assert elapsed >= 0.25  # not before the idle timeout
        assert victim.peer.closed
        assert "silent" in victim.peer.close_reason
        assert isinstance(frames[0], Hello)
        assert isinstance(frames[1], Request)
        pings = [f for f in frames if isinstance(f, Ping)]
        assert pings, frames
        ev = await nxt(stream)
        assert isinstance(ev, TransportError)
        assert "silent" in str(ev)


async def test_keepalive_keeps_a_responsive_peer() -> None:
    async with peer_pair(ping_interval=0.03, idle_timeout=0.3) as p:
        await asyncio.sleep(0.8)  # over two idle timeouts, kept alive only by ping/pong
        assert not p.a.peer.closed and not p.b.peer.closed
        stream = p.a.peer.open_stream(request)
        rid = (await p.b.handler.get()).req_id  # type: ignore[union-attr]
        p.b.peer.finish(End(rid, 1, 2, 0, 0))
        assert await nxt(stream) == End(rid, 1, 2, 0, 0)
        assert p.a.handler.queue.empty() and p.b.handler.queue.empty()  # pings not passed on


async def test_pongs_alone_keep_the_pinging_side_alive() -> None:
    async with loopback() as net:
        ca, cb = await net.dial()
        a = Side(make_peer(ca, "client", "a", ping_interval=0.03, idle_timeout=0.3), Recorder())
        b = Side(make_peer(cb, "worker", "b", ping_interval=30, idle_timeout=60), Recorder())
        await asyncio.wait_for(asyncio.gather(a.peer.handshake(), b.peer.handshake()), T)
        net.run(a)
        net.run(b)
        await asyncio.sleep(0.8)  # only a pings; only b's pongs keep a from dropping b
        assert not a.peer.closed, a.peer.close_reason
        assert not b.peer.closed
        a.peer.close()
        b.peer.close()


async def test_ping_from_raw_peer_is_answered_with_pong() -> None:
    async with loopback() as net:
        (raw_r, raw_w), server_side = await net.dial()
        victim = Side(make_peer(server_side, "proxy", "victim"), Recorder())
        raw_w.write(hello_frame())
        await asyncio.wait_for(victim.peer.handshake(), T)
        net.run(victim)
        raw_w.write(encode_frame(encode(Ping(0xC0FFEE))))
        dec = FrameDecoder()
        frames: list[Message] = []
        async with asyncio.timeout(T):
            while not any(isinstance(f, Pong) for f in frames):
                frames += [decode(x) for x in dec.feed(await raw_r.read(65536))]
        assert isinstance(frames[0], Hello)
        assert Pong(0xC0FFEE) in frames
        assert victim.handler.queue.empty()
        victim.peer.close()


# --- connector / listener ----------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_tcp_connector_to_closed_port() -> None:
    port = closed_port()
    with pytest.raises(TransportError) as ei:
        await asyncio.wait_for(TcpConnector(timeout=2).connect("127.0.0.1", port), T)
    msg = str(ei.value)
    assert msg.startswith(f"cannot connect to 127.0.0.1:{port}: ")
    assert len(msg) > len(f"cannot connect to 127.0.0.1:{port}: ")


async def test_tcp_listener_port_in_use() -> None:
    async def ignore(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await TcpListener().listen("127.0.0.1", 0, ignore)
    try:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TransportError, match=f"cannot listen on 127.0.0.1:{port}"):
            await TcpListener().listen("127.0.0.1", port, ignore)
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), T)


async def test_tcp_listener_and_connector_carry_a_peer() -> None:
    accepted: asyncio.Queue[Peer] = asyncio.Queue()

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peer = Peer(r, w, Connection(role="proxy", node_id="srv"))
        await peer.handshake()
        accepted.put_nowait(peer)

    server = await TcpListener().listen("127.0.0.1", 0, on_connect)
    port = server.sockets[0].getsockname()[1]
    r, w = await TcpConnector(timeout=T).connect("127.0.0.1", port)
    try:
        client = Peer(r, w, Connection(role="client", node_id="cli"))
        hello = await asyncio.wait_for(client.handshake(), T)
        assert (hello.role, hello.node_id) == ("proxy", "srv")
        srv = await asyncio.wait_for(accepted.get(), T)
        assert srv.hello.node_id == "cli"
        srv.close()
    finally:
        w.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), T)


# --- watchdog ----------------------------------------------------------------------------

class StubStream:
    """What the Watchdog uses of an OutgoingStream."""

    def __init__(self, last_activity: float, done: bool = False) -> None:
        self.done = done
        self.last_activity = last_activity
        self.expired: list[RequestTimeout] = []

    def expire(self, err: RequestTimeout) -> None:
        self.expired.append(err)


async def test_watchdog_scan_with_fake_now() -> None:
    now = asyncio.get_running_loop().time()
    wd = Watchdog()
    late = StubStream(now)
    idle = StubStream(now)
    busy = StubStream(now)
    done = StubStream(now, done=True)
    forgotten = StubStream(now)
    wd.watch(late, timeout=10, idle=100)  # type: ignore[arg-type]
    wd.watch(idle, timeout=100, idle=2)  # type: ignore[arg-type]
    wd.watch(busy, timeout=100, idle=2)  # type: ignore[arg-type]
    wd.watch(done, timeout=1, idle=1)  # type: ignore[arg-type]
    wd.watch(forgotten, timeout=1, idle=1)  # type: ignore[arg-type]
    wd.forget(forgotten)  # type: ignore[arg-type]
    wd.forget(forgotten)  # type: ignore[arg-type]  # twice is fine

    assert wd.scan(now + 1) == 0
    assert not any(s.expired for s in (late, idle, busy, done))

    busy.last_activity = now + 2.5  # activity pushes the idle limit out
    assert wd.scan(now + 3) == 1
    assert len(idle.expired) == 1
    assert "no progress for 2s" in idle.expired[0].message
    assert not busy.expired and not late.expired

    assert wd.scan(now + 11) == 2  # late hits its deadline; busy went idle again
    assert len(late.expired) == 1
    assert "did not finish within 10s" in late.expired[0].message
    assert len(busy.expired) == 1
    assert isinstance(late.expired[0], RequestTimeout)
    assert late.expired[0].code == "timeout"

    # Expired, done and forgotten streams are dropped: never expired (again).
    done.done = False
    assert wd.scan(now + 1000) == 0
    assert not done.expired and not forgotten.expired
    assert len(idle.expired) == len(late.expired) == len(busy.expired) == 1


async def test_watchdog_leaves_done_streams_alone() -> None:
    now = asyncio.get_running_loop().time()
    wd = Watchdog()
    s = StubStream(now)
    wd.watch(s, timeout=1, idle=1)  # type: ignore[arg-type]
    s.done = True
    assert wd.scan(now + 5) == 0
    assert not s.expired


async def test_watchdog_deadline_beats_idle_in_same_scan() -> None:
    now = asyncio.get_running_loop().time()
    wd = Watchdog()
    s = StubStream(now)
    wd.watch(s, timeout=5, idle=1)  # type: ignore[arg-type]
    assert wd.scan(now + 6) == 1
    assert len(s.expired) == 1
    assert "within 5s" in s.expired[0].message


async def test_watchdog_run_expires_a_real_outgoing_stream() -> None:
    async with peer_pair() as p:
        stream = p.a.peer.open_stream(request)
        rid = (await p.b.handler.get()).req_id  # type: ignore[union-attr]
        wd = Watchdog(tick=0.02)
        wd.watch(stream, timeout=0.15, idle=10)
        runner = asyncio.create_task(wd.run())
        try:
            ev = await nxt(stream)
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(runner, T)
        assert isinstance(ev, RequestTimeout)
        assert stream.done
        stream.cancel("timed out")  # done already: no Cancel goes out
        p.b.peer.finish(End(rid, 0, 0, 0, 0))
        await wait_until(lambda: not p.a.peer.conn.has_outgoing(rid), "stream ended")
        assert p.b.handler.queue.empty()


async def test_watchdog_idle_on_real_stream_is_reset_by_chunks() -> None:
    async with peer_pair() as p:
        stream = p.a.peer.open_stream(request)
        rid = (await p.b.handler.get()).req_id  # type: ignore[union-attr]
        wd = Watchdog()
        wd.watch(stream, timeout=100, idle=5)
        loop = asyncio.get_running_loop()
        t0 = stream.last_activity
        await asyncio.wait_for(p.b.peer.send_chunk(rid, b"c"), T)
        assert await nxt(stream) == Chunk(rid, b"c")
        assert stream.last_activity >= t0
        assert wd.scan(stream.last_activity + 4.9) == 0
        assert wd.scan(stream.last_activity + 5.1) == 1
        ev = await nxt(stream)
        assert isinstance(ev, RequestTimeout)
        assert loop.time() < t0 + 5  # no real waiting happened
        p.b.peer.finish(End(rid, 0, 1, 0, 0))
