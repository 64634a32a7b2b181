"""Issue 12, item 1: no refusal under ordinary load. A real ProxyNode (no billing) between
scripted workers and clients over loopback: a burst is spread over the workers (a slot is
taken when the request is routed, not when its task runs), a request that finds every slot
busy waits in a fair queue instead of getting 503, only a full queue (429) or an expired wait
(503) refuses, both with the error shape the app sees, and a worker that refuses for capacity
is not the end of the request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from loopback import Loopback, Quiet, T, running_proxy, until

from cocoon.errors import NoWorkerAvailable
from cocoon.transport import OutgoingStream, Peer
from cocoon.wire import Announce, Chunk, End, Error, Head, Message, Request


@dataclass
class GatedWorker:
    """Answers each request with Head and one chunk, then an End once ``gate`` opens (or at
    once, ``refuse``: an Error saying it is at capacity)."""

    name: str
    refuse: bool = False
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    served: list[bytes] = field(default_factory=list)  # request bodies, in arrival order

    async def on_message(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, Request):
            if self.refuse:
                peer.finish(Error.of(msg.req_id, NoWorkerAvailable(f"{self.name} is full")))
                return
            self.served.append(msg.body)
            peer.spawn(self._serve(peer, msg.req_id), "serve")

    async def _serve(self, peer: Peer, rid: int) -> None:
        peer.send(Head(rid, self.name))
        await peer.send_chunk(rid, b"{}")
        await self.gate.wait()
        peer.finish(End(rid, 1, 1, 0, 0))


@dataclass
class Net(Loopback):
    async def worker(self, w: GatedWorker, capacity: int) -> None:
        peer = await self.dial("worker", w.name, w)
        peer.send(Announce(("m",), capacity, "scripted"))
        await until(lambda: any(x.node_id == w.name and x.capacity
                                for x in self.proxy.workers.values()))


@contextlib.asynccontextmanager
async def network(**proxy: Any) -> AsyncIterator[Net]:
    async with running_proxy(**proxy) as loop:
        yield Net(loop.proxy, loop.tasks)


def send(client: Peer, body: bytes = b'{"model": "m"}') -> OutgoingStream:
    return client.open_stream(lambda rid: Request(rid, "chat", "m", True, 60_000, body, 4))


async def outcome(stream: OutgoingStream) -> End | Error:
    while True:
        ev = await asyncio.wait_for(stream.next(), T)
        if isinstance(ev, End | Error):
            return ev
        assert isinstance(ev, Head | Chunk), ev
        if isinstance(ev, Chunk):
            stream.consumed()


async def test_a_burst_is_spread_over_the_workers() -> None:
    """Before: the proxy counted a worker busy only once the relay task ran, so a burst all
    went to the first worker (which refused beyond its capacity) while the second sat idle."""
    async with network() as net:
        w1, w2 = GatedWorker("w1"), GatedWorker("w2")
        await net.worker(w1, 2)
        await net.worker(w2, 2)
        client = await net.dial("client", "c1", Quiet())
        streams = [send(client) for _ in range(4)]  # in one go: no task ran in between
        await until(lambda: len(w1.served) + len(w2.served) == 4)
        assert (len(w1.served), len(w2.served)) == (2, 2)
        w1.gate.set()
        w2.gate.set()
        results = [await outcome(s) for s in streams]
        assert all(isinstance(r, End) for r in results), results


async def test_busy_slots_queue_requests_fairly_instead_of_refusing() -> None:
    async with network() as net:
        w = GatedWorker("w1")
        await net.worker(w, 1)
        a = await net.dial("client", "a", Quiet())
        b = await net.dial("client", "b", Quiet())
        first = send(a, b'{"model": "m", "n": "a0"}')
        await until(lambda: len(w.served) == 1)
        queued = [send(a, b'{"model": "m", "n": "a1"}'), send(a, b'{"model": "m", "n": "a2"}')]
        await until(lambda: net.proxy._queue.depth("m") == 2)
        queued.append(send(b, b'{"model": "m", "n": "b0"}'))
        await until(lambda: net.proxy._queue.depth("m") == 3)
        stats = net.proxy.snapshot()["queue"]
        assert stats["waiting"] == 3 and stats["by_model"] == {"m": 3}
        w.gate.set()  # from now on each request ends at once: the queue drains
        results = [await outcome(s) for s in (first, *queued)]
        assert all(isinstance(r, End) for r in results), results
        # b's one request went before a's second queued one: round-robin across clients
        assert [body.split(b'"n": ')[1] for body in w.served] == [
            b'"a0"}', b'"a1"}', b'"b0"}', b'"a2"}']
        snap = net.proxy.snapshot()
        assert snap["queue"]["waiting"] == 0 and snap["queue"]["queued"] == 3
        assert snap["queue"]["wait_max_ms"] > 0
        assert net.proxy.stats.rejected == 0


async def test_only_a_full_queue_or_an_expired_wait_refuses() -> None:
    async with network(queue_limit=1, queue_timeout_s=0.5) as net:
        w = GatedWorker("w1")
        await net.worker(w, 1)
        client = await net.dial("client", "c1", Quiet())
        running = send(client)
        await until(lambda: len(w.served) == 1)
        waiting = send(client)
        await until(lambda: net.proxy._queue.depth("m") == 1)
        full = await outcome(send(client))
        assert isinstance(full, Error) and full.code == "rate_limit_exceeded"
        assert full.to_exception().status == 429
        expired = await outcome(waiting)  # the slot never frees within 0.5 s
        assert isinstance(expired, Error) and expired.code == "no_worker_available"
        assert "stayed busy for 0.5s" in expired.message
        assert expired.to_exception().status == 503
        assert net.proxy.stats.queue_full == 1 and net.proxy.stats.queue_timeouts == 1
        w.gate.set()
        assert isinstance(await outcome(running), End)


async def test_a_requester_that_goes_away_leaves_the_queue() -> None:
    async with network() as net:
        w = GatedWorker("w1")
        await net.worker(w, 1)
        client = await net.dial("client", "c1", Quiet())
        running = send(client)
        await until(lambda: len(w.served) == 1)
        gone = send(client)
        await until(lambda: net.proxy._queue.depth("m") == 1)
        gone.cancel("app went away")
        await until(lambda: net.proxy._queue.depth("m") == 0)
        after = send(client)
        w.gate.set()
        assert isinstance(await outcome(running), End)
        assert isinstance(await outcome(after), End)
        assert len(w.served) == 2  # the cancelled one never reached the worker
        assert not net.proxy._relays


async def test_a_worker_refusing_for_capacity_is_not_the_end_of_the_request() -> None:
    async with network() as net:
        full, free = GatedWorker("w1", refuse=True), GatedWorker("w2")
        free.gate.set()
        await net.worker(full, 8)  # says 8 slots, refuses everything
        await net.worker(free, 1)
        client = await net.dial("client", "c1", Quiet())
        results = [await outcome(s) for s in [send(client) for _ in range(3)]]
        assert all(isinstance(r, End) for r in results), results
        assert len(free.served) == 3
        assert net.proxy.stats.rerouted >= 1 and net.proxy.stats.rejected == 0


async def test_waiters_hear_at_once_when_no_worker_serves_their_model_any_more() -> None:
    async with network() as net:
        w = GatedWorker("w1")
        await net.worker(w, 1)
        worker_peer = next(iter(net.proxy.workers))
        client = await net.dial("client", "c1", Quiet())
        running = send(client)
        await until(lambda: len(w.served) == 1)
        waiting = send(client)
        await until(lambda: net.proxy._queue.depth("m") == 1)
        worker_peer.close("killed")  # the proxy's side of the only worker's connection
        lost, unserved = await outcome(running), await outcome(waiting)
        assert isinstance(lost, Error) and lost.code == "worker_lost"
        assert isinstance(unserved, Error) and unserved.code == "no_worker_available"
        assert "no worker is currently connected" in unserved.message
        # and with no worker at all, a new request is refused at once, not queued
        assert isinstance(await outcome(send(client)), Error)
        assert net.proxy._queue.depth() == 0
