"""``cocoon bench --mode seal``: what sealing costs, as users run it.

1. **Through ``cocoon up``.** The paced load (200 streams, 30 chunks/s each) through
   ``cocoon up`` with its defaults (RA-TLS fake, billing, embedded chain, the ``openai-http``
   engine in front of an OpenAI-compatible fake upstream in its own process), which seals
   every request, against the same network with ``--client-set seal=off``, runs
   alternating, side by side in one run. Issue 14's targets: chunks/s at least 0.95x the
   unsealed, TTFT p50 at most 2 ms more. The saturating load is reported too, without a
   target, and a light load (10 of the same paced streams) shows sealing's own latency
   without the queueing of a busy 2-core machine.

   The added TTFT is read **paired**: each repeat runs sealed and clear back to back (the
   order alternating), and the figure gated on is the median over repeats of (sealed p50 -
   clear p50) of the same repeat, so a drift of the shared machine between repeats cancels
   instead of landing on one side. The difference of the medians is reported beside it.
2. **One seal and one open**, timed in this process (median of 5 rounds): sealing a request
   body, wrapping its key to one worker (HPKE; once per worker it is sealed to), the
   worker's unwrapping and opening it, sealing one answer record and opening it, the
   worker's receipt signature and the check of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cocoon.attestation.providers import NoneProvider
from cocoon.attestation.receipt import WorkerPart, check_signature, sign_part
from cocoon.benchmark.procs import DirectProcess
from cocoon.benchmark.runner import MODES, ModeSpec, aggregate, measure
from cocoon.commands.up import LocalNetwork, Role
from cocoon.crypto.seal import (
    KeyUnwrapper,
    KeyWrapper,
    ResponseOpener,
    ResponseSealer,
    new_seal_key,
    open_request,
    route_info,
    seal_body,
    seal_public_bytes,
)
from cocoon.errors import LaunchError
from cocoon.transport.tls_identity import TlsIdentity

__all__ = ["format_seal", "run_seal"]

Progress = Callable[[str], None]
_MODEL = "fake"
TARGET_RATIO = 0.95
TARGET_TTFT_ADDED_MS = 2.0
_BODY = 1024  # a request body of 1 KiB
_RECORD = 1200  # one answer record: about nine 128 B chunks as SSE events
_LIGHT_STREAMS = 10
_LOADS = ("paced", "light", "saturation")


def _pid(role: Role | None) -> int:
    assert role is not None and role.proc is not None
    return role.proc.pid


def _network(upstream: str, seal: str) -> LocalNetwork:
    return LocalNetwork(engine="openai-http", upstream=upstream, attestation="fake",
                        billing=True, chain="embedded", startup_timeout=180.0,
                        client_sets=[] if seal == "on" else [f"seal={seal}"])


def _through_up(spec: ModeSpec, duration: float, repeat: int,
                progress: Progress) -> dict[str, Any]:
    sides = ("sealed", "clear")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(DirectProcess(
            ["--chunks", str(spec.chunks), "--chunk-bytes", str(spec.chunk_bytes),
             "--delay-ms", repr(spec.delay_ms), "--model", _MODEL, "--port", "0"]))
        nets = {}
        for side, seal in (("sealed", "on"), ("clear", "off")):
            net = stack.enter_context(_network(upstream.http, seal))
            prefix = f"seal {spec.name} {side}: "
            net.start(lambda msg: progress(prefix + msg))  # noqa: B023 (used at once)
            nets[side] = net
        for rep in range(repeat):
            for side in (sides if rep % 2 == 0 else sides[::-1]):
                net = nets[side]
                pids = {"client": _pid(net.client), "proxy": _pid(net.proxy),
                        "worker": _pid(net.workers[0]), "upstream": upstream.pid}
                progress(f"seal {spec.name}: {side} run {rep + 1}/{repeat} "
                         f"({spec.describe()})")
                run = asyncio.run(measure(net.base_url + "/chat/completions", spec, duration,
                                          pids))
                runs[side].append(run)
                progress(f"seal {spec.name}: {side}: {run['chunks_per_s']:.0f} chunks/s, "
                         f"TTFT p50 {run['ttft_ms']['p50']:.2f} ms, {run['errors']} errors")
                for role in net.dead():
                    raise LaunchError(f"{role.name} died:\n{role.log_tail()}")
    agg = {s: aggregate(runs[s]) for s in sides}
    sealed, clear = agg["sealed"], agg["clear"]
    ratio = (sealed["chunks_per_s"] / clear["chunks_per_s"] if clear["chunks_per_s"]
             else float("nan"))
    added = sealed["ttft_ms"]["p50"] - clear["ttft_ms"]["p50"]
    pairs = [s["ttft_ms"]["p50"] - c["ttft_ms"]["p50"]
             for s, c in zip(runs["sealed"], runs["clear"], strict=True)]
    paired = statistics.median(pairs)
    gated = spec.name == "paced"
    return {"load": spec.describe(), **agg, "chunks_ratio": ratio, "ttft_p50_added_ms": added,
            "ttft_p50_paired_added_ms": paired, "ttft_p50_pair_diffs_ms": pairs,
            "meets_target": (not gated) or (ratio >= TARGET_RATIO
                                            and paired <= TARGET_TTFT_ADDED_MS),
            "targeted": gated, "runs": runs}


def _median_us(fn: Callable[[], object], n: int) -> float:
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(rounds)


def seal_costs(n: int = 2000) -> dict[str, float]:
    """Microseconds per operation, median of 5 rounds of ``n``."""
    worker = new_seal_key()
    public = seal_public_bytes(worker)
    body = b"x" * _BODY
    info = route_info("chat", _MODEL, True)
    sealed = seal_body(body, info)
    wrapper, unwrapper = KeyWrapper(), KeyUnwrapper(worker)
    wrapped = wrapper.wrap(sealed.content_key, public, info)
    key = sealed.response_key
    record = ResponseSealer(key).seal(b"y" * _RECORD, 9)
    identity = TlsIdentity.create(NoneProvider(), "worker", _MODEL)
    signer, cert = identity.key, identity.certificate
    part = WorkerPart("w", "0" * 64, "0" * 64, 1, True, _MODEL, "", "", 1, 1, 0, 0, 0, "0" * 64)
    signature = sign_part(part, signer)

    def open_record() -> None:
        ResponseOpener(key).open(record)

    return {
        "seal_body_1kib_us": _median_us(lambda: seal_body(body, info), n),
        "wrap_key_per_worker_us": _median_us(
            lambda: wrapper.wrap(sealed.content_key, public, info), n),
        "open_request_1kib_us": _median_us(
            lambda: open_request(sealed.data, wrapped, unwrapper, info), n),
        # what a session's first request costs each end (once per worker per 10 minutes)
        "new_session_wrap_us": _median_us(
            lambda: KeyWrapper().wrap(sealed.content_key, public, info), n // 4),
        "new_session_open_us": _median_us(
            lambda: open_request(sealed.data, wrapped, KeyUnwrapper(worker), info), n // 4),
        "seal_record_1200b_us": _median_us(
            lambda: ResponseSealer(key).seal(b"y" * _RECORD, 9), n),
        "open_record_1200b_us": _median_us(open_record, n),
        "sign_receipt_part_us": _median_us(lambda: sign_part(part, signer), n // 4),
        "check_receipt_signature_us": _median_us(
            lambda: check_signature(cert, signature, part, "worker"), n // 4),
    }


def run_seal(duration: float, repeat: int, progress: Progress,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    progress("seal: timing one seal and one open")
    out: dict[str, Any] = {"costs": seal_costs()}
    for name in _LOADS:
        light = {"name": "light", "streams": _LIGHT_STREAMS} if name == "light" else {}
        spec = replace(MODES["paced" if light else name], **{**(overrides or {}), **light})
        out[name] = _through_up(spec, duration, repeat, progress)
    out["meets_target"] = out["paced"]["meets_target"]
    return out


def format_seal(section: dict[str, Any]) -> list[str]:
    lines = ["seal: cocoon up with its defaults (sealing on) against the same with "
             "--client-set seal=off"]
    for name in _LOADS:
        if name not in section:  # a report from before the light load
            continue
        s = section[name]
        sealed, clear = s["sealed"], s["clear"]
        target = (f" (target >= {TARGET_RATIO}x and paired TTFT <= +{TARGET_TTFT_ADDED_MS:g} ms: "
                  f"{'met' if s['meets_target'] else 'MISSED'})" if s["targeted"] else "")
        lines.append(f"  {name} [{s['load']}]: sealed {sealed['chunks_per_s']:.0f} chunks/s, "
                     f"clear {clear['chunks_per_s']:.0f}: {s['chunks_ratio']:.3f}x; TTFT p50 "
                     f"{clear['ttft_ms']['p50']:.2f} -> {sealed['ttft_ms']['p50']:.2f} ms "
                     f"({s['ttft_p50_added_ms']:+.2f}; paired "
                     f"{s.get('ttft_p50_paired_added_ms', math.nan):+.2f} over "
                     f"{len(s.get('ttft_p50_pair_diffs_ms', []))} pairs); errors "
                     f"{sealed['errors']} / {clear['errors']}{target}")
    c = section["costs"]
    lines.append("  one operation (us, median of 5 rounds): "
                 + ", ".join(f"{k.removesuffix('_us').replace('_', ' ')} {v:.1f}"
                             for k, v in c.items()))
    return lines
