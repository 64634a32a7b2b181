"""Sealing a request to the workers that may serve it, and its answer back (pure).

The client seals the OpenAI request body once, under a fresh *content key* (AES-256-GCM,
nonce zero, the endpoint, model and stream flag the proxy routes on as associated data); the
sealed plaintext is a fresh 32-byte *response key* followed by the body. It then *wraps* the
content key to each worker it accepts for the request, under a *session key* it holds with
that worker::

    wrapped = session (80 bytes) | nonce (12) | AES-256-GCM(session key, content key)

``session`` is the session key sealed with HPKE (RFC 9180, base mode, DHKEM(X25519,
HKDF-SHA256), HKDF-SHA256, AES-256-GCM) to the X25519 key in the worker's RA-TLS
claims, which its evidence binds. The client makes a session key per worker and uses it for
at most :data:`SESSION_USES` requests or :data:`SESSION_SECONDS`; the worker opens each
session once and keeps the newest (:class:`KeyUnwrapper`), and as every wrapped key carries
its session a worker that forgot it opens it again: no round trip, no state to lose. So a
request costs one AEAD at each end instead of an X25519 exchange, and a session key only
ever wraps fresh random content keys (the route, as associated data, binds each wrap to its
request's endpoint, model and stream flag). The proxy routes the request to one of
them and forwards the sealed body with that worker's wrapped key only; a worker it picks
that the client did not know gets its wrapped key after one more round trip. No hop but a
chosen worker can open the body, and a proxy that changes the endpoint, model or stream
flag makes it refuse. Only the client and the worker that opened it hold the response key.

The worker answers in *records*, each the AEAD (AES-256-GCM under the response key) of a
piece of the app's answer (AES-GCM rather than ChaCha20-Poly1305: the records are the
per-chunk cost of sealing, and on CPUs with AES-NI and CLMUL, which every TDX host has, it
takes about half the time per record)::

    record = length u32 BE | events u16 BE | ciphertext (length bytes, 16-byte tag included)

The nonce is the record's index (4 zero bytes, then u64 big-endian), never sent: a record
dropped, reordered or replayed on the way fails to open at the client, as does one whose
bytes or header were altered (the 6-byte header is the AEAD's associated data). ``events``
is the number of server-sent events inside, in the clear so the proxy can count what it
relays without reading it. Records are self-delimiting, so a hop may join the records that
wait together into one message; both ends hash the records as they went
(:attr:`ResponseSealer.transcript`), and the worker's signed receipt names that hash and the
record count, so a stream cut after its last whole record is caught at its end.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cocoon.errors import ProtocolError, SealBroken

__all__ = [
    "KEY_SIZE",
    "MAX_SEAL_KEYS",
    "RECORD_HEADER",
    "SEAL_KEYS_OVERHEAD",
    "SEAL_OVERHEAD",
    "SESSION_SECONDS",
    "SESSION_USES",
    "WRAPPED_SIZE",
    "KeyUnwrapper",
    "KeyWrapper",
    "ResponseOpener",
    "ResponseSealer",
    "SealedBody",
    "decode_keys",
    "encode_keys",
    "new_seal_key",
    "open_request",
    "record_events",
    "route_info",
    "seal_body",
    "seal_public_bytes",
    "sealed_size",
]

KEY_SIZE: Final = 32
_SUITE: Final = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_ENC: Final = 32  # X25519 encapsulated key
_TAG: Final = 16
_SESSION: Final = _ENC + KEY_SIZE + _TAG  # a session key sealed to a worker with HPKE
_NONCE: Final = 12
WRAPPED_SIZE: Final = _SESSION + _NONCE + KEY_SIZE + _TAG
"""A content key wrapped to one worker (its session included)."""
SESSION_USES: Final = 1 << 20
"""The most content keys one session key wraps (its random nonces stay far from colliding)."""
SESSION_SECONDS: Final = 600.0
"""How long a client uses one session key with a worker."""
_SESSIONS: Final = 4096  # sessions a worker keeps open, and workers a client keeps one with
SEAL_OVERHEAD: Final = KEY_SIZE + _TAG
"""What sealing adds to a request body: the response key inside, and the tag."""
MAX_SEAL_KEYS: Final = 8  # the most workers one request is sealed to
_MAX_ID: Final = 1024
SEAL_KEYS_OVERHEAD: Final = 1 + MAX_SEAL_KEYS * (2 + _MAX_ID + WRAPPED_SIZE)
"""The most bytes :func:`encode_keys` makes."""
_INFO: Final = b"cocoon-seal-v4"
_SESSION_INFO: Final = b"cocoon-seal-session-v4"
_BODY_NONCE: Final = bytes(12)  # each content key seals one body only
_HEADER: Final = struct.Struct(">IH")
_LENGTH: Final = struct.Struct(">I")  # a record header's first field
RECORD_HEADER: Final = _HEADER.size
_MAX_RECORD: Final = 1 << 30
_MAX_EVENTS: Final = 0xFFFF


def new_seal_key() -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.generate()


def seal_public_bytes(key: x25519.X25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``key``'s public half: what a worker's claims carry."""
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def sealed_size(body_size: int) -> int:
    """The size of a sealed body of ``body_size`` bytes."""
    return body_size + SEAL_OVERHEAD


