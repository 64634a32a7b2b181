"""The proxy's billing: reserve before forwarding, settle to the worker's usage at the end.

Accounts are named by ``cocoon.ledger.accounts``. The SQLite ledger is blocking (fsync per
transaction), so every call runs on one dedicated thread, in order (:class:`LedgerThread`),
with group commit: the calls that queue up while one transaction commits go into the next
one together, each still all or nothing, and none is answered before its transaction is
durable. Under load that is one fsync for many reservations and settlements, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Final, TypeVar

from cocoon.config import BillingConfig
from cocoon.crypto import load_or_create_ed25519_key
from cocoon.errors import (
    InsufficientFunds,
    LedgerError,
    PaymentError,
    PaymentRequired,
    PricingError,
)
from cocoon.ledger import Bill, Ledger, Prices, price_usage, reservation_for
from cocoon.ledger.pricing import training_prices
from cocoon.ledger.store import Commit, Reservation, Totals
from cocoon.money import format_ton
from cocoon.usage import Usage
from cocoon.wire import End, Error, Statement

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cocoon.chain.registry import RegistryState
    from cocoon.nodes.proxy.payments import ProxyPayments  # typing only: payments use Billing

__all__ = ["Billing", "LedgerThread"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Chat templates add tokens the body's bytes do not show; a token is at least one byte
# otherwise, so body bytes + this margin bound the prompt (any excess is logged as overage).
_TEMPLATE_MARGIN = 64


_BATCH_MAX: Final = 512  # calls in one group commit at most
_STOP: Final = object()


@dataclasses.dataclass(frozen=True, slots=True)
class Settled:
    """What settling one request did: the accounts with a new voucher to send (None: none),
    the bill charged, the client's cumulative charge after it and the seqno of the voucher
    that covers it (0: nothing charged)."""

    client: str | None
    worker: str | None
    bill: Bill
    charged_total: int = 0
    voucher_seqno: int = 0


class LedgerThread:
    """One thread that owns the :class:`Ledger` (SQLite connections stay on their thread)
    and runs the calls submitted to it in order, group-committing what queued up together
    (:meth:`Ledger.batch`). ``batches``/``calls`` count what it did."""

    def __init__(self, path: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        opened: Future[Ledger] = Future()
        self._thread = threading.Thread(target=self._main, args=(path, opened),
                                        name="ledger", daemon=True)
        self.batches = 0
        self.calls = 0
        self._closed = False
        self._thread.start()
        self.ledger = opened.result()  # re-raises what opening the ledger raised

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)`` on the ledger thread; its future resolves once it is durable.
        LedgerError once the ledger is closed."""
        if self._closed:
            raise LedgerError("the ledger is closed")
        fut: Future[T] = Future()
        self._queue.put((fn, args, fut))
        return fut

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """:meth:`submit` for the event loop: an asyncio future, resolved on its loop. The
        answers of one batch reach a loop together, in one wake-up, not one each."""
        if self._closed:
            raise LedgerError("the ledger is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((fn, args, fut))
        return fut

    def close(self) -> None:
        """Run what is queued, close the ledger, end the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()

    def _main(self, path: str, opened: Future[Ledger]) -> None:
        try:
            ledger = Ledger(path)
        except BaseException as exc:
            opened.set_exception(exc)
            return
        opened.set_result(ledger)
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < _BATCH_MAX:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(item is _STOP for item in batch)
                # a call whose caller gave up before it ran is not run (as an executor does);
                # the others can no longer be cancelled
                calls = [item for item in batch if item is not _STOP and _claim(item[2])]
                if calls:
                    self._run(ledger, calls)
                if stop:
                    return
        finally:
            ledger.close()

    def _run(self, ledger: Ledger, calls: list[Any]) -> None:
        done: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            with ledger.batch():
                for fn, args, fut in calls:
                    try:
                        done.append((fut, fn(*args), None))
                    except Exception as exc:  # this call's own failure: undone alone
                        done.append((fut, None, exc))
        except Exception as failed:  # the commit failed: none of them happened
            _answer([(fut, None, failed) for _, _, fut in calls])
            return
        self.batches += 1
        self.calls += len(calls)
        _answer(done)  # durable now


def _claim(fut: Future[Any] | asyncio.Future[Any]) -> bool:
    """Whether a queued call still runs: not when its caller gave up before it ran (as an
    executor does); once it runs it can no longer be cancelled (an asyncio caller that
    stops waiting then is not answered, but the change stands)."""
    if isinstance(fut, asyncio.Future):
        return not fut.cancelled()  # read across threads: at worst it runs and is dropped
    return fut.set_running_or_notify_cancel()


_Answer = tuple[Any, Any, BaseException | None]  # (future, result, error)


def _answer(answers: list[_Answer]) -> None:
    """Resolve the futures of a batch: thread futures here, asyncio futures on their loop,
    each loop in one call."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
    for answer in answers:
        fut = answer[0]
        if isinstance(fut, asyncio.Future):
            by_loop.setdefault(fut.get_loop(), []).append(answer)
        elif answer[2] is not None:
            fut.set_exception(answer[2])
        else:
            fut.set_result(answer[1])
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(answers: list[_Answer]) -> None:
    for fut, result, error in answers:
        if fut.done():  # its caller stopped waiting
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)


