"""RA-TLS byte streams: TLS 1.3 (pyOpenSSL, memory BIOs) under asyncio, as StreamReader/Writer.

:class:`TlsConnector` and :class:`TlsListener` implement the
:class:`~cocoon.transport.streams.Connector` / :class:`~cocoon.transport.streams.Listener`
protocols, so a :class:`~cocoon.transport.peer.Peer` runs over them unchanged: they hand out a
real :class:`asyncio.StreamReader` and :class:`asyncio.StreamWriter`, whose transport is a
small :class:`asyncio.Transport` that encrypts into the TCP transport. Back-pressure is the
TCP transport's: its ``pause_writing`` reaches the StreamWriter, so ``drain()`` waits.

This module checks peers (the connector and the listener); the parts under it are
:mod:`cocoon.transport.tls_identity` (this node's key and RA-TLS certificate, renewed),
:mod:`cocoon.transport._tls_protocol` (pyOpenSSL over memory BIOs as an asyncio protocol) and
:mod:`cocoon.transport._tls_transport` (the asyncio transport the StreamWriter writes to).

Why pyOpenSSL and not :mod:`ssl`: our certificates are self-signed and carry a *critical*
evidence extension that OpenSSL does not know; :mod:`ssl` cannot accept such a client
certificate, a pyOpenSSL verify callback can. The callback accepts any certificate: the real
check is :func:`~cocoon.attestation.ratls.check_certificate` right after the handshake (the
handshake itself proved that the peer holds the certificate's key), then ``policy``.

Both sides always present a certificate (kind ``none`` for an unattested client). A rejected
peer is logged as ``peer ADDR rejected: rule=RULE: why`` and its connection closed; the
connector raises :class:`~cocoon.errors.AttestationError` (evidence, policy) or
:class:`~cocoon.errors.TransportError` (connection, TLS, timeout).

TLS 1.3 caveat: a client finishes its handshake before the server has checked the client's
certificate, so a client the server rejects sees its connection closed right after
:meth:`TlsConnector.connect` returned (EOF or a reset on the first read).

After the handshake ``writer.get_extra_info`` also answers ``peer_certificate``
(:class:`cryptography.x509.Certificate`), ``peer_claims``, ``verified_evidence``,
``channel_binding`` (32 bytes, RFC 8446 exporter with label ``EXPORTER-cocoon-channel``:
equal on both ends of one connection, unrelated across connections), ``tls_version`` and
``cipher``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Coroutine, Mapping
from datetime import timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from cocoon.attestation.evidence import Claims, EvidenceVerifier, VerifiedEvidence
from cocoon.attestation.policy import VerificationCache
from cocoon.attestation.ratls import check_certificate, read_certificate, sign_binding
from cocoon.errors import AttestationError, CocoonError, TransportError
from cocoon.transport._tls_protocol import TlsProtocol, make_context
from cocoon.transport.streams import OnConnect, StreamPair
from cocoon.transport.tls_identity import Clock, TlsIdentity, utcnow

__all__ = [
    "EXPORTER_LABEL",
    "Clock",
    "Policy",
    "TlsConnector",
    "TlsIdentity",
    "TlsListener",
    "accept_any",
    "utcnow",
]

log = logging.getLogger(__name__)

EXPORTER_LABEL: Final = b"EXPORTER-cocoon-channel"
_EXPORTER_LEN: Final = 32

Policy = Callable[[VerifiedEvidence, Claims, x509.Certificate], None]
"""Called with the verified evidence, the peer's claims and its certificate; raises
:class:`~cocoon.errors.PolicyRejected` (or another AttestationError) to refuse."""
OnReject = Callable[[str, CocoonError], None]


def accept_any(verified: VerifiedEvidence, claims: Claims, cert: x509.Certificate) -> None:
    """The policy that accepts whatever verified (including tier ``unattested``)."""


# --- connector and listener -----------------------------------------------------------


class _Endpoint:
    def __init__(self, identity: TlsIdentity, verifiers: Mapping[str, EvidenceVerifier],
                 policy: Policy, expect_role: str | None, clock: Clock,
                 handshake_timeout: float, *, server_side: bool, mutual: bool) -> None:
        if handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        self.identity = identity
        self._verifiers = verifiers
        self._policy = policy
        self._expect_role = expect_role
        self._clock = clock
        self._timeout = handshake_timeout
        self._server_side = server_side
        self._mutual = mutual
        self._ctx: SSL.Context | None = None
        self._ctx_generation = -1
        self._cache = VerificationCache(ttl=timedelta(minutes=10))
        self.refused: collections.Counter[str] = collections.Counter()  # peers, by rule

    def _context(self) -> SSL.Context:
        self.identity.refresh_if_needed(self._clock())
        if self._ctx is None or self._ctx_generation != self.identity.generation:
            self._ctx = make_context(self.identity, server_side=self._server_side,
                                      mutual=self._mutual)
            self._ctx.set_app_data(self.identity.key)  # the key this context presents
            self._ctx_generation = self.identity.generation
        return self._ctx

    def _check(self, proto: TlsProtocol) -> dict[str, Any]:
        """Check the peer's certificate; the extra info for the streams. Raises
        AttestationError."""
        try:
            cert = proto.conn.get_peer_certificate(as_cryptography=True)
        except (ValueError, x509.InvalidVersion) as exc:  # OpenSSL took what cryptography won't
            raise AttestationError(f"the peer's certificate does not parse: {exc}",
                                   rule="cert_format") from None
        verified: VerifiedEvidence | None = None
        claims: Claims | None = None
        if cert is None:
            if not self._server_side or self._mutual:
                raise AttestationError("peer presented no certificate", rule="peer_certificate")
        else:
            assert isinstance(cert, x509.Certificate)
            now = self._clock()
            der = cert.public_bytes(serialization.Encoding.DER)
            fresh = cert.not_valid_before_utc <= now < cert.not_valid_after_utc
            verified = self._cache.get(der, now) if fresh else None
            if verified is None:  # quote verification is the expensive part: cache it
                verified = check_certificate(cert, verifiers=self._verifiers, at=now,
                                             expect_role=self._expect_role)
                self._cache.put(der, verified, now)
            claims = read_certificate(cert)[0]
            self._policy(verified, claims, cert)
        key = proto.conn.get_context().get_app_data()
        return {
            "peer_certificate": cert,
            "peer_claims": claims,
            "verified_evidence": verified,
            "channel_binding": proto.conn.export_keying_material(EXPORTER_LABEL, _EXPORTER_LEN),
            "binding_signer": lambda payload: sign_binding(key, payload),
            "tls_version": proto.conn.get_protocol_version_name(),
            "cipher": proto.conn.get_cipher_name(),
        }


def _reject(endpoint: _Endpoint, address: str, rule: str, exc: BaseException) -> None:
    endpoint.refused[rule] += 1
    log.warning("peer %s rejected: rule=%s: %s", address, rule, exc)


class TlsConnector(_Endpoint):
    """Dials RA-TLS: TLS 1.3, our certificate presented, the peer's checked before
    :meth:`connect` returns."""

    def __init__(self, identity: TlsIdentity, verifiers: Mapping[str, EvidenceVerifier],
                 policy: Policy = accept_any, expect_role: str | None = None,
                 clock: Clock = utcnow, *, handshake_timeout: float = 10.0) -> None:
        super().__init__(identity, verifiers, policy, expect_role, clock, handshake_timeout,
                         server_side=False, mutual=True)

    async def connect(self, host: str, port: int) -> StreamPair:
        loop = asyncio.get_running_loop()
        ctx = self._context()
        address = f"{host}:{port}"
        proto: TlsProtocol | None = None
        try:
            async with asyncio.timeout(self._timeout):
                _, proto = await loop.create_connection(
                    lambda: TlsProtocol(ctx, server_side=False), host, port)
                await proto.handshake_done
        except TimeoutError:
            if proto is not None:
                proto.abort()
            err = TransportError(f"TLS handshake with {address} timed out after "
                                 f"{self._timeout:g}s")
            _reject(self, address, "handshake_timeout", err)
            raise err from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {address}: {exc.strerror or exc}") from None
        except AttestationError as exc:
            _reject(self, address, exc.rule, exc)
            raise
        except TransportError as exc:
            _reject(self, address, "tls_handshake", exc)
            raise
        try:
            extra = self._check(proto)
        except AttestationError as exc:
            _reject(self, address, exc.rule, exc)
            proto.close()
            raise
        except BaseException:
            proto.abort()
            raise
        return proto.attach(extra)


class TlsListener(_Endpoint):
    """Accepts RA-TLS. ``mutual`` (default) requires a client certificate, checked like the
    connector checks the server's (``policy`` decides which tiers are acceptable).
    ``on_reject(address, error)`` is told about each refused peer (tests, metrics)."""

    def __init__(self, identity: TlsIdentity, verifiers: Mapping[str, EvidenceVerifier],
                 policy: Policy = accept_any, expect_role: str | None = None,
                 clock: Clock = utcnow, *, mutual: bool = True,
                 handshake_timeout: float = 10.0, on_reject: OnReject | None = None) -> None:
        super().__init__(identity, verifiers, policy, expect_role, clock, handshake_timeout,
                         server_side=True, mutual=mutual)
        self._on_reject = on_reject
        self._tasks: set[asyncio.Task[None]] = set()  # handshakes and checks
        self._handlers: set[asyncio.Task[None]] = set()  # on_connect
        self._handshaking: set[TlsProtocol] = set()

    async def listen(self, host: str, port: int, on_connect: OnConnect) -> asyncio.Server:
        loop = asyncio.get_running_loop()

        def spawn(proto: TlsProtocol) -> None:
            self._spawn(self._accept(proto, on_connect), self._tasks)

        def factory() -> TlsProtocol:
            return TlsProtocol(self._context(), server_side=True, on_made=spawn)

        try:
            return await loop.create_server(factory, host, port)
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def _spawn(self, coro: Coroutine[Any, Any, None],
               tasks: set[asyncio.Task[None]]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def aclose(self) -> None:
        """Abort the connections still in their handshake and wait until they are gone.
        (``asyncio.Server.close()`` only stops accepting; accepted streams are the
        ``on_connect`` handler's to close, as with TcpListener.)"""
        for proto in list(self._handshaking):
            proto.abort()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _rejected(self, proto: TlsProtocol, rule: str, exc: CocoonError) -> None:
        _reject(self, proto.address, rule, exc)
        if self._on_reject is not None:
            try:
                self._on_reject(proto.address, exc)
            except Exception:
                log.exception("on_reject failed")

    async def _accept(self, proto: TlsProtocol, on_connect: OnConnect) -> None:
        self._handshaking.add(proto)
        try:
            extra = await self._handshake(proto)
        finally:
            self._handshaking.discard(proto)
        if extra is not None:
            self._spawn(self._serve(proto.attach(extra), proto.address, on_connect),
                        self._handlers)

    async def _handshake(self, proto: TlsProtocol) -> dict[str, Any] | None:
        """The handshake and the peer's check; None (logged, closed) when refused."""
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.shield(proto.handshake_done)
        except TimeoutError:
            proto.abort()
            self._rejected(proto, "handshake_timeout", TransportError(
                f"no TLS handshake from {proto.address} within {self._timeout:g}s"))
            return None
        except AttestationError as exc:
            proto.close()
            self._rejected(proto, exc.rule, exc)
            return None
        except TransportError as exc:
            proto.close()
            self._rejected(proto, "tls_handshake", exc)
            return None
        try:
            return self._check(proto)
        except AttestationError as exc:
            proto.close()
            self._rejected(proto, exc.rule, exc)
        except Exception:
            proto.abort()
            log.exception("checking %s failed", proto.address)
        return None

    @staticmethod
    async def _serve(streams: StreamPair, address: str, on_connect: OnConnect) -> None:
        try:
            await on_connect(*streams)
        except Exception:
            log.exception("connection handler for %s failed", address)
            streams[1].close()
