"""OutgoingStream.stop: the requester tells the responder to stop but still hears its final
End or Error, which reports the usage of what was generated (the proxy bills it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from cocoon.errors import RequestTimeout, TransportError
from cocoon.transport import OutgoingStream, Peer
from cocoon.wire import Cancel, Chunk, Connection, End, Error, Message, Request

T = 5.0


class Recorder:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()

    async def on_message(self, peer: Peer, msg: Message) -> None:
        self.queue.put_nowait(msg)

    async def get(self) -> Message:
        return await asyncio.wait_for(self.queue.get(), T)


@contextlib.asynccontextmanager
async def pair() -> AsyncIterator[tuple[Peer, Peer, Recorder]]:
    """A requester and a responder over loopback; the Recorder gets the responder's
    messages."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.Queue())

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.put_nowait((r, w))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ra, wa = await asyncio.open_connection("127.0.0.1", port)
    rb, wb = await asyncio.wait_for(accepted.get(), T)
    a = Peer(ra, wa, Connection(role="client", node_id="a"))
    b = Peer(rb, wb, Connection(role="worker", node_id="b"))
    await asyncio.wait_for(asyncio.gather(a.handshake(), b.handshake()), T)
    rec = Recorder()
    tasks = [asyncio.create_task(a.run(Recorder())), asyncio.create_task(b.run(rec))]
    try:
        yield a, b, rec
    finally:
        a.close()
        b.close()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(t, T)
        server.close()
        await server.wait_closed()


def request(rid: int) -> Request:
    return Request(rid, "chat", "m", True, 10_000, b"{}")


async def nxt(stream: OutgoingStream) -> Any:
    return await asyncio.wait_for(stream.next(), T)


async def test_stop_delivers_the_final_error_with_its_usage() -> None:
    async with pair() as (a, b, rec):
        stream = a.open_stream(request)
        rid = (await rec.get()).req_id  # type: ignore[union-attr]
        await asyncio.wait_for(b.send_chunk(rid, b"one"), T)
        assert await nxt(stream) == Chunk(rid, b"one")
        stream.stop("enough")
        assert await rec.get() == Cancel(rid, "enough")
        await asyncio.wait_for(b.send_chunk(rid, b"in flight"), T)  # dropped quietly
        final = Error(rid, "cancelled", "cancelled by the requester", "", 9, 2, 0, 0)
        b.finish(final)
        assert await nxt(stream) == final
        assert stream.done and not a.conn.has_outgoing(rid)
        stream.stop("again")  # ended: nothing more to say
        stream.cancel("and again")
        await asyncio.sleep(0.05)
        assert rec.queue.empty() and not a.closed and not b.closed


async def test_stop_after_a_timeout_still_sends_cancel_and_hears_end() -> None:
    async with pair() as (a, b, rec):
        stream = a.open_stream(request)
        rid = (await rec.get()).req_id  # type: ignore[union-attr]
        stream.expire(RequestTimeout("watchdog"))  # what the proxy's Watchdog does
        assert isinstance(await nxt(stream), RequestTimeout)
        stream.stop("timed out")
        assert await rec.get() == Cancel(rid, "timed out")
        b.finish(End(rid, 4, 1, 0, 0))  # crossed the Cancel: still the usage to bill
        assert await nxt(stream) == End(rid, 4, 1, 0, 0)


async def test_stop_then_connection_loss_is_a_transport_error() -> None:
    async with pair() as (a, b, rec):
        stream = a.open_stream(request)
        await rec.get()
        stream.stop("bye")
        await rec.get()
        b.close("gone")
        assert isinstance(await nxt(stream), TransportError)
