"""The bench's human-readable table."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cocoon.benchmark.ledger import format_ledger
from cocoon.benchmark.proxies import format_proxies
from cocoon.benchmark.routing import format_routing
from cocoon.benchmark.seal import format_seal
from cocoon.benchmark.train import format_train

__all__ = ["format_report"]

_NOISY = 0.10  # "other" CPU above this share of the machine: say the run was disturbed
_CPU_COLS = ("direct", "client", "proxy", "worker", "servers", "loadgen", "other")
_STACK_CPU_COLS = ("upstream", "client", "proxy", "worker", "chain", "servers", "loadgen",
                   "other")


def _num(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def _sides(section: dict[str, Any]) -> list[tuple[str, str]]:
    """(JSON key, row label) of the sides measured."""
    if section["config"].get("kind") == "stack":
        return [("upstream", "upstream"), ("cocoon_up", "cocoon up")]
    att = section["config"].get("attestation", "fake")
    out = [("direct", "direct"), ("chain", f"chain {att}")]
    if "chain_plain" in section:
        out.append(("chain_plain", "chain off"))
    return out


def _cmp_line(label: str, cmp: dict[str, Any], *, full: bool = True) -> str:
    t = cmp["targets"]
    if t["throughput_ratio_min"] is None:
        target = "[no target]"
    else:
        target = f">= {t['throughput_ratio_min']:g}x"
        if t.get("ttft_p50_added_ms_max") is not None:
            target += f", TTFT p50 added <= {t['ttft_p50_added_ms_max']:g} ms"
        target = f"[{'meets' if cmp['meets_targets'] else 'MISSES'} target: {target}]"
    return (f"{label:13}throughput {_num(cmp['throughput_ratio'], '.3f')}x, "
            f"chunks/s {_num(cmp['chunks_ratio'], '.3f')}x, "
            f"TTFT p50 {_num(cmp['ttft_p50_added_ms'], '+.2f')} ms, "
            f"p99 {_num(cmp['ttft_p99_added_ms'], '+.2f')} ms, "
            f"server CPU/chunk {_num(cmp['servers_cpu_ratio'], '.2f')}x  {target}")


def _resource_lines(section: dict[str, Any], sides: list[tuple[str, str]]) -> list[str]:
    lines = ["RSS MB / open fds    start -> peak -> end"]
    for side, label in sides:
        for proc, r in section[side].get("resources", {}).items():
            m, f = r["rss_mb"], r["fds"]
            lines.append(f"{label + ' ' + proc:20}{m['start']:7.0f} ->{m['peak']:5.0f} ->"
                         f"{m['end']:5.0f} MB   {f['start']:5} ->{f['peak']:5} ->{f['end']:5}")
    return lines


def _mode_lines(name: str, section: dict[str, Any]) -> list[str]:
    cfg = section["config"]
    sides = _sides(section)
    stack = cfg.get("kind") == "stack"
    pace = (f"{1000.0 / cfg['delay_ms']:.0f} chunks/s per stream "
            f"(delay {cfg['delay_ms']:.1f} ms)" if cfg["delay_ms"] else "no delay")
    what = ("cocoon up with its defaults (RA-TLS fake, billing, embedded chain, openai-http "
            "engine) vs the bare upstream" if stack else
            f"chain attestation {cfg.get('attestation', 'fake')}"
            f"{' (and off)' if 'chain_plain' in section else ''}")
    lines = [
        f"== {name}: {cfg['streams']} streams, {cfg['chunks']} chunks x {cfg['chunk_bytes']} B, "
        f"{pace}; {what}; "
        f"{cfg['duration_s']:g} s per phase, median of {cfg['repeat']} ==",
        f"{'':12}{'req/s':>9}{'chunks/s':>10}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'lat p50':>10}{'lat p99':>10}{'requests':>10}{'errors':>8}",
    ]
    for side, label in sides:
        r = section[side]
        lines.append(
            f"{label:12}{_num(r['requests_per_s'], '.1f'):>9}{_num(r['chunks_per_s'], '.0f'):>10}"
            f"{_num(r['ttft_ms']['p50'], '.2f'):>10}{_num(r['ttft_ms']['p99'], '.2f'):>10}"
            f"{_num(r['latency_ms']['p50'], '.1f'):>10}{_num(r['latency_ms']['p99'], '.1f'):>10}"
            f"{r['requests']:>10}{r['errors']:>8}")
    lines.append(f"(req/s, chunks/s: closed-loop rate summed over streams; TTFT, latency in ms; "
                 f"chunks = SSE data events, {cfg['events_per_request']} per request)")
    cols = _STACK_CPU_COLS if stack else _CPU_COLS
    lines.append("CPU s per 1k chunks " + "".join(f"{c:>9}" for c in cols))
    for side, label in sides:
        cpu = section[side]["cpu_s_per_1k_chunks"]
        lines.append(f"{label:20}" + "".join(f"{_num(cpu.get(c), '.3f'):>9}" for c in cols))
    if stack:
        lines.extend(_resource_lines(section, sides))
    lines.append("(other = busy CPU of the rest of the machine: other processes, kernel "
                 "networking)")
    for side, label in sides:
        share = section[side].get("other_cpu_share")
        if share is not None and not math.isnan(share) and share > _NOISY:
            lines.append(f"!! {label}: the rest of the machine kept {share:.0%} of the CPU busy "
                         "during this run; compare with care")
    chain_label = f"{cfg.get('attestation', 'fake')}/direct:"
    lines.append(_cmp_line("up/upstream:" if stack else
                           chain_label if "chain_plain" in section else "chain/direct:",
                           section["comparison"]))
    if "chain_plain" in section:
        lines.append(_cmp_line("off/direct:", section["comparison_plain"]))
        lines.append(_cmp_line(f"{cfg.get('attestation', 'fake')}/off:",
                               section["tls_comparison"]))
    for side, label in sides:
        r = section[side]
        if r["errors"]:
            kinds = ", ".join(f"{k}={n}" for k, n in sorted(r["error_kinds"].items()))
            lines.append(f"!! {label}: {r['errors']} errors ({kinds})")
            lines.extend(f"   {s}" for s in r["error_samples"])
    return lines


def _handshake_lines(section: dict[str, Any]) -> list[str]:
    head = f"{'':28}{'mean':>9}{'p50':>9}{'p99':>9}{'min':>9}{'max':>9}"

    def row(label: str, t: dict[str, Any]) -> str:
        return f"{label:28}" + "".join(
            f"{_num(t[k], '.3f'):>9}" for k in ("mean", "p50", "p99", "min", "max"))

    hs, ops = section["handshakes_ms"], section["operations_ms"]
    lines = [
        f"== handshake: {section['n']} sequential connections per kind, in-process on "
        f"loopback (both ends' CPU), ms ==",
        head,
        row("RA-TLS fake-tdx, mutual", hs["fake-tdx"]),
        row("  same peers again (cached)", hs["fake-tdx-cached"]),
        row("RA-TLS none, mutual", hs["none"]),
        row("plain TCP connect", hs["tcp"]),
        row("verify one fake quote", ops["verify_fake_quote"]),
        row("make one fake quote", ops["make_fake_quote"]),
        row("identity fake-tdx", ops["identity_fake_tdx"]),
        row("identity none", ops["identity_none"]),
        f"(fake-tdx quote {section['fake_tdx_quote_bytes']} B, certificate "
        f"{section['fake_tdx_cert_bytes']} B; identity = P-256 key + quote + certificate)",
    ]
    if section["errors"]:
        lines.append(f"!! {section['errors']} failed connections")
        lines.extend(f"   {s}" for s in section["error_samples"])
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
        f"{'chain ' + section.get('attestation', 'fake'):22}{c['completion_tokens']:>8}"
        f"{_num(c['tokens_per_s']['p50'], '.1f'):>11}{_num(c['tokens_per_s']['min'], '.1f'):>9}"
        f"{_num(c['tokens_per_s']['max'], '.1f'):>9}  {c['same_text_as_direct']}",
        f"chain/direct tokens/s: {_num(section['ratio'], '.3f')}x  "
        f"[{'meets' if section['meets_target'] else 'MISSES'} target: "
        f">= {section['target_ratio_min']:g}x]",
    ]
    return lines


def format_report(report: dict[str, Any]) -> str:
    host = report["host"]
    params = report.get("params", {})
    lines = [f"cocoon bench: {host['cpus']} CPUs, Python {host['python']}, "
             f"{host['platform']}, load average at start {host['loadavg_start']}"]
    if "attestation" in params:
        lines.append(f"chain attestation: {params['attestation']}"
                     f"{', compared with off (plain TCP)' if params.get('tls_compare') else ''}")
    for name, section in report["modes"].items():
        lines.append("")
        lines.extend(_mode_lines(name, section))
    sections: list[tuple[str, Callable[[dict[str, Any]], list[str]]]] = [
        ("llama", _llama_lines), ("routing", format_routing), ("proxies", format_proxies),
        ("seal", format_seal), ("train", format_train),
        ("ledger", format_ledger), ("handshake", _handshake_lines)]
    for key, render in sections:
        if key in report:
            lines.append("")
            lines.extend(render(report[key]))
    return "\n".join(lines)
