"""``cocoon bench``: run the measurements the flags ask for (:mod:`cocoon.benchmark` declares
them) and print the report table (and JSON with ``--json``)."""

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

from cocoon.benchmark import DEFAULT_DURATION, QUICK_DURATION
from cocoon.benchmark.handshake import run_handshake
from cocoon.benchmark.ledger import run_ledger
from cocoon.benchmark.llama import run_llama
from cocoon.benchmark.proxies import run_proxies
from cocoon.benchmark.report import format_report
from cocoon.benchmark.routing import run_routing
from cocoon.benchmark.runner import MODES, run_mode
from cocoon.benchmark.seal import run_seal
from cocoon.benchmark.stack import default_specs, run_stack
from cocoon.benchmark.train import run_train
from cocoon.errors import CocoonError

__all__ = ["run_bench"]


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
    for name in ("duration", "streams", "chunks", "chunk_bytes", "repeat", "llama_runs",
                 "llama_max_tokens", "handshakes"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    if args.delay_ms is not None and args.delay_ms < 0:
        raise CocoonError("--delay-ms must not be negative")
    duration = args.duration or (QUICK_DURATION if args.quick else DEFAULT_DURATION)
    fake_modes = (["saturation", "paced"] if args.mode == "all"
                  else [args.mode] if args.mode in MODES else [])
    with_llama = not args.no_llama and (args.mode in ("all", "llama") or args.llama)
    with_handshake = args.mode in ("all", "handshake")
    with_ledger = args.mode in ("all", "ledger")
    with_routing = args.mode in ("all", "routing")
    with_stack = args.mode == "up"
    with_proxies = args.mode == "proxies"
    with_seal = args.mode == "seal"
    with_train = args.mode == "train"
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
    overrides: dict[str, Any] = {}
    if args.streams:
        overrides["streams"] = args.streams
    if args.chunks:
        overrides["chunks"] = args.chunks
    if args.chunk_bytes:
        overrides["chunk_bytes"] = args.chunk_bytes
    if args.delay_ms is not None:
        overrides["delay_ms"] = args.delay_ms
    if with_stack:
        specs = [replace(s, **overrides) for s in default_specs()]
        for key, section in run_stack(specs, duration, args.repeat, progress).items():
            report["modes"][key] = section
            for side in ("upstream", "cocoon_up"):
                if section[side]["errors"] or not section[side]["requests"]:
                    failed = True
    for name in fake_modes:
        spec = replace(MODES[name], **overrides)
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
        report["ledger"] = run_ledger(300 if args.quick else 3000, progress)
        if report["ledger"]["invariant_problems"]:
            failed = True
    if with_proxies:
        report["proxies"] = run_proxies(duration, args.repeat, progress)
        if (not report["proxies"]["throughput"]["meets_target"]
                or report["proxies"]["throughput"]["two_proxies"]["errors"]):
            failed = True
    if with_seal:
        report["seal"] = run_seal(duration, args.repeat, progress, overrides)
        if not report["seal"]["meets_target"] or any(
                report["seal"][n][side]["errors"] for n in ("paced", "light", "saturation")
                for side in ("sealed", "clear")):
            failed = True
    if with_train:
        report["train"] = run_train(progress)
        if not report["train"]["meets_target"]:
            failed = True
    if with_routing:
        _positive("--workers", args.workers)
        report["routing"] = run_routing(args.workers or 10_000,
                                        2_000 if args.quick else 20_000, progress)
        if not report["routing"]["meets_target"]:
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
