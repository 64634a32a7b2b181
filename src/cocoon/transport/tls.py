"""RA-TLS byte streams: TLS 1.3 (pyOpenSSL, memory BIOs) under asyncio, as StreamReader/Writer.

:class:`TlsConnector` and :class:`TlsListener` implement the
:class:`~cocoon.transport.streams.Connector` / :class:`~cocoon.transport.streams.Listener`
protocols, so a :class:`~cocoon.transport.peer.Peer` runs over them unchanged: they hand out a
real :class:`asyncio.StreamReader` and :class:`asyncio.StreamWriter`, whose transport is a
small :class:`asyncio.Transport` that encrypts into the TCP transport. Back-pressure is the
TCP transport's: its ``pause_writing`` reaches the StreamWriter, so ``drain()`` waits.

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
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from cocoon.attestation.evidence import (
    Claims,
    Evidence,
    EvidenceVerifier,
    Provider,
    VerifiedEvidence,
)
from cocoon.attestation.policy import VerificationCache
from cocoon.attestation.ratls import (
    check_certificate,
    make_certificate,
    public_key_der,
    read_certificate,
    sign_binding,
)
from cocoon.errors import AttestationError, CocoonError, TransportError
from cocoon.transport.streams import OnConnect, StreamPair

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
_STREAM_LIMIT: Final = 1 << 20  # as TcpConnector / TcpListener
_RECV_SIZE: Final = 64 * 1024
_BIO_READ_SIZE: Final = 256 * 1024
_SKEW: Final = timedelta(minutes=5)  # certificates are backdated for peers' clock skew
_NO_CERT_REASON: Final = "peer did not return a certificate"

Policy = Callable[[VerifiedEvidence, Claims, x509.Certificate], None]
"""Called with the verified evidence, the peer's claims and its certificate; raises
:class:`~cocoon.errors.PolicyRejected` (or another AttestationError) to refuse."""
Clock = Callable[[], datetime]
OnReject = Callable[[str, CocoonError], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


def accept_any(verified: VerifiedEvidence, claims: Claims, cert: x509.Certificate) -> None:
    """The policy that accepts whatever verified (including tier ``unattested``)."""


# --- identity -------------------------------------------------------------------------


@dataclass
class TlsIdentity:
    """This node's TLS key and RA-TLS certificate, re-issued before it expires."""

    provider: Provider
    claims: Claims
    evidence: Evidence
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    lifetime: timedelta
    generation: int = 0  # bumped by each renewal
    fixed_key: bool = False  # renewals keep the key (a persistent identity)

    @classmethod
    def create(cls, provider: Provider, role: str, model: str = "", config_hash: bytes = b"",
               *, model_hash: bytes = b"", lifetime: timedelta = timedelta(hours=1),
               now: datetime | None = None,
               key: ec.EllipticCurvePrivateKey | None = None) -> TlsIdentity:
        """Evidence from ``provider`` over the claims of a key, and the certificate. The key
        is fresh (and renewed with the certificate) unless ``key`` is given: a persistent
        key is a client's account identity."""
        if lifetime <= timedelta(0):
            raise ValueError("lifetime must be positive")
        template = Claims(b"", role, model, config_hash, model_hash)
        new_key, claims, evidence, cert = cls._issue(provider, template, lifetime,
                                                     now or utcnow(), key)
        return cls(provider, claims, evidence, new_key, cert, lifetime, fixed_key=key is not None)

    @staticmethod
    def _issue(provider: Provider, template: Claims, lifetime: timedelta, now: datetime,
               key: ec.EllipticCurvePrivateKey | None = None,
               ) -> tuple[ec.EllipticCurvePrivateKey, Claims, Evidence, x509.Certificate]:
        key = key or ec.generate_private_key(ec.SECP256R1())
        claims = dataclasses.replace(template, public_key=public_key_der(key.public_key()))
        evidence = provider.evidence(claims.report_data())
        cert = make_certificate(key, claims, evidence, not_before=now - _SKEW,
                                lifetime=lifetime + _SKEW)
        return key, claims, evidence, cert

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def refresh_if_needed(self, now: datetime, *, margin: float = 0.25) -> bool:
        """Re-issue (new key, new evidence) once less than ``margin`` of the lifetime is
        left; True if it did. Open connections keep their certificate."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        if self.not_after - now >= self.lifetime * margin:
            return False
        c = self.claims
        self.key, self.claims, self.evidence, self.certificate = self._issue(
            self.provider, c, self.lifetime, now, self.key if self.fixed_key else None)
        self.generation += 1
        return True


def _accept_verify(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    # Self-signed, unknown critical extension: expected. check_certificate decides.
    return True


def _make_context(identity: TlsIdentity, *, server_side: bool, mutual: bool) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.use_certificate(identity.certificate)
    ctx.use_privatekey(identity.key)
    ctx.check_privatekey()
    if server_side and not mutual:
        ctx.set_verify(SSL.VERIFY_NONE)
    elif server_side:
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_verify)
    else:
        ctx.set_verify(SSL.VERIFY_PEER, _accept_verify)
    return ctx


def _ssl_reason(exc: SSL.Error) -> str:
    """OpenSSL's reasons, without the library/function noise."""
    args = exc.args
    if args and isinstance(args[0], list) and args[0]:
        parts = [str(e[-1]) if isinstance(e, tuple) and e else str(e) for e in args[0]]
        return "; ".join(parts)
    return str(exc) or type(exc).__name__


