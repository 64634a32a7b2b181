"""A real ProxyNode on loopback (plain TCP) for node tests, with scripted peers dialling it:
shared by the proxy's queue, failover and drain tests (imported by name, as pytest puts
this folder on the path)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import openai

from cocoon.config import ProxyConfig
from cocoon.nodes.proxy.node import ProxyNode
from cocoon.transport import Peer, TcpListener
from cocoon.wire import Connection, Message
from lifecycle import running

T = 10.0


class Quiet:
    """A peer's handler that ignores what it is sent."""

    async def on_message(self, peer: Peer, msg: Message) -> None:
        pass


async def until(check: Any) -> None:
    """Poll ``check()`` until it holds (AssertionError after ``T`` seconds)."""
    for _ in range(int(T / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@dataclass
class Loopback:
    """The running proxy, and the peers' read loops (cancelled when it ends)."""

    proxy: ProxyNode
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def dial(self, role: str, node_id: str, handler: Any) -> Peer:
        """A peer of ``role`` connected and handshaken, its messages going to ``handler``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.proxy.port)
        peer = Peer(reader, writer, Connection(role=role, node_id=node_id))
        await asyncio.wait_for(peer.handshake(), T)
        self.tasks.append(asyncio.create_task(peer.run(handler)))
        return peer


@contextlib.asynccontextmanager
async def running_proxy(**config: Any) -> AsyncIterator[Loopback]:
    """A ProxyNode with ``config`` on loopback ports, stopped (and its peers) at the end."""
    proxy = ProxyNode(ProxyConfig(listen="127.0.0.1:0", http="127.0.0.1:0", **config),
                      listener=TcpListener())
    net = Loopback(proxy)
    try:
        async with running(proxy):
            yield net
    finally:
        for t in net.tasks:
            t.cancel()
            with contextlib.suppress(BaseException):
                await t


async def ask(url: str, stream: bool) -> str:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                  timeout=T) as app:
        messages: Any = [{"role": "user", "content": "hi"}]
        if not stream:
            r = await app.chat.completions.create(model="fake", messages=messages)
            return r.choices[0].message.content or ""
        out = []
        async for chunk in await app.chat.completions.create(model="fake", messages=messages,
                                                            stream=True):
            if chunk.choices:
                out.append(chunk.choices[0].delta.content or "")
        return "".join(out)
