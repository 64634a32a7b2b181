"""Vouchers (pure): Ed25519-signed, monotonically numbered cumulative payment statements.

Two kinds: the client signs what it has been charged so far (``client_charge``, to the proxy);
the proxy signs what it owes a worker so far (``worker_payout``).  Each is cumulative, so the
holder of the last one can close the channel on chain without any earlier one.

Canonical payload (:func:`voucher_payload`), all integers unsigned big-endian, fixed width
except the trailing channel::

    offset  size  field
    0       16    domain tag  b"cocoon-voucher\\x00\\x01"  (name, NUL, format version 1)
    16      4     op          COCOON op code: client charge 0xbb63ff93, worker payout 0xa040ad28
    20      8     seqno       u64, strictly increasing per channel
    28      16    cumulative_nanoton  u128 (TON Coins fit in 120 bits)
    44      8     cumulative_tokens   u64 (adjusted tokens, what the contracts count)
    52      32    signer_pubkey       raw Ed25519 public key
    84      2     channel length      u16
    86      n     channel             UTF-8 (contract address or account id), n <= 1024

The signature is Ed25519 over these bytes.  On chain the contracts verify a signature over a
*cell hash* (``op, query_id, tokens, expected_contract``); when the chain backend lands, only
:func:`voucher_payload` changes (to that cell's hash), callers do not.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon.ledger.errors import VoucherInvalid, VoucherRegression, VoucherReplay

__all__ = [
    "DOMAIN",
    "SignedVoucher",
    "Voucher",
    "VoucherBook",
    "VoucherKind",
    "VoucherOrder",
    "compare",
    "public_key_bytes",
    "sign",
    "verify",
    "voucher_payload",
]

VoucherKind = Literal["client_charge", "worker_payout"]

DOMAIN = b"cocoon-voucher\x00\x01"
OPS: dict[str, int] = {"client_charge": 0xBB63FF93, "worker_payout": 0xA040AD28}
_KIND_BY_OP = {op: kind for kind, op in OPS.items()}
_HEAD = struct.Struct(">16sIQ16sQ32sH")
MAX_CHANNEL_BYTES = 1024
_U64 = 1 << 64
_U128 = 1 << 128


_PUBLIC: dict[int, tuple[Ed25519PublicKey | Ed25519PrivateKey, bytes]] = {}


def public_key_bytes(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (of a private key's public half).
    Remembered per key object: a proxy asks for its own at every voucher it signs."""
    hit = _PUBLIC.get(id(key))
    if hit is not None and hit[0] is key:
        return hit[1]
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if len(_PUBLIC) >= 64:
        _PUBLIC.clear()
    _PUBLIC[id(key)] = (key, raw)  # the key is kept, so its id is not reused meanwhile
    return raw


@dataclass(frozen=True, slots=True)
class Voucher:
    """An unsigned statement: on ``channel``, as of ``seqno``, this much is owed in total."""

    kind: VoucherKind
    channel: str
    seqno: int
    cumulative_nanoton: int
    cumulative_tokens: int
    signer_pubkey: bytes

    def __post_init__(self) -> None:
        if self.kind not in OPS:
            raise ValueError(f"unknown voucher kind {self.kind!r}")
        if not 0 <= self.seqno < _U64:
            raise ValueError(f"seqno out of u64 range: {self.seqno}")
        if not 0 <= self.cumulative_nanoton < _U128:
            raise ValueError(f"cumulative_nanoton out of u128 range: {self.cumulative_nanoton}")
        if not 0 <= self.cumulative_tokens < _U64:
            raise ValueError(f"cumulative_tokens out of u64 range: {self.cumulative_tokens}")
        if len(self.signer_pubkey) != 32:
            raise ValueError("signer_pubkey must be 32 raw Ed25519 bytes")
        if len(self.channel.encode()) > MAX_CHANNEL_BYTES:
            raise ValueError("channel too long")


@dataclass(frozen=True, slots=True)
class SignedVoucher:
    """A voucher and the Ed25519 signature over :func:`voucher_payload` of it."""

    voucher: Voucher
    signature: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        """Payload followed by the 64-byte signature (what is stored and sent)."""
        return voucher_payload(self.voucher) + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedVoucher:
        """Parse :meth:`to_bytes` output; raises :class:`VoucherInvalid` on malformed bytes.

        Parsing does not verify the signature: call :func:`verify`."""
        try:
            domain, op, seqno, nano, tokens, pub, n = _HEAD.unpack_from(data)
            channel_end = _HEAD.size + n
            if domain != DOMAIN or len(data) != channel_end + 64:
                raise ValueError("bad domain or length")
            voucher = Voucher(
                kind=_KIND_BY_OP[op],  # type: ignore[arg-type]
                channel=data[_HEAD.size : channel_end].decode(),
                seqno=seqno,
                cumulative_nanoton=int.from_bytes(nano, "big"),
                cumulative_tokens=tokens,
                signer_pubkey=pub,
            )
        except (struct.error, KeyError, ValueError) as exc:
            raise VoucherInvalid(f"malformed voucher bytes: {exc}") from exc
        return cls(voucher, data[channel_end:])


