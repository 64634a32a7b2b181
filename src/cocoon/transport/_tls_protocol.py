"""TLS 1.3 over memory BIOs under asyncio: one pyOpenSSL ``SSL.Connection`` driven by the
bytes of a TCP transport (:class:`TlsProtocol`), and the ``SSL.Context`` it runs under
(:func:`make_context`). Until :meth:`TlsProtocol.attach` the decrypted bytes are held, so the
peer's certificate is checked before the app sees any of them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final, cast

from OpenSSL import SSL

from cocoon.errors import AttestationError, CocoonError, TransportError
from cocoon.transport._tls_transport import TlsTransport
from cocoon.transport.streams import StreamPair
from cocoon.transport.tls_identity import TlsIdentity

__all__ = ["TlsProtocol", "make_context"]

_STREAM_LIMIT: Final = 1 << 20  # as TcpConnector / TcpListener
_RECV_SIZE: Final = 64 * 1024
_BIO_READ_SIZE: Final = 256 * 1024
_NO_CERT_REASON: Final = "peer did not return a certificate"


def _accept_verify(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    # Self-signed, unknown critical extension: expected. check_certificate decides.
    return True


def make_context(identity: TlsIdentity, *, server_side: bool, mutual: bool) -> SSL.Context:
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


class TlsProtocol(asyncio.Protocol):
    """Owns one SSL.Connection over memory BIOs and the TCP transport under it. Until
    :meth:`attach`, decrypted bytes are held; afterwards they go to the app protocol."""

    def __init__(self, ctx: SSL.Context, *, server_side: bool,
                 on_made: Callable[[TlsProtocol], None] | None = None) -> None:
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
        # a stream transport (uvloop's are not registered as asyncio.Transport subclasses)
        self.transport = cast(asyncio.Transport, transport)
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

    # used by TlsTransport

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
        transport = TlsTransport(self, extra)
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
