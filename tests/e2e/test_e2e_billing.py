"""Billing through real processes: every request is reserved, then charged exactly what the
worker's usage and the prices say; an account that cannot cover a request gets HTTP 402."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from cocoon.commands.roles import LEDGER_MONEY
from cocoon.commands.up import LocalNetwork
from cocoon.ledger import Ledger

PRICE, FEE = 2, 1  # BillingConfig defaults: nanoTON per adjusted token


def billing(net: LocalNetwork) -> dict[str, Any]:
    assert net.proxy is not None
    with urllib.request.urlopen(net.proxy.http + "/stats", timeout=5) as resp:
        return json.load(resp)["billing"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def net() -> Iterator[LocalNetwork]:
    with LocalNetwork(engine="fake", billing=True, demo_funds=1_000_000,
                      worker_sets=["engine.fake.chunks=20"]) as n:
        n.start()
        yield n


def test_stream_and_unary_charged_exactly(net: LocalNetwork) -> None:
    client = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0)
    before = billing(net)
    acct = net.client_account
    assert before["clients"][acct]["deposited"] == 1_000_000

    unary = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hello there, worker"}],
        max_tokens=7)
    assert unary.usage is not None
    usage = [unary.usage.prompt_tokens + unary.usage.completion_tokens]
    for chunk in client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "stream please"}],
            stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage.append(chunk.usage.prompt_tokens + chunk.usage.completion_tokens)
    assert len(usage) == 2 and usage[1] == 20 + 3  # 20 chunks; "stream please" = 13 B // 4

    after = billing(net)
    tokens = sum(usage)
    c0, c1 = before["clients"][acct], after["clients"][acct]
    assert c1["charged"] - c0["charged"] == tokens * PRICE
    assert c1["tokens"] - c0["tokens"] == tokens
    assert c1["reserved"] == 0
    w0, w1 = before["workers"]["worker:worker-1"], after["workers"]["worker:worker-1"]
    assert w1["earned"] - w0["earned"] == tokens * FEE
    t = after["totals"]
    assert t["charged"] == t["earned"] + t["commission"]
    assert t["open_reservations"] == 0


def test_insufficient_funds_is_402_and_charges_nothing(net: LocalNetwork) -> None:
    client = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0)
    before = billing(net)["totals"]
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "x"}], max_tokens=10**6)
    assert ei.value.status_code == 402
    assert "top up" in str(ei.value) and "balance is too low" in str(ei.value)
    after = billing(net)["totals"]
    assert after["charged"] == before["charged"] and after["open_reservations"] == 0


def test_ledger_invariants_hold_after_traffic(net: LocalNetwork) -> None:
    client = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0)
    for i in range(5):
        client.completions.create(model="fake", prompt="p" * (i + 1), max_tokens=i + 1)
    with Ledger(net.ledger_path) as ledger:
        assert ledger.check_invariants() == []


def test_worker_never_generates_past_the_reserved_cap() -> None:
    """A request without max_tokens is reserved at the proxy's default cap, and the worker
    enforces that cap, so usage can never exceed what was reserved."""
    with LocalNetwork(engine="fake", billing=True, demo_funds=10**6, attestation="off",
                      proxy_sets=["billing.default_max_tokens=5"],
                      worker_sets=["engine.fake.chunks=50"]) as n:
        n.start()
        client = openai.OpenAI(base_url=n.base_url, api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="fake",
                                           messages=[{"role": "user", "content": "go"}])
        assert r.usage is not None and r.usage.completion_tokens == 5
        assert r.choices[0].finish_reason == "length"
        assert billing(n)["clients"]["node:client-1"]["tokens"] == 5 + 1


def test_cocoon_proxy_ledger_command(net: LocalNetwork) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "cocoon", "proxy", "ledger", "--json",
         "--set", f"billing.ledger_path={net.ledger_path}"],
        capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["consistent"] is True
    # the same figures, each amount of money named *_nanoton
    assert report["totals"] == {f"{k}_nanoton" if k in LEDGER_MONEY else k: v
                                for k, v in billing(net)["totals"].items()}


def test_client_and_worker_keep_verified_copies(net: LocalNetwork) -> None:
    """After paid requests, the client's and the worker's own copies hold the proxy-signed
    voucher whose amount equals the ledger's, and the CLI shows them."""
    import subprocess
    import sys

    client = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0)
    client.chat.completions.create(model="fake", max_tokens=3,
                                   messages=[{"role": "user", "content": "copy"}])
    assert net.client is not None
    ledger = billing(net)
    acct = ledger["clients"][net.client_account]
    earned = ledger["workers"]["worker:worker-1"]["earned"]

    def node_stats(url: str) -> dict[str, Any]:
        with urllib.request.urlopen(url + "/stats", timeout=5) as resp:
            return json.load(resp)["billing"]  # type: ignore[no-any-return]

    # Statements go out a few times a second (billing.statement_interval_s), not per
    # request: the copies catch up within one interval.
    import time
    deadline = time.monotonic() + 5.0
    while (node_stats(net.client.http).get("charged") != acct["charged"]
           or node_stats(net.workers[0].http).get("earned") != earned):
        assert time.monotonic() < deadline, "the statements never arrived"
        time.sleep(0.05)
    mine = node_stats(net.client.http)
    assert mine["rejected_statements"] == 0
    assert mine["charged"] == acct["charged"] == mine["voucher"]["cumulative_nanoton"]
    assert mine["available"] == acct["deposited"] - acct["charged"] - acct["reserved"]
    worker = node_stats(net.workers[0].http)
    assert worker["earned"] == earned == worker["voucher"]["cumulative_nanoton"]
    assert worker["voucher"]["proxy_key"] == mine["voucher"]["proxy_key"]

    host_port = net.client.http.removeprefix("http://")
    out = subprocess.run([sys.executable, "-m", "cocoon", "client", "balance", "--json",
                          "--http", host_port], capture_output=True, text=True, timeout=30,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["charged_nanoton"] == acct["charged"]
    out = subprocess.run([sys.executable, "-m", "cocoon", "worker", "earnings", "--json",
                          "--http", net.workers[0].http.removeprefix("http://")],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["earned_nanoton"] == earned


def test_proxy_commits_state_periodically() -> None:
    """With a short interval, the proxy records numbered commits of its totals after paid
    traffic, and the last one equals the ledger's totals."""
    import time

    with LocalNetwork(engine="fake", billing=True, demo_funds=10**6, attestation="off",
                      proxy_sets=["billing.commit_interval_s=0.2"]) as n:
        n.start()
        client = openai.OpenAI(base_url=n.base_url, api_key="unused", max_retries=0)
        client.completions.create(model="fake", prompt="commit me", max_tokens=4)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and billing(n)["commits"] < 1:
            time.sleep(0.05)
        with Ledger(n.ledger_path) as ledger:
            commits = ledger.commits()
            totals = ledger.totals()
        assert commits and [c.seqno for c in commits] == list(range(1, len(commits) + 1))
        assert (commits[-1].charged, commits[-1].earned) == (totals.charged, totals.earned)
        assert totals.charged > 0
