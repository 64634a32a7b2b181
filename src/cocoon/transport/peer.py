"""The asyncio shell around :class:`cocoon.wire.Connection`: the only code that moves bytes.

A :class:`Peer` owns one byte stream (plain TCP today; TLS slots in through
:class:`~cocoon.transport.streams.Connector`) and one sans-IO ``Connection``. It

* runs the read loop, routing stream messages (Head/Route/Chunk/End/Error) to the
  :class:`OutgoingStream` that requested them and everything else to a :class:`Handler`;
* coalesces writes (one ``write`` per loop iteration) and applies transport back-pressure;
* makes chunk senders wait for flow-control credit instead of buffering;
* pings an idle peer and drops a silent one.

Every task it starts lives in its own TaskGroup; when the connection ends they are cancelled
and every open outgoing stream receives a :class:`~cocoon.errors.TransportError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from cocoon.attestation.ratls import binding_payload, verify_binding
from cocoon.errors import CocoonError, ProtocolError, RequestTimeout, TransportError
from cocoon.wire import (
    Cancel,
    Chunk,
    Connection,
    Credit,
    End,
    Error,
    Head,
    Hello,
    Message,
    Ping,
    Pong,
    Request,
    Route,
)

__all__ = ["Handler", "OutgoingStream", "Peer", "StreamEvent"]

log = logging.getLogger(__name__)

_READ_SIZE: Final = 256 * 1024
_WRITE_HIGH_WATER: Final = 1024 * 1024

# TransportError: the connection died; RequestTimeout: a Watchdog gave up on the stream.
StreamEvent = Head | Route | Chunk | End | Error | TransportError | RequestTimeout


class Handler(Protocol):
    """What a node does with the messages that are not replies to its own requests."""

    async def on_message(self, peer: Peer, msg: Message) -> None: ...


class OutgoingStream:
    """A request we sent: its reply messages arrive here, in order.

    The queue needs no bound of its own: the peer may send at most ``window`` chunks before
    :meth:`consumed` returns credit, and a peer that sends more is disconnected.
    """

    __slots__ = ("_items", "_loop", "_peer", "_waiter", "done", "last_activity", "req_id")

    def __init__(self, peer: Peer, req_id: int) -> None:
        self._peer = peer
        self.req_id = req_id
        self._items: deque[StreamEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.done = False
        self._loop = asyncio.get_running_loop()
        self.last_activity = self._loop.time()

    def _deliver(self, ev: StreamEvent) -> None:
        self.last_activity = self._loop.time()
        self._items.append(ev)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def expire(self, err: RequestTimeout) -> None:
        """Queue ``err`` after what already arrived (used by Watchdog)."""
        self._deliver(err)

    @property
    def pending(self) -> int:
        """Replies received and not yet taken."""
        return len(self._items)

    async def next(self) -> StreamEvent:
        """The next reply; End, Error, TransportError or RequestTimeout is the last one."""
        items = self._items
        while not items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        ev = items.popleft()
        if type(ev) is not Chunk and type(ev) is not Head and type(ev) is not Route:
            self.done = True
        return ev

    def take_chunks(self, limit: int, max_bytes: int = 1 << 62) -> list[bytes]:
        """Without waiting, take up to ``limit`` chunk payloads queued at the front (of at
        most ``max_bytes`` together), so a caller can forward a burst in one write."""
        items = self._items
        out: list[bytes] = []
        while items and len(out) < limit and type(items[0]) is Chunk:
            size = len(items[0].data)
            if size > max_bytes:
                break
            max_bytes -= size
            out.append(items.popleft().data)  # type: ignore[union-attr]
        return out

    def ends_next(self) -> bool:
        """Whether the next reply is already here and is the stream's End: a caller then
        sends what it holds together with the end, in one write."""
        items = self._items
        return bool(items) and type(items[0]) is End

    def consumed(self, n: int = 1) -> None:
        """Tell the peer we passed ``n`` chunks on, so it may send more."""
        self._peer._consumed(self.req_id, n)

    def cancel(self, reason: str) -> None:
        """Stop the stream; late replies are dropped by the connection."""
        if not self.done:
            self.done = True
            self._peer._cancel(self.req_id, reason)

    def stop(self, reason: str) -> None:
        """Ask the responder to stop but keep listening: chunks still in flight are dropped,
        and its final End or Error, which reports what it generated before stopping, still
        arrives through :meth:`next` (or a TransportError if the connection ends first).
        Also after a Watchdog's RequestTimeout; a no-op once the responder has ended it."""
        self._peer._stop(self.req_id, reason)


