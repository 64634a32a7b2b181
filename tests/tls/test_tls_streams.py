"""RA-TLS streams over real loopback sockets: data, back-pressure, Peer, every rejection
path (typed error + a log line naming the rule), channel binding, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from OpenSSL import SSL
from tls_support import VERIFIERS, HmacProvider, NoneProvider, T, serve

from cocoon.attestation.evidence import VerifiedEvidence
from cocoon.attestation.ratls import binding_payload
from cocoon.errors import (
    AttestationError,
    EvidenceInvalid,
    PolicyRejected,
    TransportError,
)
from cocoon.transport import Peer
from cocoon.transport.tls import TlsConnector, TlsIdentity, utcnow
from cocoon.wire import Chunk, Connection, End, Head, Message, Request

LOG = "cocoon.transport.tls"


def worker_identity(**kw: Any) -> TlsIdentity:
    return TlsIdentity.create(HmacProvider(**kw), "worker", "m", b"cfg")


def proxy_identity() -> TlsIdentity:
    return TlsIdentity.create(HmacProvider(), "proxy", "", b"cfg")


def client_identity() -> TlsIdentity:
    return TlsIdentity.create(NoneProvider(), "client")


def rejected_logs(caplog: pytest.LogCaptureFixture, rule: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOG and "rejected" in r.getMessage() and f"rule={rule}:" in r.getMessage()]


@contextlib.asynccontextmanager
async def pair(listener_kw: dict[str, Any] | None = None,
               connector: TlsConnector | None = None
               ) -> AsyncIterator[tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter],
                                        tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    kw: dict[str, Any] = {"identity": proxy_identity(), "verifiers": VERIFIERS}
    kw.update(listener_kw or {})
    conn = connector or TlsConnector(worker_identity(), VERIFIERS, expect_role="proxy")
    async with serve(**kw) as srv:
        client = await asyncio.wait_for(conn.connect("127.0.0.1", srv.port), T)
        try:
            server = await srv.next()
            yield client, server
        finally:
            client[1].close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client[1].wait_closed(), T)


# --- data ---------------------------------------------------------------------------------


async def test_handshake_and_bidirectional_data() -> None:
    async with pair() as ((cr, cw), (sr, sw)):
        cw.write(b"hello server")
        await cw.drain()
        assert await asyncio.wait_for(sr.readexactly(12), T) == b"hello server"
        sw.write(b"hello client")
        await sw.drain()
        assert await asyncio.wait_for(cr.readexactly(12), T) == b"hello client"
        for w, peer_role in ((cw, "proxy"), (sw, "worker")):
            assert w.get_extra_info("tls_version") == "TLSv1.3"
            v = w.get_extra_info("verified_evidence")
            assert isinstance(v, VerifiedEvidence) and v.tier == "fake-tdx"
            assert w.get_extra_info("peer_claims").role == peer_role
            assert w.get_extra_info("peername")[0] == "127.0.0.1"
            assert w.get_extra_info("peer_certificate") is not None
        # close: the other side reads EOF
        cw.close()
        await asyncio.wait_for(cw.wait_closed(), T)
        assert await asyncio.wait_for(sr.read(), T) == b""


async def test_channel_binding_matches_and_differs() -> None:
    async with serve(identity=proxy_identity(), verifiers=VERIFIERS) as srv:
        conn = TlsConnector(worker_identity(), VERIFIERS)
        bindings = []
        for _ in range(2):
            _, cw = await conn.connect("127.0.0.1", srv.port)
            _, sw = await srv.next()
            cb, sb = cw.get_extra_info("channel_binding"), sw.get_extra_info("channel_binding")
            assert isinstance(cb, bytes) and len(cb) == 32
            assert cb == sb
            bindings.append(cb)
            cw.close()
        assert bindings[0] != bindings[1]


async def test_unattested_client_accepted_by_default() -> None:
    conn = TlsConnector(client_identity(), VERIFIERS, expect_role="proxy")
    async with pair(connector=conn) as ((_cr, cw), (_sr, sw)):
        assert sw.get_extra_info("verified_evidence").tier == "unattested"
        assert cw.get_extra_info("verified_evidence").tier == "fake-tdx"


async def test_large_transfer_both_ways() -> None:
    size = 8 * 1024 * 1024
    up, down = os.urandom(size), os.urandom(size)

    async def send(w: asyncio.StreamWriter, data: bytes) -> None:
        for i in range(0, len(data), 100_000):
            w.write(data[i:i + 100_000])
            await w.drain()

    async def recv(r: asyncio.StreamReader) -> bytes:
        return await r.readexactly(size)

    async with pair() as ((cr, cw), (sr, sw)):
        async with asyncio.timeout(30):
            _, _, got_up, got_down = await asyncio.gather(
                send(cw, up), send(sw, down), recv(sr), recv(cr))
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()


async def test_back_pressure_blocks_then_resumes() -> None:
    async with pair() as ((_cr, cw), (sr, _sw)):
        blob = b"x" * 65536
        sent = 0
        # The server does not read: drain() must eventually block.
        blocked = False
        for _ in range(2000):
            cw.write(blob)
            sent += len(blob)
            try:
                await asyncio.wait_for(cw.drain(), 0.2)
            except TimeoutError:
                blocked = True
                break
        assert blocked, "drain never blocked"
        assert cw.transport.get_write_buffer_size() > 0
        got = 0
        drain = asyncio.create_task(cw.drain())
        async with asyncio.timeout(T * 3):
            while got < sent:
                got += len(await sr.read(1 << 20))
            await drain
        assert got == sent


async def test_many_messages() -> None:
    n = 5000
    async with pair() as ((_cr, cw), (sr, _sw)):
        for i in range(n):
            cw.write(b"%08d" % i)
            if i % 100 == 0:
                await cw.drain()
        await cw.drain()
        data = await asyncio.wait_for(sr.readexactly(8 * n), T)
        assert data == b"".join(b"%08d" % i for i in range(n))


class Worker:
    """Handler: answers each Request with Head, 20 chunks, End."""

    async def on_message(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, Request):
            peer.spawn(self._serve(peer, msg), "serve")

    async def _serve(self, peer: Peer, req: Request) -> None:
        peer.send(Head(req.req_id, "worker-1"))
        for i in range(20):
            await peer.send_chunk(req.req_id, b"chunk-%d-" % i + req.body * 1000)
        peer.finish(End(req.req_id, 3, 20, 0, 0))


class Nothing:
    async def on_message(self, peer: Peer, msg: Message) -> None:
        pass


async def test_peer_request_chunk_end_over_tls() -> None:
    async with pair() as (client, server):
        a = Peer(*client, Connection(role="worker", node_id="w1", window=4))
        b = Peer(*server, Connection(role="proxy", node_id="p1", window=4))
        hellos = await asyncio.wait_for(asyncio.gather(a.handshake(), b.handshake()), T)
        assert hellos[0].role == "proxy" and hellos[1].role == "worker"
        ta = asyncio.create_task(a.run(Worker()))
        tb = asyncio.create_task(b.run(Nothing()))
        try:
            for n in range(3):
                stream = b.open_stream(lambda rid, n=n: Request(rid, "chat", "m", True, 10_000,
                                                                 b"%d" % n))
                events = []
                async with asyncio.timeout(T):
                    while True:
                        ev = await stream.next()
                        events.append(ev)
                        if isinstance(ev, Chunk):
                            stream.consumed()
                        if not isinstance(ev, Head | Chunk):
                            break
                assert events[0] == Head(stream.req_id, "worker-1")
                assert [e.data for e in events[1:-1]] == [  # type: ignore[union-attr]
                    b"chunk-%d-" % i + b"%d" % n * 1000 for i in range(20)]
                assert events[-1] == End(stream.req_id, 3, 20, 0, 0)
        finally:
            a.close()
            b.close()
            await asyncio.wait_for(asyncio.gather(ta, tb, return_exceptions=True), T)


# --- rejections ---------------------------------------------------------------------------


async def test_tls12_client_refused(caplog: pytest.LogCaptureFixture) -> None:
    async with serve(identity=proxy_identity(), verifiers=VERIFIERS) as srv:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx), T)
        _, err = await srv.wait_rejected()
        assert isinstance(err, TransportError)
        assert rejected_logs(caplog, "tls_handshake")


async def test_tls12_server_refused(caplog: pytest.LogCaptureFixture) -> None:
    """Our connector will not talk TLS 1.2 either."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ident = proxy_identity()
    ctx.use_certificate(ident.certificate)
    ctx.use_privatekey(ident.key)

    done = asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conn = SSL.Connection(ctx, None)
        conn.set_accept_state()
        with contextlib.suppress(Exception):
            data = await r.read(65536)
            conn.bio_write(data)
            with contextlib.suppress(SSL.Error):
                conn.do_handshake()
            with contextlib.suppress(SSL.Error):
                w.write(conn.bio_read(65536))
            await w.drain()
            await r.read(65536)
        w.close()
        await w.wait_closed()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TransportError):
            await TlsConnector(worker_identity(), VERIFIERS).connect("127.0.0.1", port)
        assert rejected_logs(caplog, "tls_handshake")
        await asyncio.wait_for(done.wait(), T)
    finally:
        server.close()


