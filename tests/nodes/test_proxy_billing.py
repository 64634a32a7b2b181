"""The proxy's billing adapter: prices from config, reservations bound usage, restarts
release what a dead process left open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cocoon.config import BillingConfig
from cocoon.errors import PaymentRequired
from cocoon.ledger import Ledger
from cocoon.nodes.proxy.billing import Billing
from cocoon.usage import Usage
from cocoon.wire import End


def config(tmp_path: Path, **kw: object) -> BillingConfig:
    return BillingConfig(enabled=True, ledger_path=str(tmp_path / "l.sqlite"),
                         signing_key_file=str(tmp_path / "k.pem"), **kw)  # type: ignore[arg-type]


async def test_reserve_settle_and_402(tmp_path: Path) -> None:
    b = Billing(config(tmp_path))
    try:
        await b._run(b.ledger.deposit, "c", 10_000)
        amount = await b.reserve("r1", "c", "w", 100, 50)
        assert amount > 0
        cost = await b.settle("r1", End(0, 30, 40, 10, 5))
        to_client, to_worker = cost
        assert to_client is not None and to_worker is not None
        assert to_client.charged == (30 + 40) * 2  # multipliers 1.0x: prompt + completion
        assert to_worker.earned == 30 + 40
        with pytest.raises(PaymentRequired) as ei:
            await b.reserve("r2", "c", "w", 10**6, 50)
        assert ei.value.status == 402 and "top up" in ei.value.message
        # issue 11: people read TON, never nanoTON
        assert " TON available" in ei.value.message and "nanoTON" not in ei.value.message
        assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    finally:
        b.close()


async def test_restart_releases_reservations_left_open(tmp_path: Path) -> None:
    """Reservations a dead run left open wait for their workers' reports (see
    test_proxy_restart_reports); what none reports on is released, charged nothing."""
    cfg = config(tmp_path)
    with Ledger(cfg.ledger_path) as ledger:
        ledger.deposit("c", 10_000)
        ledger.reserve("dead", "c", "w", 500)
    b = Billing(cfg)
    try:
        assert b.recovered == 1 and set(b.unreported) == {"dead"}
        assert (await b._run(b.ledger.balance, "c")).available == 10_000 - 500
        assert await b.release_unreported() == 1
        assert await b._run(b.ledger.open_reservations) == []
        assert (await b._run(b.ledger.balance, "c")).available == 10_000
        assert await b._run(b.ledger.check_invariants) == []
    finally:
        b.close()


async def test_a_fine_tuning_job_reserves_and_pays_trained_tokens_at_the_training_mult(
        tmp_path: Path) -> None:
    """Issue 15: a job's reservation covers ``max_tokens`` trained tokens and its usage (the
    trained tokens, as prompt tokens) is priced at ``training_mult``, whatever the prompt and
    completion multipliers say."""
    b = Billing(config(tmp_path, training_mult=30000, prompt_mult=5000, completion_mult=90000))
    try:
        await b._run(b.ledger.deposit, "c", 10**6)
        amount = await b.reserve("job", "c", "w", 1000, 10**5, training=True)
        assert amount == 1000 * 3 * 2  # 1000 tokens x 3.0 x 2 nanoTON; the body size no matter
        to_client, to_worker = await b.settle("job", End(0, 400, 0, 0, 0), training=True)
        assert to_client is not None and to_worker is not None
        assert to_client.charged == 400 * 3 * 2 and to_worker.earned == 400 * 3
        assert (await b._run(b.ledger.balance, "c")).reserved == 0
        # the same usage as a completion: the prompt multiplier (0.5x)
        await b.reserve("chat", "c", "w", 10, 50)
        to_client, _ = await b.settle("chat", End(0, 400, 0, 0, 0))
        assert to_client is not None and to_client.charged == 400 * 3 * 2 + 200 * 2
    finally:
        b.close()


async def test_a_job_reported_after_a_restart_is_priced_as_training(tmp_path: Path) -> None:
    """A proxy killed mid-job charges the worker's report at the next start: a ticket that
    names a fine-tuning job (the proxy marks it) is priced at the training multiplier."""
    cfg = config(tmp_path, training_mult=30000)
    with Ledger(cfg.ledger_path) as ledger:
        ledger.deposit("c", 10**6)
        ledger.reserve("p:job", "c", "w", 10_000)
        ledger.reserve("p:chat", "c", "w", 10_000)
    b = Billing(cfg)
    try:
        reported = {"p:job": Usage(100, 0), "p:chat": Usage(100, 0)}
        clients, charged, released = await b.charge_reported("w", reported, None, {"p:job"})
        assert (clients, charged, released) == ({"c"}, 2, 0)
        assert (await b._run(b.ledger.balance, "c")).charged == 100 * 3 * 2 + 100 * 2
    finally:
        b.close()


async def test_likely_covered_errs_low(tmp_path: Path) -> None:
    """The proxy's guess that a client can pay (to start its worker while the reservation
    commits): nothing known before its first reservation; then what that left, less the
    reservations still under way; nothing again once the ledger refused one."""
    b = Billing(config(tmp_path))
    try:
        await b._run(b.ledger.deposit, "c", 10_000)
        amount = b.reservation_amount(100, 50)
        assert not b.likely_covered("c", 1)
        assert await b.reserve("r1", "c", "w", 100, 50) == amount
        left = 10_000 - amount
        assert b.likely_covered("c", left) and not b.likely_covered("c", left + 1)
        assert not b.likely_covered("other", 1)
        under_way = asyncio.ensure_future(b.reserve("r2", "c", "w", 100, 50))
        await asyncio.sleep(0)  # submitted, not yet durable
        assert not b.likely_covered("c", left) and b.likely_covered("c", left - amount)
        await under_way
        assert b.likely_covered("c", left - amount)
        await b.settle("r1", End(0, 1, 1, 0, 0))  # settling only adds: the guess stays low
        assert not b.likely_covered("c", left - amount + 1)
        assert b.likely_covered("c", 1)

        class OverItsUnsignedLimit:  # payments on chain that would refuse the client now
            def within_limits(self, account: str) -> bool:
                return False

        b.payments = OverItsUnsignedLimit()  # type: ignore[assignment]
        assert not b.likely_covered("c", 1)
        b.payments = None
        with pytest.raises(PaymentRequired):
            await b.reserve("r3", "c", "w", 10**6, 50)
        assert not b.likely_covered("c", 1)
    finally:
        b.close()