class Peer:
    """One live connection to another node."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Connection,
        *,
        handshake_timeout: float = 10.0,
        ping_interval: float = 10.0,
        idle_timeout: float = 30.0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.conn = conn
        self._handshake_timeout = handshake_timeout
        self._ping_interval = ping_interval
        self._idle_timeout = idle_timeout
        self._streams: dict[int, OutgoingStream] = {}
        self._credit_waiters: dict[int, asyncio.Future[None]] = {}
        self._early: list[Message] = []  # arrived in the same read as the peer's Hello
        self._flush_scheduled = False
        self._closed = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._last_rx = 0.0
        self._next_req_id = secrets.randbits(32)
        self.close_reason = ""
        peername = writer.get_extra_info("peername")
        self.address = f"{peername[0]}:{peername[1]}" if peername else "?"

    @property
    def hello(self) -> Hello:
        assert self.conn.peer is not None, "handshake not done"
        return self.conn.peer

    def extra(self, name: str) -> Any:
        """Transport facts: ``verified_evidence``, ``peer_claims``, ``channel_binding`` (TLS)."""
        return self._writer.get_extra_info(name)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # --- lifecycle --------------------------------------------------------------------

    async def handshake(self) -> Hello:
        """Exchange Hellos; return the peer's. Raises ProtocolError / TransportError, and
        AttestationError (rule ``channel_binding``) if a TLS peer's Hello is not bound to
        this channel."""
        exporter = self.extra("channel_binding")
        if exporter is not None:
            self.conn.binding = self.extra("binding_signer")(
                binding_payload(exporter, self.conn.role, self.conn.node_id))
        self.conn.initiate()
        self._flush()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._handshake_timeout):
                while not self.conn.is_open:
                    data = await self._reader.read(_READ_SIZE)
                    if not data:
                        raise TransportError(f"{self.address} closed during the handshake")
                    # conn enforces that the Hello comes first. The peer may speak right
                    # after it (a worker announces its models): what came in the same read
                    # waits for run().
                    msgs = self.conn.receive_data(data)
                    self._early += [m for m in msgs if m is not self.conn.peer]
        except TimeoutError:
            raise TransportError(f"no handshake from {self.address} within "
                                 f"{self._handshake_timeout:g}s") from None
        except OSError as exc:
            raise TransportError(f"{self.address}: {exc}") from None
        self._last_rx = loop.time()
        hello = self.hello
        cert = self.extra("peer_certificate")
        if cert is not None:
            verify_binding(cert, hello.binding,
                           binding_payload(exporter, hello.role, hello.node_id))
        elif hello.binding:
            raise ProtocolError("hello carries a channel binding on a channel without one")
        return hello

    async def run(self, handler: Handler) -> None:
        """Serve the connection until it ends; then fail every open stream."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                tg.create_task(self._keepalive())
                await self._read_loop(handler)
                raise _Stop
        except* _Stop:
            pass
        except* (ProtocolError, TransportError, OSError) as eg:
            self.close_reason = "; ".join(str(e) for e in eg.exceptions)
            log.warning("connection to %s ended: %s", self.address, self.close_reason)
        finally:
            self._tasks = None
            self._teardown()
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Python 3.11's TaskGroup drops a cancel that arrives while it is already
            # shutting down (the peer closed at the same moment): don't lose it, or the
            # caller (dial_forever) never learns it was told to stop.
            raise asyncio.CancelledError

    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` for as long as this connection lives; its errors are logged."""
        if self._tasks is None:
            close = getattr(coro, "close", None)
            if close is not None:
                close()
            raise TransportError("connection is not running")
        return self._tasks.create_task(_guard(coro, name), name=name)

    def close(self, reason: str = "closed") -> None:
        if not self.close_reason:
            self.close_reason = reason
        self._writer.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _teardown(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.conn.close()
        err = TransportError(f"connection to {self.address} lost"
                             + (f": {self.close_reason}" if self.close_reason else ""))
        for stream in self._streams.values():
            stream._deliver(err)
        self._streams.clear()
        for fut in self._credit_waiters.values():
            if not fut.done():
                fut.set_exception(err)
        self._credit_waiters.clear()
        with contextlib.suppress(Exception):
            self._writer.close()

    async def _read_loop(self, handler: Handler) -> None:
        loop = asyncio.get_running_loop()
        reader = self._reader
        early, self._early = self._early, []
        while True:
            if early:
                msgs, early = early, []
            else:
                try:
                    data = await reader.read(_READ_SIZE)
                except OSError as exc:
                    raise TransportError(str(exc)) from None
                if not data:
                    return
                self._last_rx = loop.time()
                msgs = self.conn.receive_data(data)
            for msg in msgs:
                kind = type(msg)
                if (kind is Chunk or kind is Head or kind is End or kind is Error
                        or kind is Route):
                    rid = msg.req_id  # type: ignore[union-attr]
                    stream = self._streams.get(rid)
                    if stream is not None:
                        if kind is End or kind is Error:
                            del self._streams[rid]
                        stream._deliver(msg)  # type: ignore[arg-type]
                elif kind is Credit:
                    fut = self._credit_waiters.pop(msg.req_id, None)  # type: ignore[union-attr]
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                elif kind is Ping or kind is Pong:
                    pass
                else:
                    await handler.on_message(self, msg)
            self._flush()  # pongs, credits queued by the connection

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._ping_interval)
            silent = loop.time() - self._last_rx
            if silent > self._idle_timeout:
                self.close_reason = f"peer silent for {silent:.0f}s"
                raise TransportError(self.close_reason)
            if silent >= self._ping_interval:
                self.send(Ping(secrets.randbits(32)))

    # --- sending ----------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.conn.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def send(self, msg: Message) -> None:
        """Queue a control message (not a Chunk: use :meth:`send_chunk`)."""
        if self.closed:
            raise TransportError(f"connection to {self.address} is closed")
        self.conn.send(msg)
        self._schedule_flush()

    async def send_chunk(self, req_id: int, data: bytes) -> None:
        """Send one chunk of incoming stream ``req_id``, waiting for credit and for the
        transport's buffer to drain. Raises TransportError if the connection ends."""
        conn = self.conn
        while conn.credit(req_id) <= 0:
            if self.closed:
                raise TransportError(f"connection to {self.address} is closed")
            if not conn.has_incoming(req_id):
                raise TransportError(f"stream {req_id} is no longer open")
            fut = self._credit_waiters.get(req_id)
            if fut is None or fut.done():  # done: a previous waiter was cancelled
                fut = asyncio.get_running_loop().create_future()
                self._credit_waiters[req_id] = fut
            await fut
        self.send(Chunk(req_id, data))
        transport = self._writer.transport
        if transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
            self._flush()
            try:
                await self._writer.drain()
            except OSError as exc:
                raise TransportError(str(exc)) from None

    def finish(self, msg: End | Error) -> None:
        """End an incoming stream (if it is still open)."""
        fut = self._credit_waiters.pop(msg.req_id, None)
        if fut is not None and not fut.done():
            fut.set_result(None)  # a blocked sender wakes and sees the stream closed
        if self.conn.has_incoming(msg.req_id) and not self.closed:
            self.send(msg)

    def open_stream(self, make: Callable[[int], Request]) -> OutgoingStream:
        """Send the request ``make(req_id)`` with a fresh id; return its reply stream."""
        if self.closed:
            raise TransportError(f"connection to {self.address} is closed")
        self._next_req_id = (self._next_req_id + 1) % 2**63
        req_id = self._next_req_id
        stream = OutgoingStream(self, req_id)
        self._streams[req_id] = stream
        try:
            self.send(make(req_id))
        except CocoonError:
            del self._streams[req_id]
            raise
        return stream

    def _consumed(self, req_id: int, n: int) -> None:
        if not self.closed:
            self.conn.consumed(req_id, n)
            self._schedule_flush()

    def _cancel(self, req_id: int, reason: str) -> None:
        self._streams.pop(req_id, None)
        self._stop(req_id, reason)

    def _stop(self, req_id: int, reason: str) -> None:
        if not self.closed:
            self.send(Cancel(req_id, reason[:200]))


class _Stop(Exception):
    """Internal: the read loop ended normally."""


async def _guard(coro: Awaitable[None], name: str) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("task %s failed", name)
