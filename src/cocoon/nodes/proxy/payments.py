"""The proxy's side of the on-chain payment channels.

Off chain the ledger (:mod:`cocoon.nodes.proxy.billing`) decides what each request costs. This
module ties those accounts to contracts:

* **Clients.** A client proves it holds its channel's key by sending a ``Payment`` (a charge
  voucher signed by the channel's signer key) right after connecting; the channel must be a
  client channel that pays this proxy's wallet and names this proxy's voucher key. Its
  ledger account is ``channel:<address>``; its deposits are what the channel has received in
  all (unspent balance + already charged), re-read when a reservation would fail and on every
  tick. After each statement the client signs its new cumulative charge; the proxy keeps the
  newest signature (ledger, one transaction) and redeems it on chain every tick. A client that
  lets more than ``billing.max_unsigned`` go unsigned is refused service (HTTP 402) until it
  signs; so is a channel that is closing.
* **Workers.** A worker announces its channel (funded by this proxy's wallet, vouchers signed
  by this proxy's key); each statement to it then carries the same cumulative amount as an
  on-chain payout voucher, which the worker can redeem whenever it likes. The proxy keeps each
  worker channel's balance above what it owes there.
* **Commits.** Each ledger commit is published to the proxy's stake contract, signed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.chain.base import ChannelStatus
from cocoon.chain.connect import NodeChain
from cocoon.chain.errors import ChainError
from cocoon.chain.messages import sign_commit
from cocoon.chain.vouchers import parse_voucher, sign_voucher, verify_voucher
from cocoon.errors import CocoonError, PaymentError, PaymentRequired
from cocoon.ledger import Ledger
from cocoon.ledger.accounts import channel_account
from cocoon.ledger.errors import (
    ReservationError,
    VoucherInvalid,
    VoucherRegression,
    VoucherReplay,
)
from cocoon.ledger.store import Commit, SignedCharge
from cocoon.ledger.vouchers import SignedVoucher, public_key_bytes

__all__ = ["WORKER_FLOAT", "ProxyPayments"]

log = logging.getLogger(__name__)

Runner = Callable[..., Awaitable[Any]]

WORKER_FLOAT = 1_000_000_000
"""What the proxy keeps in each worker channel beyond what it owes there (1 TON)."""


@dataclass(slots=True)
class _Client:
    channel: str
    signer: bytes
    status: ChannelStatus = ChannelStatus.OPEN  # as last read from the chain
    charged: int = 0  # what the ledger has charged it (kept current by each settlement)
    signed: SignedCharge | None = None  # its newest signature (kept, durable at the tick)
    dirty: bool = False  # ``signed`` is newer than the ledger's copy


class ProxyPayments:
    """On-chain channels behind the ledger's accounts (see the module docstring)."""

    def __init__(self, chain: NodeChain, key: Ed25519PrivateKey, run: Runner,
                 ledger: Ledger, max_unsigned: int, stake_contract: str = "") -> None:
        self.chain = chain
        self._key = key
        self.pubkey = public_key_bytes(key)
        self._run = run  # runs a blocking ledger call on the ledger's thread
        self._ledger = ledger
        self.max_unsigned = max_unsigned
        self.stake_contract = stake_contract
        self.clients: dict[str, _Client] = {}  # ledger account -> channel
        self.workers: dict[str, str] = {}  # worker ledger account -> its channel
        self.collected = 0
        self.commits_published = 0
        self.errors = 0

    # --- clients --------------------------------------------------------------------------

    async def bind_client(self, channel: str, voucher: bytes) -> str:
        """Check a client's first ``Payment`` and return its ledger account; PaymentError /
        ChainError when the channel is not a usable channel of this proxy or the signature is
        not its key's."""
        parties = await self.chain.parties(channel)
        if parties.kind != "client":
            raise VoucherInvalid(f"{channel} is a {parties.kind} channel, not a client channel")
        if parties.payee != self.chain.wallet:
            raise VoucherInvalid(f"channel {channel} pays {parties.payee}, not this proxy "
                                 f"({self.chain.wallet})")
        if parties.payee_pubkey != self.pubkey:
            raise VoucherInvalid(f"channel {channel} names another proxy key")
        account = channel_account(channel)
        client = _Client(channel, parties.signer_pubkey)
        client.charged = (await self._run(self._ledger.balance, account)).charged
        client.signed = await self._run(self._ledger.signed, account)
        self.clients[account] = client
        await self.accept(account, voucher)
        await self.refresh(account)
        return account

    async def accept(self, account: str, voucher: bytes) -> None:
        """Keep a client's signed charge voucher (newest wins); a seqno-only voucher for the
        amount already signed just proves the key."""
        client = self.clients.get(account)
        if client is None:
            raise VoucherInvalid("payment before the channel was bound")
        v = verify_voucher(parse_voucher(voucher), client.signer)
        if v.kind != "client" or v.channel != client.channel:
            raise VoucherInvalid(f"voucher is for {v.kind} channel {v.channel}, "
                                 f"not {client.channel}")
        current = client.signed
        if current is not None and (v.seqno, v.cumulative) == (current.seqno,
                                                               current.cumulative):
            return  # the same voucher again (e.g. re-sent on reconnect)
        if current is None and v.cumulative == 0:
            return  # a key proof only: nothing to redeem
        # The ledger's rules, checked here; the ledger takes it at the next tick (one
        # transaction per tick, not per request). A signature lost with a crash is signed
        # again: the statement is re-sent when the client reconnects.
        if current is not None and v.seqno <= current.seqno:
            raise VoucherReplay(f"client voucher seqno {v.seqno} is not above {current.seqno}")
        if current is not None and v.cumulative < current.cumulative:
            raise VoucherRegression(f"client voucher lowers the signed amount "
                                    f"{current.cumulative} -> {v.cumulative}")
        if v.cumulative > client.charged:
            raise ReservationError(f"client signed {v.cumulative} nanoTON but was charged "
                                   f"{client.charged}")
        client.signed = SignedCharge(account, v.channel, v.seqno, v.cumulative, voucher)
        client.dirty = True

    def note_charged(self, account: str, charged: int) -> None:
        """A settlement charged ``account`` up to ``charged`` (cumulative)."""
        client = self.clients.get(account)
        if client is not None and charged > client.charged:
            client.charged = charged

    async def flush(self) -> None:
        """Make the newest client signatures durable (ledger)."""
        for client in self.clients.values():
            s = client.signed
            if client.dirty and s is not None:
                client.dirty = False
                try:
                    await self._run(self._ledger.record_signed, s.client, s.channel, s.seqno,
                                    s.cumulative, s.voucher)
                except PaymentError as exc:  # e.g. a newer one is already there
                    log.warning("keeping the signature of %s failed: %s", s.client, exc)

    async def refresh(self, account: str) -> int:
        """Re-read the channel: deposits become balance + charged; returns the unspent
        on-chain balance. PaymentRequired when the channel is closing or closed."""
        client = self.clients[account]
        state = await self.chain.state(client.channel)
        client.status = state.status
        if state.status != ChannelStatus.OPEN:
            raise PaymentRequired(
                f"payment channel {client.channel} is {state.status.name.lower()}: it takes no "
                "new requests; open a new channel (`cocoon client topup`) to continue")
        await self._run(self._ledger.sync_deposit, account, state.balance + state.charged)
        return state.balance

    async def check_signed(self, account: str) -> None:
        """PaymentRequired when the client owes more unsigned than ``max_unsigned``."""
        if account not in self.clients:
            raise PaymentRequired(
                "this client has no payment channel with the proxy: configure chain.contract "
                "(its channel) and chain.key_file, or top up with `cocoon client topup`")
        status = self.clients[account].status
        if status != ChannelStatus.OPEN:
            raise PaymentRequired(
                f"payment channel {self.clients[account].channel} is {status.name.lower()}: it "
                "takes no new requests; open a new channel to continue")
        client = self.clients[account]
        unsigned = client.charged - (client.signed.cumulative if client.signed else 0)
        if unsigned > self.max_unsigned:
            raise PaymentRequired(
                f"{unsigned} nanoTON of this client's charges are not signed yet (limit "
                f"{self.max_unsigned}): the client must sign its statements before more work")

    # --- workers --------------------------------------------------------------------------

    async def bind_worker(self, worker_account: str, channel: str) -> None:
        parties = await self.chain.parties(channel)
        if parties.kind != "worker" or parties.signer_pubkey != self.pubkey:
            raise VoucherInvalid(f"{channel} is not a worker channel signed by this proxy")
        if parties.funder != self.chain.wallet:
            raise VoucherInvalid(f"worker channel {channel} is funded by {parties.funder}, "
                                 f"not this proxy ({self.chain.wallet})")
        self.workers[worker_account] = channel

    def worker_voucher(self, worker_account: str, statement_voucher: bytes) -> bytes:
        """The on-chain payout voucher for the amount a worker statement signs (b"" when the
        worker has no channel)."""
        channel = self.workers.get(worker_account)
        if channel is None:
            return b""
        v = SignedVoucher.from_bytes(statement_voucher).voucher
        return sign_voucher(self._key, "worker", channel, v.seqno,
                            v.cumulative_nanoton).body_boc()

    # --- the periodic work ----------------------------------------------------------------

    async def tick(self) -> None:
        """Redeem new client signatures, keep worker channels funded. Each failure is logged
        and counted; the next tick tries again."""
        await self.flush()
        seen = set()
        for signed in await self._run(self._ledger.all_signed):
            seen.add(signed.client)
            try:
                state = await self.chain.state(signed.channel)
                if signed.cumulative > state.charged and state.status != ChannelStatus.CLOSED:
                    await self.chain.chain.submit_voucher(
                        signed.channel, parse_voucher(signed.voucher), sender=self.chain.sender)
                    self.collected += signed.cumulative - state.charged
                    log.info("redeemed client voucher %d on %s: +%d nanoTON", signed.seqno,
                             signed.channel, signed.cumulative - state.charged)
                if signed.client in self.clients:
                    self.clients[signed.client].status = state.status
                if state.status == ChannelStatus.OPEN:  # deposits may have grown
                    await self._run(self._ledger.sync_deposit, signed.client,
                                    state.balance + state.charged)
            except (CocoonError, OSError) as exc:
                self.errors += 1
                log.warning("redeeming the voucher of %s failed: %s", signed.channel, exc)
        for account in [a for a in self.clients if a not in seen]:  # bound, nothing signed
            try:
                await self.refresh(account)
            except PaymentRequired:
                pass  # closing: noted in its status
            except (CocoonError, OSError) as exc:
                self.errors += 1
                log.warning("reading the channel of %s failed: %s", account, exc)
        for worker, channel in list(self.workers.items()):
            try:
                owed = (await self._run(self._ledger.earnings, worker)).earned
                state = await self.chain.state(channel)
                if state.status == ChannelStatus.OPEN and owed - state.charged > state.balance:
                    amount = owed - state.charged - state.balance + WORKER_FLOAT
                    await self.chain.chain.deposit(channel, amount, sender=self.chain.sender)
                    log.info("topped up worker channel %s by %d nanoTON", channel, amount)
            except (CocoonError, OSError) as exc:
                self.errors += 1
                log.warning("funding worker channel %s failed: %s", channel, exc)

    async def publish(self, commit: Commit) -> None:
        """Publish a ledger commit to the stake contract (signed by the proxy key)."""
        if not self.stake_contract:
            return

        body = sign_commit(self._key, self.stake_contract, commit.seqno, commit.state_hash())
        try:
            await self.chain.chain.commit_state(self.stake_contract, body,
                                                sender=self.chain.sender)
            self.commits_published += 1
        except (ChainError, PaymentError, OSError) as exc:
            self.errors += 1
            log.warning("publishing commit %d failed: %s", commit.seqno, exc)

    def snapshot(self) -> dict[str, Any]:
        return {"wallet": self.chain.wallet, "voucher_key": self.pubkey.hex(),
                "stake_contract": self.stake_contract,
                "client_channels": {a: c.channel for a, c in self.clients.items()},
                "worker_channels": dict(self.workers), "collected": self.collected,
                "commits_published": self.commits_published, "errors": self.errors,
                "at": int(time.time())}
