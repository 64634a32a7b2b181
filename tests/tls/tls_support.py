"""Helpers for the RA-TLS tests: an HMAC "quote" provider/verifier pair and a loopback server.

The HMAC quote is ``report_data (64 bytes) || HMAC-SHA256(key, report_data)``; the verifier
returns the report data the quote binds, so check_certificate's own binding check is what
catches evidence made for another key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from cocoon.attestation.evidence import Evidence, EvidenceKind, Step, VerifiedEvidence
from cocoon.errors import CocoonError, EvidenceInvalid, QuoteFormatError
from cocoon.transport.tls import TlsListener

KEY = b"test-attestation-key"
T = 5.0


class HmacProvider:
    """Evidence of ``kind``: report data and its HMAC. ``replay``: always return that
    evidence instead (stolen from another node)."""

    def __init__(self, kind: EvidenceKind = "fake-tdx", key: bytes = KEY,
                 replay: Evidence | None = None) -> None:
        self.name: EvidenceKind = kind
        self._key = key
        self._replay = replay

    def evidence(self, report_data: bytes) -> Evidence:
        if self._replay is not None:
            return self._replay
        mac = hmac.new(self._key, report_data, hashlib.sha256).digest()
        return Evidence(self.name, report_data + mac)


class NoneProvider:
    name: EvidenceKind = "none"

    def evidence(self, report_data: bytes) -> Evidence:
        return Evidence("none")


class HmacVerifier:
    def __init__(self, key: bytes = KEY) -> None:
        self._key = key
        self.calls = 0

    def verify(self, evidence: Evidence, report_data: bytes, at: datetime) -> VerifiedEvidence:
        self.calls += 1
        quote = evidence.quote
        if len(quote) != 96:
            raise QuoteFormatError("quote is not 96 bytes")
        bound, mac = quote[:64], quote[64:]
        if not hmac.compare_digest(mac, hmac.new(self._key, bound, hashlib.sha256).digest()):
            raise EvidenceInvalid("quote MAC does not verify", rule="quote_signature")
        return VerifiedEvidence(tier="fake-tdx", report_data=bound,
                                steps=(Step("quote_signature", True),))


VERIFIERS = {"fake-tdx": HmacVerifier()}


@dataclass
class Served:
    port: int
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    rejected: list[tuple[str, CocoonError]]
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    any_rejected: asyncio.Event = field(default_factory=asyncio.Event)

    async def next(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        pair = await asyncio.wait_for(self.accepted.get(), T)
        self.writers.append(pair[1])
        return pair

    async def wait_rejected(self) -> tuple[str, CocoonError]:
        await asyncio.wait_for(self.any_rejected.wait(), T)
        return self.rejected[0]


@contextlib.asynccontextmanager
async def serve(**kw: object) -> AsyncIterator[Served]:
    """A TlsListener(**kw) on a free loopback port; on_reject records into ``rejected``."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.Queue())
    rejected: list[tuple[str, CocoonError]] = []

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if server.is_serving():
            accepted.put_nowait((r, w))
        else:
            w.close()

    def on_reject(address: str, err: CocoonError) -> None:
        rejected.append((address, err))
        served.any_rejected.set()

    listener = TlsListener(on_reject=on_reject, **kw)  # type: ignore[arg-type]
    server = await listener.listen("127.0.0.1", 0, on_connect)
    served = Served(server.sockets[0].getsockname()[1], accepted, rejected)
    try:
        yield served
    finally:
        server.close()
        await listener.aclose()
        while not accepted.empty():  # accepted but never taken by the test
            served.writers.append(accepted.get_nowait()[1])
        for w in served.writers:
            w.close()
        for w in served.writers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), T)
        server.close()
        await asyncio.wait_for(server.wait_closed(), T)