async def connect_rejected(connector: TlsConnector, caplog: pytest.LogCaptureFixture,
                           rule: str, error: type[AttestationError] = AttestationError,
                           **listener_kw: Any) -> AttestationError:
    kw: dict[str, Any] = {"identity": proxy_identity(), "verifiers": VERIFIERS}
    kw.update(listener_kw)
    async with serve(**kw) as srv:
        with pytest.raises(error) as info:
            await asyncio.wait_for(connector.connect("127.0.0.1", srv.port), T)
    assert info.value.rule == rule
    logs = rejected_logs(caplog, rule)
    assert logs, f"no log line for rule {rule}"
    for line in logs:  # never the quote in full
        assert len(line) < 400
    return info.value


async def test_server_wrong_evidence(caplog: pytest.LogCaptureFixture) -> None:
    bad = TlsIdentity.create(HmacProvider(key=b"not the real key"), "proxy")
    await connect_rejected(TlsConnector(worker_identity(), VERIFIERS), caplog,
                           "quote_signature", EvidenceInvalid, identity=bad)


async def test_server_certificate_expired(caplog: pytest.LogCaptureFixture) -> None:
    later = utcnow() + timedelta(hours=2)

    def clock() -> datetime:
        return later

    ident = worker_identity()
    conn = TlsConnector(ident, VERIFIERS, clock=clock)
    await connect_rejected(conn, caplog, "cert_validity", EvidenceInvalid)
    assert ident.generation == 1  # our own certificate was renewed for the new time


