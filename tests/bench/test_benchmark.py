"""The bench machinery (not performance: no timing is asserted anywhere here).

One short ``cocoon bench --mode all --quick`` run (both fake-engine modes with the RA-TLS and
the plain-TCP chain, and the handshake mode) checks the JSON report's shape and that its
counts add up; the pure helpers get unit tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.benchmark.loadgen import events_in, percentile
from cocoon.benchmark.runner import aggregate, compare_tls
from cocoon.cli import main

CHUNKS = 10
STREAMS = 5
HANDSHAKES = 5
EVENTS = CHUNKS + 2  # the fake engine's chat stream: role chunk, N chunks, finish chunk
CHAIN_ROLES = {"client", "proxy", "worker", "loadgen", "other"}
ROLES = {"direct": {"direct", "loadgen", "other"}, "chain": CHAIN_ROLES,
         "chain_plain": CHAIN_ROLES, "upstream": {"upstream", "loadgen", "other"},
         "cocoon_up": CHAIN_ROLES | {"chain", "upstream"}}
TIMING_KEYS = {"n", "mean", "p50", "p99", "min", "max"}


def _strict_json(text: str) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


def _check_side(side: str, r: dict[str, Any]) -> None:
    assert r["errors"] == 0, (side, r["error_kinds"], r["error_samples"])
    assert r["error_kinds"] == {}
    assert r["streams"] == STREAMS
    assert r["requests"] > 0
    assert r["chunks"] == r["requests"] * EVENTS
    assert r["chunks_per_request"] == EVENTS
    assert r["elapsed_s"] > 0
    assert r["requests_per_s_wall"] == pytest.approx(r["requests"] / r["elapsed_s"])
    assert r["chunks_per_s_wall"] == pytest.approx(r["requests_per_s_wall"] * EVENTS)
    assert r["requests_per_s"] > 0
    assert r["chunks_per_s"] == pytest.approx(r["requests_per_s"] * EVENTS)
    assert r["other_cpu_share"] >= 0
    for key in ("ttft_ms", "latency_ms"):
        assert set(r[key]) == {"p50", "p99"}
        assert 0 < r[key]["p50"] <= r[key]["p99"]
    assert r["ttft_ms"]["p50"] <= r["latency_ms"]["p50"]
    assert set(r["cpu_s"]) == ROLES[side]
    assert all(v >= 0 for v in r["cpu_s"].values())
    per_k = r["cpu_s_per_1k_chunks"]
    assert set(per_k) == ROLES[side] | {"servers"}
    for role, cpu in r["cpu_s"].items():
        assert per_k[role] == pytest.approx(cpu / (r["chunks"] / 1000.0))
    servers = sum(v for k, v in per_k.items() if k not in ("loadgen", "other", "servers"))
    assert per_k["servers"] == pytest.approx(servers)


def _check_ratios(cmp: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> None:
    """``cmp`` compares ``b`` against ``a`` (ratio b/a, b - a)."""
    assert cmp["throughput_ratio"] == pytest.approx(b["requests_per_s"] / a["requests_per_s"])
    assert cmp["ttft_p50_added_ms"] == pytest.approx(b["ttft_ms"]["p50"] - a["ttft_ms"]["p50"])
    assert isinstance(cmp["meets_targets"], bool)


def _check_handshake(hs: dict[str, Any]) -> None:
    assert hs["n"] == HANDSHAKES
    assert hs["errors"] == 0, hs["error_samples"]
    assert set(hs["handshakes_ms"]) == {"fake-tdx", "fake-tdx-cached", "none", "tcp"}
    assert set(hs["operations_ms"]) == {"verify_fake_quote", "make_fake_quote",
                                        "identity_fake_tdx", "identity_none"}
    for t in [*hs["handshakes_ms"].values(), *hs["operations_ms"].values()]:
        assert set(t) == TIMING_KEYS
        assert t["n"] == HANDSHAKES
        assert 0 < t["min"] <= t["p50"] <= t["p99"] <= t["max"]
        assert t["min"] <= t["mean"] <= t["max"]
    assert hs["fake_tdx_quote_bytes"] > 0
    assert hs["fake_tdx_cert_bytes"] > hs["fake_tdx_quote_bytes"]


@pytest.mark.e2e
def test_quick_bench_all_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results" / "quick.json"
    rc = main(["bench", "--mode", "all", "--no-llama", "--quick", "--duration", "1.0",
               "--streams", str(STREAMS), "--chunks", str(CHUNKS), "--chunk-bytes", "64",
               "--handshakes", str(HANDSHAKES), "--json", str(out)])
    table = capsys.readouterr().out
    report = _strict_json(out.read_text())
    assert rc == 0, table
    assert report["ok"] is True
    assert report["version"] == 1
    assert report["params"]["attestation"] == "fake"
    assert report["params"]["tls_compare"] is True
    assert "llama" not in report
    assert set(report["modes"]) == {"saturation", "paced"}
    for name, section in report["modes"].items():
        cfg = section["config"]
        assert cfg["streams"] == STREAMS
        assert cfg["chunks"] == CHUNKS
        assert cfg["chunk_bytes"] == 64
        assert cfg["events_per_request"] == EVENTS
        assert cfg["duration_s"] == 1.0
        assert cfg["attestation"] == "fake"
        assert cfg["tls_compare"] is True
        assert (cfg["delay_ms"] > 0) == (name == "paced")
        for side in ("direct", "chain", "chain_plain"):
            _check_side(side, section[side])
            assert len(section["runs"][side]) == 1
        d, tls, plain = section["direct"], section["chain"], section["chain_plain"]
        _check_ratios(section["comparison"], d, tls)
        _check_ratios(section["comparison_plain"], d, plain)
        _check_ratios(section["tls_comparison"], plain, tls)
        want = 0.95 if name == "paced" else None
        assert section["tls_comparison"]["targets"] == {"throughput_ratio_min": want}
        assert f"== {name}:" in table
    assert table.count("fake/direct:") == 2
    assert table.count("off/direct:") == 2
    assert table.count("fake/off:") == 2
    _check_handshake(report["handshake"])
    assert "== handshake:" in table
    assert "verify one fake quote" in table


def test_tls_compare_needs_a_tls_side(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--mode", "paced", "--tls-compare", "--attestation", "off"]) == 2
    assert "--tls-compare" in capsys.readouterr().err


def test_compare_tls_ratio_and_target() -> None:
    def side(rps: float, ttft: float) -> dict[str, Any]:
        return {"requests_per_s": rps, "chunks_per_s": rps * EVENTS,
                "ttft_ms": {"p50": ttft, "p99": ttft * 2},
                "latency_ms": {"p50": ttft * 10, "p99": ttft * 20},
                "cpu_s_per_1k_chunks": {"servers": 1.0}}

    cmp = compare_tls("paced", side(100.0, 2.0), side(96.0, 2.5))
    assert cmp["throughput_ratio"] == pytest.approx(0.96)
    assert cmp["ttft_p50_added_ms"] == pytest.approx(0.5)
    assert cmp["meets_targets"] is True
    assert compare_tls("paced", side(100.0, 2.0), side(90.0, 2.0))["meets_targets"] is False
    sat = compare_tls("saturation", side(100.0, 2.0), side(50.0, 2.0))
    assert sat["targets"]["throughput_ratio_min"] is None
    assert sat["meets_targets"] is True


@settings(max_examples=300, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=12), st.data())
def test_the_load_generator_counts_events_not_comments_however_a_stream_is_cut(
        kinds: list[bool], data: st.DataObject) -> None:
    """Events and comment blocks (the client's receipt) in any order, the stream cut into
    reads anywhere: exactly the data events are counted."""
    stream = b"".join(b'data: {"x":1}\n\n' if k else b": x-cocoon-receipt abc\n\n"
                      for k in kinds) + b"data: [DONE]\n\n"
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=8))))
    tail, counted = b"", 0
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        piece = stream[start:end]
        counted += events_in(piece, tail)
        tail = (tail + piece)[-16:]
    assert counted == sum(kinds) + 1  # the data events and [DONE]


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def _run(requests: int, rps: float, ttft: float) -> dict[str, Any]:
    return {"streams": 5, "requests": requests, "chunks": requests * EVENTS,
            "chunks_per_request": float(EVENTS), "errors": 1,
            "error_kinds": {"http_503": 1}, "error_samples": ["http_503: busy"],
            "requests_per_s": rps, "ttft_ms": {"p50": ttft, "p99": ttft * 2},
            "cpu_s": {"loadgen": 0.5}}


def test_aggregate_sums_counts_and_takes_medians() -> None:
    agg = aggregate([_run(10, 100.0, 1.0), _run(30, 300.0, 3.0), _run(20, 200.0, 2.0)])
    assert agg["runs"] == 3
    assert agg["requests"] == 60
    assert agg["chunks"] == 60 * EVENTS
    assert agg["chunks_per_request"] == EVENTS
    assert agg["errors"] == 3
    assert agg["error_kinds"] == {"http_503": 3}
    assert agg["requests_per_s"] == 200.0
    assert agg["ttft_ms"] == {"p50": 2.0, "p99": 4.0}
    assert agg["cpu_s"] == {"loadgen": 0.5}
    assert agg["streams"] == 5


def test_llama_section_skipped_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from cocoon.benchmark import llama
    from cocoon.benchmark.report import format_report

    monkeypatch.setattr(llama, "llama_unavailable", lambda: "llama-cpp-python is missing")
    seen: list[str] = []
    section = llama.run_llama(1, 8, seen.append)
    assert section == {"skipped": "llama-cpp-python is missing"}
    assert any("skipped" in s for s in seen)
    text = format_report({"host": {"cpus": 2, "python": "3", "platform": "x",
                                   "loadavg_start": [0.0]},
                          "modes": {}, "llama": section})
    assert "llama: skipped" in text
    assert "llama-cpp-python is missing" in text


def test_ledger_mode_reports_throughput_and_invariants() -> None:
    from cocoon.benchmark.ledger import format_ledger, run_ledger

    r = run_ledger(50, lambda msg: None)
    assert r["requests"] == 50 and r["invariant_problems"] == []
    assert r["reserve_per_s"] > 0 and r["settle_per_s"] > 0
    assert r["paid_requests_per_s"] < min(r["reserve_per_s"], r["settle_per_s"])
    assert any("invariants: hold" in line for line in format_ledger(r))


@pytest.mark.e2e
def test_quick_bench_of_what_users_run(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``--mode up``: cocoon up with its defaults in front of a separate upstream, against
    that bare upstream, both load shapes, with RSS and file descriptors per process."""
    out = tmp_path / "up.json"
    rc = main(["bench", "--mode", "up", "--quick", "--duration", "1.0",
               "--streams", str(STREAMS), "--chunks", str(CHUNKS), "--chunk-bytes", "64",
               "--json", str(out)])
    table = capsys.readouterr().out
    report = _strict_json(out.read_text())
    assert rc == 0, table
    assert report["ok"] is True
    assert set(report["modes"]) == {"up_paced", "up_saturation"}
    for name, section in report["modes"].items():
        cfg = section["config"]
        assert cfg["kind"] == "stack" and cfg["engine"] == "openai-http"
        assert (cfg["attestation"], cfg["billing"], cfg["payments_chain"]) == (
            "fake", True, "embedded")  # cocoon up's defaults
        assert cfg["streams"] == STREAMS and cfg["events_per_request"] == EVENTS
        for side in ("upstream", "cocoon_up"):
            _check_side(side, section[side])
        procs = set(section["cocoon_up"]["resources"])
        assert procs == {"client", "proxy", "worker", "chain", "upstream"}
        for r in section["cocoon_up"]["resources"].values():
            assert 0 < r["rss_mb"]["start"] <= r["rss_mb"]["peak"]
            assert r["fds"]["peak"] >= r["fds"]["start"] > 0
        _check_ratios(section["comparison"], section["upstream"], section["cocoon_up"])
        assert f"== {name}:" in table
    assert report["modes"]["up_paced"]["comparison"]["targets"] == {
        "throughput_ratio_min": 0.95, "ttft_p50_added_ms_max": 15.0}
    assert table.count("up/upstream:") == 2 and "RSS MB / open fds" in table
