"""Crash test: kill -9 the proxy at 50 random points of a request stream; after each restart
the workers and the client reconnect, and the ledger stays consistent. Run again with the
accounts on the embedded chain (15 kills): then the vouchers on all sides agree too.

Request ``k`` carries a unique prompt of ``k * STRIDE`` tokens (fake engine: a quarter of the
prompt's bytes) and at most ``CHUNKS < STRIDE`` completion tokens, so each settled
reservation's token count names the request it charged and how much of it was generated.
That lets the test check, request by request, that

* nothing is charged twice (no two settlements for one request, no retry behind the app);
* every response the app saw complete was charged (the proxy settles before it passes the
  End on, so a completion the app saw was committed before any later kill);
* nothing is charged for a request the app did not see fail or complete (a charge without a
  completion is only allowed for a request in flight when its proxy died);
* a stream cut off by the proxy's death is charged at least what the app received: its
  worker reports what it generated to the next proxy run (``JobReports``), and the worker is
  paid for it;
* the money adds up: charged == price x settled tokens == earned + commission, and
  ``Ledger.check_invariants()`` finds nothing;
* nothing stays reserved: reservations left open by a killed proxy are charged or released
  once their worker reports to the next run, so after the last restart no reservation is
  open and no balance is held.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from collections.abc import Callable

import pytest
from e2e_support import get_stats, until
from traffic import CHUNKS, STRIDE, Traffic, drive, settled_tokens

from cocoon.chain.embedded import EmbeddedChain, find_toolchain
from cocoon.commands.up import LocalNetwork
from cocoon.errors import ToolchainMissing
from cocoon.ledger import Ledger

pytestmark = pytest.mark.e2e

PRICE, FEE = 2, 1  # BillingConfig defaults: nanoTON per adjusted token (1.0x multipliers)
DELAY_MS = 15  # per chunk: a request streams for ~120 ms, so kills land mid-stream
KILLS = 50
CHAIN_KILLS = 15  # the same with the accounts on the embedded chain (each restart rebinds)
THREADS = 4
SEED = 20240607


def _until(check: Callable[[], bool], seconds: float = 15.0) -> bool:
    return until(check, seconds)


def _check_vouchers_agree(net: LocalNetwork) -> None:
    """On chain: the client's own signature, the proxy's copy of it, the client's statement
    copy, the worker's payout voucher and the channel contract all come to the same amounts
    once the traffic stops (statements lost with a killed proxy are re-sent on reconnect)."""
    assert net.client is not None and net.workers and net.deployment is not None
    with Ledger(net.ledger_path) as ledger:
        charged = ledger.balance(net.client_account).charged
        earned = ledger.earnings("worker:worker-1").earned

    def client_signed_all() -> bool:
        b = get_stats(net.client.http)["billing"]  # type: ignore[union-attr]
        return b.get("charged") == charged and b["signed"]["cumulative_nanoton"] == charged

    assert _until(client_signed_all), get_stats(net.client.http)["billing"]
    own = get_stats(net.client.http)["billing"]["signed"]

    def proxy_kept_it() -> bool:
        with Ledger(net.ledger_path) as ledger:
            kept = ledger.signed(net.client_account)
        return kept is not None and (kept.seqno, kept.cumulative) == (own["seqno"], charged)

    assert _until(proxy_kept_it), "the proxy did not keep the client's newest signature"
    assert _until(lambda: (get_stats(net.workers[0].http)["billing"].get("payout_voucher") or {})
                  .get("cumulative_nanoton") == earned)

    async def on_chain_charged() -> int:
        chain = await EmbeddedChain.connect(net.chain_url, token=net.chain_token)
        try:
            return (await chain.channel_state(net.deployment.client_channel)).charged
        finally:
            await chain.aclose()

    assert _until(lambda: asyncio.run(on_chain_charged()) == charged), "not redeemed on chain"


@pytest.mark.parametrize(("chain", "kills"), [("none", KILLS), ("embedded", CHAIN_KILLS)])
def test_kill_proxy_at_random_points_keeps_the_ledger_consistent(chain: str,
                                                                 kills: int) -> None:
    if chain == "embedded":
        try:
            find_toolchain()
        except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
            pytest.skip(str(exc))
    rng = random.Random(SEED)
    started = time.monotonic()
    with LocalNetwork(engine="fake", billing=True, demo_funds=10**12,
                      worker_sets=[f"engine.fake.chunks={CHUNKS}",
                                   f"engine.fake.delay_ms={DELAY_MS}"],
                      startup_timeout=60.0, chain=chain, commit_interval_s=0.5,
                      proxy_sets=["billing.redeem_threshold=0"]) as net:  # redeem every tick
        net.start()
        traffic = Traffic()
        stop = threading.Event()
        threads = [threading.Thread(target=drive, args=(net.base_url, traffic, stop, SEED + i),
                                    daemon=True, name=f"app-{i}") for i in range(THREADS)]
        for t in threads:
            t.start()
        hit_mid_request = 0
        try:
            for _ in range(kills):
                # A random point of the stream: up to ~3 request lengths after the restart.
                stop.wait(rng.uniform(0.0, 3 * CHUNKS * DELAY_MS / 1000.0))
                with traffic.lock:
                    hit_mid_request += bool(traffic.in_flight)
                net.restart_proxy(kill=True, timeout=20.0)
            # The network still serves after the last restart.
            before = len(traffic.completed)
            deadline = time.monotonic() + 10.0
            while len(traffic.completed) < before + THREADS and time.monotonic() < deadline:
                stop.wait(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=15.0)
        assert not any(t.is_alive() for t in threads), "a request hung"
        assert net.proxy is not None and net.proxy.alive()
        assert len(traffic.completed) >= before + THREADS, "no traffic after the last restart"
        assert not traffic.in_flight
        assert traffic.truncated == set(), "streams ended without an error or usage"
        assert traffic.wrong_usage == {}
        if chain == "embedded":
            _check_vouchers_agree(net)

        with Ledger(net.ledger_path) as ledger:
            # A relay releases a failed request's reservation just after it answers the app.
            deadline = time.monotonic() + 5.0
            while ledger.open_reservations() and time.monotonic() < deadline:
                time.sleep(0.05)
            settled, states = settled_tokens(net.ledger_path)
            problems = ledger.check_invariants()
            totals = ledger.totals()
            account = ledger.balance(net.client_account)
            open_left = ledger.open_reservations()

    sent = traffic.next_k - 1
    generated = {t // STRIDE: t % STRIDE for t in settled}  # request k -> completion charged
    by_request = collections.Counter(t // STRIDE for t in settled)
    charged_twice = sorted(k for k, n in by_request.items() if n > 1)
    cut_off = {k: n for k, n in traffic.received.items() if n}  # failed after n chunks
    summary = (f"{sent} requests: {len(traffic.completed)} complete, {len(traffic.failed)} "
               f"failed ({len(cut_off)} after the app saw chunks); {len(settled)} settled; "
               f"reservations {dict(states)}; kills mid-request {hit_mid_request}/{kills}; "
               f"{time.monotonic() - started:.1f}s")
    print(summary)

    assert problems == [], problems
    # No request charged twice, none charged that the app didn't send.
    assert charged_twice == [], f"requests charged more than once: {charged_twice}"
    assert all(0 < k <= sent for k in generated), sorted(generated)
    # Every completion the app saw was committed, whole, before the proxy passed it on.
    uncharged = sorted(k for k in traffic.completed if generated.get(k) != CHUNKS)
    assert uncharged == [], f"completed but not charged in full: {uncharged}"
    # A charge without a completion: only a request that failed when its proxy died.
    phantom = sorted(set(generated) - set(traffic.completed) - set(traffic.failed))
    assert phantom == [], f"charged requests the app neither completed nor saw fail: {phantom}"
    # A stream cut off by the kill: charged at least what the app had received of it.
    free = sorted(k for k, n in cut_off.items() if generated.get(k, -1) < n)
    assert free == [], (f"cut off after the app saw chunks, charged less than it saw "
                        f"(request: chunks seen, charged): "
                        f"{[(k, cut_off[k], generated.get(k)) for k in free]}")
    assert len(cut_off) >= kills // 5, summary  # the kills did cut streams
    assert len(traffic.completed) <= len(settled) <= len(traffic.completed) + len(traffic.failed)
    # At most one reservation per request the app sent (the client retries nothing itself).
    assert sum(states.values()) <= sent
    # The money adds up to the settled tokens.
    tokens = sum(settled)
    assert totals.settled_requests == len(settled)
    assert account.deposited == 10**12
    assert account.charged == totals.charged == PRICE * tokens
    assert account.tokens == tokens
    assert totals.earned == FEE * tokens
    assert totals.commission == (PRICE - FEE) * tokens
    assert totals.charged == totals.earned + totals.commission
    # Nothing reserved forever: each restart released what its killed predecessor held.
    assert open_left == [] and totals.open_reservations == 0, open_left
    assert account.reserved == 0 and totals.reserved == 0
    # The kills did land mid-stream, and the test exercised real traffic.
    assert hit_mid_request >= kills // 2, summary
    assert len(traffic.completed) >= kills, summary
