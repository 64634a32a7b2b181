"""The proxy settles requests that end early to the usage the worker reports, in process:
a real ProxyNode (billing on, SQLite ledger in tmp) between a scripted worker and a scripted
client over loopback. Cancelled, timed-out and failed streams are charged what the worker's
Error reports; a stream cut off before the worker reported (lost, silent, or reporting
impossible counts) is charged what the proxy relayed to the app, and the worker paid for it
(issue 10); a stream that produced nothing is released."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cocoon.config import BillingConfig, ProxyConfig
from cocoon.ledger import Ledger
from cocoon.nodes.proxy import node as proxy_node
from cocoon.nodes.proxy.billing import Billing
from cocoon.nodes.proxy.node import ProxyNode
from cocoon.openai import count_events, encode_event
from cocoon.transport import OutgoingStream, Peer, TcpListener
from cocoon.wire import (
    Announce,
    Cancel,
    Chunk,
    Connection,
    End,
    Error,
    Head,
    Message,
    Request,
    Statement,
)

T = 5.0
FUNDS = 10**6
PRICE, FEE = 2, 1  # BillingConfig defaults, 1.0x multipliers
CLIENT, WORKER = "node:c1", "worker:w1"  # accounts without TLS: node ids


@dataclass
class ScriptedWorker:
    """Answers each Request with Head and ``chunks`` chunks, then does what ``on_cancel``
    and ``after_chunks`` say (each gets the peer and the request id)."""

    chunks: int = 3
    after_chunks: Callable[[Peer, int], None] | None = None
    on_cancel: Callable[[Peer, int], None] | None = None
    requests: list[Request] = field(default_factory=list)
    cancels: asyncio.Queue[int] = field(default_factory=asyncio.Queue)

    async def on_message(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, Request):
            self.requests.append(msg)
            peer.spawn(self._serve(peer, msg.req_id), "serve")
        elif isinstance(msg, Cancel):
            self.cancels.put_nowait(msg.req_id)
            if self.on_cancel is not None:
                self.on_cancel(peer, msg.req_id)

    async def _serve(self, peer: Peer, rid: int) -> None:
        peer.send(Head(rid, "w1"))
        for i in range(self.chunks):
            await peer.send_chunk(rid, encode_event(b'{"n": %d}' % i))
        if self.after_chunks is not None:
            self.after_chunks(peer, rid)


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()

    async def on_message(self, peer: Peer, msg: Message) -> None:
        self.queue.put_nowait(msg)


@dataclass
class Net:
    proxy: ProxyNode
    billing: Billing
    worker: ScriptedWorker
    worker_peer: Peer
    client: Peer
    inbox: Inbox

    def request(self, timeout_ms: int = 30_000) -> OutgoingStream:
        return self.client.open_stream(
            lambda rid: Request(rid, "chat", "m", True, timeout_ms, b'{"model": "m"}', 100))

    async def ledger(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.billing._run(fn, *args)

    async def settled(self) -> None:
        """Wait until the proxy holds no reservation."""
        for _ in range(int(T / 0.02)):
            if not await self.ledger(self.billing.ledger.open_reservations):
                return
            await asyncio.sleep(0.02)
        pytest.fail("a reservation stayed open")

    async def statement(self) -> Statement:
        """The next Statement the client receives (Catalog and Roster pass by)."""
        while not isinstance(msg := await asyncio.wait_for(self.inbox.queue.get(), T),
                             Statement):
            pass
        return msg

    async def charged(self) -> tuple[int, int, int]:
        """(client charged, client tokens, worker earned)."""
        c = await self.ledger(self.billing.ledger.balance, CLIENT)
        w = await self.ledger(self.billing.ledger.earnings, WORKER)
        return c.charged, c.tokens, w.earned


async def dial(port: int, role: str, node_id: str, handler: Any,
               tasks: list[asyncio.Task[None]]) -> Peer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer = Peer(reader, writer, Connection(role=role, node_id=node_id))
    await asyncio.wait_for(peer.handshake(), T)
    tasks.append(asyncio.create_task(peer.run(handler)))
    return peer


@contextlib.asynccontextmanager
async def network(tmp_path: Path, worker: ScriptedWorker) -> AsyncIterator[Net]:
    config = ProxyConfig(listen="127.0.0.1:0", http="127.0.0.1:0", node_id="proxy",
                         billing=BillingConfig(enabled=True,
                                               ledger_path=str(tmp_path / "ledger.sqlite"),
                                               signing_key_file=str(tmp_path / "k.pem")))
    with Ledger(config.billing.ledger_path) as ledger:
        ledger.deposit(CLIENT, FUNDS)
    proxy = ProxyNode(config, listener=TcpListener())
    stop = asyncio.Event()
    ready = asyncio.Event()
    runner = asyncio.create_task(proxy.run(stop, lambda _: ready.set()))
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.wait_for(ready.wait(), T)
        assert proxy.billing is not None
        worker_peer = await dial(proxy.port, "worker", "w1", worker, tasks)
        worker_peer.send(Announce(("m",), 4, "scripted"))
        for _ in range(int(T / 0.01)):
            if any(w.capacity for w in proxy.workers.values()):
                break
            await asyncio.sleep(0.01)
        inbox = Inbox()
        client = await dial(proxy.port, "client", "c1", inbox, tasks)
        yield Net(proxy, proxy.billing, worker, worker_peer, client, inbox)
    finally:
        stop.set()
        await asyncio.wait_for(runner, T)
        for t in tasks:
            t.cancel()
            with contextlib.suppress(BaseException):
                await t


async def chunks_then(stream: OutgoingStream, n: int) -> None:
    """Take Head and ``n`` events (the proxy may join them into fewer chunks)."""
    got = 0
    while got < n:
        ev = await asyncio.wait_for(stream.next(), T)
        assert isinstance(ev, Head | Chunk), ev
        if isinstance(ev, Chunk):
            got += count_events(ev.data)
            stream.consumed()


def usage_error(code: str, prompt: int, completion: int) -> Callable[[Peer, int], None]:
    def answer(peer: Peer, rid: int) -> None:
        peer.finish(Error(rid, code, code, "", prompt, completion, 0, 0))
    return answer


async def test_cancelled_stream_is_charged_what_the_worker_reports(tmp_path: Path) -> None:
    worker = ScriptedWorker(on_cancel=usage_error("cancelled", 7, 3))
    async with network(tmp_path, worker) as net:
        stream = net.request()
        await chunks_then(stream, 3)
        stream.cancel("app went away")
        await asyncio.wait_for(worker.cancels.get(), T)  # the proxy passed the Cancel on
        await net.settled()
        assert await net.charged() == ((7 + 3) * PRICE, 10, 10 * FEE)
        assert (await net.statement()).charged == 10 * PRICE
        totals = await net.ledger(net.billing.ledger.totals)
        assert totals.charged == totals.earned + totals.commission
        assert totals.settled_requests == 1
        assert net.proxy.stats.cancelled == 1


def relayed_tokens(net: Net) -> int:
    """The proxy's estimate for what it relayed of the one request: a quarter of the
    request's bytes for the prompt (b'{"model": "m"}', 14 bytes: 3) and a token an event."""
    return 3 + net.proxy.stats.chunks


