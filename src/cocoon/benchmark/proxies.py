"""``cocoon bench --mode proxies``: an open network of several proxies, as users start it.

Three measurements, each with ``cocoon up``'s defaults (RA-TLS fake, billing, embedded chain,
the ``openai-http`` engine) in front of an OpenAI-compatible fake upstream in its own process:

1. **Throughput.** The paced load (200 streams, 30 chunks/s each) through ``cocoon up
   --proxies 2 --workers 3`` against the same load through ``--proxies 1 --workers 3``, runs
   alternating; reported as the ratio of chunks/s (issue 13's target: at least 0.95x).
2. **A worker killed before its first token.** A slow upstream (nothing sent for
   ``_SLOW_TTFT_MS``, as while it evaluates a long prompt); one request at a time; for each,
   the worker it went to is killed with SIGKILL as soon as it has the request, and the
   proxy sends it to another worker.
   Reported: the extra TTFT over a request nobody killed, and the part of it after the kill
   (the failover's own cost).
3. **A proxy killed under load.** The paced load through the two proxies; proxy-2 is killed
   with SIGKILL mid-run. Reported: how long until the client stopped sending through it
   (its /stats shows the connection lost), the errors the apps saw (streams under way
   through the dead proxy), and the throughput of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cocoon.benchmark.procs import DirectProcess
from cocoon.benchmark.runner import MODES, ModeSpec, aggregate, measure
from cocoon.commands.up import LocalNetwork, Role, http_json
from cocoon.errors import LaunchError

__all__ = ["format_proxies", "run_proxies"]

Progress = Callable[[str], None]
_MODEL = "fake"
_WORKERS = 3
_SLOW_TTFT_MS = 400.0  # the slow upstream's time to its first event (prompt processing)
_KILLS = 3  # workers killed in measurement 2
TARGET_RATIO = 0.95


def _say(progress: Progress, prefix: str, msg: str) -> None:
    progress(prefix + msg)


def _upstream(spec: ModeSpec, ttft_ms: float = 0.0) -> DirectProcess:
    return DirectProcess(["--chunks", str(spec.chunks), "--chunk-bytes", str(spec.chunk_bytes),
                          "--delay-ms", repr(spec.delay_ms), "--ttft-ms", repr(ttft_ms),
                          "--model", _MODEL, "--port", "0"])


def _network(upstream: str, proxies: int) -> LocalNetwork:
    """``cocoon up --engine openai-http --upstream URL --proxies N --workers 3``, defaults
    otherwise, in a temporary data directory."""
    return LocalNetwork(engine="openai-http", upstream=upstream, attestation="fake",
                        billing=True, chain="embedded", startup_timeout=180.0,
                        workers=_WORKERS, proxies=proxies)


def _pids(net: LocalNetwork, upstream: DirectProcess) -> dict[str, int]:
    def pid(r: Role | None) -> int:
        assert r is not None and r.proc is not None
        return r.proc.pid

    out = {"client": pid(net.client), "chain": pid(net.chain_role), "upstream": upstream.pid}
    out.update({r.name: pid(r) for r in net.proxies})
    out.update({r.name: pid(r) for r in net.workers})
    return out


def _throughput(spec: ModeSpec, duration: float, repeat: int,
                progress: Progress) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"one_proxy": [], "two_proxies": []}
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(_upstream(spec))
        nets = {}
        for side, n in (("one_proxy", 1), ("two_proxies", 2)):
            net = stack.enter_context(_network(upstream.http, n))
            net.start(functools.partial(_say, progress, f"proxies {side}: "))
            nets[side] = net
        for rep in range(repeat):
            order = list(nets) if rep % 2 == 0 else list(nets)[::-1]
            for side in order:
                net = nets[side]
                run = asyncio.run(measure(net.base_url + "/chat/completions", spec, duration,
                                          _pids(net, upstream)))
                runs[side].append(run)
                progress(f"proxies throughput: {side} run {rep + 1}/{repeat}: "
                         f"{run['chunks_per_s']:.0f} chunks/s, TTFT p50 "
                         f"{run['ttft_ms']['p50']:.1f} ms, {run['errors']} errors")
                for role in net.dead():
                    raise LaunchError(f"{role.name} died:\n{role.log_tail()}")
    agg = {s: aggregate(r) for s, r in runs.items()}
    one, two = agg["one_proxy"]["chunks_per_s"], agg["two_proxies"]["chunks_per_s"]
    ratio = two / one if one else float("nan")
    return {"one_proxy": agg["one_proxy"], "two_proxies": agg["two_proxies"],
            "ratio": ratio, "target_ratio_min": TARGET_RATIO,
            "meets_target": ratio >= TARGET_RATIO and not agg["two_proxies"]["errors"]}


def _stream_ttft(url: str) -> float:
    """One streamed request; seconds to its first content chunk (raises on an error)."""
    body = (b'{"model": "fake", "stream": true, '
            b'"messages": [{"role": "user", "content": "hi"}]}')
    req = urllib.request.Request(url + "/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = 0.0
    with urllib.request.urlopen(req, timeout=60) as resp:
        for line in resp:
            if not first and line.startswith(b"data: {") and b'"content"' in line:
                first = time.perf_counter() - t0
            if line.startswith(b"data: {\"error\""):
                raise LaunchError(f"the request failed: {line[:200]!r}")
    return first


def _busy_worker(net: LocalNetwork) -> Role | None:
    for w in net.workers:
        if w.alive():
            status, stats = http_json(w.http + "/stats")
            if status == 200 and stats.get("active"):
                return w
    return None


def _worker_failover(progress: Progress) -> dict[str, Any]:
    spec = replace(MODES["paced"], chunks=5, delay_ms=20.0)
    with _upstream(spec, _SLOW_TTFT_MS) as upstream, _network(upstream.http, 2) as net:
        net.start(lambda msg: progress(f"proxies failover: {msg}"))
        normal = [_stream_ttft(net.base_url) for _ in range(3)]
        extra, after_kill = [], []
        for k in range(_KILLS):
            result: dict[str, Any] = {}

            def ask(out: dict[str, Any] = result) -> None:
                try:
                    out["ttft"] = _stream_ttft(net.base_url)
                except Exception as exc:  # reported below
                    out["error"] = f"{type(exc).__name__}: {exc}"

            t = threading.Thread(target=ask)
            t0 = time.perf_counter()
            t.start()
            victim = None
            while victim is None and time.perf_counter() - t0 < 5.0:
                victim = _busy_worker(net)
                time.sleep(0.005)
            if victim is None or victim.proc is None:
                raise LaunchError("no worker took the request within 5 s")
            killed_at = time.perf_counter() - t0
            victim.proc.kill()
            t.join(timeout=60)
            if "error" in result:
                raise LaunchError(f"the request whose worker was killed failed: "
                                  f"{result['error']}")
            extra.append(result["ttft"] - statistics.median(normal))
            after_kill.append(result["ttft"] - killed_at)
            progress(f"proxies failover {k + 1}/{_KILLS}: {victim.name} killed after "
                     f"{killed_at * 1000:.0f} ms; first token {result['ttft'] * 1000:.0f} ms "
                     f"(normally {statistics.median(normal) * 1000:.0f} ms)")
            victim.respawn()
            victim.wait_until(victim.read_ready, "ready again", time.monotonic() + 60)
    return {"upstream_ttft_ms": _SLOW_TTFT_MS,
            "normal_ttft_ms": statistics.median(normal) * 1000,
            "extra_ttft_ms": [x * 1000 for x in extra],
            "extra_ttft_ms_p50": statistics.median(extra) * 1000,
            "kill_to_first_token_ms": [x * 1000 for x in after_kill],
            "failover_ms_p50": (statistics.median(after_kill) * 1000 - _SLOW_TTFT_MS)}


def _proxy_kill(spec: ModeSpec, duration: float, progress: Progress) -> dict[str, Any]:
    with _upstream(spec) as upstream, _network(upstream.http, 2) as net:
        net.start(lambda msg: progress(f"proxies kill: {msg}"))
        assert net.client is not None
        client_http = net.client.http
        victim = net.more_proxies[0]
        victim_addr = net.proxy_addrs[1]
        out: dict[str, Any] = {}

        def kill_later() -> None:
            time.sleep(duration / 2)
            assert victim.proc is not None
            victim.proc.kill()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 30:
                _, stats = http_json(client_http + "/stats")
                link = next((p for p in (stats or {}).get("proxies", [])
                             if p["address"] == victim_addr), None)
                if link is not None and link["state"] != "connected":
                    out["client_noticed_ms"] = (time.perf_counter() - t0) * 1000
                    return
                time.sleep(0.002)

        killer = threading.Thread(target=kill_later)
        killer.start()
        run = asyncio.run(measure(net.base_url + "/chat/completions", spec, duration,
                                  _pids(net, upstream)))
        killer.join()
    progress(f"proxies kill: client stopped using the dead proxy after "
             f"{out.get('client_noticed_ms', float('nan')):.0f} ms; {run['errors']} "
             f"error(s) of {run['requests']} requests")
    return {"client_noticed_ms": out.get("client_noticed_ms"), "errors": run["errors"],
            "error_kinds": run["error_kinds"], "requests": run["requests"],
            "chunks_per_s": run["chunks_per_s"], "ttft_ms": run["ttft_ms"]}


def run_proxies(duration: float, repeat: int, progress: Progress) -> dict[str, Any]:
    spec = MODES["paced"]
    return {"config": {"workers": _WORKERS, "streams": spec.streams, "chunks": spec.chunks,
                       "chunk_bytes": spec.chunk_bytes, "delay_ms": spec.delay_ms,
                       "duration_s": duration, "repeat": repeat, "engine": "openai-http",
                       "attestation": "fake", "billing": True, "payments_chain": "embedded"},
            "throughput": _throughput(spec, duration, repeat, progress),
            "worker_failover": _worker_failover(progress),
            "proxy_kill": _proxy_kill(spec, duration, progress)}


def format_proxies(r: dict[str, Any]) -> list[str]:
    t, f, k = r["throughput"], r["worker_failover"], r["proxy_kill"]
    c = r["config"]
    one, two = t["one_proxy"], t["two_proxies"]
    return [
        f"== proxies: cocoon up defaults (openai-http engine, separate upstream), "
        f"{c['workers']} workers; paced {c['streams']} streams x {c['chunks']} chunks "
        f"@ {1000 / c['delay_ms']:.0f}/s ==",
        f"  1 proxy:   {one['chunks_per_s']:.0f} chunks/s, TTFT p50 "
        f"{one['ttft_ms']['p50']:.1f} ms, {one['errors']} errors",
        f"  2 proxies: {two['chunks_per_s']:.0f} chunks/s, TTFT p50 "
        f"{two['ttft_ms']['p50']:.1f} ms, {two['errors']} errors",
        f"  2/1: {t['ratio']:.3f}x  [{'meets' if t['meets_target'] else 'MISSES'} target: "
        f">= {t['target_ratio_min']:g}x]",
        f"  worker killed before its first token (upstream TTFT {f['upstream_ttft_ms']:.0f} "
        f"ms): extra TTFT p50 {f['extra_ttft_ms_p50']:.0f} ms, of which failover "
        f"{f['failover_ms_p50']:.0f} ms after the kill",
        f"  proxy-2 killed mid-run: the client stopped using it after "
        f"{k['client_noticed_ms'] or float('nan'):.0f} ms; {k['errors']} error(s) of "
        f"{k['requests']} requests ({k['error_kinds']}); {k['chunks_per_s']:.0f} chunks/s",
    ]
