"""Sealing a request to one worker, and its answer back to the client (pure).

The client seals the OpenAI request body to the worker's X25519 key (from the worker's
RA-TLS claims, which its evidence binds) with HPKE (RFC 9180, base mode,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305). The sealed plaintext is a fresh
32-byte *response key* followed by the body; HPKE's ``info`` binds the endpoint, model and
stream flag the proxy routes on, so a proxy that changes them makes the worker refuse the
request. Only the client and that worker ever hold the response key.

The worker answers in *records*, each the AEAD (ChaCha20-Poly1305 under the response key)
of a piece of the app's answer::

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
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cocoon.errors import ProtocolError, SealBroken

__all__ = [
    "KEY_SIZE",
    "RECORD_HEADER",
    "SEAL_OVERHEAD",
    "ResponseOpener",
    "ResponseSealer",
    "new_seal_key",
    "open_request",
    "record_events",
    "seal_public_bytes",
    "seal_request",
    "sealed_size",
]

KEY_SIZE: Final = 32
_SUITE: Final = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_ENC: Final = 32  # X25519 encapsulated key
_TAG: Final = 16
SEAL_OVERHEAD: Final = _ENC + _TAG + KEY_SIZE
"""What sealing adds to a request body: HPKE's encapsulated key and tag, and the response
key inside."""
_INFO: Final = b"cocoon-seal-request-v1"
_HEADER: Final = struct.Struct(">IH")
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
    """The size of a sealed body of ``body_size`` bytes (the proxy checks it)."""
    return body_size + SEAL_OVERHEAD


def _info(endpoint: str, model: str, stream: bool) -> bytes:
    parts = (endpoint.encode(), model.encode(), b"\x01" if stream else b"\x00")
    return _INFO + b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def seal_request(body: bytes, worker_key: bytes, *, endpoint: str, model: str,
                 stream: bool) -> tuple[bytes, bytes]:
    """``body`` sealed to the worker whose public seal key is ``worker_key`` (32 raw
    bytes): the sealed payload, and the response key the worker will answer under."""
    if len(worker_key) != KEY_SIZE:
        raise SealBroken(f"the worker's seal key is {len(worker_key)} bytes, not {KEY_SIZE}")
    public = x25519.X25519PublicKey.from_public_bytes(worker_key)
    response_key = os.urandom(KEY_SIZE)
    payload = _SUITE.encrypt(response_key + body, public, info=_info(endpoint, model, stream))
    return payload, response_key


def open_request(payload: bytes, key: x25519.X25519PrivateKey, *, endpoint: str, model: str,
                 stream: bool) -> tuple[bytes, bytes]:
    """Open a sealed request: (body, response key). SealBroken when it was not sealed to
    this key, or it or its endpoint, model or stream flag changed on the way."""
    if len(payload) < SEAL_OVERHEAD:
        raise SealBroken("the sealed request is too short to be one")
    try:
        plain = _SUITE.decrypt(payload, key, info=_info(endpoint, model, stream))
    except (InvalidTag, ValueError):
        raise SealBroken("the sealed request did not open: it was sealed to another key, or "
                         "it (or its model, endpoint or stream flag) changed on the way"
                         ) from None
    return plain[KEY_SIZE:], plain[:KEY_SIZE]


def _nonce(index: int) -> bytes:
    return b"\x00\x00\x00\x00" + index.to_bytes(8, "big")


class ResponseSealer:
    """The worker's side: each piece of the answer becomes the next record."""

    __slots__ = ("_aead", "_hash", "records")

    def __init__(self, response_key: bytes) -> None:
        self._aead = ChaCha20Poly1305(response_key)
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
        self._aead = ChaCha20Poly1305(response_key)
        self._hash = hashlib.sha256()
        self._pending = b""
        self.records = 0

    def open(self, data: bytes) -> bytes:
        """The plaintext of every whole record in ``data`` (after what was left over);
        SealBroken at the first that does not open, with nothing of it returned."""
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
            header = buf[pos:pos + RECORD_HEADER]
            try:
                out.append(self._aead.decrypt(_nonce(self.records),
                                              buf[pos + RECORD_HEADER:stop], header))
            except InvalidTag:
                raise SealBroken(f"sealed record {self.records} of the answer did not open: "
                                 "it was altered, dropped, reordered or replayed on the way"
                                 ) from None
            self._hash.update(buf[pos:stop])
            self.records += 1
            pos = stop
        self._pending = buf[pos:]
        return out[0] if len(out) == 1 else b"".join(out)

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