async def test_server_evidence_bound_to_another_key(caplog: pytest.LogCaptureFixture) -> None:
    victim = proxy_identity()  # a genuine node whose evidence is replayed by an impostor
    impostor = TlsIdentity.create(HmacProvider(replay=victim.evidence), "proxy")
    await connect_rejected(TlsConnector(worker_identity(), VERIFIERS), caplog,
                           "report_data_binding", EvidenceInvalid, identity=impostor)


async def test_server_unknown_evidence_kind(caplog: pytest.LogCaptureFixture) -> None:
    ident = TlsIdentity.create(HmacProvider(kind="tdx"), "proxy")
    await connect_rejected(TlsConnector(worker_identity(), VERIFIERS), caplog,
                           "evidence_kind", EvidenceInvalid, identity=ident)


async def test_server_role_mismatch(caplog: pytest.LogCaptureFixture) -> None:
    conn = TlsConnector(worker_identity(), VERIFIERS, expect_role="proxy")
    await connect_rejected(conn, caplog, "role", PolicyRejected, identity=worker_identity())


async def test_connector_policy(caplog: pytest.LogCaptureFixture) -> None:
    def attested_only(v: VerifiedEvidence, claims: object, cert: object) -> None:
        if v.tier == "unattested":
            raise PolicyRejected("unattested peer", rule="tier")

    conn = TlsConnector(worker_identity(), VERIFIERS, attested_only)
    await connect_rejected(conn, caplog, "tier", PolicyRejected, identity=client_identity())