def route_info(endpoint: str, model: str, stream: bool) -> bytes:
    """What a sealed request binds: the endpoint, model and stream flag it is routed by."""
    parts = (endpoint.encode(), model.encode(), b"\x01" if stream else b"\x00")
    return _INFO + b"".join(len(p).to_bytes(4, "big") + p for p in parts)


@dataclass(frozen=True, slots=True)
class SealedBody:
    """A body sealed for a request: the bytes that travel, the key they open with (to wrap
    for each worker), and the key the answer comes back under."""

    data: bytes
    content_key: bytes
    response_key: bytes


def seal_body(body: bytes, info: bytes) -> SealedBody:
    content_key, response_key = os.urandom(KEY_SIZE), os.urandom(KEY_SIZE)
    data = AESGCM(content_key).encrypt(_BODY_NONCE, response_key + body, info)
    return SealedBody(data, content_key, response_key)


class _Session:
    __slots__ = ("aead", "expires", "left", "sealed")

    def __init__(self, sealed: bytes, aead: AESGCM, left: int,
                 expires: float) -> None:
        self.sealed, self.aead, self.left, self.expires = sealed, aead, left, expires


class KeyWrapper:
    """The client's side: wraps content keys to workers, each under the session key it
    holds with that worker (made on first use, renewed after :data:`SESSION_USES` wraps or
    :data:`SESSION_SECONDS`; the sessions of the :data:`_SESSIONS` workers used last are
    kept). ``clock``, ``uses`` and ``seconds`` are for tests."""

    __slots__ = ("_clock", "_seconds", "_sessions", "_uses")

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 uses: int = SESSION_USES, seconds: float = SESSION_SECONDS) -> None:
        self._clock, self._uses, self._seconds = clock, uses, seconds
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()  # by worker key

    def wrap(self, content_key: bytes, worker_key: bytes, info: bytes) -> bytes:
        """``content_key`` wrapped to the worker whose public seal key is ``worker_key``
        (32 raw bytes): :data:`WRAPPED_SIZE` bytes only that worker can unwrap, bound to
        ``info`` (the request's route)."""
        now = self._clock()
        session = self._sessions.get(worker_key)
        if session is None or session.left <= 0 or session.expires <= now:
            session = self._new_session(worker_key, now)
        else:
            self._sessions.move_to_end(worker_key)
        session.left -= 1
        nonce = os.urandom(_NONCE)
        return b"".join((session.sealed, nonce, session.aead.encrypt(nonce, content_key, info)))

    def _new_session(self, worker_key: bytes, now: float) -> _Session:
        if len(worker_key) != KEY_SIZE:
            raise SealBroken(f"the worker's seal key is {len(worker_key)} bytes, not {KEY_SIZE}")
        try:
            public = x25519.X25519PublicKey.from_public_bytes(worker_key)
        except ValueError:
            raise SealBroken("the worker's seal key is not an X25519 key") from None
        session_key = os.urandom(KEY_SIZE)
        sealed = _SUITE.encrypt(session_key, public, info=_SESSION_INFO)
        session = self._sessions[worker_key] = _Session(
            sealed, AESGCM(session_key), self._uses, now + self._seconds)
        if len(self._sessions) > _SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def forget(self) -> None:
        """Start over: the next wrap to each worker makes a new session."""
        self._sessions.clear()