def voucher_payload(voucher: Voucher) -> bytes:
    """The canonical bytes a voucher's signature covers (layout in the module docstring)."""
    channel = voucher.channel.encode()
    return (
        _HEAD.pack(
            DOMAIN,
            OPS[voucher.kind],
            voucher.seqno,
            voucher.cumulative_nanoton.to_bytes(16, "big"),
            voucher.cumulative_tokens,
            voucher.signer_pubkey,
            len(channel),
        )
        + channel
    )


def sign(voucher: Voucher, key: Ed25519PrivateKey) -> SignedVoucher:
    """Sign ``voucher``; its ``signer_pubkey`` must be ``key``'s public key."""
    if public_key_bytes(key) != voucher.signer_pubkey:
        raise ValueError("signer_pubkey does not match the signing key")
    return SignedVoucher(voucher, key.sign(voucher_payload(voucher)))


def verify(signed: SignedVoucher, expected_pubkey: bytes) -> Voucher:
    """Return the voucher if it is signed by ``expected_pubkey``, else raise
    :class:`VoucherInvalid` (one error for forged, wrong key or tampered field)."""
    voucher = signed.voucher
    if voucher.signer_pubkey != expected_pubkey:
        raise VoucherInvalid("voucher: signer is not the expected key")
    try:
        Ed25519PublicKey.from_public_bytes(expected_pubkey).verify(
            signed.signature, voucher_payload(voucher)
        )
    except (InvalidSignature, ValueError) as exc:
        raise VoucherInvalid("voucher: bad signature") from exc
    return voucher


class VoucherOrder(enum.Enum):
    """How two vouchers of one channel relate (:func:`compare`)."""

    EQUAL = "equal"
    LOCAL_NEWER = "local_newer"
    REMOTE_NEWER = "remote_newer"
    CONFLICT = "conflict"
    """Same seqno with different contents, a newer seqno whose amounts went down, or
    different channels/kinds/signers: someone rolled back or forged."""


def _check_newer(old: Voucher, new: Voucher) -> None:
    if new.seqno <= old.seqno:
        raise VoucherReplay(
            f"voucher seqno {new.seqno} on {new.kind}:{new.channel} is not newer than {old.seqno}"
        )
    if (
        new.cumulative_nanoton < old.cumulative_nanoton
        or new.cumulative_tokens < old.cumulative_tokens
    ):
        raise VoucherRegression(
            f"voucher seqno {new.seqno} on {new.kind}:{new.channel} lowers a cumulative amount"
        )


def compare(local: Voucher | None, remote: Voucher | None) -> VoucherOrder:
    """Cross-check a side's own copy (``local``) against the peer's (``remote``).

    A client or worker keeps the last voucher it saw; the proxy's may legitimately be newer
    (REMOTE_NEWER: a settle committed before the copy was updated) but never older or
    different at the same seqno."""
    if local is None and remote is None:
        return VoucherOrder.EQUAL
    if local is None:
        return VoucherOrder.REMOTE_NEWER
    if remote is None:
        return VoucherOrder.LOCAL_NEWER
    if (local.kind, local.channel, local.signer_pubkey) != (
        remote.kind,
        remote.channel,
        remote.signer_pubkey,
    ):
        return VoucherOrder.CONFLICT
    if local == remote:
        return VoucherOrder.EQUAL
    older, newer, order = (
        (local, remote, VoucherOrder.REMOTE_NEWER)
        if remote.seqno > local.seqno
        else (remote, local, VoucherOrder.LOCAL_NEWER)
    )
    try:
        _check_newer(older, newer)
    except VoucherReplay:
        return VoucherOrder.CONFLICT
    return order


class VoucherBook:
    """The last accepted voucher per ``(kind, channel)`` (pure in-memory state).

    :meth:`accept` verifies the signature under the key expected for the channel and takes
    the voucher only if strictly newer: a higher seqno and no cumulative amount lower."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], SignedVoucher] = {}

    def last(self, kind: VoucherKind, channel: str) -> SignedVoucher | None:
        """The last accepted voucher of the channel, if any."""
        return self._last.get((kind, channel))

    def accept(self, signed: SignedVoucher, expected_pubkey: bytes) -> Voucher:
        """Verify and record ``signed``; raises VoucherInvalid, VoucherReplay or
        VoucherRegression (a VoucherReplay) and leaves the book unchanged on error."""
        voucher = verify(signed, expected_pubkey)
        key = (voucher.kind, voucher.channel)
        previous = self._last.get(key)
        if previous is not None:
            _check_newer(previous.voucher, voucher)
        self._last[key] = signed
        return voucher

    def __len__(self) -> int:
        return len(self._last)