async def test_cancel_the_worker_never_answers_is_charged_what_was_relayed(
        tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(proxy_node, "_LAST_WORD_S", 0.3)
    async with network(tmp_path, ScriptedWorker()) as net:  # ignores the Cancel
        stream = net.request()
        await chunks_then(stream, 2)
        stream.cancel("app went away")
        await asyncio.wait_for(net.worker.cancels.get(), T)
        await net.settled()
        n = relayed_tokens(net)
        assert net.proxy.stats.chunks >= 2
        assert await net.charged() == (n * PRICE, n, n * FEE)
        assert (await net.ledger(net.billing.ledger.balance, CLIENT)).reserved == 0
        assert net.proxy.stats.cancelled == 1 and not net.proxy._relays


async def test_proxy_timeout_is_charged_what_the_worker_reports(tmp_path: Path) -> None:
    worker = ScriptedWorker(chunks=2, on_cancel=usage_error("cancelled", 5, 2))
    async with network(tmp_path, worker) as net:
        stream = net.request(timeout_ms=400)  # the worker then goes quiet
        await chunks_then(stream, 2)
        ev = await asyncio.wait_for(stream.next(), T)
        assert isinstance(ev, Error) and ev.code == "timeout"
        await asyncio.wait_for(worker.cancels.get(), T)
        await net.settled()
        assert await net.charged() == (7 * PRICE, 7, 7 * FEE)
        assert net.proxy.stats.timeouts == 1


async def test_worker_error_with_usage_is_charged(tmp_path: Path) -> None:
    worker = ScriptedWorker(chunks=4, after_chunks=usage_error("engine_error", 6, 4))
    async with network(tmp_path, worker) as net:
        stream = net.request()
        await chunks_then(stream, 4)
        ev = await asyncio.wait_for(stream.next(), T)
        # The client hears the failure; the usage is the proxy's business, not on its wire.
        assert ev == Error(ev.req_id, "engine_error", "engine_error", "")  # type: ignore[union-attr]
        await net.settled()
        assert await net.charged() == (10 * PRICE, 10, 10 * FEE)


async def test_worker_error_without_usage_is_released(tmp_path: Path) -> None:
    worker = ScriptedWorker(chunks=0, after_chunks=usage_error("bad_request", 0, 0))
    async with network(tmp_path, worker) as net:
        stream = net.request()
        while not isinstance(await asyncio.wait_for(stream.next(), T), Error):
            pass
        await net.settled()
        assert await net.charged() == (0, 0, 0)
        totals = await net.ledger(net.billing.ledger.totals)
        assert totals.settled_requests == 0 and totals.reserved == 0


async def test_worker_lost_mid_stream_is_charged_what_was_relayed(tmp_path: Path) -> None:
    def kill(peer: Peer, rid: int) -> None:  # once the chunks are on their way
        asyncio.get_running_loop().call_later(0.1, peer.close, "killed")

    worker = ScriptedWorker(after_chunks=kill)
    async with network(tmp_path, worker) as net:
        stream = net.request()
        await chunks_then(stream, 3)
        ev = await asyncio.wait_for(stream.next(), T)
        assert isinstance(ev, Error) and ev.code == "worker_lost"
        await net.settled()
        assert net.proxy.stats.chunks == 3
        assert await net.charged() == (6 * PRICE, 6, 6 * FEE)  # 3 prompt + 3 chunks
        assert (await net.statement()).charged == 6 * PRICE  # and the client is told


async def test_worker_lost_before_a_chunk_is_released(tmp_path: Path) -> None:
    def kill(peer: Peer, rid: int) -> None:
        peer.close("killed")

    async with network(tmp_path, ScriptedWorker(chunks=0, after_chunks=kill)) as net:
        stream = net.request()
        while not isinstance(ev := await asyncio.wait_for(stream.next(), T), Error):
            pass
        assert ev.code == "worker_lost"
        await net.settled()
        assert await net.charged() == (0, 0, 0)


@pytest.mark.parametrize("counts", [(3, 5, 4, 0), (6, 2, 0, 3)], ids=["cached>prompt",
                                                                      "reasoning>completion"])
async def test_end_with_impossible_usage_is_refused(
        tmp_path: Path, counts: tuple[int, int, int, int]) -> None:
    """Counts that contradict each other break the one rule for usage (cocoon.usage): the
    proxy does not take them, tells the client, and charges what it relayed instead."""
    def answer(peer: Peer, rid: int) -> None:
        peer.finish(End(rid, *counts))

    async with network(tmp_path, ScriptedWorker(after_chunks=answer)) as net:
        stream = net.request()
        await chunks_then(stream, 3)
        ev = await asyncio.wait_for(stream.next(), T)
        assert isinstance(ev, Error) and ev.code == "internal_error", ev
        assert "ProtocolError" in ev.message
        await net.settled()
        assert await net.charged() == (6 * PRICE, 6, 6 * FEE)  # 3 prompt + 3 chunks relayed
        totals = await net.ledger(net.billing.ledger.totals)
        assert totals.settled_requests == 1 and totals.reserved == 0
        assert net.proxy.stats.completed == 0 and net.proxy.stats.failed == 1


async def test_error_with_impossible_usage_is_charged_what_was_relayed(tmp_path: Path) -> None:
    def answer(peer: Peer, rid: int) -> None:
        peer.finish(Error(rid, "engine_error", "boom", "", 2, 1, 5, 0))  # cached > prompt

    async with network(tmp_path, ScriptedWorker(after_chunks=answer)) as net:
        stream = net.request()
        await chunks_then(stream, 3)
        ev = await asyncio.wait_for(stream.next(), T)
        assert isinstance(ev, Error) and ev.code == "engine_error"
        await net.settled()
        assert await net.charged() == (6 * PRICE, 6, 6 * FEE)


def end_with(prompt: int, completion: int) -> Callable[[Peer, int], None]:
    def answer(peer: Peer, rid: int) -> None:
        peer.finish(End(rid, prompt, completion, 0, 0))
    return answer


@contextlib.asynccontextmanager
async def ledger_held(net: Net) -> AsyncIterator[None]:
    """The ledger's thread busy (a call that waits) until the block ends: whatever the
    proxy asks of it meanwhile waits too."""
    release = threading.Event()
    running = threading.Event()

    def hold() -> None:
        running.set()
        release.wait(T)

    held = net.billing._thread.submit(hold)
    try:
        assert await asyncio.to_thread(running.wait, T)
        yield
    finally:
        release.set()
        await asyncio.wrap_future(held)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(int(T / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("the condition never held")


async def test_the_worker_starts_while_the_reservation_commits_and_nothing_goes_on_before(
        tmp_path: Path) -> None:
    """Once a client is known to have the funds, the proxy sends its request to the worker
    while the reservation commits (the worker's time to its first token overlaps the
    ledger's fsync), but passes nothing of the answer on before the reservation is
    durable."""
    worker = ScriptedWorker(after_chunks=end_with(4, 3))
    async with network(tmp_path, worker) as net:
        first = net.request()
        await chunks_then(first, 3)
        assert isinstance(await asyncio.wait_for(first.next(), T), End)
        async with ledger_held(net):
            second = net.request()
            await until(lambda: len(worker.requests) == 2)  # the worker has it...
            with pytest.raises(TimeoutError):  # ...the app nothing yet
                await asyncio.wait_for(second.next(), 0.3)
        await chunks_then(second, 3)
        assert isinstance(await asyncio.wait_for(second.next(), T), End)
        await net.settled()
        assert await net.charged() == (2 * 7 * PRICE, 14, 14 * FEE)
        assert net.proxy.stats.completed == 2 and net.proxy.stats.unpaid_starts == 0


async def test_a_client_without_funds_does_not_reach_a_worker(tmp_path: Path) -> None:
    """The proxy only starts a worker before the reservation commits for a client whose
    last reservation left enough: a first request, or one beyond what is left, waits for
    the ledger, and a refused one never reaches a worker."""
    worker = ScriptedWorker(after_chunks=end_with(4, 3))
    async with network(tmp_path, worker) as net:
        async with ledger_held(net):
            first = net.request()
            await asyncio.sleep(0.3)
            assert worker.requests == []  # nothing known of this client yet
        await chunks_then(first, 3)
        assert isinstance(await asyncio.wait_for(first.next(), T), End)
        big = net.client.open_stream(lambda rid: Request(
            rid, "chat", "m", True, 30_000, b'{"model": "m"}', FUNDS))  # more than it has
        ev = await asyncio.wait_for(big.next(), T)
        assert isinstance(ev, Error) and ev.code == "insufficient_funds", ev
        assert len(worker.requests) == 1 and net.proxy.stats.unpaid_starts == 0


async def test_a_start_the_ledger_then_refuses_is_stopped_before_the_app_sees_it(
        tmp_path: Path) -> None:
    """The guess can be wrong (the funds went elsewhere since the client's last
    reservation, here by a reservation the proxy did not make): the worker started is told
    to stop, the app gets 402 and nothing of the answer, nothing is charged, and the ledger
    holds together."""
    worker = ScriptedWorker(on_cancel=usage_error("cancelled", 4, 1), chunks=2)
    async with network(tmp_path, worker) as net:
        first = net.request()
        await chunks_then(first, 2)
        first.cancel("enough")
        await net.settled()
        charged_before = await net.charged()
        left = (await net.ledger(net.billing.ledger.balance, CLIENT)).available
        await net.ledger(net.billing.ledger.reserve, "elsewhere", CLIENT, WORKER, left - 10)
        async with ledger_held(net):
            second = net.request()
            await until(lambda: len(worker.requests) == 2)
        ev = await asyncio.wait_for(second.next(), T)
        assert isinstance(ev, Error) and ev.code == "insufficient_funds", ev
        assert await asyncio.wait_for(worker.cancels.get(), T)  # the first's
        assert await asyncio.wait_for(worker.cancels.get(), T)  # the second's: stopped
        await until(lambda: not net.proxy._relays)
        assert await net.charged() == charged_before
        assert net.proxy.stats.unpaid_starts == 1 and net.proxy.stats.rejected == 1
        assert net.proxy.snapshot()["requests"]["unpaid_starts"] == 1  # in /stats
        assert [r.request_id for r in
                await net.ledger(net.billing.ledger.open_reservations)] == ["elsewhere"]
        assert await net.ledger(net.billing.ledger.check_invariants) == []
