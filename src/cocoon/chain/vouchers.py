"""On-chain voucher cells for the channel contracts (contracts/README.md, "Vouchers").

The layout is the one the Tolk contracts check, copied from the reference encoder
``contracts/python/voucher_reference.py`` (pytoniq-core 0.2.1)::

    VoucherPayload (one cell, no refs)
      op:uint32 | channel:MsgAddressInt (std) | seqno:uint64 | cumulative:Coins
    signature = Ed25519(signer key, representation hash of the VoucherPayload cell)
    body      = op:uint32 query_id:uint64 signature:bits512 ^VoucherPayload

This is distinct from the off-chain byte payload of :mod:`cocoon.ledger.vouchers`: the
on-chain signature covers the cell hash, so a ledger voucher is re-signed with
:func:`from_ledger` before it is submitted to a contract.
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell

from cocoon.ledger.errors import VoucherInvalid
from cocoon.ledger.vouchers import Voucher

__all__ = [
    "OP_CLIENT_CHARGE",
    "OP_WORKER_PAYOUT",
    "VOUCHER_OPS",
    "ChainVoucher",
    "ChannelKind",
    "cell_boc",
    "from_ledger",
    "parse_voucher",
    "public_key",
    "read_voucher_file",
    "sign_payload",
    "sign_voucher",
    "verify_voucher",
    "voucher_message",
    "voucher_path",
    "voucher_payload",
    "write_voucher_file",
]

ChannelKind = Literal["client", "worker"]

OP_CLIENT_CHARGE = 0xBB63FF93
OP_WORKER_PAYOUT = 0xA040AD28
VOUCHER_OPS: dict[ChannelKind, int] = {"client": OP_CLIENT_CHARGE, "worker": OP_WORKER_PAYOUT}
_LEDGER_KIND: dict[str, ChannelKind] = {"client_charge": "client", "worker_payout": "worker"}


def voucher_payload(op: int, channel: Address | str, seqno: int, cumulative_nano: int) -> Cell:
    """VoucherPayload: op:uint32 channel:MsgAddressInt(std) seqno:uint64 cumulative:Coins."""
    addr = channel if isinstance(channel, Address) else Address(channel)
    cell: Cell = (
        Builder()
        .store_uint(op, 32)
        .store_address(addr)
        .store_uint(seqno, 64)
        .store_coins(cumulative_nano)
        .end_cell()
    )
    return cell


def cell_boc(cell: Cell) -> bytes:
    """The standard BOC serialisation of a cell (what the chain server accepts as a body)."""
    return bytes(cell.to_boc())  # type: ignore[no-untyped-call]


def _key(key: Ed25519PrivateKey | bytes) -> Ed25519PrivateKey:
    if isinstance(key, Ed25519PrivateKey):
        return key
    if len(key) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(key)


def sign_payload(payload: Cell, key: Ed25519PrivateKey | bytes) -> bytes:
    """Ed25519 signature over the 32-byte representation hash of the payload cell."""
    return _key(key).sign(payload.hash)


def voucher_message(op: int, query_id: int, signature: bytes, payload: Cell) -> Cell:
    """Message body to submit: op:uint32 query_id:uint64 signature:bits512 ^VoucherPayload."""
    if len(signature) != 64:
        raise ValueError("an Ed25519 signature is 64 bytes")
    cell: Cell = (
        Builder()
        .store_uint(op, 32)
        .store_uint(query_id, 64)
        .store_bytes(signature)
        .store_ref(payload)
        .end_cell()
    )
    return cell


def public_key(key: Ed25519PrivateKey | bytes) -> bytes:
    """The 32 raw bytes of the public key of an Ed25519 private key (or 32-byte seed)."""
    return (
        _key(key)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


@dataclass(frozen=True, slots=True)
class ChainVoucher:
    """A signed on-chain voucher, ready to submit to the channel contract."""

    kind: ChannelKind
    channel: str
    seqno: int
    cumulative: int
    signature: bytes = field(repr=False)
    query_id: int = 0

    @property
    def op(self) -> int:
        return VOUCHER_OPS[self.kind]

    def payload(self) -> Cell:
        return voucher_payload(self.op, self.channel, self.seqno, self.cumulative)

    def body(self) -> Cell:
        return voucher_message(self.op, self.query_id, self.signature, self.payload())

    def body_boc(self) -> bytes:
        return cell_boc(self.body())

    def body_b64(self) -> str:
        return base64.b64encode(self.body_boc()).decode()


def sign_voucher(
    key: Ed25519PrivateKey | bytes,
    kind: ChannelKind,
    channel: str,
    seqno: int,
    cumulative: int,
    *,
    query_id: int | None = None,
) -> ChainVoucher:
    """Sign ``(kind, channel, seqno, cumulative)``; ``query_id`` defaults to the seqno."""
    if not 0 <= seqno < 1 << 64:
        raise ValueError(f"seqno out of u64 range: {seqno}")
    if not 0 <= cumulative < 1 << 120:
        raise ValueError(f"cumulative out of Coins range: {cumulative}")
    payload = voucher_payload(VOUCHER_OPS[kind], channel, seqno, cumulative)
    return ChainVoucher(
        kind=kind,
        channel=channel,
        seqno=seqno,
        cumulative=cumulative,
        signature=sign_payload(payload, key),
        query_id=seqno if query_id is None else query_id,
    )


def from_ledger(voucher: Voucher, key: Ed25519PrivateKey | bytes) -> ChainVoucher:
    """The on-chain form of a :class:`cocoon.ledger.vouchers.Voucher` (``channel`` must be the
    channel contract's address), signed over the cell hash with ``key``."""
    if public_key(key) != voucher.signer_pubkey:
        raise ValueError("key does not match the voucher's signer_pubkey")
    return sign_voucher(
        key, _LEDGER_KIND[voucher.kind], voucher.channel, voucher.seqno, voucher.cumulative_nanoton
    )


_KIND_BY_OP: dict[int, ChannelKind] = {op: kind for kind, op in VOUCHER_OPS.items()}


def parse_voucher(body_boc: bytes) -> ChainVoucher:
    """Parse a voucher message body (what :meth:`ChainVoucher.body_boc` gives) the way the
    contract does; VoucherInvalid for anything malformed.  Does not check the signature."""
    try:
        cells = Cell.from_boc(body_boc)
        if len(cells) != 1:
            raise ValueError("expected one root cell")
        body = cells[0].begin_parse()  # type: ignore[no-untyped-call]
        op = body.load_uint(32)
        query_id = body.load_uint(64)
        signature = body.load_bytes(64)
        payload_cell = body.load_ref()
        if body.remaining_bits or body.remaining_refs:
            raise ValueError("trailing data in the body")
        payload = payload_cell.begin_parse()
        inner_op = payload.load_uint(32)
        channel = payload.load_address()
        seqno = payload.load_uint(64)
        cumulative = payload.load_coins()
        if payload.remaining_bits or payload.remaining_refs:
            raise ValueError("trailing data in the payload")
        if op != inner_op or op not in _KIND_BY_OP or channel is None:
            raise ValueError("unknown or mismatched voucher op")
        voucher = ChainVoucher(kind=_KIND_BY_OP[op], channel=channel.to_str(is_user_friendly=False),
                               seqno=seqno, cumulative=cumulative, signature=bytes(signature),
                               query_id=query_id)
    except VoucherInvalid:
        raise
    except Exception as exc:  # pytoniq-core raises assorted errors on malformed cells
        raise VoucherInvalid(f"malformed on-chain voucher: {type(exc).__name__}: {exc}") from None
    if voucher.payload().hash != payload_cell.hash:
        raise VoucherInvalid("malformed on-chain voucher: non-canonical payload cell")
    return voucher


def verify_voucher(voucher: ChainVoucher, pubkey: bytes) -> ChainVoucher:
    """The voucher if ``pubkey`` signed its payload cell hash (what the contract checks),
    else VoucherInvalid."""
    try:
        Ed25519PublicKey.from_public_bytes(pubkey).verify(voucher.signature,
                                                          voucher.payload().hash)
    except (InvalidSignature, ValueError) as exc:
        raise VoucherInvalid("on-chain voucher: bad signature") from exc
    return voucher


def write_voucher_file(path: str, voucher: ChainVoucher) -> None:
    """Keep ``voucher`` (its message body BOC) in ``path``, atomically (temp file + rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".voucher-")
    with os.fdopen(fd, "wb") as f:
        f.write(voucher.body_boc())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def voucher_path(voucher_file: str, channel: str, *, several: bool) -> str:
    """Where a worker keeps the newest payout voucher of ``channel``: ``voucher_file``
    itself when it is paid through one channel, else one file per channel beside it."""
    return f"{voucher_file}.{channel.replace(':', '_')}" if several else voucher_file


def read_voucher_file(path: str) -> ChainVoucher | None:
    """The voucher kept in ``path`` (None when there is none yet); VoucherInvalid if the
    file holds something else."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    return parse_voucher(data)
