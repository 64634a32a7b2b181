"""Issue 13, item 3: worker failover at the proxy. A real ProxyNode with billing between
scripted workers and a client over loopback. A worker that dies, fails server-side or stays
silent before its first chunk does not reach the app: the request goes to another worker,
the failed attempt's reservation is released (the client pays only for the attempt that
answered), and the failing worker is passed over for a while. A refusal the app caused (400)
is not retried, nor is a failure after the app saw a chunk.

Also item 4's pricing: each worker is billed at the coefficient it announces, an app's cap
keeps dearer workers out, and a worker above ``billing.max_worker_coefficient`` gets
nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from loopback import Loopback, Quiet, T, running_proxy, until

from cocoon.config import BillingConfig
from cocoon.errors import BadRequest, EngineError, UpstreamError
from cocoon.ledger import Ledger
from cocoon.nodes.proxy import node as proxy_node
from cocoon.openai import count_events, encode_event
from cocoon.routing.select import ALPHA, Measured
from cocoon.transport import OutgoingStream, Peer
from cocoon.wire import Announce, Chunk, End, Error, Head, Message, Request

PRICE, FEE = 2, 1  # BillingConfig defaults
CLIENT = "node:c1"


@dataclass
class Worker:
    """Serves each request as ``plan`` says, one step per request (then ``ok``): ``ok``
    (Head, two events, End 3+2 tokens), ``die`` (Head, then its connection closes),
    ``engine``/``upstream``/``bad`` (Head, then that Error, reporting 3 prompt tokens),
    ``silent`` (Head, then nothing), ``chunk-then-die`` (Head, an event, then it closes)."""

    name: str
    plan: list[str] = field(default_factory=list)
    served: int = 0
    peer: Peer | None = None

    async def on_message(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, Request):
            self.served += 1
            step = self.plan.pop(0) if self.plan else "ok"
            peer.spawn(self._serve(peer, msg.req_id, step), "serve")

    async def _serve(self, peer: Peer, rid: int, step: str) -> None:
        peer.send(Head(rid, self.name))
        if step == "ok":
            await peer.send_chunk(rid, encode_event(b'{"n":1}') + encode_event(b'{"n":2}'))
            peer.finish(End(rid, 3, 2, 0, 0))
        elif step == "die":
            peer.close("killed")
        elif step in ("engine", "upstream", "bad"):
            err = {"engine": EngineError("engine crashed"),
                   "upstream": UpstreamError("upstream failed with HTTP 500"),
                   "bad": BadRequest("no such parameter", param="x")}[step]
            peer.finish(Error(rid, err.code, err.message, err.param or "", 3, 0, 0, 0))
        elif step == "chunk-then-die":
            await peer.send_chunk(rid, encode_event(b'{"n":1}'))
            await asyncio.sleep(0.05)
            peer.close("killed")
        # "silent": nothing more


@dataclass
class Net(Loopback):
    client: Peer | None = None

    async def worker(self, w: Worker, capacity: int = 4, coefficient: int = 0) -> None:
        w.peer = await self.dial("worker", w.name, w)
        w.peer.send(Announce(("m",), capacity, "scripted", coefficient=coefficient))
        await until(lambda: any(x.node_id == w.name and x.capacity
                                for x in self.proxy.workers.values()))

    def request(self, max_coefficient: int = 0) -> OutgoingStream:
        assert self.client is not None
        return self.client.open_stream(
            lambda rid: Request(rid, "chat", "m", True, 30_000, b'{"model": "m"}', 100,
                                max_coefficient=max_coefficient))

    async def ledger(self, fn: Any, *args: Any) -> Any:
        assert self.proxy.billing is not None
        return await self.proxy.billing.run(fn, *args)

    async def settled(self) -> None:
        """Until the proxy holds no open reservation."""
        assert self.proxy.billing is not None
        ledger = self.proxy.billing.ledger
        for _ in range(int(T / 0.02)):
            if not await self.ledger(ledger.open_reservations):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("a reservation stayed open")


@contextlib.asynccontextmanager
async def network(tmp_path: Path, **proxy: Any) -> AsyncIterator[Net]:
    billing = BillingConfig(enabled=True, ledger_path=str(tmp_path / "ledger.sqlite"),
                            signing_key_file=str(tmp_path / "k.pem"))
    with Ledger(billing.ledger_path) as ledger:
        ledger.deposit(CLIENT, 10**9)
    async with running_proxy(node_id="proxy", billing=billing, **proxy) as loop:
        yield Net(loop.proxy, loop.tasks)


async def outcome(stream: OutgoingStream) -> tuple[End | Error, int]:
    """The request's last message, and how many events the app received before it."""
    events = 0
    while True:
        ev = await asyncio.wait_for(stream.next(), T)
        if isinstance(ev, End | Error):
            return ev, events
        assert isinstance(ev, Head | Chunk), ev
        if isinstance(ev, Chunk):
            events += count_events(ev.data)
            stream.consumed()