class KeyUnwrapper:
    """The worker's side: unwraps content keys wrapped to its seal key, opening each
    session once (the newest :data:`_SESSIONS` stay open)."""

    __slots__ = ("_key", "_sessions")

    def __init__(self, key: x25519.X25519PrivateKey) -> None:
        self._key = key
        self._sessions: OrderedDict[bytes, AESGCM] = OrderedDict()

    def unwrap(self, wrapped: bytes, info: bytes) -> bytes:
        """The content key in ``wrapped``; SealBroken when it was wrapped to another
        worker, for another route, or changed on the way."""
        if len(wrapped) != WRAPPED_SIZE:
            raise SealBroken("the wrapped key is too short to be one")
        session = wrapped[:_SESSION]
        aead = self._sessions.get(session)
        try:
            if aead is None:
                aead = AESGCM(_SUITE.decrypt(session, self._key, info=_SESSION_INFO))
                self._sessions[session] = aead
                if len(self._sessions) > _SESSIONS:
                    self._sessions.popitem(last=False)
            else:
                self._sessions.move_to_end(session)
            return aead.decrypt(wrapped[_SESSION:_SESSION + _NONCE],
                                wrapped[_SESSION + _NONCE:], info)
        except (InvalidTag, ValueError):
            raise SealBroken("the request's key did not unwrap: it was wrapped to another "
                             "worker, or it (or its model, endpoint or stream flag) changed "
                             "on the way") from None

    @property
    def sessions(self) -> int:
        return len(self._sessions)


def open_request(data: bytes, wrapped: bytes, unwrapper: KeyUnwrapper,
                 info: bytes) -> tuple[bytes, bytes]:
    """At the worker: unwrap its content key and open the body: (body, response key).
    SealBroken when the key was wrapped to another worker, or the body, its key or its
    route (endpoint, model, stream flag) changed on the way."""
    if len(wrapped) != WRAPPED_SIZE or len(data) < SEAL_OVERHEAD:
        raise SealBroken("the sealed request is too short to be one")
    content_key = unwrapper.unwrap(wrapped, info)
    try:
        plain = AESGCM(content_key).decrypt(_BODY_NONCE, data, info)
    except InvalidTag:
        raise SealBroken("the sealed request did not open: it (or its model, endpoint or "
                         "stream flag) changed on the way") from None
    return plain[KEY_SIZE:], plain[:KEY_SIZE]


def encode_keys(keys: dict[str, bytes]) -> bytes:
    """Wrapped content keys by worker id, as a request carries them."""
    if len(keys) > MAX_SEAL_KEYS:
        raise ValueError(f"a request is sealed to at most {MAX_SEAL_KEYS} workers")
    out = [bytes([len(keys)])]
    for worker, wrapped in keys.items():
        wid = worker.encode()
        if len(wid) > _MAX_ID or len(wrapped) != WRAPPED_SIZE:
            raise ValueError("a worker id over 1024 bytes, or a wrapped key of a wrong size")
        out += [len(wid).to_bytes(2, "big"), wid, wrapped]
    return b"".join(out)


def decode_keys(data: bytes) -> dict[str, bytes]:
    """:func:`encode_keys` read back; ProtocolError for anything else."""
    if not data:
        return {}
    n, pos, out = data[0], 1, {}
    if n > MAX_SEAL_KEYS:
        raise ProtocolError(f"a request sealed to {n} workers (at most {MAX_SEAL_KEYS})")
    for _ in range(n):
        if pos + 2 > len(data):
            raise ProtocolError("seal keys end inside an entry")
        size = int.from_bytes(data[pos:pos + 2], "big")
        end = pos + 2 + size + WRAPPED_SIZE
        if size > _MAX_ID or end > len(data):
            raise ProtocolError("seal keys end inside an entry")
        try:
            worker = data[pos + 2:pos + 2 + size].decode()
        except UnicodeDecodeError:
            raise ProtocolError("a seal key's worker id is not UTF-8") from None
        out[worker] = data[pos + 2 + size:end]
        pos = end
    if pos != len(data) or len(out) != n:
        raise ProtocolError("seal keys carry bytes past their entries, or an id twice")
    return out


