"""Roles connect on the first try and stop promptly on SIGTERM, whatever the timing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import pytest

from cocoon.transport import Peer
from cocoon.wire import Announce, Connection, Message

pytestmark = pytest.mark.e2e


async def test_message_sent_right_after_hello_is_not_lost():
    """A worker announces its models as soon as it has the proxy's Hello, so its Hello and
    its Announce can reach the proxy in one read; the handshake must keep the Announce."""
    got: asyncio.Queue[Message] = asyncio.Queue()

    class Recorder:
        async def on_message(self, peer: Peer, msg: Message) -> None:
            got.put_nowait(msg)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, Connection(role="proxy", node_id="proxy"))
        await peer.handshake()
        await peer.run(Recorder())

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        conn = Connection(role="worker", node_id="w")
        conn.initiate()
        while not conn.peer:  # the proxy's Hello
            conn.receive_data(await asyncio.wait_for(reader.read(65536), 5))
        conn.send(Announce(("m",), 3, "fake"))
        writer.write(conn.data_to_send())  # our Hello and the Announce in one write
        msg = await asyncio.wait_for(got.get(), 5)
        assert msg == Announce(("m",), 3, "fake")
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


def test_network_starts_cleanly_and_stops_on_sigterm(start_network):
    """Every role exits 0 soon after SIGTERM, even when its peers go down at the same
    moment (a cancel arriving while a connection closes must not be lost)."""
    net = start_network(engine="fake", workers=2)
    for w in net.workers:
        log = w.log_path.read_text()
        assert log.count("connected to") == 1, log  # no failed handshake and retry
    roles = net.roles()
    for r in roles:
        r.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    codes = {}
    for r in roles:
        try:
            codes[r.name] = r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[r.name] = f"still running:\n{r.log_tail()}"
    assert codes == {r.name: 0 for r in roles}
