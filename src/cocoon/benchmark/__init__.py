"""``cocoon bench``: the chain (client -> proxy -> worker) against the engine served directly.

Modes (``--mode``):

* ``saturation``: fake engine, no delay, 30 concurrent streams, 50 chunks x 128 B;
* ``paced``: fake engine, 30 chunks/s per stream (delay 33.3 ms), 200 concurrent streams;
* ``llama``: SmolLM2 tokens/s through the chain vs llama-cpp-python in-process (skipped,
  saying why, when llama-cpp-python or the model is missing);
* ``handshake``: RA-TLS handshake times in-process on loopback (fake-tdx, none, plain TCP),
  one fake quote verification and one identity creation;
* ``all`` (default): all of these, with ``--tls-compare``.

``--attestation fake|none|off`` (default fake, as ``cocoon up``) sets the chain's
attestation. ``--tls-compare`` (on in ``all``) adds a second chain on plain TCP
(``chain_plain``) to the fake modes and reports RA-TLS / plain.

For each fake mode the same closed-loop load runs against a direct OpenAI server wrapping the
fake engine (:mod:`cocoon.benchmark.direct`, its own process) and against a local network on
the same engine config. Reported: requests/s, chunks/s, TTFT and latency p50/p99, CPU seconds
per 1,000 chunks for every process (servers and the load generator), and chain/direct ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cocoon.errors import CocoonError

__all__ = ["add_bench_arguments", "run_bench"]

_QUICK_DURATION = 2.0
_DEFAULT_DURATION = 10.0


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["saturation", "paced", "llama", "handshake", "ledger",
                                      "all"],
                   default="all",
                   help="what to measure (default all: saturation and paced with "
                        "--tls-compare, llama, handshake)")
    p.add_argument("--billing", action="store_true",
                   help="bill every chain request into the proxy's SQLite ledger (reserve + "
                        "settle, fsync each), to measure what billing costs")
    p.add_argument("--payments-chain", choices=["none", "embedded"], default="none",
                   help="with --billing: put the accounts on the embedded chain (client-signed "
                        "vouchers, redemption and commits on chain), as cocoon up does")
    p.add_argument("--attestation", choices=["fake", "none", "off"], default="fake",
                   help="the chain's attestation, as cocoon up (default fake: RA-TLS with "
                        "simulated TDX quotes; none: RA-TLS without evidence; off: plain TCP)")
    p.add_argument("--tls-compare", action="store_true",
                   help="also run each fake mode through a plain-TCP chain (attestation off) "
                        "and report RA-TLS/plain (on in --mode all)")
    p.add_argument("--no-tls-compare", action="store_true",
                   help="leave the plain-TCP chain out of --mode all")
    p.add_argument("--handshakes", type=int, metavar="N",
                   help="sequential connections per kind in --mode handshake "
                        "(default 200; 30 with --quick)")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help=f"load phase length per measurement (default {_DEFAULT_DURATION:g}; "
                        f"{_QUICK_DURATION:g} with --quick); in-flight requests are drained")
    p.add_argument("--streams", type=int, metavar="N",
                   help="concurrent streams (default: 30 saturation, 200 paced)")
    p.add_argument("--chunks", type=int, metavar="N", help="chunks per response (default 50)")
    p.add_argument("--chunk-bytes", type=int, metavar="B", help="bytes per chunk (default 128)")
    p.add_argument("--delay-ms", type=float, metavar="MS",
                   help="override the per-chunk delay of the selected modes")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="measure each side K times, alternating order; report the median")
    p.add_argument("--quick", action="store_true",
                   help="short phases and few llama runs (CI smoke test)")
    p.add_argument("--llama", action="store_true",
                   help="add the llama comparison to --mode saturation/paced")
    p.add_argument("--no-llama", action="store_true", help="leave the llama comparison out")
    p.add_argument("--llama-runs", type=int, metavar="N",
                   help="sequential requests per side (default 5; 2 with --quick)")
    p.add_argument("--llama-max-tokens", type=int, metavar="N",
                   help="max_tokens of the llama request (default 128; 32 with --quick)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="also write the results as JSON to PATH (to stdout when no PATH, "
                        "the table then goes to stderr)")


def _progress_printer() -> Any:
    started = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return progress


def _jsonable(obj: Any) -> Any:
    """NaN and infinities (no data) become null: the JSON stays strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise CocoonError(f"{name} must be positive")