def _nonce(index: int) -> bytes:
    return index.to_bytes(_NONCE, "big")  # 4 zero bytes, then u64 BE (index < 2**64)


class ResponseSealer:
    """The worker's side: each piece of the answer becomes the next record."""

    __slots__ = ("_aead", "_hash", "records")

    def __init__(self, response_key: bytes) -> None:
        self._aead = AESGCM(response_key)
        self._hash = hashlib.sha256()
        self.records = 0

    def seal(self, data: bytes, events: int = 0) -> bytes:
        header = _HEADER.pack(len(data) + _TAG, min(events, _MAX_EVENTS))
        record = header + self._aead.encrypt(_nonce(self.records), data, header)
        self.records += 1
        self._hash.update(record)
        return record

    @property
    def transcript(self) -> bytes:
        """SHA-256 of every record sealed so far, in order."""
        return self._hash.digest()


class ResponseOpener:
    """The client's side: opens records in order, each exactly once. A record split across
    messages waits for its rest."""

    __slots__ = ("_aead", "_hash", "_pending", "records")

    def __init__(self, response_key: bytes) -> None:
        self._aead = AESGCM(response_key)
        self._hash = hashlib.sha256()
        self._pending = b""
        self.records = 0

    def open(self, data: bytes) -> bytes:
        """The plaintext of every whole record in ``data`` (after what was left over);
        SealBroken at the first that does not open, with nothing of it returned."""
        if not self._pending and len(data) >= RECORD_HEADER:
            size = _LENGTH.unpack_from(data)[0]
            if size + RECORD_HEADER == len(data) and size >= _TAG:  # one whole record
                plain = self._decrypt(data[RECORD_HEADER:], data[:RECORD_HEADER])
                self._hash.update(data)
                self.records += 1
                return plain
        buf = self._pending + data if self._pending else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= RECORD_HEADER:
            size, _ = _HEADER.unpack_from(buf, pos)
            stop = pos + RECORD_HEADER + size
            if size < _TAG or size > _MAX_RECORD:
                raise SealBroken("a sealed record's header is corrupt")
            if stop > end:
                break
            out.append(self._decrypt(buf[pos + RECORD_HEADER:stop],
                                     buf[pos:pos + RECORD_HEADER]))
            self._hash.update(buf[pos:stop])
            self.records += 1
            pos = stop
        self._pending = buf[pos:]
        return out[0] if len(out) == 1 else b"".join(out)

    def _decrypt(self, ciphertext: bytes, header: bytes) -> bytes:
        try:
            return self._aead.decrypt(_nonce(self.records), ciphertext, header)
        except InvalidTag:
            raise SealBroken(f"sealed record {self.records} of the answer did not open: it "
                             "was altered, dropped, reordered or replayed on the way") from None

    @property
    def complete(self) -> bool:
        """No part of a record is waiting for its rest."""
        return not self._pending

    @property
    def transcript(self) -> bytes:
        return self._hash.digest()


def record_events(data: bytes) -> int:
    """The events the whole records in ``data`` say they hold (the proxy's count of what
    it relays, read from the headers alone). ProtocolError when ``data`` is not a run of
    whole records."""
    n = pos = 0
    end = len(data)
    while pos < end:
        if end - pos < RECORD_HEADER:
            raise ProtocolError("a sealed chunk ends inside a record header")
        size, events = _HEADER.unpack_from(data, pos)
        pos += RECORD_HEADER + size
        if size < _TAG or pos > end:
            raise ProtocolError("a sealed chunk is not a run of whole records")
        n += events
    return n
