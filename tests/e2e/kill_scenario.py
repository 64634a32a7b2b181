"""The fault scenario of issue 13, item 7, shared by the one-host test and the test of
separate hosts (imported by name): paced load from apps (official openai SDK) through the
network's clients; SIGKILL to proxy-2, then to worker-2; then the checks.

After the proxy's death, requests started then all complete (a client sends a request
whose proxy dropped before any worker took it through another proxy); after the worker's,
a request it had not answered yet completes on another worker; only a stream already under
way at a kill may fail. Every request the apps saw complete is charged exactly once across
the ledgers (request ``k``'s unique prompt length names its settlement, estimated or not),
and every ledger, the dead proxy's too, holds its invariants."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_support import get_stats, until
from traffic import CHUNKS, WIDE_STRIDE, Traffic, drive, settled_tokens

from cocoon.commands.up import LocalNetwork, Role
from cocoon.ledger import Ledger

PAUSE_S = 2.0  # load before the first kill, between the kills, and after


@dataclass
class Outcome:
    traffic: Traffic
    settled: list[list[int]] = field(default_factory=list)  # per ledger
    problems: list[Any] = field(default_factory=list)
    resent: int = 0
    at_proxy_kill: int = 0
    in_flight_at_proxy_kill: set[int] = field(default_factory=set)
    at_worker_kill: int = 0
    in_flight_at_worker_kill: set[int] = field(default_factory=set)
    done_before_end: int = 0
    per_proxy_before: list[int] = field(default_factory=list)


def _kill(role: Role, traffic: Traffic) -> tuple[int, set[int]]:
    """SIGKILL ``role``: the first request number after it, and the requests under way at
    it (those in flight, and those that started while the kill landed)."""
    with traffic.lock:
        at, under_way = traffic.next_k, set(traffic.in_flight)
    assert role.proc is not None
    role.proc.kill()
    with traffic.lock:
        under_way |= set(range(at, traffic.next_k))
    return at, under_way


def kill_a_proxy_then_a_worker(net: LocalNetwork, clients: list[str], ledgers: list[Path],
                               apps_per_client: int = 2) -> Outcome:
    """Run the scenario through the clients at HTTP bases ``clients``; read ``ledgers``
    (while the network's data directory still exists)."""
    traffic = Traffic(stride=WIDE_STRIDE)
    out, stop = Outcome(traffic), threading.Event()
    apps = [threading.Thread(target=drive, args=(url + "/v1", traffic, stop, i * 31 + j),
                             daemon=True, name=f"app-{i}-{j}")
            for i, url in enumerate(clients) for j in range(apps_per_client)]
    for t in apps:
        t.start()
    try:
        stop.wait(PAUSE_S)
        out.per_proxy_before = [get_stats(p.http)["requests"]["completed"]
                                for p in net.proxies]
        out.at_proxy_kill, out.in_flight_at_proxy_kill = _kill(net.more_proxies[0], traffic)
        stop.wait(PAUSE_S)
        out.at_worker_kill, out.in_flight_at_worker_kill = _kill(net.workers[1], traffic)
        stop.wait(PAUSE_S)
        with traffic.lock:
            out.done_before_end = len(traffic.completed)
        stop.wait(PAUSE_S / 2)
    finally:
        stop.set()
        for t in apps:
            t.join(timeout=20.0)
    assert not any(t.is_alive() for t in apps), "a request hung"
    out.resent = sum(get_stats(url)["requests"]["resent"] for url in clients)
    # the survivors' relays release failed requests just after answering the app
    with Ledger(ledgers[0]) as ledger:
        assert until(lambda: not ledger.open_reservations(), 5.0)
    for path in ledgers:  # the dead proxy's too, as SIGKILL left it
        out.settled.append(settled_tokens(path)[0])
        with Ledger(path) as ledger:
            out.problems += ledger.check_invariants()
    return out


def check(out: Outcome, min_completed: int) -> str:
    """The scenario's checks; the summary line."""
    traffic = out.traffic
    stride = WIDE_STRIDE
    sent = traffic.next_k - 1
    settled = [t for tokens in out.settled for t in tokens]
    by_request = collections.Counter(t // stride for t in settled)
    generated = {t // stride: t % stride for t in settled}
    summary = (f"{sent} requests: {len(traffic.completed)} complete, {len(traffic.failed)} "
               f"failed; settled per proxy {[len(t) for t in out.settled]}; resent "
               f"{out.resent}")
    print(summary)
    assert out.problems == [], out.problems
    assert all(n > 0 for n in out.per_proxy_before), out.per_proxy_before  # both carried
    assert len(traffic.completed) > out.done_before_end, "no traffic after the kills"
    # charged exactly once across the proxies, each completion in full
    twice = {k: [[t % stride for t in tokens if t // stride == k] for tokens in out.settled]
             for k, n in by_request.items() if n > 1}
    assert twice == {}, (summary, twice)
    assert sorted(k for k in traffic.completed if generated.get(k) != CHUNKS) == [], summary
    # after the proxy died, only a request under way at a kill may fail: one the dead proxy
    # was relaying, or one the dead worker had begun to answer (its first event, the role,
    # had reached the app, so it is not sent elsewhere)
    after = {k: err for k, err in traffic.failed.items() if k >= out.at_proxy_kill}
    unexplained = sorted(k for k in after if k not in out.in_flight_at_proxy_kill
                         and not (k in out.in_flight_at_worker_kill and "worker" in after[k]))
    assert unexplained == [], (summary, {k: after[k] for k in unexplained})
    assert traffic.truncated == set() and traffic.wrong_usage == {}
    assert out.at_worker_kill > out.at_proxy_kill, summary
    assert len(traffic.completed) >= min_completed, summary
    return summary
