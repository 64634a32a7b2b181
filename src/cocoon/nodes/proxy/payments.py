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
  signs; so is a channel that is closing. The proxy watches the chain (:meth:`watch_forever`,
  :meth:`Chain.wait_for_change`): every transaction re-reads the bound channels, so a close
  request is seen, and its signature redeemed, as soon as it lands; while the chain cannot be
  watched, a channel read more than ``billing.channel_recheck_s`` ago is re-read before its
  request instead.
* **Workers.** A worker announces its channel (funded by this proxy's wallet, vouchers signed
  by this proxy's key); each statement to it then carries the same cumulative amount as an
  on-chain payout voucher, which the worker can redeem whenever it likes. The proxy keeps each
  worker channel's balance above what it owes there.
* **Commits.** Each ledger commit is published to the proxy's stake contract, signed (the
  newest one not yet published: a commit covers every earlier one).
* **Outages.** The chain may go away (the chain service killed, a liteserver unreachable).
  The proxy keeps serving from what the ledger knows (deposits as last read, signatures kept),
  :class:`ChainHealth` records the outage (``/stats`` ``billing.chain.state``) and spaces the
  retries with a bounded, jittered backoff; the first tick that reaches the chain again
  publishes the newest commit and redeems every signature that accrued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core.boc.address import Address

from cocoon.chain.base import ChannelStatus
from cocoon.chain.connect import NodeChain
from cocoon.chain.errors import ChainError, ChainUnauthorized, ChainUnavailable
from cocoon.chain.messages import channel_address, sign_commit
from cocoon.chain.vouchers import parse_voucher, sign_voucher, verify_voucher
from cocoon.errors import ChainTimeout, CocoonError, PaymentError, PaymentRequired
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
from cocoon.money import format_ton

__all__ = ["OUTAGE", "WORKER_FLOAT", "ChainHealth", "ProxyPayments"]

log = logging.getLogger(__name__)

Runner = Callable[..., Awaitable[Any]]

WORKER_FLOAT = 1_000_000_000
"""What the proxy keeps in each worker channel beyond what it owes there (1 TON)."""

OUTAGE: tuple[type[BaseException], ...] = (ChainUnavailable, ChainTimeout, ChainUnauthorized,
                                           OSError, TimeoutError)
"""Failures that say the chain cannot be reached (not that it refused something): retried
with backoff, never counted against a client or a worker."""


@dataclass(slots=True)
class ChainHealth:
    """Whether the chain answers, and when to try it again while it does not.

    After the n-th failure in a row the next try waits ``min(cap_s, base_s * 2**(n-1))``
    scaled by a random factor in [0.5, 1] (proxies that lost one chain service do not all
    come back at the same instant). Clocks and randomness are passed in (tests)."""

    base_s: float = 0.5
    cap_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    down: bool = False
    since: float | None = None  # wall time the outage began
    last_error: str = ""
    retries: int = 0  # failed tries in the current outage
    outages: int = 0  # outages since start-up
    retry_at: float = 0.0  # monotonic; the next try while down

    def failed(self, exc: BaseException) -> float:
        """Note a failed call; returns the seconds until the next try."""
        if not self.down:
            self.down, self.since, self.retries = True, self.wall(), 0
            self.outages += 1
        self.retries += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        delay: float = min(self.cap_s, self.base_s * 2.0 ** min(self.retries - 1, 30))
        delay *= self.rng.uniform(0.5, 1.0)
        self.retry_at = self.clock() + delay
        return delay

    def recovered(self) -> bool:
        """Note a call that went through; True when that ends an outage."""
        if not self.down:
            return False
        self.down = False
        return True

    def due(self) -> bool:
        """Whether the chain should be tried now (it is up, or the backoff has elapsed)."""
        return not self.down or self.clock() >= self.retry_at

    def wait_s(self) -> float:
        """Seconds until the chain is due again (0 when it is up)."""
        return max(0.0, self.retry_at - self.clock()) if self.down else 0.0

    def snapshot(self) -> dict[str, Any]:
        return {"state": "down" if self.down else "up",
                "since": int(self.since) if self.down and self.since is not None else None,
                "last_error": self.last_error or None, "retries": self.retries,
                "outages": self.outages}


