"""Issue 13, items 2 and 5: one worker serves several proxies. Real ProxyNodes and a real
WorkerNode (fake engine) over loopback: both proxies see the worker and route requests to
it, sharing its one engine (a request that finds it full waits for a slot); a
proxy that dies is dialled again while the other keeps being served."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from loopback import Loopback, Quiet, T, running_proxy, until

from cocoon.config import WorkerConfig
from cocoon.engines import FakeEngine, FakeEngineConfig
from cocoon.nodes.worker.node import WorkerNode
from cocoon.transport import OutgoingStream, TcpConnector
from cocoon.wire import Chunk, End, Error, Head, Request

BODY = b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": true}'


def request(net: Loopback, client: object) -> OutgoingStream:
    return client.open_stream(  # type: ignore[attr-defined, no-any-return]
        lambda rid: Request(rid, "chat", "fake", True, 60_000, BODY, 0))


async def outcome(stream: OutgoingStream) -> End | Error:
    while True:
        ev = await asyncio.wait_for(stream.next(), T)
        if isinstance(ev, Chunk):
            stream.consumed()
        elif isinstance(ev, (End, Error)):
            return ev
        else:
            assert isinstance(ev, Head), ev


@contextlib.asynccontextmanager
async def worker(proxies: str, **config: object) -> AsyncIterator[WorkerNode]:
    engine = FakeEngine(FakeEngineConfig(chunks=10, chunk_bytes=8, delay_ms=20))
    node = WorkerNode(WorkerConfig(proxy=proxies, http="127.0.0.1:0", node_id="w1",
                                   **config),  # type: ignore[arg-type]
                      engine, connector=TcpConnector())
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    try:
        yield node
    finally:
        stop.set()
        await asyncio.wait_for(task, T)


async def test_one_worker_serves_two_proxies_and_shares_its_engine() -> None:
    async with running_proxy() as a, running_proxy() as b:
        addresses = f"127.0.0.1:{a.proxy.port}, 127.0.0.1:{b.proxy.port}"
        async with worker(addresses, max_concurrent=2) as node:
            await until(lambda: all(any(w.capacity == 2 for w in p.proxy.workers.values())
                                    for p in (a, b)))
            assert [link.state for link in node.links] == ["connected", "connected"]
            ca = await a.dial("client", "ca", Quiet())
            cb = await b.dial("client", "cb", Quiet())
            # two through each proxy at once, each proxy promised both slots: the engine
            # runs two, the other two wait at the worker for a free slot
            streams = [request(a, ca), request(a, ca), request(b, cb), request(b, cb)]
            ends = await asyncio.gather(*(outcome(s) for s in streams))
            assert all(isinstance(e, End) for e in ends), ends
            assert node.stats.completed == 4 and node.stats.rejected == 0
            assert node.stats.waited == 2 and node.running == 0
            assert (a.proxy.stats.completed, b.proxy.stats.completed) == (2, 2)
            assert node.active == 0
            s = node.snapshot()
            assert [p["address"] for p in s["proxies"]] == [x.strip()
                                                             for x in addresses.split(",")]
            assert s["proxy"]["state"] == "connected"


async def test_a_dead_proxy_does_not_stop_the_others() -> None:
    async with running_proxy() as a, contextlib.AsyncExitStack() as stack:
        b = await stack.enter_async_context(running_proxy())
        async with worker(f"127.0.0.1:{a.proxy.port},127.0.0.1:{b.proxy.port}") as node:
            await until(lambda: [link.state for link in node.links]
                        == ["connected", "connected"])
            await stack.aclose()  # proxy b stops: the worker keeps dialling it
            await until(lambda: node.links[1].state in ("connecting", "disconnected"))
            assert node.proxy_state == "connected"  # still serving a
            ca = await a.dial("client", "ca", Quiet())
            assert isinstance(await outcome(request(a, ca)), End)
            assert [p["state"] == "connected" for p in node.snapshot()["proxies"]] == [
                True, False]
