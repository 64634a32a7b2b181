"""Routing speed: how long the proxy's pick of a worker takes over a large fleet.

10,000 workers of one model (``--workers``), with random loads (some full), price
coefficients from 0.5x to 4x and measured speeds, in the model index the proxy keeps
(:class:`~cocoon.routing.ModelIndex`, sorted by coefficient). Each pick is timed alone:
the price cap's bisection and routing's choice (:func:`~cocoon.routing.pick`: the best of
16 random candidates above 64), as the proxy does it for every request, with a price cap
half the time. The target (issue 13) is a pick under 50 µs at p50.
"""

from __future__ import annotations

import random
import time
from typing import Any

from cocoon.routing import Measured, ModelIndex, WorkerView, pick

__all__ = ["TARGET_P50_US", "format_routing", "run_routing"]

TARGET_P50_US = 50.0


def run_routing(workers: int, picks: int, progress: Any) -> dict[str, Any]:
    rng = random.Random(12)
    index = ModelIndex()
    for i in range(workers):
        capacity = rng.choice((4, 8, 64, 256))
        index.add(WorkerView(
            f"w{i}", ("m",), rng.randint(0, capacity), capacity, i,
            rng.randint(500, 4000),
            Measured(rng.uniform(0.02, 2.0), rng.uniform(5.0, 200.0), rng.random() * 0.1)))
    index.typical = Measured(0.3, 60.0)
    times: list[float] = []
    misses = 0
    for i in range(picks):
        cap = 2000 if i % 2 else 0
        t = time.perf_counter()
        chosen = pick(index.within(cap), max_tokens=256, typical=index.typical, rng=rng)
        times.append(time.perf_counter() - t)
        misses += chosen is None
    times.sort()
    p50 = times[len(times) // 2] * 1e6
    p99 = times[int(len(times) * 0.99)] * 1e6
    progress(f"routing: {picks} picks over {workers} workers: p50 {p50:.1f} µs, "
             f"p99 {p99:.1f} µs")
    return {"workers": workers, "picks": picks, "p50_us": p50, "p99_us": p99,
            "no_free_worker": misses, "target_p50_us": TARGET_P50_US,
            "meets_target": p50 < TARGET_P50_US}


def format_routing(r: dict[str, Any]) -> list[str]:
    verdict = "meets" if r["meets_target"] else "MISSES"
    return [
        f"== routing: {r['picks']} picks over {r['workers']} workers of one model (price cap "
        "on half of them) ==",
        f"pick p50 {r['p50_us']:.1f} µs, p99 {r['p99_us']:.1f} µs  [{verdict} target: p50 < "
        f"{r['target_p50_us']:g} µs]",
    ]
