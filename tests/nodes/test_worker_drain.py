"""Issue 13, item 5: SIGTERM drains a worker. A real ProxyNode and real WorkerNodes (fake
engine) over loopback: once told to stop, a worker takes no new request (the proxy routes
them to another worker), lets the one in flight finish, then exits; past
``drain_timeout_s`` it exits anyway."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from loopback import Loopback, Quiet, T, running_proxy, until

from cocoon.config import WorkerConfig
from cocoon.engines import FakeEngine, FakeEngineConfig
from cocoon.nodes.worker.node import WorkerNode
from cocoon.openai import count_events
from cocoon.transport import OutgoingStream, Peer, TcpConnector
from cocoon.wire import Chunk, End, Error, Head, Request

BODY = b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": true}'


@dataclass
class Running:
    node: WorkerNode
    stop: asyncio.Event
    task: asyncio.Task[None]


@dataclass
class Net(Loopback):
    client: Peer | None = None

    async def worker(self, name: str, delay_ms: float, **config: Any) -> Running:
        engine = FakeEngine(FakeEngineConfig(chunks=10, chunk_bytes=8, delay_ms=delay_ms))
        node = WorkerNode(WorkerConfig(proxy=f"127.0.0.1:{self.proxy.port}",
                                       http="127.0.0.1:0", node_id=name, **config),
                          engine, connector=TcpConnector())
        stop = asyncio.Event()
        running = Running(node, stop, asyncio.create_task(node.run(stop)))
        await until(lambda: any(w.node_id == name and w.capacity
                                for w in self.proxy.workers.values()))
        return running

    def request(self) -> OutgoingStream:
        assert self.client is not None
        return self.client.open_stream(
            lambda rid: Request(rid, "chat", "fake", True, 60_000, BODY, 0))

    def capacity(self, name: str) -> int:
        return next(w.capacity for w in self.proxy.workers.values() if w.node_id == name)


@contextlib.asynccontextmanager
async def network() -> AsyncIterator[Net]:
    async with running_proxy() as loop:
        net = Net(loop.proxy, loop.tasks)
        net.client = await net.dial("client", "c1", Quiet())
        yield net


async def first_chunk(stream: OutgoingStream) -> int:
    while True:
        ev = await asyncio.wait_for(stream.next(), T)
        if isinstance(ev, Chunk):
            stream.consumed()
            return count_events(ev.data)
        assert isinstance(ev, Head), ev


async def rest(stream: OutgoingStream, events: int = 0) -> tuple[End | Error, int]:
    while True:
        ev = await asyncio.wait_for(stream.next(), T)
        if isinstance(ev, End | Error):
            return ev, events
        if isinstance(ev, Chunk):
            events += count_events(ev.data)
            stream.consumed()


async def test_a_stopping_worker_finishes_what_it_runs_and_takes_nothing_new() -> None:
    async with network() as net:
        w1 = await net.worker("w1", delay_ms=60)
        w2 = await net.worker("w2", delay_ms=0)
        await until(lambda: net.capacity("w1") == net.capacity("w2") == 4)
        running = net.request()  # both idle: goes to w1, the older
        seen = await first_chunk(running)
        assert w1.node.active == 1
        w1.stop.set()
        await until(lambda: net.capacity("w1") == 0)  # it told the proxy
        assert w1.node.draining and not w1.task.done()
        later, events = await rest(net.request())  # routed to w2 meanwhile
        assert isinstance(later, End) and events == 12 and w2.node.stats.completed == 1
        end, events = await rest(running, seen)  # the one in flight finishes whole
        assert isinstance(end, End) and events == 12
        await asyncio.wait_for(w1.task, T)  # then the worker exits
        assert w1.node.stats.completed == 1 and w1.node.stats.cancelled == 0
        # what reached it after it stopped taking work was refused as "shutting down",
        # which the proxy routes elsewhere (none here: the proxy knew before the request)
        assert w1.node.stats.rejected == 0
        w2.stop.set()
        await asyncio.wait_for(w2.task, T)


async def test_a_drain_that_takes_too_long_is_cut_short() -> None:
    async with network() as net:
        w1 = await net.worker("w1", delay_ms=2_000, drain_timeout_s=0.3)
        running = net.request()
        await until(lambda: w1.node.active == 1)
        started = asyncio.get_running_loop().time()
        w1.stop.set()
        await asyncio.wait_for(w1.task, T)
        assert asyncio.get_running_loop().time() - started < 5  # not the 20 s of work
        end, _ = await rest(running)
        assert isinstance(end, Error) and end.code == "worker_lost"


_SLOW_STOP = """
import asyncio
from cocoon.nodes.common import run_until_signal

async def main(stop):
    print("ready", flush=True)
    await stop.wait()
    print("draining", flush=True)
    await asyncio.sleep(60)  # a drain that would take a minute

asyncio.run(run_until_signal(main))
print("exited", flush=True)
"""


def test_a_second_signal_stops_a_draining_role_at_once() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_STOP], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "draining"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
        assert proc.stdout.read().strip() == "exited"
    finally:
        proc.kill()
        proc.wait()
