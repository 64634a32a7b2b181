"""cocoon.metrics and the chain's call counts, read back with prometheus-client's own parser."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cocoon.chain.metered import CALLS, MeteredChain
from cocoon.metrics import MAX_MODELS, NodeMetrics, counter, gauge


def parse(text: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_requests_are_counted_and_timed_by_bounded_labels() -> None:
    async def families() -> list[object]:
        return [gauge("cocoon_requests_in_flight", "now", 3),
                counter("cocoon_refusals", "by rule",
                        labels={"rule": {("tier",): 2, ("image",): 1}})]

    m = NodeMetrics(families)  # type: ignore[arg-type]
    m.request("chat", "smol", "ok", 0.8, ttft_s=0.02, prompt_tokens=12, completion_tokens=30)
    m.request("chat", "smol", "timeout", 30.0)
    body, content_type = await m.expose(None)
    assert content_type.startswith("text/plain")
    got = parse(body)
    assert got["cocoon_requests_total"] == {
        (("endpoint", "chat"), ("model", "smol"), ("outcome", "ok")): 1.0,
        (("endpoint", "chat"), ("model", "smol"), ("outcome", "timeout")): 1.0}
    assert got["cocoon_time_to_first_token_seconds_count"] == {(("model", "smol"),): 1.0}
    assert got["cocoon_time_to_first_token_seconds_bucket"][
        (("le", "0.025"), ("model", "smol"))] == 1.0
    assert got["cocoon_time_to_first_token_seconds_bucket"][
        (("le", "0.01"), ("model", "smol"))] == 0.0
    assert got["cocoon_request_duration_seconds_sum"][
        (("endpoint", "chat"), ("model", "smol"))] == pytest.approx(30.8)
    assert got["cocoon_tokens_total"] == {(("kind", "completion"), ("model", "smol")): 30.0,
                                          (("kind", "prompt"), ("model", "smol")): 12.0}
    assert got["cocoon_requests_in_flight"] == {(): 3.0}
    assert got["cocoon_refusals_total"] == {(("rule", "tier"),): 2.0, (("rule", "image"),): 1.0}
    assert got["process_resident_memory_bytes"][()] > 1e6
    openmetrics, kind = await m.expose("application/openmetrics-text; version=1.0.0")
    assert kind.startswith("application/openmetrics-text")
    assert openmetrics.endswith(b"# EOF\n")


def test_model_labels_are_bounded() -> None:
    m = NodeMetrics()
    names = [f"model-{i}" for i in range(MAX_MODELS + 10)]
    labels = {m.model(n) for n in names}
    assert len(labels) == MAX_MODELS + 1 and "other" in labels
    assert m.model("model-0") == "model-0"  # one seen before stays itself
    assert m.model("x" * 300) == "other"


async def test_chain_calls_are_counted_and_timed_and_failures_told_apart() -> None:
    ticks = iter([0.0, 0.25, 1.0, 1.5, 2.0, 2.0])

    class Backend:
        async def balance(self, address: str) -> int:
            if address == "bad":
                raise RuntimeError("no such account")
            await asyncio.sleep(0)
            return 7

        async def wait_for_change(self, seen: int, wait_s: float) -> int:
            return seen + 1

        def plain(self) -> str:
            return "not counted"

    CALLS.pop("balance", None)
    CALLS.pop("wait_for_change", None)
    chain = MeteredChain(Backend(), clock=lambda: next(ticks))
    assert await chain.balance("ok") == 7
    with pytest.raises(RuntimeError):
        await chain.balance("bad")
    assert await chain.wait_for_change(1, 5.0) == 2
    assert chain.plain() == "not counted"
    stats = CALLS["balance"]
    assert (stats.calls, stats.errors, stats.seconds) == (2, 1, pytest.approx(0.75))
    assert CALLS["wait_for_change"].calls == 1 and CALLS["wait_for_change"].seconds == 0.0
    assert "plain" not in CALLS
