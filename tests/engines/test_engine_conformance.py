"""What every engine promises (engines/base.py). The behaviour of generation is checked on
FakeEngine and on LlamaCppEngine with SmolLM2: the JSON objects the app will see, then exactly
one Usage. The Engine protocol itself (every member the worker uses, the granted cap, early
close, close) is checked on all three engines, openai-http in front of llama_cpp.server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from cocoon.engines import Engine, FakeEngine, InferenceJob
from cocoon.engines.base import objects_of
from cocoon.engines.openai_http import OpenAIHttpConfig, OpenAIHttpEngine
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
    # outputs before the Usage are JSON objects, one at a time or in bursts
    parsed = [json.loads(o) for o in objects_of(objects)]
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
    assert objects_of(got)
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


# --- the Engine protocol, on all three engines ------------------------------------------
# Everything the worker calls on an engine is on the Engine protocol (engines/base.py); these
# run on fake, llama-cpp and openai-http (in front of a real llama_cpp.server).

_PROTOCOL_MEMBERS = (*Engine.__annotations__, "generate", "close")


async def _make(kind: str, request: pytest.FixtureRequest) -> Any:
    if kind == "fake":
        return FakeEngine()
    if kind == "llama-cpp":
        from cocoon.engines.llama_cpp import LlamaCppEngine

        return await asyncio.to_thread(LlamaCppEngine)
    base_url = request.getfixturevalue("llama_server")
    return await OpenAIHttpEngine.connect(OpenAIHttpConfig(base_url=base_url))


ALL_KINDS = ["fake", pytest.param("llama-cpp", marks=pytest.mark.llama),
             pytest.param("openai-http", marks=pytest.mark.llama)]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=ALL_KINDS)
async def any_engine(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    eng = await _make(request.param, request)
    yield eng
    await eng.close()


async def test_protocol_members_are_there_with_their_types(any_engine):
    assert set(_PROTOCOL_MEMBERS) >= {"name", "models", "model_hash", "cancelled",
                                      "usage_estimated", "generate", "close"}
    for member in _PROTOCOL_MEMBERS:
        assert hasattr(any_engine, member), f"{type(any_engine).__name__} lacks {member}"
    assert isinstance(any_engine.name, str) and any_engine.name
    assert isinstance(any_engine.models, tuple) and any_engine.models
    assert all(isinstance(m, str) for m in any_engine.models)
    assert isinstance(any_engine.model_hash, bytes)
    assert len(any_engine.model_hash) in (0, 32)  # SHA-256 of the weights, or unknown
    assert type(any_engine.cancelled) is int and type(any_engine.usage_estimated) is int
    assert asyncio.iscoroutinefunction(any_engine.close)


@pytest.mark.llama
async def test_llama_engine_names_its_weights():
    from cocoon.engines.llama_cpp import LlamaCppEngine, default_model_path, model_file_hash

    engine = await asyncio.to_thread(LlamaCppEngine)
    try:
        assert engine.model_hash == model_file_hash(default_model_path())
    finally:
        await engine.close()


async def test_the_last_output_is_the_usage_and_the_meter_agrees(any_engine):
    j = job(any_engine, "chat")
    outputs = [o async for o in any_engine.generate(j)]
    *objects, usage = outputs
    assert isinstance(usage, Usage) and objects_of(objects)
    assert j.meter.usage() == usage


async def test_the_granted_cap_wins_over_the_body(any_engine):
    """The worker grants what the proxy reserved funds for: no engine generates past it,
    whatever max_tokens the body asks for."""
    j = InferenceJob("completions", job(any_engine, "completions", max_tokens=8).body,
                     next(_ids), granted=3)
    assert j.max_tokens == 3
    _, usage = await run(any_engine, j)
    assert usage.completion_tokens == 3


async def test_closing_the_generation_early_is_counted(any_engine):
    before = any_engine.cancelled
    gen = any_engine.generate(job(any_engine, "chat", stream=True, max_tokens=200))
    assert objects_of([await anext(gen)])
    await asyncio.wait_for(gen.aclose(), 10)
    assert any_engine.cancelled == before + 1


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_close_releases_the_engine(kind, request):
    engine = await _make(kind, request)
    _, usage = await run(engine, job(engine, "completions", max_tokens=2))
    assert usage.completion_tokens == 2
    await engine.close()