# --- the protocol under asyncio -------------------------------------------------------


class _TlsProtocol(asyncio.Protocol):
    """Owns one SSL.Connection over memory BIOs and the TCP transport under it. Until
    :meth:`attach`, decrypted bytes are held; afterwards they go to the app protocol."""

    def __init__(self, ctx: SSL.Context, *, server_side: bool,
                 on_made: Callable[[_TlsProtocol], None] | None = None) -> None:
        self.conn = SSL.Connection(ctx, None)
        if server_side:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()
        self._server_side = server_side
        self._on_made = on_made
        self.handshake_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.handshake_done.add_done_callback(_retrieve)
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self._app: asyncio.Protocol | None = None
        self._held: list[bytes] = []
        self._eof = False  # EOF delivered (or held for the app)
        self._lost = False
        self._lost_exc: Exception | None = None
        self._error: Exception | None = None  # fatal TLS error after the handshake
        self._paused = False
        self.closing = False

    # asyncio.Protocol (the TCP side)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.address = f"{peer[0]}:{peer[1]}"
        if self._on_made is not None:
            self._on_made(self)
        if not self._server_side:
            self._handshake()

    def data_received(self, data: bytes) -> None:
        if self.closing or self._error is not None:
            return
        try:
            self.conn.bio_write(data)
        except SSL.Error as exc:
            self._fatal(exc)
            return
        if not self.handshake_done.done():
            self._handshake()
        else:
            self._read()

    def eof_received(self) -> bool | None:
        if not self.handshake_done.done():
            self.handshake_done.set_exception(
                TransportError(f"{self.address} closed the connection during the TLS handshake"))
            return False
        with contextlib.suppress(SSL.Error):
            self.conn.bio_shutdown()
        self._read()
        self._deliver_eof()  # EOF without close_notify counts as EOF: frames detect truncation
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if not self.handshake_done.done():
            reason = f": {exc}" if exc else ""
            self.handshake_done.set_exception(
                TransportError(f"connection to {self.address} lost during the TLS handshake"
                               f"{reason}"))
        self._lost_exc = self._error or exc
        if self._app is not None:
            self._app.connection_lost(self._lost_exc)

    def pause_writing(self) -> None:
        self._paused = True
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        if self._app is not None:
            self._app.resume_writing()

    # TLS

    def _handshake(self) -> None:
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as exc:
            self._flush()  # the alert
            reason = _ssl_reason(exc)
            err: CocoonError
            if _NO_CERT_REASON in reason:
                err = AttestationError(f"TLS handshake failed: {reason}",
                                       rule="peer_certificate")
            else:
                err = TransportError(f"TLS handshake with {self.address} failed: {reason}")
            self.handshake_done.set_exception(err)
            self.close()
            return
        self._flush()
        # Hold what follows until attach() (the certificate check comes first).
        assert self.transport is not None
        self.transport.pause_reading()
        self.handshake_done.set_result(None)
        self._read()

    def _read(self) -> None:
        conn = self.conn
        while True:
            try:
                data = conn.recv(_RECV_SIZE)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify
                self._flush()
                self._deliver_eof()
                return
            except SSL.SysCallError:  # EOF without close_notify, after bio_shutdown
                self._deliver_eof()
                return
            except SSL.Error as exc:
                self._fatal(exc)
                return
            if not data:
                break
            if self._app is not None:
                self._app.data_received(data)
            else:
                self._held.append(data)
        self._flush()  # e.g. a KeyUpdate reply

    def _flush(self) -> None:
        out: list[bytes] = []
        while True:
            try:
                data = self.conn.bio_read(_BIO_READ_SIZE)
            except SSL.WantReadError:
                break
            if not data:
                break
            out.append(data)
            if len(data) < _BIO_READ_SIZE:  # the memory BIO is drained: skip a raising call
                break
        t = self.transport
        if out and t is not None and not t.is_closing():
            t.write(out[0] if len(out) == 1 else b"".join(out))

    def _deliver_eof(self) -> None:
        if self._eof:
            return
        self._eof = True
        if self._app is not None:
            self._app.eof_received()

    def _fatal(self, exc: SSL.Error) -> None:
        if self._error is not None:
            return
        reason = _ssl_reason(exc)
        self._error = ConnectionResetError(f"TLS error with {self.address}: {reason}")
        if not self.handshake_done.done():
            self.handshake_done.set_exception(TransportError(str(self._error)))
        self._flush()
        if self.transport is not None:
            self.transport.close()

    # used by _TlsTransport

    def write_plain(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or self._error is not None or self._lost:
            return
        view = memoryview(data).cast("B")
        try:
            while view:
                n = self.conn.send(view)
                view = view[n:]
        except SSL.Error as exc:
            self._fatal(exc)
            return
        self._flush()

    def close(self) -> None:
        """Send close_notify (after the handshake) and close the TCP connection."""
        if self.closing:
            return
        self.closing = True
        if self.handshake_done.done() and not self.handshake_done.cancelled() \
                and self.handshake_done.exception() is None and self._error is None:
            with contextlib.suppress(SSL.Error):
                self.conn.shutdown()
            self._flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def attach(self, extra: dict[str, Any]) -> StreamPair:
        """Hand the connection to a StreamReader/StreamWriter pair."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_STREAM_LIMIT, loop=loop)
        app = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport = _TlsTransport(self, extra)
        app.connection_made(transport)
        writer = asyncio.StreamWriter(transport, app, reader, loop)
        self._app = app
        if self._paused:
            app.pause_writing()
        if not self._lost and self.transport is not None and not self.closing:
            self.transport.resume_reading()  # before the held data: the reader may re-pause
        held, self._held = self._held, []
        for data in held:
            app.data_received(data)
        if self._eof:
            app.eof_received()
        if self._lost:
            app.connection_lost(self._lost_exc)
        return reader, writer


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # no "exception was never retrieved" for abandoned handshakes


class _TlsTransport(asyncio.Transport):
    """What the StreamWriter writes to: plaintext in, TLS records out to TCP."""

    def __init__(self, proto: _TlsProtocol, extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._info = extra
        self._proto = proto
        self._protocol: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._info:
            return self._info[name]
        raw = self._proto.transport
        return raw.get_extra_info(name, default) if raw is not None else default

    def _raw(self) -> asyncio.Transport:
        assert self._proto.transport is not None
        return self._proto.transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._proto.write_plain(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._proto.write_plain(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS streams cannot half-close")

    def is_closing(self) -> bool:
        return self._proto.closing or self._raw().is_closing()

    def close(self) -> None:
        self._proto.close()

    def abort(self) -> None:
        self._proto.abort()

    def get_write_buffer_size(self) -> int:
        return self._raw().get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw().get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw().set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._raw().pause_reading()

    def resume_reading(self) -> None:
        self._raw().resume_reading()

    def is_reading(self) -> bool:
        return self._raw().is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol


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

    def _context(self) -> SSL.Context:
        self.identity.refresh_if_needed(self._clock())
        if self._ctx is None or self._ctx_generation != self.identity.generation:
            self._ctx = _make_context(self.identity, server_side=self._server_side,
                                      mutual=self._mutual)
            self._ctx.set_app_data(self.identity.key)  # the key this context presents
            self._ctx_generation = self.identity.generation
        return self._ctx

    def _check(self, proto: _TlsProtocol) -> dict[str, Any]:
        """Check the peer's certificate; the extra info for the streams. Raises
        AttestationError."""
        cert = proto.conn.get_peer_certificate(as_cryptography=True)
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


def _reject(address: str, rule: str, exc: BaseException) -> None:
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
        proto: _TlsProtocol | None = None
        try:
            async with asyncio.timeout(self._timeout):
                _, proto = await loop.create_connection(
                    lambda: _TlsProtocol(ctx, server_side=False), host, port)
                await proto.handshake_done
        except TimeoutError:
            if proto is not None:
                proto.abort()
            err = TransportError(f"TLS handshake with {address} timed out after "
                                 f"{self._timeout:g}s")
            _reject(address, "handshake_timeout", err)
            raise err from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {address}: {exc.strerror or exc}") from None
        except AttestationError as exc:
            _reject(address, exc.rule, exc)
            raise
        except TransportError as exc:
            _reject(address, "tls_handshake", exc)
            raise
        try:
            extra = self._check(proto)
        except AttestationError as exc:
            _reject(address, exc.rule, exc)
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
        self._handshaking: set[_TlsProtocol] = set()

    async def listen(self, host: str, port: int, on_connect: OnConnect) -> asyncio.Server:
        loop = asyncio.get_running_loop()

        def spawn(proto: _TlsProtocol) -> None:
            self._spawn(self._accept(proto, on_connect), self._tasks)

        def factory() -> _TlsProtocol:
            return _TlsProtocol(self._context(), server_side=True, on_made=spawn)

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

    def _rejected(self, proto: _TlsProtocol, rule: str, exc: CocoonError) -> None:
        _reject(proto.address, rule, exc)
        if self._on_reject is not None:
            try:
                self._on_reject(proto.address, exc)
            except Exception:
                log.exception("on_reject failed")

    async def _accept(self, proto: _TlsProtocol, on_connect: OnConnect) -> None:
        self._handshaking.add(proto)
        try:
            extra = await self._handshake(proto)
        finally:
            self._handshaking.discard(proto)
        if extra is not None:
            self._spawn(self._serve(proto.attach(extra), proto.address, on_connect),
                        self._handlers)

    async def _handshake(self, proto: _TlsProtocol) -> dict[str, Any] | None:
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
