"""Every role's ``/metrics`` (a real ClientNode, ProxyNode with billing and WorkerNode on
loopback), read with prometheus-client's own parser after requests made with the official
SDK: what each counted, and that no label carries what was asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from loopback import T, ask, running, running_proxy, until
from prometheus_client.parser import text_string_to_metric_families

from cocoon.config import BillingConfig, ClientConfig, WorkerConfig
from cocoon.engines import FakeEngine, FakeEngineConfig
from cocoon.errors import AttestationError
from cocoon.ledger import Ledger
from cocoon.nodes.client.node import ClientNode
from cocoon.nodes.worker.node import WorkerNode
from cocoon.transport import TcpConnector

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


async def scrape(url: str) -> tuple[Samples, str]:
    async with httpx.AsyncClient(timeout=T) as http:
        r = await http.get(url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out, r.text


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


async def test_each_role_counts_its_requests_tokens_slots_and_money(tmp_path: Path) -> None:
    billing = BillingConfig(enabled=True, ledger_path=str(tmp_path / "ledger.sqlite"),
                            signing_key_file=str(tmp_path / "k.pem"))
    with Ledger(billing.ledger_path) as ledger:
        ledger.deposit("node:c1", 10**12)
    async with running_proxy(node_id="proxy", billing=billing) as net:
        port = net.proxy.port
        worker = WorkerNode(WorkerConfig(proxy=f"127.0.0.1:{port}", http="127.0.0.1:0",
                                         node_id="w1", max_concurrent=3),
                            FakeEngine(FakeEngineConfig(chunks=6, chunk_bytes=4)),
                            connector=TcpConnector())
        client = ClientNode(ClientConfig(proxy=f"127.0.0.1:{port}", http="127.0.0.1:0",
                                         node_id="c1"), connector=TcpConnector())
        async with running(worker), running(client):
            await until(lambda: any(link.offers("fake") for link in client.links))
            secret = "the canary sings at dawn"
            async with openai.AsyncOpenAI(base_url=client.http.url + "/v1", api_key="x",
                                          max_retries=0, timeout=T) as app:
                await app.chat.completions.create(
                    model="fake", messages=[{"role": "user", "content": secret}])
                with pytest.raises(openai.APIStatusError):
                    await app.chat.completions.create(
                        model="no-such-model", messages=[{"role": "user", "content": "x"}])
            assert await ask(client.http.url, stream=True)
            with pytest.raises(AttestationError):
                client._check(b"not a certificate", "worker")  # a forwarded one refused

            c, c_text = await scrape(client.http.url)
            p, p_text = await scrape(net.proxy.http.url)
            w, w_text = await scrape(worker.http.url)

    for text in (c_text, p_text, w_text):
        assert "canary" not in text and "hello" not in text
    # the client: two answered, the unknown model refused with its code
    assert one(c, "cocoon_requests_total", endpoint="chat", model="fake", outcome="ok") == 2
    # a model nobody serves is "other": names an app makes up do not become series
    failed = {k: v for k, v in c["cocoon_requests_total"].items()
              if dict(k)["model"] == "other"}
    [(labels, n)] = failed.items()
    assert n == 1 and dict(labels)["outcome"] == "model_not_found"
    assert one(p, "cocoon_requests_total", endpoint="chat", model="other",
               outcome="model_not_found") == 1
    assert one(c, "cocoon_time_to_first_token_seconds_count", model="fake") == 2
    assert one(c, "cocoon_tokens_total", model="fake", kind="completion") > 0
    assert one(c, "cocoon_client_requests_in_flight") == 0
    assert one(c, "cocoon_client_receipts_total") == 2
    assert one(c, "cocoon_attestation_refusals_total", rule="cert_format") == 1
    assert one(c, "cocoon_node_info", role="client", node_id="c1") == 1
    assert c["process_resident_memory_bytes"][()] > 0
    # the proxy: the same two, its worker's slots and measured speed, the ledger's money
    assert one(p, "cocoon_requests_total", endpoint="chat", model="fake", outcome="ok") == 2
    assert one(p, "cocoon_proxy_worker_slots", worker="w1") == 3
    assert one(p, "cocoon_proxy_worker_active_requests", worker="w1") == 0
    assert one(p, "cocoon_proxy_worker_requests_total", worker="w1") == 2
    assert one(p, "cocoon_proxy_worker_ttft_seconds", worker="w1") > 0
    charged = one(p, "cocoon_ledger_charged_nanoton_total")
    earned = one(p, "cocoon_ledger_earned_nanoton_total")
    commission = one(p, "cocoon_ledger_commission_nanoton_total")
    assert charged > 0 and charged == earned + commission
    assert one(p, "cocoon_ledger_reserved_nanoton") == 0
    assert one(p, "cocoon_ledger_settled_requests_total") == 2
    assert one(p, "cocoon_proxy_sealed_requests_total") == 3  # the refused one too
    # the worker: the two it served, sealed to it under one session
    assert one(w, "cocoon_requests_total", endpoint="chat", model="fake", outcome="ok") == 2
    assert one(w, "cocoon_worker_slots") == 3
    assert one(w, "cocoon_worker_sealed_requests_total") == 2
    assert one(w, "cocoon_worker_seal_sessions") == 1
    assert one(w, "cocoon_time_to_first_token_seconds_count", model="fake") == 2
    prompt = one(w, "cocoon_tokens_total", model="fake", kind="prompt")
    assert prompt == one(p, "cocoon_tokens_total", model="fake", kind="prompt") > 0


async def test_metrics_speak_openmetrics_when_asked() -> None:
    async with running_proxy(node_id="proxy") as net, httpx.AsyncClient(timeout=T) as http:
        r = await http.get(net.proxy.http.url + "/metrics",
                           headers={"Accept": "application/openmetrics-text; "
                                              "version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    names: Any = {f.name for f in text_string_to_metric_families(
        r.text.replace("# EOF\n", ""))}
    assert "cocoon_proxy_requests_in_flight" in names
