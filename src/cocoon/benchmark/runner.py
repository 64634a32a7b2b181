"""The fake-engine comparison: one load, served directly and through the chain.

For each mode, one direct server (``cocoon.benchmark.direct``) and one local network
(client -> proxy -> worker, all on the fake engine with the same config) are started side by
side; then the same load generator runs against each in turn, ``repeat`` times, alternating
which side goes first. CPU time is read per process around each load phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cocoon.benchmark.loadgen import LoadGenerator
from cocoon.benchmark.procs import CpuMeter, DirectProcess
from cocoon.commands.up import LocalNetwork, Role
from cocoon.errors import LaunchError

__all__ = ["MODES", "TLS_TARGETS", "ModeSpec", "aggregate", "compare", "compare_tls",
           "expected_events", "measure", "request_body", "run_mode"]

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ModeSpec:
    name: str
    streams: int
    chunks: int
    chunk_bytes: int
    delay_ms: float
    throughput_ratio_min: float  # target: chain/direct requests per second
    ttft_added_ms_max: float | None  # target: chain TTFT p50 - direct TTFT p50

    def describe(self) -> str:
        pace = (f"{1000.0 / self.delay_ms:.0f} chunks/s per stream" if self.delay_ms
                else "no delay")
        return (f"{self.streams} streams, {self.chunks} chunks x {self.chunk_bytes} B, "
                f"{pace}")


MODES: dict[str, ModeSpec] = {
    "saturation": ModeSpec("saturation", 30, 50, 128, 0.0, 0.5, None),
    "paced": ModeSpec("paced", 200, 50, 128, 1000.0 / 30.0, 0.95, 3.0),
}

# --tls-compare: RA-TLS chain / plain-TCP chain, requests per second (None: no target)
TLS_TARGETS: dict[str, float | None] = {"saturation": None, "paced": 0.95}

_PROMPT = "Tell me something."
_MODEL = "fake"
_SUMMED = ("requests", "chunks", "errors")


def request_body() -> bytes:
    return json.dumps({"model": _MODEL, "stream": True,
                       "messages": [{"role": "user", "content": _PROMPT}]}).encode()


def expected_events(spec: ModeSpec) -> int:
    """Data events per chat stream from the fake engine: role chunk, N chunks, finish."""
    return spec.chunks + 2


async def measure(url: str, spec: ModeSpec, duration: float,
                  pids: dict[str, int], on_warm: Callable[[], None] | None = None
                  ) -> dict[str, Any]:
    """One load phase against ``url`` (after a warm-up round, one request per stream, not
    counted; ``on_warm`` is called between the two)."""
    meter = CpuMeter({**pids, "loadgen": os.getpid()})
    async with LoadGenerator(url, request_body(), spec.streams,
                             expected_events(spec)) as lg:
        warm = await lg.warm_up()
        if on_warm is not None:
            on_warm()
        meter.start()
        result = await lg.run(duration, stagger=spec.chunks * spec.delay_ms / 1000.0)
        cpu = meter.stop()
    for kind, n in warm.errors.items():
        result.errors[f"warmup_{kind}"] = n
    result.error_samples[:0] = warm.error_samples[:2]
    out = result.summary()
    per_k = result.chunks / 1000.0
    out["cpu_s"] = cpu
    servers = sum(v for k, v in cpu.items() if k not in ("loadgen", "other"))
    out["cpu_s_per_1k_chunks"] = {k: (v / per_k if per_k else math.nan) for k, v in cpu.items()}
    out["cpu_s_per_1k_chunks"]["servers"] = servers / per_k if per_k else math.nan
    out["other_cpu_share"] = cpu["other"] / (result.elapsed_s * (os.cpu_count() or 1))
    return out


def _median(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts summed over the runs, every rate, percentile and CPU figure the median."""
    if len(runs) == 1:
        out = dict(runs[0])
        out["runs"] = 1
        return out

    def merge(items: list[dict[str, Any]]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for key, first in items[0].items():
            vals = [it.get(key) for it in items]
            if key == "error_kinds":
                kinds: dict[str, int] = {}
                for v in vals:
                    for k, n in (v or {}).items():
                        kinds[k] = kinds.get(k, 0) + n
                merged[key] = kinds
            elif key == "error_samples":
                merged[key] = [s for v in vals for s in (v or [])][:5]
            elif isinstance(first, dict):
                merged[key] = merge([v if isinstance(v, dict) else {} for v in vals])
            elif key in _SUMMED:
                merged[key] = sum(int(v or 0) for v in vals)
            elif isinstance(first, int) and all(v == first for v in vals):
                merged[key] = first
            elif isinstance(first, int | float) and not isinstance(first, bool):
                merged[key] = _median([float(v) for v in vals if v is not None])
            else:
                merged[key] = first
        return merged

    out = merge(runs)
    out["chunks_per_request"] = out["chunks"] / out["requests"] if out["requests"] else 0.0
    out["runs"] = len(runs)
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def compare(spec: ModeSpec, direct: dict[str, Any], chain: dict[str, Any]) -> dict[str, Any]:
    tp = _ratio(chain["requests_per_s"], direct["requests_per_s"])
    added = chain["ttft_ms"]["p50"] - direct["ttft_ms"]["p50"]
    meets = not math.isnan(tp) and tp >= spec.throughput_ratio_min
    if spec.ttft_added_ms_max is not None:
        meets = meets and not math.isnan(added) and added <= spec.ttft_added_ms_max
    return {
        "throughput_ratio": tp,
        "chunks_ratio": _ratio(chain["chunks_per_s"], direct["chunks_per_s"]),
        "ttft_p50_added_ms": added,
        "ttft_p99_added_ms": chain["ttft_ms"]["p99"] - direct["ttft_ms"]["p99"],
        "latency_p50_added_ms": chain["latency_ms"]["p50"] - direct["latency_ms"]["p50"],
        "servers_cpu_ratio": _ratio(chain["cpu_s_per_1k_chunks"]["servers"],
                                    direct["cpu_s_per_1k_chunks"]["servers"]),
        "targets": {"throughput_ratio_min": spec.throughput_ratio_min,
                    "ttft_p50_added_ms_max": spec.ttft_added_ms_max},
        "meets_targets": meets,
    }


def compare_tls(name: str, plain: dict[str, Any], tls: dict[str, Any]) -> dict[str, Any]:
    """The RA-TLS chain against the plain-TCP chain (``--tls-compare``)."""
    tp = _ratio(tls["requests_per_s"], plain["requests_per_s"])
    target = TLS_TARGETS.get(name)
    return {
        "throughput_ratio": tp,
        "chunks_ratio": _ratio(tls["chunks_per_s"], plain["chunks_per_s"]),
        "ttft_p50_added_ms": tls["ttft_ms"]["p50"] - plain["ttft_ms"]["p50"],
        "ttft_p99_added_ms": tls["ttft_ms"]["p99"] - plain["ttft_ms"]["p99"],
        "latency_p50_added_ms": tls["latency_ms"]["p50"] - plain["latency_ms"]["p50"],
        "servers_cpu_ratio": _ratio(tls["cpu_s_per_1k_chunks"]["servers"],
                                    plain["cpu_s_per_1k_chunks"]["servers"]),
        "targets": {"throughput_ratio_min": target},
        "meets_targets": target is None or (not math.isnan(tp) and tp >= target),
    }


def _pid(role: Role) -> int:
    assert role.proc is not None
    return role.proc.pid


def _prefixed(progress: Progress, prefix: str) -> Progress:
    return lambda msg: progress(prefix + msg)


def _network(spec: ModeSpec, attestation: str, billing: bool = False,
             chain: str = "none") -> LocalNetwork:
    worker_sets = [f"engine.fake.model={_MODEL}",
                   f"engine.fake.chunks={spec.chunks}",
                   f"engine.fake.chunk_bytes={spec.chunk_bytes}",
                   f"engine.fake.delay_ms={spec.delay_ms!r}",
                   f"max_concurrent={max(1000, spec.streams * 2)}"]
    return LocalNetwork(engine="fake", workers=1, worker_sets=worker_sets,
                        startup_timeout=120.0, attestation=attestation, billing=billing,
                        # on chain the demo channel is funded from a sandbox wallet (1M TON)
                        demo_funds=10**14 if chain != "none" else 10**17,
                        chain=chain if billing else "none")


def _chain_pids(net: LocalNetwork) -> dict[str, int]:
    assert net.client is not None and net.proxy is not None
    return {"client": _pid(net.client), "proxy": _pid(net.proxy),
            "worker": _pid(net.workers[0])}


def run_mode(spec: ModeSpec, duration: float, repeat: int, progress: Progress, *,
             attestation: str = "fake", tls_compare: bool = False,
             billing: bool = False, chain: str = "none") -> dict[str, Any]:
    """Measure ``spec`` directly and through the chain (attestation ``attestation``); with
    ``tls_compare`` also through a second chain on plain TCP (``chain_plain``). The mode's
    JSON section."""
    if tls_compare and attestation == "off":
        raise LaunchError("--tls-compare needs --attestation fake or none (the TLS side)")
    progress(f"{spec.name}: {spec.describe()}; chain attestation {attestation}"
             f"{' vs off' if tls_compare else ''}; {duration:g} s per phase x {repeat}")
    direct_args = ["--chunks", str(spec.chunks), "--chunk-bytes", str(spec.chunk_bytes),
                   "--delay-ms", repr(spec.delay_ms), "--model", _MODEL, "--port", "0"]
    names = ["direct", "chain", "chain_plain"] if tls_compare else ["direct", "chain"]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with contextlib.ExitStack() as stack:
        direct = stack.enter_context(DirectProcess(direct_args))
        nets = {"chain": stack.enter_context(_network(spec, attestation, billing, chain))}
        if tls_compare:
            nets["chain_plain"] = stack.enter_context(_network(spec, "off"))
        sides: dict[str, tuple[str, dict[str, int]]] = {
            "direct": (direct.http + "/v1/chat/completions", {"direct": direct.pid})}
        for side, net in nets.items():
            net.start(_prefixed(progress, f"{spec.name}: {side}: "))
            sides[side] = (net.base_url + "/chat/completions", _chain_pids(net))
        for rep in range(repeat):
            order = names if rep % 2 == 0 else names[::-1]
            for side in order:
                url, pids = sides[side]
                progress(f"{spec.name}: {side} run {rep + 1}/{repeat}")
                run = asyncio.run(measure(url, spec, duration, pids))
                runs[side].append(run)
                progress(f"{spec.name}: {side}: {run['requests_per_s']:.1f} req/s, "
                         f"{run['chunks_per_s']:.0f} chunks/s, "
                         f"TTFT p50 {run['ttft_ms']['p50']:.2f} ms, "
                         f"{run['errors']} errors")
                if not direct.role.alive():
                    raise LaunchError(f"the direct server died:\n{direct.role.log_tail()}")
                for net in nets.values():
                    for role in net.dead():
                        raise LaunchError(f"{role.name} died:\n{role.log_tail()}")
    agg = {n: aggregate(runs[n]) for n in names}
    d, c = agg["direct"], agg["chain"]
    section: dict[str, Any] = {
        "config": {"streams": spec.streams, "chunks": spec.chunks,
                   "chunk_bytes": spec.chunk_bytes, "delay_ms": spec.delay_ms,
                   "duration_s": duration, "repeat": repeat,
                   "events_per_request": expected_events(spec),
                   "attestation": attestation, "tls_compare": tls_compare,
                   "billing": billing, "payments_chain": chain if billing else "none"},
        **agg,
        "comparison": compare(spec, d, c),
    }
    if tls_compare:
        section["comparison_plain"] = compare(spec, d, agg["chain_plain"])
        section["tls_comparison"] = compare_tls(spec.name, agg["chain_plain"], c)
    section["runs"] = runs
    return section
