"""Group commit (issue 12: the proxy's fsync per reservation and per settlement was 43% of its
CPU under `cocoon bench --mode up`): changes made in one ``Ledger.batch`` commit together,
each still all or nothing, and ``LedgerThread`` answers a call only once its batch is
durable."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.errors import InsufficientFunds, LedgerError, ReservationError
from cocoon.ledger import Bill, Ledger, Prices
from cocoon.ledger.vouchers import public_key_bytes
from cocoon.nodes.proxy.billing import LedgerThread


def _reserved(path: Path) -> dict[str, str]:
    """The reservations as another process sees them (committed data only)."""
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT request_id, state FROM reservations"))
    finally:
        conn.close()


def test_a_batch_commits_together_and_a_failing_change_is_undone_alone(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        ledger.deposit("c", 1_000)
        with ledger.batch():
            ledger.reserve("r1", "c", "w", 400)
            with pytest.raises(InsufficientFunds):
                ledger.reserve("r2", "c", "w", 700)  # 600 left: refused, undone
            ledger.reserve("r3", "c", "w", 500)
            assert _reserved(path) == {}  # nothing visible before the batch ends
        assert _reserved(path) == {"r1": "open", "r3": "open"}
        assert ledger.balance("c").reserved == 900
        assert ledger.check_invariants() == []


def test_a_batch_that_fails_as_a_whole_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        ledger.deposit("c", 1_000)
        with pytest.raises(RuntimeError, match="boom"), ledger.batch():
            ledger.reserve("r1", "c", "w", 400)
            raise RuntimeError("boom")
        assert _reserved(path) == {} and ledger.balance("c").reserved == 0
        with pytest.raises(RuntimeError, match="nest"), ledger.batch(), ledger.batch():
            pass
        ledger.reserve("r2", "c", "w", 1)  # the ledger is usable after both
        assert ledger.check_invariants() == []


def test_the_thread_groups_concurrent_calls_and_answers_only_when_durable(
        tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    lt = LedgerThread(str(path))
    try:
        lt.submit(lt.ledger.deposit, "c", 10_000).result()
        seen: dict[str, bool] = {}
        errors: list[BaseException] = []

        def reserve(i: int) -> None:
            rid = f"r{i}"
            fut = lt.submit(lt.ledger.reserve, rid, "c", "w", 100)
            try:
                fut.result()
            except BaseException as exc:
                errors.append(exc)
                return
            seen[rid] = rid in _reserved(path)  # committed by the time it is answered

        threads = [threading.Thread(target=reserve, args=(i,)) for i in range(120)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # 10,000 covers 100 reservations of 100: the other 20 fail alone, with their error
        assert len(seen) == 100 and all(seen.values())
        assert len(errors) == 20 and all(isinstance(e, InsufficientFunds) for e in errors)
        assert lt.calls == 121 and lt.batches < lt.calls  # grouped: fewer commits than calls
        assert lt.submit(lt.ledger.check_invariants).result() == []
    finally:
        lt.close()
    with pytest.raises(LedgerError, match="closed"):
        lt.submit(lambda: None)


def test_a_call_given_up_before_it_ran_is_skipped_and_the_thread_lives_on(
        tmp_path: Path) -> None:
    """A cancelled call (its awaiting task was cancelled: asyncio.wrap_future cancels the
    future) once killed the ledger thread with InvalidStateError at set_result."""
    lt = LedgerThread(str(tmp_path / "l.sqlite"))
    try:
        gate = threading.Event()
        blocker = lt.submit(gate.wait, 5)  # holds the thread while the next call queues
        doomed = lt.submit(lt.ledger.deposit, "c", 5)
        assert doomed.cancel()
        gate.set()
        assert blocker.result() is True
        assert lt.submit(lt.ledger.deposit, "c", 7).result(timeout=10).deposited == 7  # 5 never ran
    finally:
        lt.close()


async def test_event_loop_calls_are_answered_on_the_loop_once_durable(tmp_path: Path) -> None:
    """``call``: what the proxy awaits. Each answer comes when its batch is durable; a call
    whose caller stopped waiting before it ran is skipped; one that failed fails alone."""
    path = tmp_path / "l.sqlite"
    lt = LedgerThread(str(path))
    try:
        await lt.call(lt.ledger.deposit, "c", 1_000)
        gate = threading.Event()
        blocker = lt.call(gate.wait, 5)  # holds the thread while the next calls queue
        calls = [lt.call(lt.ledger.reserve, f"r{i}", "c", "w", 300) for i in range(4)]
        doomed = lt.call(lt.ledger.deposit, "c", 5)
        doomed.cancel()
        gate.set()
        assert await blocker is True
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["Reservation"] * 3 + [
            "InsufficientFunds"]  # 1,000 covers three of 300
        assert _reserved(path) == {"r0": "open", "r1": "open", "r2": "open"}
        assert (await lt.call(lt.ledger.balance, "c")).deposited == 1_000  # 5 never ran
        assert lt.batches < lt.calls
    finally:
        lt.close()
    with pytest.raises(LedgerError, match="closed"):
        lt.call(lambda: None)


def test_a_batch_signs_one_voucher_per_account_covering_all_its_settlements(
        tmp_path: Path) -> None:
    """Vouchers of a batch's settlements are signed at its end, once per account (the
    proxy signed two per request), and every settled row carries the one covering it."""
    key = Ed25519PrivateKey.generate()
    pub = public_key_bytes(key)
    prices = Prices(2, 1)
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.deposit("c", 100_000)
        ledger.reserve("r0", "c", "w", 1_000)
        assert ledger.covering_seqno("c") == 0
        first = ledger.settle("r0", Bill.for_tokens(10, prices), key)  # alone: signed now
        assert first.client_voucher is not None and first.client_voucher.voucher.seqno == 1
        assert ledger.covering_seqno("c") == 1
        with ledger.batch():
            for i in range(1, 4):
                ledger.reserve(f"r{i}", "c", "w", 1_000)
                s = ledger.settle(f"r{i}", Bill.for_tokens(10 * i, prices), key)
                assert s.client_voucher is None and s.bill.adjusted_tokens == 10 * i
                # what a receipt names: the voucher this batch will sign (and nothing signed
                # yet by asking)
                assert ledger.covering_seqno("c") == 2
            ledger.reserve("r4", "c", "w", 1_000)
            with pytest.raises(ReservationError):
                ledger.settle("r-none", Bill.for_tokens(5, prices), key)  # undone alone
            ledger.settle("r4", Bill.for_tokens(0, prices), key)  # nothing charged
        charged = ledger.balance("c").charged
        assert charged == 2 * (10 + 10 + 20 + 30)
        client_v = ledger.last_voucher("client_charge", "c")
        worker_v = ledger.last_voucher("worker_payout", "w")
        assert client_v is not None and worker_v is not None
        assert (client_v.voucher.seqno, client_v.voucher.cumulative_nanoton) == (2, charged)
        assert ledger.covering_seqno("c") == 2
        assert (worker_v.voucher.seqno, worker_v.voucher.cumulative_nanoton) == (
            2, ledger.earnings("w").earned)
        for rid in ("r1", "r2", "r3"):
            settled = ledger.settlement(rid)
            assert settled is not None
            assert (settled.client_voucher, settled.worker_voucher) == (client_v, worker_v)
        assert ledger.check_invariants(pub) == []


def test_a_batch_that_fails_after_settling_signs_nothing(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.deposit("c", 10_000)
        with pytest.raises(RuntimeError, match="boom"), ledger.batch():
            ledger.reserve("r1", "c", "w", 1_000)
            ledger.settle("r1", Bill.for_tokens(10, Prices(2, 1)), key)
            raise RuntimeError("boom")
        assert ledger.last_voucher("client_charge", "c") is None
        assert ledger.balance("c").charged == 0 and _reserved(tmp_path / "l.sqlite") == {}
        with ledger.batch():  # the next batch signs with whatever key it is given
            ledger.reserve("r2", "c", "w", 1_000)
            ledger.settle("r2", Bill.for_tokens(10, Prices(2, 1)), key)
        assert ledger.check_invariants(public_key_bytes(key)) == []
