"""The routing score (issue 13, item 4): price, load and measured speed and failures,
in the documented formula; the price cap; large fleets sampled."""

from __future__ import annotations

import random

import pytest

from cocoon.benchmark.routing import format_routing, run_routing
from cocoon.errors import NoWorkerAvailable
from cocoon.routing.select import (
    ALPHA,
    EXACT,
    Measured,
    ModelIndex,
    WorkerView,
    choose_worker,
    pick,
    score,
)


def w(worker_id: str, *, active: int = 0, capacity: int = 4, order: int = 0,
      coefficient: int = 1000, ttft: float | None = None, tps: float | None = None,
      errors: float = 0.0) -> WorkerView:
    return WorkerView(worker_id, ("m",), active, capacity, order, coefficient,
                      Measured(ttft, tps, errors))


def test_the_documented_formula() -> None:
    v = w("a", active=1, capacity=4, coefficient=1500, ttft=0.2, tps=40.0, errors=0.25)
    expected = (0.2 + 100 / 40.0) * (1 + 1 / 4) * 1.5 * (1 + 4 * 0.25)
    assert score(v, Measured(), 100) == pytest.approx(expected)
    # unmeasured figures are the model's typical ones, else the defaults
    blank = w("b")
    assert score(blank, Measured(0.3, 60.0), 120) == pytest.approx(0.3 + 2.0)
    assert score(blank, Measured(), 0) == pytest.approx(0.5)


def test_price_buys_nothing_without_speed() -> None:
    cheap, dear = w("cheap", coefficient=1000, order=2), w("dear", coefficient=2000, order=1)
    assert choose_worker("m", [dear, cheap], max_tokens=100).worker_id == "cheap"
    # twice the price ties at twice the speed; faster still wins
    fast = w("dear", coefficient=2000, ttft=0.1, tps=100.0, order=1)
    slow = w("cheap", coefficient=1000, ttft=0.2, tps=40.0, order=2)
    assert choose_worker("m", [slow, fast], max_tokens=100).worker_id == "dear"


def test_failures_weigh() -> None:
    """Failing half its requests triples a worker's score: a steady one 3.1x slower loses
    to it, one 2.9x slower wins."""
    flaky = w("flaky", errors=0.5, order=1)  # unmeasured: 0.5 s + 50 / 50 tok/s, x 3
    steady = w("steady", ttft=0.5 * 3.1, tps=50 / 3.1, order=2)
    assert choose_worker("m", [flaky, steady], max_tokens=50).worker_id == "flaky"
    steadier = w("steady", ttft=0.5 * 2.9, tps=50 / 2.9, order=2)
    assert choose_worker("m", [flaky, steadier], max_tokens=50).worker_id == "steady"


def test_among_equals_the_least_loaded_wins() -> None:
    workers = [w("a", active=3, capacity=4), w("b", active=1, capacity=4, order=1)]
    assert choose_worker("m", workers, max_tokens=100).worker_id == "b"


def test_a_worker_a_hair_faster_does_not_starve_its_twins() -> None:
    """Three workers of 4 slots measured 32.3, 32.3 and 31.8 tokens/s (the dashboard saw
    the slowest get nothing while the fastest was full): six requests spread 2/2/2."""
    speeds = {"w1": 31.8, "w2": 32.3, "w3": 32.3}
    active = dict.fromkeys(speeds, 0)
    for _ in range(6):
        views = [w(k, active=active[k], ttft=0.002, tps=tps, order=i)
                 for i, (k, tps) in enumerate(speeds.items())]
        active[choose_worker("m", views, max_tokens=40).worker_id] += 1
    assert active == {"w1": 2, "w2": 2, "w3": 2}
    # a worker really twice as fast takes them all: even at 6 of its 8 slots it finishes
    # sooner than the slow one idle ((0.1 + 100/40) x 1.75 = 4.55 s < 0.1 + 100/20 = 5.1 s)
    fast = {"slow": 20.0, "fast": 40.0}
    load = dict.fromkeys(fast, 0)
    for _ in range(6):
        views = [w(k, active=load[k], ttft=0.1, tps=tps, order=i, capacity=8)
                 for i, (k, tps) in enumerate(fast.items())]
        load[choose_worker("m", views, max_tokens=100).worker_id] += 1
    assert load == {"slow": 0, "fast": 6}