async def listener_rejects(connector: TlsConnector, caplog: pytest.LogCaptureFixture,
                           rule: str, **listener_kw: Any) -> None:
    kw: dict[str, Any] = {"identity": proxy_identity(), "verifiers": VERIFIERS}
    kw.update(listener_kw)
    async with serve(**kw) as srv:
        # TLS 1.3: the client's handshake completes before the server checks it.
        with contextlib.suppress(TransportError):
            r, w = await asyncio.wait_for(connector.connect("127.0.0.1", srv.port), T)
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r.read(), T) == b""
            w.close()
        _, err = await srv.wait_rejected()
        assert isinstance(err, AttestationError) and err.rule == rule
        assert srv.accepted.empty()
    assert rejected_logs(caplog, rule)


async def test_client_wrong_evidence(caplog: pytest.LogCaptureFixture) -> None:
    conn = TlsConnector(worker_identity(key=b"forged"), VERIFIERS)
    await listener_rejects(conn, caplog, "quote_signature")


async def test_client_role_mismatch(caplog: pytest.LogCaptureFixture) -> None:
    await listener_rejects(TlsConnector(client_identity(), VERIFIERS), caplog, "role",
                           expect_role="worker")


async def test_listener_policy_requires_attested_client(
        caplog: pytest.LogCaptureFixture) -> None:
    def attested_only(v: VerifiedEvidence, claims: object, cert: object) -> None:
        if v.tier == "unattested":
            raise PolicyRejected("unattested peer", rule="tier")

    await listener_rejects(TlsConnector(client_identity(), VERIFIERS), caplog, "tier",
                           policy=attested_only)


async def test_client_without_certificate(caplog: pytest.LogCaptureFixture) -> None:
    async with serve(identity=proxy_identity(), verifiers=VERIFIERS) as srv:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx), T)
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                assert await asyncio.wait_for(r.read(), T) == b""
            w.close()
        _, err = await srv.wait_rejected()
        assert isinstance(err, AttestationError) and err.rule == "peer_certificate"
        assert srv.accepted.empty()
    assert rejected_logs(caplog, "peer_certificate")


async def test_non_mutual_listener_accepts_client_without_certificate() -> None:
    async with serve(identity=proxy_identity(), verifiers=VERIFIERS, mutual=False) as srv:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx), T)
        sr, sw = await srv.next()
        assert sw.get_extra_info("verified_evidence") is None
        w.write(b"ping")
        assert await asyncio.wait_for(sr.readexactly(4), T) == b"ping"
        sw.write(b"pong")
        assert await asyncio.wait_for(r.readexactly(4), T) == b"pong"
        w.close()


# --- timeouts -----------------------------------------------------------------------------


async def test_connector_handshake_timeout(caplog: pytest.LogCaptureFixture) -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        conn = TlsConnector(worker_identity(), VERIFIERS, handshake_timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            await conn.connect("127.0.0.1", port)
        assert time.monotonic() - t0 < 3
        assert rejected_logs(caplog, "handshake_timeout")
    finally:
        for w in writers:
            w.close()
        server.close()


async def test_listener_handshake_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async with serve(identity=proxy_identity(), verifiers=VERIFIERS,
                     handshake_timeout=0.3) as srv:
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)  # says nothing
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(r.read(), T) == b""
        w.close()
        _, err = await srv.wait_rejected()
        assert isinstance(err, TransportError)
    assert rejected_logs(caplog, "handshake_timeout")


async def test_connect_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match="cannot connect"):
        await TlsConnector(worker_identity(), VERIFIERS).connect("127.0.0.1", port)


# --- measurement (printed, not asserted) ---------------------------------------------------


