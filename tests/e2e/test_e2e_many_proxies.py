"""Issue 13, items 2, 6 and 7 (on one host): `cocoon up --proxies 2 --workers 3` on the
embedded chain. Both proxies list themselves in the registry; the workers and the client
find them there (no proxy address is given to them); the client pays each proxy through its
own channel, and each worker is paid by each proxy through its own channel.

Under paced load from four apps (official openai SDK), proxy-2 is killed with SIGKILL, then
worker-2. Requests started after the proxy's death all complete (the client sends a request
whose proxy dropped before answering through the other one); a request the dead worker had
not answered yet completes on another worker; only streams already under way may fail.
Every request the apps saw complete is charged exactly once across the two ledgers (request
``k``'s unique prompt length names its settlement, estimated or not), and both ledgers, the
dead proxy's too, hold their invariants."""

from __future__ import annotations

import collections
import threading

import pytest
from e2e_support import get_stats, until
from traffic import CHUNKS, WIDE_STRIDE, Traffic, drive, settled_tokens

from cocoon.chain.embedded import find_toolchain
from cocoon.commands.up import LocalNetwork
from cocoon.errors import ToolchainMissing
from cocoon.ledger import Ledger

pytestmark = pytest.mark.e2e

try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

APPS = 4
DELAY_MS = 20  # per chunk: a request streams for ~160 ms


def test_two_proxies_three_workers_survive_a_proxy_and_a_worker_killed() -> None:
    with LocalNetwork(engine="fake", billing=True, demo_funds=10**12, chain="embedded",
                      proxies=2, workers=3, startup_timeout=90.0, commit_interval_s=0.5,
                      worker_sets=[f"engine.fake.chunks={CHUNKS}",
                                   f"engine.fake.delay_ms={DELAY_MS}"]) as net:
        net.start()
        assert net.client is not None and len(net.proxies) == 2 and net.deployment is not None
        ledgers = [net.ledger_path, net.data_dir / "proxy-2-ledger.sqlite"]
        # found in the registry, not configured
        client = get_stats(net.client.http)
        assert sorted((p["address"], p["source"]) for p in client["proxies"]) == sorted(
            (a, "registry") for a in net.proxy_addrs)
        for w in net.workers:
            assert [p["source"] for p in get_stats(w.http)["proxies"]] == ["registry"] * 2

        traffic, stop = Traffic(stride=WIDE_STRIDE), threading.Event()
        apps = [threading.Thread(target=drive, args=(net.base_url, traffic, stop, i),
                                 daemon=True, name=f"app-{i}") for i in range(APPS)]
        for t in apps:
            t.start()
        try:
            stop.wait(2.0)
            # both proxies carried traffic, each paid through its own channel
            per_proxy = [get_stats(p.http)["requests"]["completed"] for p in net.proxies]
            assert all(n > 0 for n in per_proxy), per_proxy
            with traffic.lock:
                at_proxy_kill = traffic.next_k
                in_flight_at_proxy_kill = set(traffic.in_flight)
            victim = net.more_proxies[0]
            assert victim.proc is not None
            victim.proc.kill()
            stop.wait(2.0)
            with traffic.lock:
                at_worker_kill = traffic.next_k
                in_flight_at_worker_kill = set(traffic.in_flight)
            worker = net.workers[1]
            assert worker.proc is not None
            worker.proc.kill()
            stop.wait(2.0)
            with traffic.lock:
                done_before_end = len(traffic.completed)
            stop.wait(1.0)
        finally:
            stop.set()
            for t in apps:
                t.join(timeout=20.0)
        assert not any(t.is_alive() for t in apps), "a request hung"
        assert len(traffic.completed) > done_before_end, "no traffic after the kills"
        resent = get_stats(net.client.http)["requests"]["resent"]
        survivor = net.proxy
        assert survivor is not None
        # the survivor's relays release failed requests just after answering the app
        with Ledger(ledgers[0]) as ledger:
            assert until(lambda: not ledger.open_reservations(), 5.0)
        results = [settled_tokens(path) for path in ledgers]
        problems = []
        for path in ledgers:  # the dead proxy's too, as SIGKILL left it
            with Ledger(path) as ledger:
                problems += ledger.check_invariants()
    assert problems == [], problems

    sent = traffic.next_k - 1
    settled = [t for tokens, _ in results for t in tokens]
    by_request = collections.Counter(t // WIDE_STRIDE for t in settled)
    generated = {t // WIDE_STRIDE: t % WIDE_STRIDE for t in settled}
    summary = (f"{sent} requests: {len(traffic.completed)} complete, {len(traffic.failed)} "
               f"failed; settled per proxy {[len(t) for t, _ in results]}; resent {resent}")
    print(summary)
    # charged exactly once across the proxies, each completion in full
    twice = {k: [(i + 1, [t % WIDE_STRIDE for t in tokens if t // WIDE_STRIDE == k])
                 for i, (tokens, _) in enumerate(results)]
             for k, n in by_request.items() if n > 1}
    assert twice == {}, (summary, at_proxy_kill, at_worker_kill, twice)
    assert sorted(k for k in traffic.completed if generated.get(k) != CHUNKS) == [], summary
    # after the proxy died, only a stream under way at a kill may fail; after the worker
    # died too, only one it was already answering (the app had chunks of it)
    after = {k: err for k, err in traffic.failed.items() if k >= at_proxy_kill}
    unexplained = sorted(k for k in after
                         if not (k in in_flight_at_worker_kill and traffic.received[k])
                         and k not in in_flight_at_proxy_kill)
    assert unexplained == [], (summary, {k: after[k] for k in unexplained})
    assert traffic.truncated == set() and traffic.wrong_usage == {}
    assert at_worker_kill > at_proxy_kill and len(traffic.completed) >= 2 * APPS, summary