def test_measurements_are_moving_averages() -> None:
    m = Measured()
    m.served(0.4, 21, 1.0)  # 20 tokens after the first in 1 s
    assert (m.ttft_s, m.tokens_per_s, m.error_rate) == (0.4, 21.0, 0.0)
    m.failed()
    assert m.error_rate == pytest.approx(ALPHA)
    m.served(0.2, 1, 0.0)  # one token: no decode speed to learn
    assert m.ttft_s == pytest.approx(0.8 * 0.4 + 0.2 * 0.2)
    assert m.tokens_per_s == 21.0
    assert m.error_rate == pytest.approx(ALPHA * (1 - ALPHA))


def test_the_price_cap() -> None:
    workers = [w("a", coefficient=3000), w("b", coefficient=1500, active=4, capacity=4),
               w("c", coefficient=2000)]
    assert choose_worker("m", workers, max_coefficient=2000).worker_id == "c"
    with pytest.raises(NoWorkerAvailable) as info:
        choose_worker("m", workers, max_coefficient=1000)
    assert info.value.param == "max_coefficient" and "cheapest asks 1500" in info.value.message
    with pytest.raises(NoWorkerAvailable, match="busy"):  # within the cap, but full
        choose_worker("m", workers, max_coefficient=1500)


def test_the_index_keeps_workers_by_price() -> None:
    index = ModelIndex()
    a, b, c = w("a", coefficient=2000), w("b", coefficient=1000), w("c", coefficient=2000)
    for x in (a, b, c):
        index.add(x)
    assert [x.worker_id for x in index.within()] == ["b", "a", "c"]
    assert [x.worker_id for x in index.within(1999)] == ["b"]
    assert (index.cheapest(), index.dearest(), len(index)) == (1000, 2000, 3)
    index.remove(a)
    assert [x.worker_id for x in index.within(2000)] == ["b", "c"]


def test_a_large_fleet_is_sampled_and_still_picks_well() -> None:
    rng = random.Random(7)
    fleet = [w(f"w{i}", active=rng.randrange(5), capacity=4, order=i,
               ttft=rng.uniform(0.05, 2.0), tps=rng.uniform(10, 100)) for i in range(10_000)]
    eligible = sorted((x for x in fleet if x.active < x.capacity),
                      key=lambda x: score(x, Measured(), 100))
    rank = {x.worker_id: i for i, x in enumerate(eligible)}
    ranks = []
    for _ in range(200):
        chosen = pick(fleet, max_tokens=100, rng=rng)
        assert chosen is not None and chosen.active < chosen.capacity
        ranks.append(rank[chosen.worker_id])
    # the best of 16 draws: on average in the best 1/17 of the eligible workers
    assert sum(ranks) / len(ranks) < len(eligible) / 10
    # every draw full: it falls back to looking at all
    full = [w(f"f{i}", active=4, capacity=4) for i in range(EXACT + 50)] + [w("free")]
    assert pick(full, rng=random.Random(1)).worker_id == "free"  # type: ignore[union-attr]


def test_the_routing_bench_reports_its_figures() -> None:
    """``cocoon bench --mode routing`` (its speed is the bench's to measure, not a test's)."""
    seen: list[str] = []
    r = run_routing(500, 100, seen.append)
    assert r["workers"] == 500 and r["picks"] == 100 and r["p50_us"] > 0
    assert r["p99_us"] >= r["p50_us"] and isinstance(r["meets_target"], bool)
    assert "p50" in seen[0] and "routing:" in format_routing(r)[0]