@dataclass(slots=True)
class _Client:
    channel: str
    signer: bytes
    status: ChannelStatus = ChannelStatus.OPEN  # as last read from the chain
    deposit: int = 0  # what the channel has received in all, as last read from the chain
    charged: int = 0  # what the ledger has charged it (kept current by each settlement)
    signed: SignedCharge | None = None  # its newest signature (kept, durable at the tick)
    dirty: bool = False  # ``signed`` is newer than the ledger's copy
    read_at: float = 0.0  # time.monotonic() of the last read of its channel


class ProxyPayments:
    """On-chain channels behind the ledger's accounts (see the module docstring)."""

    def __init__(self, chain: NodeChain, key: Ed25519PrivateKey, run: Runner,
                 ledger: Ledger, max_unsigned: int, stake_contract: str = "", *,
                 max_unsigned_fraction: float = 0.1,
                 redeem_threshold: int = 0, recheck_s: float = 0.0,
                 health: ChainHealth | None = None) -> None:
        self.chain = chain
        self._key = key
        self.pubkey = public_key_bytes(key)
        self._run = run  # runs a blocking ledger call on the ledger's thread
        self._ledger = ledger
        self.max_unsigned = max_unsigned
        # exact: 0.1 is 1/10, not the binary float nearest to it (money is integers)
        self.max_unsigned_fraction = Fraction(str(max_unsigned_fraction))
        self.health = health if health is not None else ChainHealth()
        # A signature is redeemed once it adds at least this much (each redemption costs
        # gas), and whatever it adds once its channel is closing.
        self.redeem_threshold = redeem_threshold
        # A client's channel is re-read before its request when its state is older than this
        # (0: only at ticks), so a close request is seen within seconds, not at the tick.
        self.recheck_s = recheck_s
        self._unbound_workers: dict[str, str] = {}  # announced while the chain was down
        self._pending_commit: Commit | None = None  # the newest commit not yet published
        self.stake_contract = stake_contract
        # Shortest close delay accepted on a client channel (the registry's
        # client_close_delay, set by the node when it follows a registry).
        self.min_close_delay = 0
        self.clients: dict[str, _Client] = {}  # ledger account -> channel
        self._rechecks: dict[str, asyncio.Future[None]] = {}  # account -> its read in flight
        # The watcher is up (:meth:`watch_forever`): every transaction re-reads the bound
        # channels, so a request need not re-read a stale one (a chain call per request at
        # low rates: +30 ms of TTFT, measured); while it is not, requests do (recheck_s).
        self.watching = False
        self.workers: dict[str, str] = {}  # worker ledger account -> its channel
        self.collected = 0
        self.commits_published = 0
        self.errors = 0

    # --- clients --------------------------------------------------------------------------

    async def bind_client(self, channel: str, voucher: bytes) -> str:
        """Check a client's first ``Payment`` and return its ledger account; PaymentError /
        ChainError when the channel is not a usable channel of this proxy or the signature is
        not its key's."""
        known = self.clients.get(channel_account(channel))
        if known is not None and known.channel == channel:
            # Bound before (a reconnect): its parties cannot change, the voucher proves the
            # key, so a client reconnecting while the chain is down is served as before.
            account = channel_account(channel)
            await self.accept(account, voucher)
            await self.try_refresh(account)
            return account
        parties = await self.chain.parties(channel)
        if parties.kind != "client":
            raise VoucherInvalid(f"{channel} is a {parties.kind} channel, not a client channel")
        if parties.payee != self.chain.wallet:
            raise VoucherInvalid(f"channel {channel} pays {parties.payee}, not this proxy "
                                 f"({self.chain.wallet})")
        if parties.payee_pubkey != self.pubkey:
            raise VoucherInvalid(f"channel {channel} names another proxy key")
        # The address is the hash of the code and the initial data: only the genuine channel
        # code deployed with a fresh state (nothing credited, nothing charged) for these
        # parties lives there. So its balance counts only coins really sent to it (a top-up
        # carries its amount), and a forged initial balance cannot be credited.
        if Address(channel_address(parties)) != Address(channel):
            raise VoucherInvalid(f"{channel} is not the genuine client channel code deployed "
                                 "with a fresh state for its parties; refused")
        if parties.close_delay < self.min_close_delay:
            raise VoucherInvalid(
                f"channel {channel} closes {parties.close_delay}s after a close request; the "
                f"registry asks for at least {self.min_close_delay}s (time to redeem)")
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
        client.read_at = time.monotonic()
        if state.status == ChannelStatus.CLOSING and client.signed is not None \
                and client.signed.cumulative > state.charged:
            # The funder asked to close: redeem what it signed now, before its delay ends.
            await self.flush()
            await self._redeem(client.signed, state.charged)
        if state.status != ChannelStatus.OPEN:
            raise PaymentRequired(
                f"payment channel {client.channel} is {state.status.name.lower()}: it takes no "
                "new requests; open a new channel (`cocoon client topup`) to continue")
        deposit = state.balance + state.charged
        if deposit != client.deposit:
            client.deposit = deposit
            await self._run(self._ledger.sync_deposit, account, deposit)
        return state.balance

    async def try_refresh(self, account: str) -> bool:
        """:meth:`refresh` unless the chain is down: False (the ledger's deposit as last read
        stands) when it is, or when this read finds it down (noted in :attr:`health`).
        PaymentRequired as :meth:`refresh`."""
        if not self.health.due():
            return False
        try:
            await self.refresh(account)
        except OUTAGE as exc:
            self._outage(exc, f"reading the channel of {account}")
            return False
        self._reached()
        return True

    def unsigned_limit(self, account: str) -> int:
        """What ``account`` may owe unsigned: ``billing.max_unsigned``, and at most
        ``billing.max_unsigned_fraction`` of its channel's deposit as last read."""
        client = self.clients[account]
        return min(self.max_unsigned, int(client.deposit * self.max_unsigned_fraction))

    def _due_read(self, account: str) -> bool:
        """Whether ``account``'s channel is to be re-read before it takes a request."""
        return bool(self.recheck_s and not self.watching
                    and time.monotonic() - self.clients[account].read_at >= self.recheck_s)

    def _refusal(self, account: str) -> str:
        """Why ``account`` (a known client) may not take more work as its channel was last
        read: closed, or owing more unsigned than :meth:`unsigned_limit`; "" if it may."""
        client = self.clients[account]
        if client.status != ChannelStatus.OPEN:
            return (f"payment channel {client.channel} is {client.status.name.lower()}: it "
                    "takes no new requests; open a new channel to continue")
        unsigned = client.charged - (client.signed.cumulative if client.signed else 0)
        limit = self.unsigned_limit(account)
        if unsigned > limit:
            return (f"{format_ton(unsigned)} of this client's charges are not signed yet "
                    f"(limit {format_ton(limit)}: billing.max_unsigned "
                    f"{format_ton(self.max_unsigned)}, at most {self.max_unsigned_fraction} "
                    f"of the deposit {format_ton(client.deposit)}): the client must sign its "
                    "statements before more work")
        return ""

    def within_limits(self, account: str) -> bool:
        """Whether :meth:`check_signed` would pass ``account`` as things stand, without
        reading the chain: its channel known, not due a re-read, and not refused."""
        return (account in self.clients and not self._due_read(account)
                and not self._refusal(account))

    async def check_signed(self, account: str) -> None:
        """PaymentRequired when the client's channel is unknown or closed, or it owes more
        unsigned than :meth:`unsigned_limit` (its channel re-read first when due)."""
        if account not in self.clients:
            raise PaymentRequired(
                "this client has no payment channel with the proxy: configure chain.contract "
                "(its channel) and chain.key_file, or top up with `cocoon client topup`")
        if self._due_read(account):
            await self._recheck(account)
        refusal = self._refusal(account)
        if refusal:
            raise PaymentRequired(refusal)

    async def watch_forever(self, poll_s: float = 25.0) -> None:
        """Re-read every bound client channel whenever the chain moves (a close request, a
        top-up), so a closing channel is refused from its next request and its signature
        redeemed at once, not at the next tick. Outages back off like any call; a chain that
        cannot be watched leaves the per-request re-read (``recheck_s``) alone."""
        seen = -1
        try:
            while True:
                if not self.health.due():
                    await asyncio.sleep(self.health.wait_s())
                    continue
                try:
                    mark = await self.chain.chain.wait_for_change(seen, poll_s)
                    if mark != seen:
                        seen = mark
                        await self._reread_clients(list(self.clients))
                except OUTAGE as exc:
                    self.watching = False  # requests re-read stale channels meanwhile
                    self._outage(exc, "watching the chain")
                    continue
                except (CocoonError, OSError) as exc:
                    self.errors += 1
                    log.warning("watching the chain failed; channels are re-read before "
                                "requests and at ticks only: %s", exc)
                    return
                self.watching = True
                self._reached()
        finally:
            self.watching = False

    async def _reread_clients(self, accounts: list[str]) -> None:
        """Re-read these bound clients' channels; a failure is logged and counted, an
        outage stops it (the caller notes it)."""
        for account in accounts:
            try:
                await self.refresh(account)
            except PaymentRequired:
                pass  # closing or closed: noted in its status (and redeemed)
            except OUTAGE:
                raise
            except (CocoonError, OSError) as exc:
                self.errors += 1
                log.warning("reading the channel of %s failed: %s", account, exc)

    async def _recheck(self, account: str) -> None:
        """Re-read a client's channel before its request; the requests that find it stale
        together share one read (not one chain call each)."""
        task = self._rechecks.get(account)
        if task is None:
            task = asyncio.ensure_future(self._recheck_once(account))
            self._rechecks[account] = task
            task.add_done_callback(lambda _: self._rechecks.pop(account, None))
        await asyncio.shield(task)

    async def _recheck_once(self, account: str) -> None:
        with contextlib.suppress(PaymentRequired):  # the status it read speaks for itself
            await self.try_refresh(account)

    # --- workers --------------------------------------------------------------------------

    async def bind_worker(self, worker_account: str, channel: str) -> None:
        """Pay ``worker_account`` through ``channel`` once the chain shows it is a worker
        channel of this proxy; while the chain is down it is bound at the first tick that
        reaches it (the error says so)."""
        if self.workers.get(worker_account) == channel:
            return  # bound before (a reconnect): its parties cannot change
        try:
            parties = await self.chain.parties(channel)
        except OUTAGE:
            self._unbound_workers[worker_account] = channel
            raise
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

    def note_outage(self, exc: BaseException, what: str) -> None:
        """A call the node made met an outage: count it in :attr:`health` (and the backoff)."""
        self._outage(exc, what)

    def note_reached(self) -> None:
        self._reached()

    def _outage(self, exc: BaseException, what: str) -> None:
        delay = self.health.failed(exc)
        log.warning("%s: the chain is unreachable (try %d of this outage; next in %.1f s): %s",
                    what, self.health.retries, delay, exc)

    def _reached(self) -> None:
        if self.health.recovered():
            log.warning("the chain is reachable again (after %d failed tries since %s)",
                        self.health.retries, time.strftime(
                            "%H:%M:%S", time.localtime(self.health.since or 0)))

    async def tick(self) -> None:
        """Make the signatures durable; then, unless the chain is down and its next try is
        not due: publish the newest commit, redeem new client signatures, keep worker
        channels funded. A refusal is logged and counted (the next tick tries again); an
        outage stops the tick and is noted in :attr:`health`."""
        await self.flush()
        if not self.health.due():
            return
        try:
            if self.health.down:
                await self.chain.chain.now()  # a cheap probe first
            await self._publish_pending()
            for worker, channel in list(self._unbound_workers.items()):
                del self._unbound_workers[worker]
                try:
                    await self.bind_worker(worker, channel)
                    log.info("worker channel %s bound now that the chain answers", channel)
                except PaymentError as exc:
                    log.warning("worker channel %s refused: %s", channel, exc)
            await self._redeem_and_fund()
        except OUTAGE as exc:
            self._outage(exc, "tick")
            return
        self._reached()

    async def _redeem_and_fund(self) -> None:
        seen = set()
        for signed in await self._run(self._ledger.all_signed):
            seen.add(signed.client)
            try:
                state = await self.chain.state(signed.channel)
                gain = signed.cumulative - state.charged
                if gain > 0 and (state.status == ChannelStatus.CLOSING or (
                        state.status == ChannelStatus.OPEN and gain >= self.redeem_threshold)):
                    await self._redeem(signed, state.charged)
                if signed.client in self.clients:
                    self.clients[signed.client].status = state.status
                    if state.status == ChannelStatus.OPEN:
                        self.clients[signed.client].deposit = state.balance + state.charged
                if state.status == ChannelStatus.OPEN:  # deposits may have grown
                    await self._run(self._ledger.sync_deposit, signed.client,
                                    state.balance + state.charged)
            except OUTAGE:
                raise
            except (CocoonError, OSError) as exc:
                self.errors += 1
                log.warning("redeeming the voucher of %s failed: %s", signed.channel, exc)
        await self._reread_clients([a for a in self.clients if a not in seen])  # unsigned
        for worker, channel in list(self.workers.items()):
            try:
                owed = (await self._run(self._ledger.earnings, worker)).earned
                state = await self.chain.state(channel)
                if state.status == ChannelStatus.OPEN and owed - state.charged > state.balance:
                    amount = owed - state.charged - state.balance + WORKER_FLOAT
                    await self.chain.chain.deposit(channel, amount, sender=self.chain.sender)
                    log.info("topped up worker channel %s by %s", channel, format_ton(amount))
            except OUTAGE:
                raise
            except (CocoonError, OSError) as exc:
                self.errors += 1
                log.warning("funding worker channel %s failed: %s", channel, exc)

    async def _redeem(self, signed: SignedCharge, charged: int) -> None:
        """Submit a client's signed voucher to its channel (``charged``: what the channel
        has paid out so far)."""
        await self.chain.chain.submit_voucher(signed.channel, parse_voucher(signed.voucher),
                                              sender=self.chain.sender)
        self.collected += signed.cumulative - charged
        log.info("redeemed client voucher %d on %s: +%s", signed.seqno, signed.channel,
                 format_ton(signed.cumulative - charged))

    async def publish(self, commit: Commit) -> None:
        """Publish a ledger commit to the stake contract (signed by the proxy key); while the
        chain is down it waits, and only the newest commit is published when it returns (it
        covers the earlier ones)."""
        if not self.stake_contract:
            return
        if self._pending_commit is None or commit.seqno >= self._pending_commit.seqno:
            self._pending_commit = commit
        if not self.health.due():
            return
        try:
            await self._publish_pending()
        except OUTAGE as exc:
            self._outage(exc, f"publishing commit {commit.seqno}")
            return
        self._reached()

    async def _publish_pending(self) -> None:
        commit = self._pending_commit
        if commit is None or not self.stake_contract:
            return
        body = sign_commit(self._key, self.stake_contract, commit.seqno, commit.state_hash())
        try:
            await self.chain.chain.commit_state(self.stake_contract, body,
                                                sender=self.chain.sender)
            self.commits_published += 1
        except OUTAGE:
            raise  # kept pending: published when the chain returns
        except (ChainError, PaymentError) as exc:
            self.errors += 1
            log.warning("publishing commit %d failed: %s", commit.seqno, exc)
        if self._pending_commit is commit:
            self._pending_commit = None

    def snapshot(self) -> dict[str, Any]:
        return {"wallet": self.chain.wallet, "voucher_key": self.pubkey.hex(),
                "stake_contract": self.stake_contract,
                "client_channels": {a: c.channel for a, c in self.clients.items()},
                "worker_channels": dict(self.workers), "collected": self.collected,
                "commits_published": self.commits_published,
                "commit_pending": (self._pending_commit.seqno
                                   if self._pending_commit is not None else None),
                "errors": self.errors, **self.health.snapshot(), "at": int(time.time())}