async def test_handshake_time(capsys: pytest.CaptureFixture[str]) -> None:
    n = 50
    async with serve(identity=proxy_identity(), verifiers=VERIFIERS) as srv:
        conn = TlsConnector(worker_identity(), VERIFIERS, expect_role="proxy")
        t0 = time.perf_counter()
        for _ in range(n):
            _, w = await conn.connect("127.0.0.1", srv.port)
            await srv.next()
            w.close()
        mean = (time.perf_counter() - t0) / n * 1000
    with capsys.disabled():
        print(f"\nRA-TLS handshake (mutual, both sides checked), {n} sequential on loopback: "
              f"mean {mean:.2f} ms")


# --- hello bound to the channel ---------------------------------------------------------


async def test_hello_binding_verified_over_tls() -> None:
    async with pair() as (client, server):
        a = Peer(*client, Connection(role="worker", node_id="w1"))
        b = Peer(*server, Connection(role="proxy", node_id="p1"))
        ha, hb = await asyncio.wait_for(asyncio.gather(a.handshake(), b.handshake()), T)
        assert len(ha.binding) > 0 and len(hb.binding) > 0


async def test_hello_from_another_channel_is_rejected() -> None:
    """A Hello signed for one channel (a relayed handshake) fails on another."""
    async with serve(identity=proxy_identity(), verifiers=VERIFIERS) as srv:
        conn = TlsConnector(worker_identity(), VERIFIERS)
        r1, w1 = await conn.connect("127.0.0.1", srv.port)
        s1 = await srv.next()
        r2, w2 = await conn.connect("127.0.0.1", srv.port)
        s2 = await srv.next()
        try:
            # What the worker would sign on channel 1, sent on channel 2.
            payload = binding_payload(w1.get_extra_info("channel_binding"), "worker", "w1")
            stolen = w1.get_extra_info("binding_signer")(payload)
            rogue = Connection(role="worker", node_id="w1")
            rogue.binding = stolen
            rogue.initiate()
            w2.write(rogue.data_to_send())
            server_peer = Peer(*s2, Connection(role="proxy", node_id="p1"))
            with pytest.raises(AttestationError) as ei:
                await asyncio.wait_for(server_peer.handshake(), T)
            assert ei.value.rule == "channel_binding"
            # The same Hello is fine on the channel it was signed for.
            good = Connection(role="worker", node_id="w1")
            good.binding = stolen
            good.initiate()
            w1.write(good.data_to_send())
            hello = await asyncio.wait_for(Peer(*s1, Connection(role="proxy",
                                                                node_id="p1")).handshake(), T)
            assert hello.node_id == "w1"
        finally:
            for w in (w1, w2, s1[1], s2[1]):
                w.close()
            del r1, r2


async def test_unbound_hello_over_tls_is_rejected() -> None:
    async with pair() as (client, server):
        bare = Connection(role="worker", node_id="w1")
        bare.initiate()  # no binding
        client[1].write(bare.data_to_send())
        with pytest.raises(AttestationError) as ei:
            await asyncio.wait_for(
                Peer(*server, Connection(role="proxy", node_id="p1")).handshake(), T)
        assert ei.value.rule == "channel_binding"


async def test_verified_evidence_cached_per_certificate() -> None:
    """Reconnecting with the same certificate is not re-verified (cache with TTL); a new
    certificate is."""
    from tls_support import HmacVerifier

    server_verifier = HmacVerifier()
    worker = worker_identity()
    async with serve(identity=proxy_identity(), verifiers={"fake-tdx": server_verifier}) as srv:
        conn = TlsConnector(worker, VERIFIERS)
        for _ in range(3):
            _, w = await conn.connect("127.0.0.1", srv.port)
            _, sw = await srv.next()
            assert sw.get_extra_info("verified_evidence").tier == "fake-tdx"
            w.close()
        assert server_verifier.calls == 1
        _, w = await TlsConnector(worker_identity(), VERIFIERS).connect("127.0.0.1", srv.port)
        await srv.next()
        w.close()
        assert server_verifier.calls == 2
