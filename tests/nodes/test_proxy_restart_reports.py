"""A proxy that restarts after a crash charges the requests it was relaying when it died
(issue 10: interrupted work is not free): the reservations the dead run left open wait for
their workers' ``JobReports``; a reported one is charged what its worker generated (and the
worker paid), an unreported one of a reporting worker is released, and what no worker
reports on within ``billing.report_grace_s`` is released. In process: a real ProxyNode
(billing on, SQLite ledger in tmp) and scripted workers over loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from loopback import running

from cocoon.config import BillingConfig, ProxyConfig
from cocoon.ledger import Ledger
from cocoon.nodes.proxy.node import ProxyNode
from cocoon.transport import Peer, TcpListener
from cocoon.usage import Usage
from cocoon.wire import (
    Announce,
    Chunk,
    Connection,
    End,
    Head,
    JobReport,
    JobReports,
    Message,
    Request,
    Statement,
)

T = 5.0
PRICE, FEE = 2, 1  # BillingConfig defaults, 1.0x multipliers
CLIENT = "node:c1"


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.requests: list[Request] = []

    async def on_message(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, Request):  # a worker: answer with one chunk and an End
            self.requests.append(msg)
            peer.send(Head(msg.req_id, peer.conn.node_id))
            await peer.send_chunk(msg.req_id, b"{}")
            peer.finish(End(msg.req_id, 3, 1, 0, 0))
            return
        self.queue.put_nowait(msg)

    async def statement(self) -> Statement:
        while not isinstance(msg := await asyncio.wait_for(self.queue.get(), T), Statement):
            pass
        return msg


async def _dial(port: int, role: str, node_id: str, inbox: Inbox,
                tasks: list[asyncio.Task[None]]) -> Peer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer = Peer(reader, writer, Connection(role=role, node_id=node_id))
    await asyncio.wait_for(peer.handshake(), T)
    tasks.append(asyncio.create_task(peer.run(inbox)))
    return peer


@contextlib.asynccontextmanager
async def restarted_proxy(tmp_path: Path, grace_s: float,
                          left_open: dict[str, str]) -> AsyncIterator[ProxyNode]:
    """A proxy started on a ledger where a dead run left ``left_open`` reservations
    (request id -> worker account) of 1000 nanoTON each for CLIENT."""
    billing = BillingConfig(enabled=True, ledger_path=str(tmp_path / "ledger.sqlite"),
                            signing_key_file=str(tmp_path / "k.pem"), report_grace_s=grace_s)
    with Ledger(billing.ledger_path) as ledger:
        ledger.deposit(CLIENT, 10**6)
        for request_id, worker in left_open.items():
            ledger.reserve(request_id, CLIENT, worker, 1000)
    proxy = ProxyNode(ProxyConfig(listen="127.0.0.1:0", http="127.0.0.1:0", node_id="proxy",
                                  billing=billing), listener=TcpListener())
    async with running(proxy):
        yield proxy


async def _until(check: Any) -> None:
    for _ in range(int(T / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_reported_requests_are_charged_and_the_rest_released(tmp_path: Path) -> None:
    left_open = {"proxy:111": "worker:w1", "proxy:222": "worker:w1", "proxy:333": "worker:w2",
                 "proxy:444": "worker:w1"}
    tasks: list[asyncio.Task[None]] = []
    async with restarted_proxy(tmp_path, 60.0, left_open) as proxy:
        billing = proxy.billing
        assert billing is not None and set(billing.unreported) == set(left_open)
        ledger = billing.ledger

        async def run(fn: Any, *args: Any) -> Any:
            return await billing.run(fn, *args)

        client_inbox, worker_inbox = Inbox(), Inbox()
        client = await _dial(proxy.port, "client", "c1", client_inbox, tasks)
        assert client is not None
        w1 = await _dial(proxy.port, "worker", "w1", worker_inbox, tasks)
        w1.send(Announce(("m",), 4, "scripted"))
        w1.send(JobReports((
            JobReport.of(111, Usage(7, 3)),  # cut off after 3 tokens: charged 10
            JobReport.of(333, Usage(50, 50)),  # w2's request: not w1's to report
            JobReport(444, 1, 0, 5, 0),  # impossible counts (cached above prompt): skipped
            JobReport.of(999, Usage(9, 9)),  # nothing open: settled by the dead run already
        )))

        async def w1_resolved() -> bool:
            return not any(r.startswith("proxy:") and left_open[r] == "worker:w1"
                           for r in billing.unreported)

        await _until(w1_resolved)
        assert (await run(ledger.reservation, "proxy:111")).state == "settled"
        assert (await run(ledger.reservation, "proxy:222")).state == "released"
        assert (await run(ledger.reservation, "proxy:444")).state == "released"
        assert (await run(ledger.reservation, "proxy:333")).state == "open"  # waits for w2
        account = await run(ledger.balance, CLIENT)
        assert (account.charged, account.tokens, account.reserved) == (10 * PRICE, 10, 1000)
        assert (await run(ledger.earnings, "worker:w1")).earned == 10 * FEE
        # Both sides hear of the charge at once: the client to sign it, the worker its pay.
        assert (await client_inbox.statement()).charged == 10 * PRICE
        assert (await worker_inbox.statement()).earned == 10 * FEE
        assert await run(ledger.check_invariants) == []
    for t in tasks:
        t.cancel()
        with contextlib.suppress(BaseException):
            await t


async def test_what_no_worker_reports_is_released_after_the_grace(tmp_path: Path) -> None:
    async with restarted_proxy(tmp_path, 0.3, {"proxy:7": "worker:gone"}) as proxy:
        billing = proxy.billing
        assert billing is not None

        async def released() -> bool:
            r = await billing.run(billing.ledger.reservation, "proxy:7")
            return bool(r.state == "released")

        await _until(released)
        assert (await billing.run(billing.ledger.balance, CLIENT)).reserved == 0
        assert not billing.unreported


async def test_requests_reach_the_worker_with_the_ticket_of_their_reservation(
        tmp_path: Path) -> None:
    tasks: list[asyncio.Task[None]] = []
    async with restarted_proxy(tmp_path, 60.0, {}) as proxy:
        billing = proxy.billing
        assert billing is not None
        worker_inbox, client_inbox = Inbox(), Inbox()
        w = await _dial(proxy.port, "worker", "w1", worker_inbox, tasks)
        w.send(Announce(("m",), 4, "scripted"))

        async def announced() -> bool:
            return any(x.capacity for x in proxy.workers.values())

        await _until(announced)
        client = await _dial(proxy.port, "client", "c1", client_inbox, tasks)
        tickets = set()
        for _ in range(3):
            stream = client.open_stream(
                lambda rid: Request(rid, "chat", "m", True, 30_000, b'{"model": "m"}', 10))
            while not isinstance(ev := await asyncio.wait_for(stream.next(), T), End):
                assert isinstance(ev, Head | Chunk), ev
                if isinstance(ev, Chunk):
                    stream.consumed()
        for req in worker_inbox.requests:
            assert req.ticket > 0
            tickets.add(req.ticket)
            settled = await billing.run(billing.ledger.reservation, f"proxy:{req.ticket}")
            assert settled is not None and settled.state == "settled"
        assert len(tickets) == 3  # one reservation, one ticket, per request
    for t in tasks:
        t.cancel()
        with contextlib.suppress(BaseException):
            await t
