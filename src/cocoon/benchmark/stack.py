"""``cocoon bench --mode up``: what users run, against the bare upstream, in one run.

The upstream is an OpenAI-compatible server in its own process (the fake engine served over
OpenAI HTTP by :mod:`cocoon.benchmark.direct`: 50 chunks x 128 B by default). Beside it, a
whole network started as ``cocoon up`` starts it, with its defaults: RA-TLS with fake TDX
quotes on every hop, billing, the embedded chain (client channel, payout channels, stake),
one worker on the ``openai-http`` engine in front of that upstream. The same closed-loop load
runs against the bare upstream and through the network, alternating, for each load shape
(paced and saturation, as ``--mode paced|saturation`` define them). Reported per side:
requests/s, chunks/s, TTFT and latency p50/p99, errors by kind (HTTP status), CPU seconds per
1,000 chunks per process (upstream, client, proxy, worker, chain), and each process's RSS
and open file descriptors after the warm-up round, at the peak of the load and a second
after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psutil

from cocoon.benchmark.procs import DirectProcess
from cocoon.benchmark.runner import (
    MODES,
    ModeSpec,
    aggregate,
    compare,
    expected_events,
    measure,
)
from cocoon.commands.up import LocalNetwork, Role
from cocoon.errors import LaunchError

__all__ = ["ResourceSampler", "run_stack"]

Progress = Callable[[str], None]
_MODEL = "fake"
_SAMPLE_S = 0.25


@dataclass
class _Usage:
    start: tuple[int, int] = (0, 0)  # (RSS bytes, open fds)
    peak: tuple[int, int] = (0, 0)
    end: tuple[int, int] = (0, 0)


@dataclass
class ResourceSampler:
    """RSS and open file descriptors of each named process: at :meth:`start`, the highest
    seen while running (sampled every 0.25 s on a thread), and at :meth:`stop`."""

    pids: dict[str, int]
    usage: dict[str, _Usage] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _read(self) -> dict[str, tuple[int, int]]:
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                out[name] = (int(p.memory_info().rss), int(p.num_fds()))
        return out

    def _loop(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            for name, (rss, fds) in self._read().items():
                u = self.usage[name]
                u.peak = (max(u.peak[0], rss), max(u.peak[1], fds))

    def start(self) -> None:
        for name, now in self._read().items():
            self.usage[name] = _Usage(now, now, now)
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self, settle_s: float = 1.0) -> dict[str, Any]:
        """Stop sampling; the end figures are read ``settle_s`` after the load (in-flight
        cleanup done)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        time.sleep(settle_s)
        for name, now in self._read().items():
            self.usage[name].end = now
        return {name: {"rss_mb": {"start": u.start[0] / 2**20, "peak": u.peak[0] / 2**20,
                                  "end": u.end[0] / 2**20},
                       "fds": {"start": u.start[1], "peak": u.peak[1], "end": u.end[1]}}
                for name, u in self.usage.items()}


def _pid(role: Role | None) -> int:
    assert role is not None and role.proc is not None
    return role.proc.pid


def _network(upstream: str) -> LocalNetwork:
    """The network ``cocoon up --engine openai-http --upstream URL`` starts, its defaults
    untouched (in a temporary data directory)."""
    return LocalNetwork(engine="openai-http", upstream=upstream, attestation="fake",
                        billing=True, chain="embedded", startup_timeout=180.0)


def run_stack(specs: list[ModeSpec], duration: float, repeat: int,
              progress: Progress) -> dict[str, Any]:
    """Measure each load shape against the bare upstream and through ``cocoon up`` (one
    upstream process and one network for all of them); one report section per shape."""
    chunks, chunk_bytes = specs[0].chunks, specs[0].chunk_bytes
    sections: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        progress(f"up: starting the upstream (fake engine over OpenAI HTTP, {chunks} chunks "
                 f"x {chunk_bytes} B) and cocoon up in front of it (defaults: RA-TLS fake, "
                 "billing, embedded chain)")
        # One upstream per pace: the fake engine's delay is the upstream's (as a real
        # server's token rate is), so each shape gets its own upstream process.
        for spec in specs:
            upstream = stack.enter_context(DirectProcess(
                ["--chunks", str(spec.chunks), "--chunk-bytes", str(spec.chunk_bytes),
                 "--delay-ms", repr(spec.delay_ms), "--model", _MODEL, "--port", "0"]))
            net = stack.enter_context(_network(upstream.http))
            prefix = f"up {spec.name}: "
            net.start(lambda msg: progress(prefix + msg))  # noqa: B023 (used at once)
            pids = {"client": _pid(net.client), "proxy": _pid(net.proxy),
                    "worker": _pid(net.workers[0]), "chain": _pid(net.chain_role),
                    "upstream": upstream.pid}
            sides = {"upstream": (upstream.http + "/v1/chat/completions",
                                  {"upstream": upstream.pid}),
                     "cocoon_up": (net.base_url + "/chat/completions", pids)}
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
            resources: dict[str, Any] = {}
            for rep in range(repeat):
                order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
                for side in order:
                    url, side_pids = sides[side]
                    progress(f"up {spec.name}: {side} run {rep + 1}/{repeat} "
                             f"({spec.describe()})")
                    # RSS and fds from after the warm-up round (connections opened, caches
                    # filled) to a second after the load
                    sampler = ResourceSampler(side_pids)
                    run = asyncio.run(measure(url, spec, duration, side_pids,
                                              on_warm=sampler.start))
                    run["resources"] = resources[side] = sampler.stop()
                    runs[side].append(run)
                    progress(f"up {spec.name}: {side}: {run['requests_per_s']:.1f} req/s, "
                             f"{run['chunks_per_s']:.0f} chunks/s, TTFT p50 "
                             f"{run['ttft_ms']['p50']:.2f} ms, {run['errors']} errors")
                    for role in [*net.dead(), *([upstream.role] if not upstream.role.alive()
                                                else [])]:
                        raise LaunchError(f"{role.name} died:\n{role.log_tail()}")
            agg = {s: aggregate(runs[s]) for s in sides}
            for s in sides:
                agg[s]["resources"] = resources[s]  # the last run's: not a median
            sections[f"up_{spec.name}"] = {
                "config": {"kind": "stack", "streams": spec.streams, "chunks": spec.chunks,
                           "chunk_bytes": spec.chunk_bytes, "delay_ms": spec.delay_ms,
                           "duration_s": duration, "repeat": repeat,
                           "events_per_request": expected_events(spec),
                           "attestation": "fake", "billing": True,
                           "payments_chain": "embedded", "engine": "openai-http"},
                **agg,
                "comparison": compare(spec, agg["upstream"], agg["cocoon_up"]),
                "runs": runs,
            }
            stack.close()  # this shape's network and upstream go before the next starts
    return sections


def default_specs() -> list[ModeSpec]:
    """The load shapes of ``--mode paced|saturation`` with issue 12's targets for the
    default stack: paced >= 0.95x the bare upstream with TTFT p50 at most 15 ms more,
    saturation >= 0.5x."""
    return [replace(MODES["paced"], throughput_ratio_min=0.95, ttft_added_ms_max=15.0),
            replace(MODES["saturation"], throughput_ratio_min=0.5, ttft_added_ms_max=None)]
