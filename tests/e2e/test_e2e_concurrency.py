"""Many concurrent streams through one worker, each with its own correct content and usage."""

from __future__ import annotations

import asyncio

import openai
import pytest

pytestmark = pytest.mark.e2e

STREAMS = 20
CHUNKS = 30
PIECE = "x" * 127 + " "


@pytest.fixture(scope="module")
def net(start_network):
    return start_network(engine="fake", worker_sets=[
        "engine.fake.delay_ms=5", f"engine.fake.chunks={CHUNKS}", "max_concurrent=32"])


async def test_20_concurrent_streams_complete(net, stats, wait_for):
    before = stats(net.workers[0].http)
    seen_active = 0

    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[int, int, int]:
        nonlocal seen_active
        content = "u" * (4 * (i + 1))  # prompt_tokens = i + 1: each stream its own usage
        stream = await client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": content}], stream=True,
            max_tokens=CHUNKS - i % 3, stream_options={"include_usage": True})
        pieces, usage = 0, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            elif chunk.choices[0].delta.content:
                assert chunk.choices[0].delta.content == PIECE
                pieces += 1
        assert usage is not None
        return pieces, usage.prompt_tokens, usage.completion_tokens

    async def watch_active() -> None:
        nonlocal seen_active
        while True:
            s = await asyncio.to_thread(stats, net.workers[0].http)
            seen_active = max(seen_active, s["active"])
            await asyncio.sleep(0.05)

    async with openai.AsyncOpenAI(base_url=net.base_url, api_key="unused", max_retries=0,
                                  timeout=60) as client:
        watcher = asyncio.create_task(watch_active())
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(one(client, i) for i in range(STREAMS))), 60)
        finally:
            watcher.cancel()
    assert results == [(CHUNKS - i % 3, i + 1, CHUNKS - i % 3) for i in range(STREAMS)]
    assert seen_active > 1, "the streams never overlapped"

    after = wait_for(lambda: (s := stats(net.workers[0].http))["active"] == 0 and s,
                     "worker idle")
    assert after["requests"]["completed"] - before["requests"]["completed"] == STREAMS
    assert after["requests"]["rejected"] == before["requests"]["rejected"]
    assert (after["tokens"]["completion"] - before["tokens"]["completion"]
            == sum(CHUNKS - i % 3 for i in range(STREAMS)))
    assert (after["tokens"]["prompt"] - before["tokens"]["prompt"]
            == sum(i + 1 for i in range(STREAMS)))
