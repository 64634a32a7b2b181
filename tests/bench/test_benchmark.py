"""The bench machinery (not performance: no timing is asserted anywhere here).

One short ``cocoon bench --quick`` run over both fake-engine modes checks the JSON report's
shape and that its counts add up; the pure helpers get unit tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from cocoon.benchmark.loadgen import percentile
from cocoon.benchmark.runner import aggregate
from cocoon.cli import main

CHUNKS = 10
STREAMS = 5
EVENTS = CHUNKS + 2  # the fake engine's chat stream: role chunk, N chunks, finish chunk
ROLES = {"direct": {"direct", "loadgen", "other"},
         "chain": {"client", "proxy", "worker", "loadgen", "other"}}


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


@pytest.mark.e2e
def test_quick_bench_saturation_and_paced(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results" / "quick.json"
    rc = main(["bench", "--mode", "all", "--no-llama", "--quick", "--duration", "1.5",
               "--streams", str(STREAMS), "--chunks", str(CHUNKS), "--chunk-bytes", "64",
               "--json", str(out)])
    table = capsys.readouterr().out
    report = _strict_json(out.read_text())
    assert rc == 0, table
    assert report["ok"] is True
    assert report["version"] == 1
    assert "llama" not in report
    assert set(report["modes"]) == {"saturation", "paced"}
    for name, section in report["modes"].items():
        cfg = section["config"]
        assert cfg["streams"] == STREAMS
        assert cfg["chunks"] == CHUNKS
        assert cfg["chunk_bytes"] == 64
        assert cfg["events_per_request"] == EVENTS
        assert cfg["duration_s"] == 1.5
        assert (cfg["delay_ms"] > 0) == (name == "paced")
        for side in ("direct", "chain"):
            _check_side(side, section[side])
            assert len(section["runs"][side]) == 1
        cmp = section["comparison"]
        assert cmp["throughput_ratio"] == pytest.approx(
            section["chain"]["requests_per_s"] / section["direct"]["requests_per_s"])
        assert cmp["ttft_p50_added_ms"] == pytest.approx(
            section["chain"]["ttft_ms"]["p50"] - section["direct"]["ttft_ms"]["p50"])
        assert isinstance(cmp["meets_targets"], bool)
        assert f"== {name}:" in table
    assert table.count("chain/direct:") == 2


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
