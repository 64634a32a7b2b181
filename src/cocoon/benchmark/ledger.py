"""Ledger throughput: what the proxy's durable books cost per request.

Each paid request is two SQLite transactions on the proxy's ledger thread: a reservation
before forwarding and a settlement (with two Ed25519 vouchers signed) at the end, each
fsync'd (WAL, synchronous=FULL). Measured sequentially on a fresh ledger in a temporary
directory, alongside the pure pricing that precedes them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.ledger import Ledger, Prices, price_usage, reservation_for
from cocoon.usage import Usage

__all__ = ["format_ledger", "run_ledger"]


def run_ledger(n: int, progress: Any) -> dict[str, Any]:
    prices = Prices(2, 1)
    key = Ed25519PrivateKey.generate()
    t0 = time.perf_counter()
    for i in range(n):
        reservation_for(1000, 200 + i % 50, 1000, prices)
        price_usage(Usage(prompt_tokens=30 + i % 7, completion_tokens=100), 1000, prices)
    pricing_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="cocoon-bench-ledger-") as d, \
            Ledger(Path(d) / "ledger.sqlite") as ledger:
        ledger.deposit("client", 10**15)
        reserve_s = settle_s = 0.0
        for i in range(n):
            rid = f"r{i}"
            t = time.perf_counter()
            ledger.reserve(rid, "client", f"worker{i % 4}", 10_000)
            reserve_s += time.perf_counter() - t
            usage = Usage(prompt_tokens=30, completion_tokens=100 + i % 10)
            bill = price_usage(usage, 1000, prices)
            t = time.perf_counter()
            ledger.settle(rid, bill, key)
            settle_s += time.perf_counter() - t
        problems = ledger.check_invariants()
    progress(f"ledger: {n} requests: reserve {n / reserve_s:.0f}/s, settle {n / settle_s:.0f}/s")
    return {
        "requests": n,
        "pricing_per_s": n / pricing_s,
        "reserve_per_s": n / reserve_s,
        "settle_per_s": n / settle_s,
        "paid_requests_per_s": n / (reserve_s + settle_s),
        "reserve_ms": 1000 * reserve_s / n,
        "settle_ms": 1000 * settle_s / n,
        "invariant_problems": problems,
    }


def format_ledger(r: dict[str, Any]) -> list[str]:
    return [
        f"== ledger: {r['requests']} sequential paid requests on SQLite (WAL, synchronous=FULL) ==",
        f"pricing (reservation + bill, pure)   {r['pricing_per_s']:>10.0f} /s",
        f"reserve (1 transaction)              {r['reserve_per_s']:>10.0f} /s"
        f"   {r['reserve_ms']:.3f} ms",
        f"settle (1 transaction, 2 vouchers)   {r['settle_per_s']:>10.0f} /s"
        f"   {r['settle_ms']:.3f} ms",
        f"paid requests (reserve + settle)     {r['paid_requests_per_s']:>10.0f} /s",
        "invariants: " + ("hold" if not r["invariant_problems"] else
                          "; ".join(r["invariant_problems"])),
    ]