async def charges(net: Net, *workers: str) -> tuple[int, list[int]]:
    assert net.proxy.billing is not None
    ledger = net.proxy.billing.ledger
    client = await net.ledger(ledger.balance, CLIENT)
    earned = [(await net.ledger(ledger.earnings, f"worker:{w}")).earned for w in workers]
    return client.charged, earned


async def test_a_worker_that_fails_before_its_first_chunk_is_replaced_unseen(
        tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        flaky, good = Worker("w1", ["die"]), Worker("w2")
        await net.worker(flaky)
        await net.worker(good, capacity=1)  # w1 has more free slots: it is tried first
        net.client = await net.dial("client", "c1", Quiet())
        end, events = await outcome(net.request())
        assert isinstance(end, End) and events == 2, end
        assert (flaky.served, good.served) == (1, 1)
        assert net.proxy.stats.failovers == 1 and net.proxy.stats.failed == 0
        await net.settled()
        # only the attempt that answered is paid: 5 tokens, by w2
        assert await charges(net, "w1", "w2") == (5 * PRICE, [0, 5 * FEE])


def forgive(net: Net, name: str) -> None:
    """Its penalty over and its failures forgotten: routing prefers it again (idle, older)."""
    net.proxy._penalties.clear()
    for w in net.proxy.workers.values():
        if w.node_id == name:
            w.measured = Measured()


async def test_server_side_errors_and_silence_fail_over_and_the_failer_is_passed_over(
        tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(proxy_node, "_LAST_WORD_S", 0.2)
    async with network(tmp_path, idle_timeout_s=0.5) as net:
        flaky = Worker("w1", ["engine", "upstream", "silent"])
        good = Worker("w2")
        await net.worker(flaky, capacity=8)
        await net.worker(good, capacity=1)
        net.client = await net.dial("client", "c1", Quiet())
        first, _ = await outcome(net.request())
        assert isinstance(first, End) and (flaky.served, good.served) == (1, 1)
        # w1 failed: it is passed over while w2 has a free slot
        second, _ = await outcome(net.request())
        assert isinstance(second, End) and (flaky.served, good.served) == (1, 2)
        w1 = next(w for w in net.proxy.workers.values() if w.node_id == "w1")
        assert w1.measured.error_rate == pytest.approx(ALPHA)  # it weighs on its score too
        forgive(net, "w1")  # tried again, it fails again
        third, _ = await outcome(net.request())
        assert isinstance(third, End) and (flaky.served, good.served) == (2, 3)
        forgive(net, "w1")
        fourth, _ = await outcome(net.request())  # silent past idle_timeout_s
        assert isinstance(fourth, End) and (flaky.served, good.served) == (3, 4)
        assert net.proxy.stats.failovers == 3
        await net.settled()
        # the failed attempts reported 3 prompt tokens each: none of it is charged
        assert await charges(net, "w1", "w2") == (4 * 5 * PRICE, [0, 4 * 5 * FEE])


async def test_what_is_not_retried(tmp_path: Path) -> None:
    """The app's own mistake (400) would fail anywhere; after a chunk the app has seen part
    of an answer; and with nobody else to try, the worker's error comes at once."""
    async with network(tmp_path) as net:
        w1, w2 = Worker("w1", ["bad", "chunk-then-die"]), Worker("w2")
        await net.worker(w1, capacity=8)
        await net.worker(w2, capacity=1)
        net.client = await net.dial("client", "c1", Quiet())
        bad, _ = await outcome(net.request())
        assert isinstance(bad, Error) and (bad.code, bad.param) == ("invalid_request", "x")
        lost, events = await outcome(net.request())
        assert isinstance(lost, Error) and lost.code == "worker_lost" and events == 1
        assert (w1.served, w2.served) == (2, 0) and net.proxy.stats.failovers == 0
        await net.settled()
        assert net.proxy.billing is not None
        # the 400 reported 3 prompt tokens (charged, as any failed request's work); the cut
        # stream is charged what the app received: 3 prompt (14 bytes / 4) + 1 event
        charged, earned = await charges(net, "w1")
        assert charged == (3 + 4) * PRICE and earned == [(3 + 4) * FEE]


async def test_a_lone_failing_worker_answers_its_error_at_once(tmp_path: Path) -> None:
    async with network(tmp_path, queue_timeout_s=20) as net:
        w = Worker("w1", ["upstream"])
        await net.worker(w)
        net.client = await net.dial("client", "c1", Quiet())
        started = asyncio.get_running_loop().time()
        err, _ = await outcome(net.request())
        assert isinstance(err, Error) and err.code == "upstream_error"
        assert asyncio.get_running_loop().time() - started < 5  # not the queue's 20 s
        assert net.proxy.stats.failed == 1 and not net.proxy._relays
        await net.settled()
        assert await charges(net, "w1") == (0, [0])  # released: nothing answered


async def test_workers_are_billed_at_their_price_and_apps_cap_it(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        dear, cheap = Worker("dear"), Worker("cheap")
        await net.worker(dear, capacity=8, coefficient=3000)
        await net.worker(cheap, capacity=1, coefficient=2000)
        net.client = await net.dial("client", "c1", Quiet())
        # the catalog the client's /v1/models shows: nanoTON per million tokens
        (entry,) = net.proxy._catalog().entries
        assert (entry.workers, entry.price_min, entry.price_max) == (
            2, PRICE * 2_000_000, PRICE * 3_000_000)
        # both idle and unmeasured: the cheaper wins
        end, _ = await outcome(net.request())
        assert isinstance(end, End) and (dear.served, cheap.served) == (0, 1)
        await net.settled()
        # 3 prompt + 2 completion tokens at 2.0x: 10 adjusted tokens
        assert await charges(net, "dear", "cheap") == (10 * PRICE, [0, 10 * FEE])
        # a cap below the dear one's price keeps it out; below both: a 503 naming the cap
        end, _ = await outcome(net.request(max_coefficient=2500))
        assert isinstance(end, End) and (dear.served, cheap.served) == (0, 2)
        err, _ = await outcome(net.request(max_coefficient=1000))
        assert isinstance(err, Error) and err.code == "no_worker_available"
        assert err.param == "max_coefficient" and "cheapest asks 2000" in err.message
        assert dear.served == 0


async def test_a_worker_asking_above_the_proxys_bound_gets_nothing(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        greedy = Worker("greedy")
        greedy.peer = await net.dial("worker", "greedy", greedy)
        greedy.peer.send(Announce(("m",), 4, "scripted", coefficient=5000))  # bound: 4000
        await until(lambda: any(w.node_id == "greedy" and w.models
                                for w in net.proxy.workers.values()))
        fair = Worker("fair")
        await net.worker(fair, coefficient=4000)
        net.client = await net.dial("client", "c1", Quiet())
        for _ in range(3):
            end, _ = await outcome(net.request())
            assert isinstance(end, End)
        assert (greedy.served, fair.served) == (0, 3)
