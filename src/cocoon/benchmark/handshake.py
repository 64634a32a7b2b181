"""``--mode handshake``: what one RA-TLS connection costs, in-process on loopback.

Each kind runs N sequential connections from a connector to a listener in this process (one
asyncio loop, so a time is the CPU of both ends plus loopback, with no scheduling against
other processes):

* ``fake-tdx``: mutual RA-TLS (:class:`~cocoon.transport.tls.TlsConnector` /
  :class:`~cocoon.transport.tls.TlsListener`), both sides presenting simulated TDX evidence
  and verifying the other's with the authority's verifier (the full quote check);
* ``fake-tdx-cached``: the same, one connector reused, so after the first connection both
  ends find the peer's certificate in their verification cache (reconnects between the same
  two nodes);
* ``none``: the same handshake with evidence kind ``none`` on both sides (TLS 1.3 and the
  certificate checks, no quote);
* ``tcp``: a plain TCP connect, the baseline.

A connection is timed from the connect call until both ends hold their streams: the
connector's ``connect`` has returned (the server's certificate checked) and the listener has
handed the connection to its handler (the client's certificate checked). Then both close.
The listener's identity is created once, as a node's; the connector's identity and connector
are new for each connection (untimed: only the first TLS context of a connector is built
inside ``connect``), so neither end has verified the other before. Separately: one fake quote
verification (the verifier's ``verify``) and one identity creation (key, quote, certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import Callable
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.attestation.evidence import EvidenceVerifier, Provider
from cocoon.attestation.fake_tdx import FakeTdxAuthority, FakeTdxProvider, fake_measurements
from cocoon.attestation.providers import NoneProvider
from cocoon.benchmark.loadgen import percentile
from cocoon.transport.tls import TlsConnector, TlsIdentity, TlsListener

__all__ = ["run_handshake", "timing_summary"]

Progress = Callable[[str], None]


def timing_summary(seconds: list[float]) -> dict[str, Any]:
    """mean, p50, p99, min, max in milliseconds (NaN when empty) and the count."""
    ms = [s * 1000.0 for s in seconds]
    nan = float("nan")
    return {"n": len(ms),
            "mean": statistics.fmean(ms) if ms else nan,
            "p50": percentile(ms, 50), "p99": percentile(ms, 99),
            "min": min(ms) if ms else nan, "max": max(ms) if ms else nan}


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 5.0)


async def _connections(n: int, listen: Callable[[Any], Any],
                       prepare: Callable[[], Callable[[int], Any]]
                       ) -> tuple[list[float], list[str]]:
    """``n`` sequential connections, each made by ``prepare()`` (untimed); the times and
    the errors."""
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(writer)

    server, aclose = await listen(on_connect)
    port = server.sockets[0].getsockname()[1]
    times: list[float] = []
    errors: list[str] = []
    try:
        for _ in range(n):
            connect = prepare()
            t0 = perf_counter()
            try:
                _, writer = await connect(port)
                served = await asyncio.wait_for(accepted.get(), 10.0)
            except Exception as exc:  # CocoonError (attestation, transport), OSError, timeout
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            times.append(perf_counter() - t0)
            await _close(writer)
            await _close(served)
    finally:
        server.close()
        await aclose()
        await server.wait_closed()
    return times, errors


async def _tls(n: int, kind: str, *, fresh: bool = True
               ) -> tuple[list[float], list[str], dict[str, Any]]:
    """``fresh``: a new client identity and connector for each connection (made untimed), so
    both ends verify a certificate they have not seen (no verification cache hit)."""
    verifiers: dict[str, EvidenceVerifier] = {}
    if kind == "fake-tdx":
        authority = FakeTdxAuthority.generate(datetime.now(UTC))
        provider: Provider = FakeTdxProvider(authority, fake_measurements())
        verifiers["fake-tdx"] = authority.verifier()
    else:
        provider = NoneProvider()
    server_id = TlsIdentity.create(provider, "proxy", "", b"bench")
    client_id = TlsIdentity.create(provider, "worker", "fake", b"bench")
    listener = TlsListener(server_id, verifiers)
    reused = TlsConnector(client_id, verifiers, expect_role="proxy")

    async def listen(on_connect: Any) -> tuple[asyncio.Server, Any]:
        return await listener.listen("127.0.0.1", 0, on_connect), listener.aclose

    def prepare() -> Callable[[int], Any]:
        connector = reused
        if fresh:
            connector = TlsConnector(TlsIdentity.create(provider, "worker", "fake", b"bench"),
                                     verifiers, expect_role="proxy")

        async def connect(port: int) -> Any:
            return await connector.connect("127.0.0.1", port)

        return connect

    times, errors = await _connections(n, listen, prepare)
    info = {"cert_bytes": len(client_id.certificate.public_bytes(Encoding.DER)),
            "quote_bytes": len(client_id.evidence.quote)}
    return times, errors, info


async def _tcp(n: int) -> tuple[list[float], list[str]]:
    async def listen(on_connect: Any) -> tuple[asyncio.Server, Any]:
        async def nothing() -> None:
            pass

        return await asyncio.start_server(on_connect, "127.0.0.1", 0), nothing

    async def connect(port: int) -> Any:
        return await asyncio.open_connection("127.0.0.1", port)

    return await _connections(n, listen, lambda: connect)


def _operations(n: int) -> dict[str, Any]:
    authority = FakeTdxAuthority.generate(datetime.now(UTC))
    provider = FakeTdxProvider(authority, fake_measurements())
    verifier = authority.verifier()
    ident = TlsIdentity.create(provider, "worker", "fake", b"bench")
    report_data = ident.claims.report_data()
    at = datetime.now(UTC)
    verify_t: list[float] = []
    for _ in range(n):
        t0 = perf_counter()
        verifier.verify(ident.evidence, report_data, at)
        verify_t.append(perf_counter() - t0)
    quote_t: list[float] = []
    for _ in range(n):
        t0 = perf_counter()
        provider.evidence(report_data)
        quote_t.append(perf_counter() - t0)
    ident_t: list[float] = []
    for _ in range(n):
        t0 = perf_counter()
        TlsIdentity.create(provider, "worker", "fake", b"bench")
        ident_t.append(perf_counter() - t0)
    none_t: list[float] = []
    none = NoneProvider()
    for _ in range(n):
        t0 = perf_counter()
        TlsIdentity.create(none, "client")
        none_t.append(perf_counter() - t0)
    return {"verify_fake_quote": timing_summary(verify_t),
            "make_fake_quote": timing_summary(quote_t),
            "identity_fake_tdx": timing_summary(ident_t),
            "identity_none": timing_summary(none_t)}


def run_handshake(n: int, progress: Progress) -> dict[str, Any]:
    """The handshake section of the report."""
    progress(f"handshake: {n} sequential connections per kind, in-process on loopback")
    kinds: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    infos: dict[str, dict[str, Any]] = {}
    for kind in ("fake-tdx", "fake-tdx-cached", "none"):
        evidence = kind.removesuffix("-cached")
        times, errs, infos[kind] = asyncio.run(_tls(n, evidence, fresh=evidence == kind))
        kinds[kind] = timing_summary(times)
        errors[kind] = errs
        progress(f"handshake: {kind}: p50 {kinds[kind]['p50']:.2f} ms, {len(errs)} errors")
    times, errs = asyncio.run(_tcp(n))
    kinds["tcp"] = timing_summary(times)
    errors["tcp"] = errs
    progress(f"handshake: tcp: p50 {kinds['tcp']['p50']:.3f} ms, {len(errs)} errors")
    ops = _operations(n)
    progress(f"handshake: verify {ops['verify_fake_quote']['p50']:.2f} ms, "
             f"identity {ops['identity_fake_tdx']['p50']:.2f} ms")
    return {
        "n": n,
        "handshakes_ms": kinds,
        "operations_ms": ops,
        "errors": sum(len(e) for e in errors.values()),
        "error_samples": [f"{k}: {e}" for k, es in errors.items() for e in es][:5],
        "fake_tdx_quote_bytes": infos["fake-tdx"]["quote_bytes"],
        "fake_tdx_cert_bytes": infos["fake-tdx"]["cert_bytes"],
    }
