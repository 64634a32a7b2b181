"""What every embedded engine promises (engines/base.py), checked on FakeEngine and on
LlamaCppEngine with SmolLM2: the JSON objects the app will see, then exactly one Usage."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from cocoon.engines import FakeEngine, InferenceJob
from cocoon.errors import EngineUnsupported
from cocoon.openai import Usage, parse_request

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAT = {"messages": [{"role": "user", "content": "Name three colours."}],
        "temperature": 0, "max_tokens": 8}
TEXT = {"prompt": "The capital of France is", "temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module", params=[
    "fake", pytest.param("llama-cpp", marks=pytest.mark.llama)])
def engine(request):
    if request.param == "fake":
        return FakeEngine()
    from cocoon.engines.llama_cpp import LlamaCppEngine

    return LlamaCppEngine()


_ids = iter(range(1, 1 << 30))


def job(engine: Any, endpoint: str, **fields: Any) -> InferenceJob:
    body = {"model": engine.models[0], **(CHAT if endpoint == "chat" else TEXT), **fields}
    body = parse_request(endpoint, json.dumps(body).encode())  # what the worker hands over
    return InferenceJob(endpoint, body, next(_ids))


async def run(engine: Any, j: InferenceJob) -> tuple[list[dict[str, Any]], Usage]:
    """All outputs: the JSON objects, then the one Usage, which must come last."""
    outputs = [out async for out in engine.generate(j)]
    assert outputs, "engine produced nothing"
    *objects, usage = outputs
    assert isinstance(usage, Usage), f"last output is {type(usage).__name__}, not Usage"
    assert all(type(o) is bytes for o in objects), "outputs before the Usage must be bytes"
    parsed = [json.loads(o) for o in objects]
    assert all(isinstance(p, dict) for p in parsed)
    assert usage.completion_tokens >= 1 and usage.prompt_tokens >= 1
    return parsed, usage


def usage_of(obj: dict[str, Any]) -> dict[str, int]:
    return {k: obj["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def openai_usage(u: Usage) -> dict[str, int]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}


@pytest.mark.parametrize(("endpoint", "kind"), [("chat", "chat.completion.chunk"),
                                                ("completions", "text_completion")])
async def test_stream_yields_chunks_then_usage(engine, endpoint, kind):
    chunks, usage = await run(engine, job(engine, endpoint, stream=True))
    assert len(chunks) >= 2
    assert {c["object"] for c in chunks} == {kind}
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["model"] == engine.models[0] for c in chunks)
    assert all(len(c["choices"]) == 1 for c in chunks), "no usage chunk unless asked"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage.completion_tokens <= 8


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_include_usage_adds_a_usage_chunk_matching_the_usage(engine, endpoint):
    chunks, usage = await run(engine, job(engine, endpoint, stream=True,
                                          stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last["choices"] == []
    assert usage_of(last) == openai_usage(usage)
    assert all(c["choices"] for c in chunks[:-1])
    assert all(c.get("usage") is None for c in chunks[:-1])
    assert last["id"] == chunks[0]["id"]


@pytest.mark.parametrize(("endpoint", "kind"), [("chat", "chat.completion"),
                                                ("completions", "text_completion")])
async def test_non_stream_yields_one_object_with_the_usage(engine, endpoint, kind):
    objects, usage = await run(engine, job(engine, endpoint))
    assert len(objects) == 1
    (obj,) = objects
    assert obj["object"] == kind
    assert usage_of(obj) == openai_usage(usage)
    choice = obj["choices"][0]
    text = choice["message"]["content"] if endpoint == "chat" else choice["text"]
    assert isinstance(text, str) and text
    assert choice["finish_reason"] in ("stop", "length")


async def test_stream_and_non_stream_agree(engine):
    """At temperature 0 the stream's text and token count are the non-stream answer's."""
    (whole,), usage = await run(engine, job(engine, "chat"))
    chunks, stream_usage = await run(engine, job(engine, "chat", stream=True))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert stream_usage == usage


async def test_max_tokens_caps_completion_tokens(engine):
    _, usage = await run(engine, job(engine, "completions", max_tokens=3))
    assert usage.completion_tokens == 3  # neither engine stops this prompt within 3 tokens


@pytest.mark.parametrize("stream", [False, True])
async def test_closing_early_cancels_and_the_engine_still_works(engine, stream):
    fields = {"max_tokens": 200, "stream": True} if stream else {"max_tokens": 4}
    reference, ref_usage = await run(engine, job(engine, "chat", max_tokens=6))
    before = engine.cancelled
    gen = engine.generate(job(engine, "chat", **fields))
    got = [await anext(gen)]
    if stream:
        got.append(await anext(gen))
    started = time.monotonic()
    await asyncio.wait_for(gen.aclose(), 10)
    assert time.monotonic() - started < 5
    assert all(type(g) is bytes for g in got)
    assert engine.cancelled == before + 1
    # The next request runs normally and, at temperature 0, gives the same answer as
    # before: nothing of the abandoned generation leaked into the engine's state.
    after, after_usage = await run(engine, job(engine, "chat", max_tokens=6))
    assert after[0]["choices"] == reference[0]["choices"]
    assert after_usage == ref_usage
    assert engine.cancelled == before + 1


async def test_cancelling_the_consuming_task_cancels(engine):
    before = engine.cancelled
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(job(engine, "completions", stream=True,
                                           max_tokens=200)):
            first.set()
            await asyncio.sleep(0.05)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert engine.cancelled == before + 1
    _, usage = await run(engine, job(engine, "completions", max_tokens=2))
    assert usage.completion_tokens == 2


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize("stream", [False, True])
async def test_n_above_one_is_unsupported(engine, endpoint, stream):
    with pytest.raises(EngineUnsupported) as info:
        await run(engine, job(engine, endpoint, n=2, stream=stream))
    assert info.value.param == "n"
    assert info.value.status == 400
    assert "n=1" in info.value.message


async def test_fake_usage_is_deterministic():
    engine = FakeEngine()
    msgs = [{"role": "system", "content": "abc"}, {"role": "user", "content": "d\u00e9f" * 5}]
    _, usage = await run(engine, job(engine, "chat", messages=msgs, max_tokens=None))
    assert usage == Usage(prompt_tokens=len(("abc" + "d\u00e9f" * 5).encode()) // 4,
                          completion_tokens=50)
    _, usage = await run(engine, job(engine, "completions", prompt="ab", max_tokens=70))
    assert usage == Usage(prompt_tokens=1, completion_tokens=50)
