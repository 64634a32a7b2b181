"""The bench's human-readable table."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["format_report"]

_NOISY = 0.10  # "other" CPU above this share of the machine: say the run was disturbed
_CPU_COLS = ("direct", "client", "proxy", "worker", "servers", "loadgen", "other")


def _num(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def _mode_lines(name: str, section: dict[str, Any]) -> list[str]:
    cfg = section["config"]
    pace = (f"{1000.0 / cfg['delay_ms']:.0f} chunks/s per stream "
            f"(delay {cfg['delay_ms']:.1f} ms)" if cfg["delay_ms"] else "no delay")
    lines = [
        f"== {name}: {cfg['streams']} streams, {cfg['chunks']} chunks x {cfg['chunk_bytes']} B, "
        f"{pace}; {cfg['duration_s']:g} s per phase, median of {cfg['repeat']} ==",
        f"{'':8}{'req/s':>9}{'chunks/s':>10}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'lat p50':>10}{'lat p99':>10}{'requests':>10}{'errors':>8}",
    ]
    for side in ("direct", "chain"):
        r = section[side]
        lines.append(
            f"{side:8}{_num(r['requests_per_s'], '.1f'):>9}{_num(r['chunks_per_s'], '.0f'):>10}"
            f"{_num(r['ttft_ms']['p50'], '.2f'):>10}{_num(r['ttft_ms']['p99'], '.2f'):>10}"
            f"{_num(r['latency_ms']['p50'], '.1f'):>10}{_num(r['latency_ms']['p99'], '.1f'):>10}"
            f"{r['requests']:>10}{r['errors']:>8}")
    lines.append(f"(req/s, chunks/s: closed-loop rate summed over streams; TTFT, latency in ms; "
                 f"chunks = SSE data events, {cfg['events_per_request']} per request)")
    lines.append("CPU s per 1k chunks " + "".join(f"{c:>9}" for c in _CPU_COLS))
    for side in ("direct", "chain"):
        cpu = section[side]["cpu_s_per_1k_chunks"]
        lines.append(f"{side:20}" + "".join(f"{_num(cpu.get(c), '.3f'):>9}" for c in _CPU_COLS))
    lines.append("(other = busy CPU of the rest of the machine: other processes, kernel "
                 "networking)")
    for side in ("direct", "chain"):
        share = section[side].get("other_cpu_share")
        if share is not None and not math.isnan(share) and share > _NOISY:
            lines.append(f"!! {side}: the rest of the machine kept {share:.0%} of the CPU busy "
                         "during this run; compare with care")
    cmp = section["comparison"]
    t = cmp["targets"]
    verdict = "meets" if cmp["meets_targets"] else "MISSES"
    target = f">= {t['throughput_ratio_min']:g}x"
    if t["ttft_p50_added_ms_max"] is not None:
        target += f", TTFT p50 added <= {t['ttft_p50_added_ms_max']:g} ms"
    lines.append(
        f"chain/direct: throughput {_num(cmp['throughput_ratio'], '.3f')}x, "
        f"chunks/s {_num(cmp['chunks_ratio'], '.3f')}x, "
        f"TTFT p50 added {_num(cmp['ttft_p50_added_ms'], '+.2f')} ms, "
        f"server CPU per chunk {_num(cmp['servers_cpu_ratio'], '.2f')}x  "
        f"[{verdict} target: {target}]")
    for side in ("direct", "chain"):
        r = section[side]
        if r["errors"]:
            kinds = ", ".join(f"{k}={n}" for k, n in sorted(r["error_kinds"].items()))
            lines.append(f"!! {side}: {r['errors']} errors ({kinds})")
            lines.extend(f"   {s}" for s in r["error_samples"])
    return lines


def _llama_lines(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return ["== llama: skipped ==", f"  {section['skipped']}"]
    if "error" in section:
        return ["== llama: FAILED ==", f"  {section['error']}"]
    d, c = section["direct"], section["chain"]
    lines = [
        f"== llama: {section['model']} ({section['gguf']}), temperature 0, "
        f"max_tokens {section['max_tokens']}, {section['runs']} sequential runs per side ==",
        f"{'':22}{'tokens':>8}{'tok/s p50':>11}{'min':>9}{'max':>9}  same text",
        f"{'direct (in-process)':22}{d['completion_tokens']:>8}"
        f"{_num(d['tokens_per_s']['p50'], '.1f'):>11}{_num(d['tokens_per_s']['min'], '.1f'):>9}"
        f"{_num(d['tokens_per_s']['max'], '.1f'):>9}  {d['same_text_every_run']}",
        f"{'chain':22}{c['completion_tokens']:>8}"
        f"{_num(c['tokens_per_s']['p50'], '.1f'):>11}{_num(c['tokens_per_s']['min'], '.1f'):>9}"
        f"{_num(c['tokens_per_s']['max'], '.1f'):>9}  {c['same_text_as_direct']}",
        f"chain/direct tokens/s: {_num(section['ratio'], '.3f')}x  "
        f"[{'meets' if section['meets_target'] else 'MISSES'} target: "
        f">= {section['target_ratio_min']:g}x]",
    ]
    return lines


def format_report(report: dict[str, Any]) -> str:
    host = report["host"]
    lines = [f"cocoon bench: {host['cpus']} CPUs, Python {host['python']}, "
             f"{host['platform']}, load average at start {host['loadavg_start']}"]
    for name, section in report["modes"].items():
        lines.append("")
        lines.extend(_mode_lines(name, section))
    if "llama" in report:
        lines.append("")
        lines.extend(_llama_lines(report["llama"]))
    return "\n".join(lines)
