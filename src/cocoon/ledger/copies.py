"""A client's or worker's own copy of its account, kept from the proxy's statements (pure).

Each statement carries the newest proxy-signed cumulative voucher. The copy pins the proxy's
voucher key at the first statement, accepts only strictly newer vouchers (a replay or a
regression is refused), and checks that the figures the proxy states match what it signed:
a client's ``charged`` is its voucher's cumulative amount, a worker's ``earned`` likewise.
With the last voucher in hand either side can close its channel on chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cocoon.errors import PaymentError
from cocoon.ledger.errors import VoucherInvalid
from cocoon.ledger.vouchers import SignedVoucher, Voucher, VoucherBook, VoucherKind

__all__ = ["AccountCopy"]


@dataclass
class AccountCopy:
    kind: VoucherKind  # client_charge for clients, worker_payout for workers
    pubkey: bytes | None = None  # the proxy's voucher key, pinned at first sight
    voucher: Voucher | None = None
    deposited: int = 0
    charged: int = 0
    reserved: int = 0
    earned: int = 0
    rejected: int = 0

    def __post_init__(self) -> None:
        self._book = VoucherBook()

    def accept(self, voucher_bytes: bytes, *, deposited: int, charged: int, reserved: int,
               earned: int) -> Voucher:
        """Check and keep a statement; raises a PaymentError (and counts it) if it is forged,
        not newer, for the wrong kind, or disagrees with its own voucher."""
        try:
            signed = SignedVoucher.from_bytes(voucher_bytes)
            v = signed.voucher
            if v == self.voucher and (deposited, charged, reserved, earned) == (
                    self.deposited, self.charged, self.reserved, self.earned):
                last = self._book.last(v.kind, v.channel)
                if last is not None and last.signature == signed.signature:
                    return v  # the same statement again (re-sent on reconnect)
            if v.kind != self.kind:
                raise VoucherInvalid(f"expected a {self.kind} voucher, got {v.kind}")
            stated = charged if self.kind == "client_charge" else earned
            if v.cumulative_nanoton != stated:
                raise VoucherInvalid(f"statement says {stated} nanoTON but the voucher "
                                     f"signs {v.cumulative_nanoton}")
            accepted = self._book.accept(signed, self.pubkey or v.signer_pubkey)
        except PaymentError:
            self.rejected += 1
            raise
        self.pubkey = accepted.signer_pubkey
        self.voucher = accepted
        self.deposited, self.charged, self.reserved, self.earned = (
            deposited, charged, reserved, earned)
        return accepted

    def snapshot(self) -> dict[str, Any]:
        v = self.voucher
        out: dict[str, Any] = {"rejected_statements": self.rejected}
        if v is None:
            out["voucher"] = None
            return out
        out["voucher"] = {"channel": v.channel, "seqno": v.seqno,
                          "cumulative_nanoton": v.cumulative_nanoton,
                          "cumulative_tokens": v.cumulative_tokens,
                          "proxy_key": v.signer_pubkey.hex()}
        if self.kind == "client_charge":
            out.update(deposited=self.deposited, charged=self.charged, reserved=self.reserved,
                       available=self.deposited - self.charged - self.reserved)
        else:
            out.update(earned=self.earned)
        return out
