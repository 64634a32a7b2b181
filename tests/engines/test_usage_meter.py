"""Each engine keeps ``job.meter`` current, so a generation that ends early (closed,
cancelled, failed) still knows the tokens it used: the worker bills them. Checked on the
fake engine, on llama.cpp (SmolLM2) and on the OpenAI-HTTP engine against a scripted
upstream that streams a few chunks and then stalls or breaks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from cocoon.engines import FakeEngine, FakeEngineConfig, InferenceJob
from cocoon.engines.base import objects_of
from cocoon.engines.fake import prompt_tokens_of
from cocoon.engines.openai_http import OpenAIHttpConfig, OpenAIHttpEngine
from cocoon.errors import EngineError, UpstreamError
from cocoon.openai import Usage, parse_request

_ids = iter(range(1, 1 << 30))


def job(model: str, stream: bool, max_tokens: int = 20, **fields: Any) -> InferenceJob:
    body = {"model": model, "messages": [{"role": "user", "content": "count to twenty"}],
            "temperature": 0, "max_tokens": max_tokens, "stream": stream, **fields}
    return InferenceJob("chat", parse_request("chat", json.dumps(body).encode()), next(_ids))


async def complete(engine: Any, j: InferenceJob) -> Usage:
    *_, usage = [out async for out in engine.generate(j)]
    assert isinstance(usage, Usage)
    return usage


# --- every embedded engine ------------------------------------------------------------

@pytest.fixture(scope="module", params=["fake", pytest.param("llama-cpp",
                                                             marks=pytest.mark.llama)])
def engine(request: pytest.FixtureRequest) -> Any:
    if request.param == "fake":
        return FakeEngine()
    from cocoon.engines.llama_cpp import LlamaCppEngine

    return LlamaCppEngine()


@pytest.mark.parametrize("stream", [False, True])
async def test_meter_equals_the_usage_of_a_complete_generation(engine: Any,
                                                               stream: bool) -> None:
    j = job(engine.models[0], stream, max_tokens=6)
    usage = await complete(engine, j)
    assert j.meter.usage() == usage and not j.meter.estimated


async def test_meter_of_a_stream_closed_early_counts_what_was_generated(engine: Any) -> None:
    j = job(engine.models[0], True, max_tokens=200)
    gen = engine.generate(j)
    got = [await anext(gen) for _ in range(4)]  # role chunk + 3 tokens (fake); 4 (llama)
    await asyncio.wait_for(gen.aclose(), 10)
    assert len(objects_of(got)) >= 4
    assert j.meter.prompt_tokens >= 1
    # At least the tokens the consumer saw; llama.cpp may have sampled a few more ahead.
    assert 3 <= j.meter.completion_tokens < 200


# --- the fake engine, exactly -----------------------------------------------------------

async def test_fake_meter_counts_each_streamed_token_exactly() -> None:
    engine = FakeEngine(FakeEngineConfig(chunks=50))
    j = job("fake", True, max_tokens=None)  # type: ignore[arg-type]
    gen = engine.generate(j)
    await anext(gen)  # the role chunk: no token yet
    assert j.meter.usage() == Usage(prompt_tokens_of(j), 0)
    for n in range(1, 6):
        await anext(gen)
        assert j.meter.completion_tokens == n
    await gen.aclose()
    assert j.meter.usage() == Usage(prompt_tokens_of(j), 5)


async def test_fake_non_stream_cancelled_mid_way_is_metered() -> None:
    engine = FakeEngine(FakeEngineConfig(chunks=100, delay_ms=10))
    j = job("fake", False, max_tokens=100)
    task = asyncio.create_task(complete(engine, j))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert j.meter.prompt_tokens == prompt_tokens_of(j)
    assert 1 <= j.meter.completion_tokens < 100


@pytest.mark.parametrize("stream", [False, True])
async def test_fake_fail_after_fails_with_the_tokens_so_far(stream: bool) -> None:
    engine = FakeEngine(FakeEngineConfig(chunks=20, fail_after=7))
    j = job("fake", stream)
    seen = 0
    with pytest.raises(EngineError, match="after 7 tokens"):
        async for _ in engine.generate(j):
            seen += 1
    assert j.meter.usage() == Usage(prompt_tokens_of(j), 7)
    assert seen == (8 if stream else 0)  # role chunk + 7 tokens; nothing when unary
    assert engine.cancelled == 1


async def test_fake_fail_after_beyond_the_generation_never_fails() -> None:
    engine = FakeEngine(FakeEngineConfig(chunks=5, fail_after=5))
    assert (await complete(engine, job("fake", True))).completion_tokens == 5


# --- the OpenAI-HTTP engine: estimated until the upstream reports -----------------------

def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def content_chunk(text: str) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "up",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Streams ``script["chunks"]`` content chunks, then: "stall" (never ends), "break"
    (closes without [DONE]) or "usage" (a usage chunk, then [DONE])."""
    script: dict[str, Any] = {"chunks": 3, "then": "stall", "sent": asyncio.Event()}

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(script["chunks"]):
            await resp.write(sse(content_chunk(f"w{i} ")))
        script["sent"].set()
        if script["then"] == "usage":
            await resp.write(sse({"id": "x", "object": "chat.completion.chunk", "created": 1,
                                  "model": "up", "choices": [],
                                  "usage": {"prompt_tokens": 11, "completion_tokens": 3,
                                            "total_tokens": 14}}))
            await resp.write(b"data: [DONE]\n\n")
        elif script["then"] == "stall":
            await asyncio.sleep(30)
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", script
    finally:
        await runner.cleanup()


async def test_openai_http_stream_closed_early_is_estimated(upstream: Any) -> None:
    url, _ = upstream
    engine = OpenAIHttpEngine(OpenAIHttpConfig(base_url=url, model="up"), ("up",))
    try:
        j = job("up", True)
        gen = engine.generate(j)
        got: list[Any] = []
        while len(objects_of(got)) < 3:  # they may come one by one or together
            got.append(await asyncio.wait_for(anext(gen), 5))
        await asyncio.wait_for(gen.aclose(), 5)
        assert j.meter.usage() == Usage(prompt_tokens_of(j), 3)
        assert j.meter.estimated
        assert engine.cancelled == 1 and engine.usage_estimated == 0
    finally:
        await engine.close()


async def test_openai_http_broken_stream_keeps_the_estimate(upstream: Any) -> None:
    url, script = upstream
    script["then"] = "break"
    engine = OpenAIHttpEngine(OpenAIHttpConfig(base_url=url, model="up"), ("up",))
    try:
        j = job("up", True)
        with pytest.raises(UpstreamError):
            await complete(engine, j)
        assert j.meter.usage() == Usage(prompt_tokens_of(j), 3) and j.meter.estimated
    finally:
        await engine.close()


async def test_openai_http_reported_usage_replaces_the_estimate(upstream: Any) -> None:
    url, script = upstream
    script["then"] = "usage"
    engine = OpenAIHttpEngine(OpenAIHttpConfig(base_url=url, model="up"), ("up",))
    try:
        j = job("up", True)
        assert await complete(engine, j) == Usage(11, 3)
        assert j.meter.usage() == Usage(11, 3) and not j.meter.estimated
    finally:
        await engine.close()


async def test_openai_http_refused_request_meters_nothing() -> None:
    engine = OpenAIHttpEngine(OpenAIHttpConfig(base_url="http://127.0.0.1:9", model="up",
                                               connect_timeout_s=2), ("up",))
    try:
        j = job("up", True)
        with pytest.raises(UpstreamError):
            await complete(engine, j)
        assert j.meter.usage() == Usage(0, 0)
    finally:
        await engine.close()
