"""Billing of requests that end early, through real processes: an app that hangs up
mid-stream (or mid-generation of a unary request), and an engine that fails mid-stream. Each
is settled to exactly the usage the worker reported for the tokens it generated (never
released for free), and the money adds up: worker earned + commission == client charged."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from cocoon.commands.up import LocalNetwork
from cocoon.ledger import Ledger

pytestmark = pytest.mark.e2e

PRICE, FEE = 2, 1  # BillingConfig defaults: nanoTON per adjusted token (1.0x multipliers)
FAIL_AFTER = 60  # the fake engine fails after this many tokens (10 ms each)
CONTENT = "bill me for what you made"  # 25 bytes: 6 prompt tokens (fake engine: bytes // 4)
PROMPT_TOKENS = len(CONTENT.encode()) // 4


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/stats", timeout=5) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def net() -> Iterator[LocalNetwork]:
    with LocalNetwork(engine="fake", billing=True, demo_funds=10**6, attestation="off",
                      worker_sets=["engine.fake.chunks=400", "engine.fake.delay_ms=10",
                                   f"engine.fake.fail_after={FAIL_AFTER}"]) as n:
        n.start()
        yield n


def books(net: LocalNetwork) -> dict[str, Any]:
    """The proxy's ledger figures for the client and the worker, and the worker's own
    count of the tokens it reported."""
    assert net.proxy is not None
    billing = get(net.proxy.http)["billing"]
    worker = get(net.workers[0].http)
    return {"client": billing["clients"][net.client_account],
            "worker": billing["workers"]["worker:worker-1"], "totals": billing["totals"],
            "reported": worker["tokens"], "requests": worker["requests"]}


def settled_after(net: LocalNetwork, before: dict[str, Any], what: str) -> dict[str, Any]:
    """Poll until the worker has ended one more request early and the proxy holds no
    reservation; then the books."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = books(net)
        ended = sum(now["requests"][k] - before["requests"][k] for k in ("cancelled", "failed"))
        if ended >= 1 and now["totals"]["open_reservations"] == 0 \
                and now["client"]["reserved"] == 0:
            return now
        time.sleep(0.05)
    pytest.fail(f"{what}: not settled within 10 s: {books(net)}")


def assert_charged_exactly_what_was_reported(before: dict[str, Any], after: dict[str, Any],
                                             ) -> tuple[int, int]:
    prompt = after["reported"]["prompt"] - before["reported"]["prompt"]
    completion = after["reported"]["completion"] - before["reported"]["completion"]
    tokens = prompt + completion
    c0, c1 = before["client"], after["client"]
    w0, w1 = before["worker"], after["worker"]
    assert c1["tokens"] - c0["tokens"] == tokens
    assert c1["charged"] - c0["charged"] == tokens * PRICE
    assert w1["earned"] - w0["earned"] == tokens * FEE
    t0, t1 = before["totals"], after["totals"]
    assert (t1["earned"] - t0["earned"]) + (t1["commission"] - t0["commission"]) \
        == c1["charged"] - c0["charged"]
    assert t1["charged"] == t1["earned"] + t1["commission"]
    return prompt, completion


def client(net: LocalNetwork, timeout: float = 30) -> openai.OpenAI:
    return openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0,
                         timeout=timeout)


def test_stream_closed_early_is_charged_for_the_tokens_generated(net: LocalNetwork) -> None:
    before = books(net)
    stream = client(net).chat.completions.create(
        model="fake", messages=[{"role": "user", "content": CONTENT}], stream=True)
    seen = 0
    for chunk in stream:
        seen += bool(chunk.choices and chunk.choices[0].delta.content)
        if seen == 5:
            break
    stream.close()  # the app hangs up mid-stream
    after = settled_after(net, before, "closed stream")
    assert after["requests"]["cancelled"] == before["requests"]["cancelled"] + 1
    prompt, completion = assert_charged_exactly_what_was_reported(before, after)
    assert prompt == PROMPT_TOKENS
    assert seen <= completion < FAIL_AFTER  # what the app saw, and what was still in flight


def test_unary_abandoned_mid_generation_is_charged_for_the_tokens_generated(
        net: LocalNetwork) -> None:
    before = books(net)
    with pytest.raises(openai.APITimeoutError):
        client(net, timeout=0.2).chat.completions.create(
            model="fake", messages=[{"role": "user", "content": CONTENT}])
    after = settled_after(net, before, "abandoned unary request")
    prompt, completion = assert_charged_exactly_what_was_reported(before, after)
    assert prompt == PROMPT_TOKENS and 0 < completion < FAIL_AFTER


def test_engine_failure_mid_stream_is_charged_for_the_partial_tokens(
        net: LocalNetwork) -> None:
    before = books(net)
    seen = 0
    with pytest.raises(openai.APIError) as info:
        for chunk in client(net).chat.completions.create(
                model="fake", messages=[{"role": "user", "content": CONTENT}], stream=True):
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
    assert info.value.body["code"] == "engine_error"  # type: ignore[index]
    assert seen == FAIL_AFTER
    after = settled_after(net, before, "failed stream")
    assert after["requests"]["failed"] == before["requests"]["failed"] + 1
    assert assert_charged_exactly_what_was_reported(before, after) == (PROMPT_TOKENS,
                                                                       FAIL_AFTER)
    assert after["client"]["charged"] - before["client"]["charged"] \
        == (PROMPT_TOKENS + FAIL_AFTER) * PRICE


def test_nothing_generated_is_released_and_the_ledger_is_consistent(
        net: LocalNetwork) -> None:
    before = books(net)
    with pytest.raises(openai.BadRequestError):  # refused by the worker before generating
        client(net).chat.completions.create(
            model="fake", messages=[{"role": "user", "content": CONTENT}], n=2)
    after = settled_after(net, before, "refused request")
    assert after["client"]["charged"] == before["client"]["charged"]
    assert after["client"]["tokens"] == before["client"]["tokens"]
    with Ledger(net.ledger_path) as ledger:
        assert ledger.check_invariants() == []
