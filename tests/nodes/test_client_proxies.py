"""Issue 13, item 2: a client that sends through several proxies. A real ClientNode, real
ProxyNodes and a real WorkerNode serving them all (fake engine), over loopback; the app is
the official openai SDK. Requests go through every connected proxy; a proxy whose connection
drops before the request's first chunk does not reach the app: the request is sent again
through another proxy, and the app sees only the answer."""

from __future__ import annotations

import asyncio

import openai
from loopback import T, ask, running, running_proxy, until

from cocoon.config import ClientConfig, WorkerConfig
from cocoon.engines import FakeEngine, FakeEngineConfig
from cocoon.nodes.client.node import ClientNode
from cocoon.nodes.worker.node import WorkerNode
from cocoon.transport import Peer, TcpConnector, TcpListener
from cocoon.wire import Catalog, CatalogEntry, Connection, Head, Message, Request


class DroppingProxy:
    """Speaks the proxy's side of the protocol: offers model ``fake``, then drops the
    connection of whoever sends it a request (before any answer)."""

    def __init__(self, *, head_first: bool = False) -> None:
        self.head_first = head_first  # a worker "took" the request before the drop
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await TcpListener().listen("127.0.0.1", 0, self._on_connect)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, Connection(role="proxy", node_id="dropper"))
        await peer.handshake()
        peer.send(Catalog((CatalogEntry("fake", 1, 0, 4),)))
        await peer.run(self)

    async def on_message(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, Request):
            self.requests += 1
            if self.head_first:
                peer.send(Head(msg.req_id, "w-elsewhere"))
                await asyncio.sleep(0.05)
            peer.close("test: the proxy dies before answering")

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def worker_for(*ports: int) -> WorkerNode:
    return WorkerNode(WorkerConfig(proxy=",".join(f"127.0.0.1:{p}" for p in ports),
                                   http="127.0.0.1:0", node_id="w1"),
                      FakeEngine(FakeEngineConfig(chunks=5, chunk_bytes=4)),
                      connector=TcpConnector())


def client_for(*ports: int) -> ClientNode:
    return ClientNode(ClientConfig(proxy=",".join(f"127.0.0.1:{p}" for p in ports),
                                   http="127.0.0.1:0"), connector=TcpConnector())


async def test_requests_go_through_both_proxies() -> None:
    async with running_proxy() as a, running_proxy() as b:
        ports = (a.proxy.port, b.proxy.port)
        async with running(worker_for(*ports)), running(client_for(*ports)) as client:
            await until(lambda: all(link.offers("fake") for link in client.links))
            answers = await asyncio.gather(*(ask(client.http.url, i % 2 == 0)
                                             for i in range(8)))
            assert all(answers) and len(set(answers)) == 1
            # spread: each proxy carried some of them
            assert a.proxy.stats.completed > 0 and b.proxy.stats.completed > 0
            assert a.proxy.stats.completed + b.proxy.stats.completed == 8
            models = client.catalog
            assert [(e.model, e.workers) for e in models] == [("fake", 2)]  # one per proxy
            s = client.snapshot()
            assert [p["state"] for p in s["proxies"]] == ["connected", "connected"]


async def test_a_proxy_that_drops_before_answering_is_invisible_to_the_app() -> None:
    dropper = DroppingProxy()
    await dropper.start()
    try:
        async with running_proxy() as good, running(worker_for(good.proxy.port)), \
                    running(client_for(dropper.port, good.proxy.port)) as client:
            await until(lambda: all(link.offers("fake") for link in client.links))
            for stream in (True, False):
                assert await ask(client.http.url, stream)
            # both went to the dropper first (it was listed first, nothing in flight),
            # then again through the good proxy
            assert dropper.requests >= 1
            assert client.stats.resent == dropper.requests
            assert client.stats.succeeded == 2 and client.stats.failed == 0
            assert good.proxy.stats.completed == 2
    finally:
        dropper.close()


async def test_a_request_a_worker_took_is_not_sent_again() -> None:
    """Once a worker took it (Head), the dead proxy may have charged it: sending it through
    another proxy could charge it twice, so the app gets a clear 502 instead."""
    dropper = DroppingProxy(head_first=True)
    await dropper.start()
    try:
        async with running_proxy() as good, running(worker_for(good.proxy.port)), \
                running(client_for(dropper.port, good.proxy.port)) as client:
            await until(lambda: all(link.offers("fake") for link in client.links))
            async with openai.AsyncOpenAI(base_url=client.http.url + "/v1", api_key="unused",
                                          max_retries=0, timeout=T) as app:
                for _ in range(2):  # the dropper takes a turn within two requests
                    try:
                        await app.chat.completions.create(
                            model="fake", messages=[{"role": "user", "content": "hi"}])
                    except openai.APIStatusError as exc:
                        assert exc.status_code == 502 and "worker_lost" in str(exc.body)
                        break
                else:
                    raise AssertionError("the dropper was never picked")
            assert dropper.requests == 1 and client.stats.resent == 0
    finally:
        dropper.close()


async def test_with_no_proxy_left_the_app_gets_a_clear_503() -> None:
    dropper = DroppingProxy()
    await dropper.start()
    try:
        async with running(client_for(dropper.port)) as client:
            await until(lambda: client.links[0].offers("fake"))
            async with openai.AsyncOpenAI(base_url=client.http.url + "/v1", api_key="unused",
                                          max_retries=0, timeout=T) as app:
                try:
                    await app.chat.completions.create(
                        model="fake", messages=[{"role": "user", "content": "hi"}])
                except openai.APIStatusError as exc:
                    assert exc.status_code == 503
                    assert "connection to the proxy was lost" in str(exc)
                else:
                    raise AssertionError("expected a 503")
    finally:
        dropper.close()

