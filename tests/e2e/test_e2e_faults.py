"""Failures across processes: an app that disconnects, a worker killed mid-request, no
worker left, a request that outlives the proxy's deadline. None of them may hang."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import openai
import pytest

pytestmark = pytest.mark.e2e

SLOW = ["engine.fake.delay_ms=50", "engine.fake.chunks=200"]  # a 10 s generation
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "take your time"}]}


def sdk(net: Any, timeout: float = 30) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=net.base_url, api_key="unused", max_retries=0,
                              timeout=timeout)


async def poll(check: Any, what: str, wait_for: Any, limit: float = 10.0) -> Any:
    """wait_for off the event loop, so the test's own requests keep running meanwhile."""
    return await asyncio.to_thread(wait_for, check, what, limit)


# --- app disconnects -------------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_net(start_network):
    return start_network(engine="fake", worker_sets=SLOW)


def snapshot(net: Any, stats: Any) -> dict[str, dict[str, Any]]:
    return {"worker": stats(net.workers[0].http), "proxy": stats(net.proxy.http),
            "client": stats(net.client.http)}


async def test_stream_disconnect_stops_generation(slow_net, stats, wait_for):
    before = snapshot(slow_net, stats)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(slow_net.base_url + "/chat/completions",
                                  json={**CHAT, "stream": True})
        assert resp.status == 200
        events = 0
        while events < 3:
            line = await asyncio.wait_for(resp.content.readline(), 10)
            assert line, "stream ended early"
            events += line.startswith(b"data: ")
        assert stats(slow_net.workers[0].http)["active"] == 1
        resp.close()  # drops the TCP connection mid-stream
    worker = await poll(
        lambda: (s := stats(slow_net.workers[0].http))["requests"]["cancelled"]
        > before["worker"]["requests"]["cancelled"] and s, "worker cancelled", wait_for)
    assert worker["engine"]["cancelled"] == before["worker"]["engine"]["cancelled"] + 1
    assert worker["requests"]["completed"] == before["worker"]["requests"]["completed"]
    await poll(lambda: stats(slow_net.workers[0].http)["active"] == 0, "worker idle", wait_for)
    proxy = stats(slow_net.proxy.http)
    assert proxy["requests"]["cancelled"] == before["proxy"]["requests"]["cancelled"] + 1
    assert proxy["requests"]["in_flight"] == 0
    assert proxy["workers"][0]["active"] == 0
    client = stats(slow_net.client.http)
    assert client["requests"]["disconnected"] == before["client"]["requests"]["disconnected"] + 1
    # Generation stopped: far fewer than 200 chunks went out.
    assert worker["chunks_sent"] - before["worker"]["chunks_sent"] < 150


async def test_non_stream_disconnect_stops_generation(slow_net, stats, wait_for):
    before = stats(slow_net.workers[0].http)
    async with sdk(slow_net, timeout=0.5) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(**CHAT)  # the SDK hangs up after 0.5 s
    worker = await poll(
        lambda: (s := stats(slow_net.workers[0].http))["active"] == 0
        and s["requests"]["cancelled"] > before["requests"]["cancelled"] and s,
        "worker cancelled", wait_for)
    assert worker["engine"]["cancelled"] == before["engine"]["cancelled"] + 1
    assert worker["requests"]["completed"] == before["requests"]["completed"]


# --- workers die -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def doomed_net(start_network):
    return start_network(engine="fake", workers=2, worker_sets=SLOW)


async def test_worker_killed_mid_request_fails_fast(doomed_net, stats, wait_for):
    net = doomed_net
    async with sdk(net) as client:
        stream = await client.chat.completions.create(**CHAT, stream=True)
        got = 0
        async for chunk in stream:
            got += bool(chunk.choices[0].delta.content)
            if got == 3:
                break
        unary = asyncio.create_task(client.chat.completions.create(**CHAT))
        await poll(lambda: sum(stats(w.http)["active"] for w in net.workers) == 2,
                   "both requests running", wait_for)
        for w in net.workers:
            w.proc.send_signal(signal.SIGKILL)
        for w in net.workers:
            w.proc.wait(timeout=10)

        async def drain() -> None:
            async for _ in stream:
                pass

        with pytest.raises(openai.APIError) as info:
            await asyncio.wait_for(drain(), 5)
        assert not isinstance(info.value, openai.APIConnectionError)
        assert info.value.body["code"] == "worker_lost"
        assert "disconnected" in info.value.message

        with pytest.raises(openai.APIStatusError) as status_info:
            await asyncio.wait_for(unary, 5)
        assert status_info.value.status_code == 502
        assert status_info.value.body["code"] == "worker_lost"
    proxy = stats(net.proxy.http)
    assert proxy["requests"]["worker_lost"] == 2
    assert proxy["requests"]["in_flight"] == 0


def test_no_worker_left_is_503(doomed_net, stats, wait_for):
    net = doomed_net
    for w in net.workers:
        if w.alive():
            w.proc.send_signal(signal.SIGKILL)
            w.proc.wait(timeout=10)
    wait_for(lambda: stats(net.proxy.http)["workers"] == [], "workers gone from the proxy")
    with openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0,
                       timeout=10) as client:
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(**CHAT, stream=stream)
            assert info.value.status_code == 503
            assert info.value.body["code"] == "no_worker_available"
            assert "no worker" in info.value.message
        # A model nobody ever served is still a 404, not a 503.
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(**{**CHAT, "model": "never-served"})
    assert net.proxy.alive() and net.client.alive()


# --- deadlines -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deadline_net(start_network):
    return start_network(engine="fake", worker_sets=SLOW, proxy_sets=["request_timeout_s=1"])


async def test_request_timeout_is_504(deadline_net, stats, wait_for):
    net = deadline_net
    async with sdk(net) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await asyncio.wait_for(client.chat.completions.create(**CHAT), 10)
        assert info.value.status_code == 504
        assert info.value.body["code"] == "timeout"

        stream = await client.chat.completions.create(**CHAT, stream=True)

        async def drain() -> int:
            n = 0
            async for _ in stream:
                n += 1
            return n

        with pytest.raises(openai.APIError) as info:
            await asyncio.wait_for(drain(), 10)
        assert info.value.body["code"] == "timeout"
    # The worker stopped generating; nothing is left running anywhere.
    worker = await poll(lambda: (s := stats(net.workers[0].http))["active"] == 0 and s,
                        "worker idle", wait_for)
    assert worker["requests"]["completed"] == 0
    assert worker["engine"]["cancelled"] == 2
    assert stats(net.proxy.http)["requests"]["in_flight"] == 0