class Billing:
    def __init__(self, config: BillingConfig) -> None:
        self.config = config
        self.prices = Prices(config.price_per_token, config.worker_fee_per_token,
                             config.prompt_mult, config.cached_mult, config.completion_mult,
                             config.reasoning_mult)
        self.training = training_prices(self.prices, config.training_mult)
        self._key = load_or_create_ed25519_key(config.signing_key_file)
        self._thread = LedgerThread(config.ledger_path)
        self.ledger: Ledger = self._thread.ledger
        # Reservations still open at start-up: requests that were in flight when the
        # previous process died. Their workers report what they generated when they
        # reconnect (``charge_reported``); what no report claims is released after
        # ``report_grace_s`` (``release_unreported``).
        self.unreported: dict[str, Reservation] = {
            r.request_id: r for r in self._thread.submit(self.ledger.open_reservations).result()}
        self.recovered = len(self.unreported)
        if self.unreported:
            log.warning("%d reservation(s) left open by a previous run wait up to %gs for "
                        "their workers' reports", len(self.unreported), config.report_grace_s)
        self.payments: ProxyPayments | None = None  # on-chain channels, when configured
        # what each client had left after its last reservation, and what its reservations
        # under way hold (see likely_covered)
        self._headroom: dict[str, int] = {}
        self._pending: dict[str, int] = {}

    def adopt_registry_params(self, state: RegistryState) -> None:
        """Price by the root registry's parameters (read at start-up and whenever their
        version moves), as COCOON proxies do; the config's prices stand until then, and
        stay if the registry's do not make sense (logged)."""
        p = state.params
        try:
            prices = Prices(p.price_per_token, p.worker_fee, p.prompt_mult, p.cached_mult,
                            p.completion_mult, p.reasoning_mult)
        except PricingError as exc:
            log.error("registry parameters version %d not adopted (%s); prices stay %s per "
                      "token", state.params_version, exc,
                      format_ton(self.prices.price_per_token))
            return
        if prices != self.prices:
            log.info("prices from the registry (parameters version %d): %s per token, "
                     "workers earn %s", state.params_version,
                     format_ton(prices.price_per_token),
                     format_ton(prices.worker_fee_per_token))
        self.prices = prices
        self.training = training_prices(prices, p.training_mult)

    def prices_for(self, training: bool) -> Prices:
        """A fine-tuning job's prices (``billing.training_mult`` on every trained token),
        or a completion's."""
        return self.training if training else self.prices

    @property
    def key(self) -> Ed25519PrivateKey:
        return self._key

    async def run(self, fn: Any, *args: Any) -> Any:
        """Run a blocking ledger call on the ledger's thread."""
        return await self._run(fn, *args)

    async def charge_reported(self, worker: str, reported: dict[str, Usage],
                              coefficient: int | None = None,
                              training: frozenset[str] | set[str] = frozenset()
                              ) -> tuple[set[str], int, int]:
        """Resolve the reservations a previous run left open for ``worker``, with the usage
        the worker reports for their requests (``JobReports``, keyed by request id): charge
        each reported one what was generated (capped at its reservation, like any
        settlement), release the others (the worker ran nothing for them, or generated
        nothing). Reports for anything else (settled already, another worker's) are
        ignored. The requests in ``training`` were fine-tuning jobs: priced as such.
        Returns the clients charged, and how many were charged and released."""
        mine = [r for r in self.unreported.values() if r.worker == worker]
        clients: set[str] = set()
        charged = released = 0
        for r in mine:
            del self.unreported[r.request_id]
            usage = reported.get(r.request_id)
            if usage is not None and usage.total_tokens:
                try:
                    await self.settle_accounts(r.request_id, usage, coefficient,
                                               training=r.request_id in training)
                except PaymentError as exc:
                    log.warning("charging reported %s failed: %s", r.request_id, exc)
                    continue
                clients.add(r.client)
                charged += 1
            else:
                await self.release(r.request_id)
                released += 1
        if mine:
            log.info("%s reported on %d request(s) cut off by a restart: %d charged what they "
                     "generated, %d released", worker, len(mine), charged, released)
        return clients, charged, released

    async def release_unreported(self) -> int:
        """Release what no worker reported on within the grace period: charged nothing."""
        stale = list(self.unreported)
        self.unreported.clear()
        for request_id in stale:
            await self.release(request_id)
        if stale:
            log.warning("released %d reservation(s) of a previous run no worker reported on",
                        len(stale))
        return len(stale)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await self._thread.call(fn, *args)

    def reservation_amount(self, max_tokens: int, body_bytes: int,
                           coefficient: int | None = None, *, training: bool = False) -> int:
        """What :meth:`reserve` holds for a request capped at ``max_tokens`` (the effective
        cap, see ``effective_max_tokens``) whose body is ``body_bytes``, served by a worker
        asking ``coefficient`` (None: ``billing.worker_coefficient``). A fine-tuning job
        (``training``) trains at most ``max_tokens`` tokens, all counted as prompt tokens
        at the training multiplier."""
        coefficient = coefficient or self.config.worker_coefficient
        return int(reservation_for(0, max_tokens, coefficient, self.training) if training
                   else reservation_for(max_tokens, body_bytes + _TEMPLATE_MARGIN,
                                        coefficient, self.prices))

    def likely_covered(self, client: str, amount: int) -> bool:
        """Whether ``client``'s funds cover ``amount`` more, by what the ledger said after
        its last reservation, less the reservations under way since: settlements and
        top-ups only add to what is available, so the guess errs low (it is False until a
        reservation of the client succeeded). The proxy then starts the worker while the
        reservation commits; the ledger still decides (:meth:`reserve`). With payments on
        chain, also False unless the client's channel passes
        :meth:`ProxyPayments.within_limits` (open, its unsigned charges within bounds)."""
        if self.payments is not None and not self.payments.within_limits(client):
            return False
        headroom = self._headroom.get(client)
        return headroom is not None and headroom - self._pending.get(client, 0) >= amount

    def _reserve_in_ledger(self, request_id: str, client: str, worker: str,
                           amount: int) -> int:
        """On the ledger thread: reserve, and what the client has left available."""
        self.ledger.reserve(request_id, client, worker, amount)
        return self.ledger.balance(client).available

    async def _reserve_durably(self, request_id: str, client: str, worker: str,
                               amount: int) -> int:
        """Reserve ``amount`` in the ledger (once more after a refresh of the client's
        deposit from the chain, when the first try finds too little): what the client has
        left available after it."""
        try:
            return int(await self._run(self._reserve_in_ledger, request_id, client, worker,
                                       amount))
        except InsufficientFunds:
            self._headroom.pop(client, None)
            # a top-up may have landed on chain (unless the chain is down: then the deposit
            # as last read stands)
            if self.payments is None or not await self.payments.try_refresh(client):
                raise
            return int(await self._run(self._reserve_in_ledger, request_id, client, worker,
                                       amount))

    async def reserve(self, request_id: str, client: str, worker: str, max_tokens: int,
                      body_bytes: int, coefficient: int | None = None, *,
                      training: bool = False) -> int:
        """Reserve :meth:`reservation_amount` for the request, durably; PaymentRequired if
        the client can't pay it."""
        amount = self.reservation_amount(max_tokens, body_bytes, coefficient,
                                         training=training)
        if self.payments is not None:
            await self.payments.check_signed(client)
        self._pending[client] = self._pending.get(client, 0) + amount
        try:
            self._headroom[client] = await self._reserve_durably(request_id, client, worker,
                                                                 amount)
        except InsufficientFunds as exc:
            down = self.payments is not None and self.payments.health.down
            raise PaymentRequired(
                f"client balance is too low: {format_ton(exc.available)} available, this "
                f"request reserves {format_ton(amount)} (max_tokens {max_tokens} at "
                f"{format_ton(self.prices.price_per_token)} per token); top up the client's "
                f"account or lower max_tokens"
                + ("; the chain is unreachable now, so a top-up shows once it returns"
                   if down else "")) from None
        finally:
            pending = self._pending.pop(client) - amount
            if pending:
                self._pending[client] = pending
        return int(amount)

    async def settle(self, request_id: str, end: End | Error | Usage,
                     coefficient: int | None = None, *, training: bool = False
                     ) -> tuple[Statement | None, Statement | None]:
        """:meth:`settle_accounts`, then the newest statements of the client and the worker
        it charged (None when nothing was charged, e.g. zero tokens)."""
        settled = await self.settle_accounts(request_id, end, coefficient,
                                             training=training)
        client, worker = settled.client, settled.worker
        return (await self.statement(client, "client") if client is not None else None,
                await self.statement(worker, "worker") if worker is not None else None)

    async def settle_accounts(self, request_id: str, end: End | Error | Usage,
                              coefficient: int | None = None, *,
                              training: bool = False) -> Settled:
        """Charge the usage the worker reported: its End, or the Error that ended a
        cancelled or failed stream with what was generated until then (or, when the worker
        never reported, the proxy's count of what the app received). Returns the client and
        worker accounts that have a new voucher (None when nothing was charged), for the
        caller to send their newest statements when it sends statements (the proxy: a few
        times a second, however many requests settle meanwhile), and what was charged, for
        the request's receipt."""
        usage = end if isinstance(end, Usage) else end.usage
        bill = price_usage(usage, coefficient or self.config.worker_coefficient,
                           self.prices_for(training))

        def settle() -> Settled:
            s = self.ledger.settle(request_id, bill, self._key)
            if s.overage:
                log.warning("request %s used more than reserved: %d nanoTON not charged",
                            request_id, s.overage)
            if not s.bill.adjusted_tokens:  # nothing charged: no new voucher to send
                return Settled(None, None, s.bill)
            charged = self.ledger.balance(s.client).charged
            if self.payments is not None:
                self.payments.note_charged(s.client, charged)
            return Settled(s.client, s.worker, s.bill, charged,
                           self.ledger.covering_seqno(s.client))

        return await self._run(settle)  # type: ignore[no-any-return]

    def _client_statement(self, client: str) -> Statement | None:
        v = self.ledger.last_voucher("client_charge", client)
        if v is None:
            return None
        c = self.ledger.balance(client)
        return Statement(v.to_bytes(), c.deposited, c.charged, c.reserved, 0)

    def _worker_statement(self, worker: str) -> Statement | None:
        v = self.ledger.last_voucher("worker_payout", worker)
        if v is None:
            return None
        data = v.to_bytes()
        chain_voucher = (self.payments.worker_voucher(worker, data)
                         if self.payments is not None else b"")
        return Statement(data, 0, 0, 0, self.ledger.earnings(worker).earned, chain_voucher)

    async def statement(self, account: str, kind: str) -> Statement | None:
        """The newest statement of a client or worker account (None before its first
        charge): re-sent when it (re)connects, so a statement lost with a killed proxy or a
        dropped connection still reaches it and gets signed."""
        fn = self._client_statement if kind == "client" else self._worker_statement
        return await self._run(fn, account)  # type: ignore[no-any-return]

    async def commit_forever(self) -> None:
        """Commit the totals every ``commit_interval_s`` when they changed: the state the
        proxy will publish on chain (proxy stake contract), numbered and never decreasing.
        With payments, each commit is published and the chain work done (``tick``); while the
        chain is down the loop also wakes when its backoff lets the next try through, so the
        books reach the chain soon after it returns, not a whole interval later."""
        last, _ = await self._run(self._commit_if_changed, None, False)  # state at start-up
        loop = asyncio.get_running_loop()
        next_commit = loop.time() + self.config.commit_interval_s
        while True:
            wake = next_commit
            health = self.payments.health if self.payments is not None else None
            if health is not None and health.down:
                wake = min(wake, health.retry_at)
            await asyncio.sleep(max(0.0, wake - loop.time()))
            if loop.time() >= next_commit:
                next_commit = loop.time() + self.config.commit_interval_s
                last, commit = await self._run(self._commit_if_changed, last)
                if self.payments is not None and commit is not None:
                    await self.payments.publish(commit)
            if self.payments is not None:
                await self.payments.tick()

    def _commit_if_changed(self, last: tuple[int, int, int] | None,
                           commit: bool = True) -> tuple[tuple[int, int, int], Commit | None]:
        t = self.ledger.totals()
        now = (t.charged, t.earned, t.commission)
        c = None
        if commit and now != last:
            c = self.ledger.commit(int(time.time()))
            log.info("state commit %d: charged %d, earned %d, commission %d",
                     c.seqno, c.charged, c.earned, c.commission)
        return now, c

    async def release(self, request_id: str) -> None:
        try:
            await self._run(self.ledger.release, request_id)
        except PaymentError as exc:
            log.warning("releasing %s failed: %s", request_id, exc)

    async def totals(self) -> Totals:
        """The ledger's totals (read on its thread)."""
        return await self._run(self.ledger.totals)  # type: ignore[no-any-return]

    async def snapshot(self, clients: list[str], workers: list[str]) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            totals = self.ledger.totals()
            return {
                "enabled": True,
                "price_per_token": self.prices.price_per_token,
                "worker_fee_per_token": self.prices.worker_fee_per_token,
                "totals": dataclasses.asdict(totals),
                "commits": len(self.ledger.commits()),
                "clients": {c: dataclasses.asdict(self.ledger.balance(c)) for c in clients},
                "workers": {w: dataclasses.asdict(self.ledger.earnings(w)) for w in workers},
            }

        return await self._run(read)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._thread.close()