def run_bench(args: argparse.Namespace) -> int:
    from cocoon.benchmark.handshake import run_handshake
    from cocoon.benchmark.llama import run_llama
    from cocoon.benchmark.report import format_report
    from cocoon.benchmark.runner import MODES, run_mode

    for name in ("duration", "streams", "chunks", "chunk_bytes", "repeat", "llama_runs",
                 "llama_max_tokens", "handshakes"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    if args.delay_ms is not None and args.delay_ms < 0:
        raise CocoonError("--delay-ms must not be negative")
    duration = args.duration or (_QUICK_DURATION if args.quick else _DEFAULT_DURATION)
    fake_modes = (["saturation", "paced"] if args.mode == "all"
                  else [args.mode] if args.mode in MODES else [])
    with_llama = not args.no_llama and (args.mode in ("all", "llama") or args.llama)
    with_handshake = args.mode in ("all", "handshake")
    with_ledger = args.mode in ("all", "ledger")
    tls_compare = bool(fake_modes) and (
        args.tls_compare or (args.mode == "all" and not args.no_tls_compare))
    if tls_compare and args.attestation == "off":
        raise CocoonError("--tls-compare compares against --attestation off: give fake or "
                          "none (or --no-tls-compare)")
    progress = _progress_printer()

    report: dict[str, Any] = {
        "version": 1,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["cocoon", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"]
        else " ".join(sys.argv),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "platform": platform.platform(),
                 "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "params": {"duration_s": duration, "repeat": args.repeat, "quick": args.quick,
                   "attestation": args.attestation, "tls_compare": tls_compare,
                   "billing": args.billing, "payments_chain": args.payments_chain},
        "modes": {},
    }
    failed = False
    for name in fake_modes:
        spec = MODES[name]
        overrides: dict[str, Any] = {}
        if args.streams:
            overrides["streams"] = args.streams
        if args.chunks:
            overrides["chunks"] = args.chunks
        if args.chunk_bytes:
            overrides["chunk_bytes"] = args.chunk_bytes
        if args.delay_ms is not None:
            overrides["delay_ms"] = args.delay_ms
        spec = replace(spec, **overrides)
        section = run_mode(spec, duration, args.repeat, progress,
                           attestation=args.attestation, tls_compare=tls_compare,
                           billing=args.billing, chain=args.payments_chain)
        report["modes"][name] = section
        for side in ("direct", "chain", "chain_plain"):
            if side not in section:
                continue
            if section[side]["errors"] or not section[side]["requests"]:
                failed = True
    if with_llama:
        runs = args.llama_runs or (2 if args.quick else 5)
        max_tokens = args.llama_max_tokens or (32 if args.quick else 128)
        try:
            report["llama"] = run_llama(runs, max_tokens, progress,
                                        attestation=args.attestation)
        except (CocoonError, RuntimeError, OSError, ValueError, KeyError) as exc:
            progress(f"llama: failed: {type(exc).__name__}: {exc}")
            report["llama"] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
    if with_handshake:
        n = args.handshakes or (30 if args.quick else 200)
        report["handshake"] = run_handshake(n, progress)
        if report["handshake"]["errors"]:
            failed = True
    if with_ledger:
        from cocoon.benchmark.ledger import run_ledger

        report["ledger"] = run_ledger(300 if args.quick else 3000, progress)
        if report["ledger"]["invariant_problems"]:
            failed = True
    report["ok"] = not failed

    table = format_report(report)
    data = json.dumps(_jsonable(report), indent=2)
    if args.json == "-":
        print(table, file=sys.stderr, flush=True)
        print(data, flush=True)
    else:
        print(table, flush=True)
        if args.json:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data + "\n")
            progress(f"results written to {path}")
    return 0 if not failed else 1
