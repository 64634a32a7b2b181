"""Issue 11 on the embedded llama.cpp engine (SmolLM2): the OpenAI request shapes it must
take (content parts, null content, tool turns, developer), what it must refuse with a 400
naming the field (non-text parts, prompts beyond the context window, logprobs it does not
keep), schema-constrained JSON, and results that never depend on an earlier request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from cocoon.engines import InferenceJob
from cocoon.engines.base import objects_of
from cocoon.engines.config import LlamaCppConfig
from cocoon.errors import (
    BadRequest,
    ContextLengthExceeded,
    EngineError,
    EngineUnsupported,
    RequestError,
)
from cocoon.openai import Usage, parse_request

pytestmark = [pytest.mark.llama, pytest.mark.asyncio(loop_scope="module")]

MODEL = "SmolLM2-135M-Instruct"
SMALL_CTX = 256
_ids = iter(range(1, 1 << 30))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[Any]:
    """The engine as a worker runs it by default."""
    from cocoon.engines.llama_cpp import LlamaCppEngine

    eng = await asyncio.to_thread(LlamaCppEngine)
    yield eng
    await eng.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def small() -> AsyncIterator[Any]:
    """A small context (prompts that overflow it are cheap), logprobs on, a config seed."""
    from cocoon.engines.llama_cpp import LlamaCppEngine

    eng = await asyncio.to_thread(LlamaCppEngine, LlamaCppConfig(n_ctx=SMALL_CTX,
                                                                 logprobs=True, seed=42))
    yield eng
    await eng.close()


def job(endpoint: str = "chat", granted: int = 0, **fields: Any) -> InferenceJob:
    body = {"model": MODEL, **fields}
    if endpoint == "chat":
        body.setdefault("messages", [{"role": "user", "content": "Name three colours."}])
    else:
        body.setdefault("prompt", "The capital of France is")
    return InferenceJob(endpoint, parse_request(endpoint, json.dumps(body).encode()),  # type: ignore[arg-type]
                        next(_ids), granted=granted)


async def run(engine: Any, j: InferenceJob) -> tuple[list[dict[str, Any]], Usage]:
    *objects, usage = [o async for o in engine.generate(j)]
    assert isinstance(usage, Usage)
    return [json.loads(o) for o in objects_of(objects)], usage


async def answer(engine: Any, **fields: Any) -> tuple[str, Usage]:
    """The text of a non-streamed chat answer, and its usage."""
    objects, usage = await run(engine, job(**{"temperature": 0, **fields}))
    return objects[0]["choices"][0]["message"]["content"], usage


async def refused(engine: Any, j: InferenceJob) -> RequestError:
    with pytest.raises(RequestError) as info:
        await run(engine, j)
    assert j.meter.usage() == Usage()  # refused before generating: nothing to bill
    return info.value


# --- message shapes -----------------------------------------------------------------------

async def test_text_parts_are_answered_as_their_joined_text(engine):
    parts = [{"type": "text", "text": "What is the capital"},
             {"type": "text", "text": "of France?"}]
    got = await answer(engine, messages=[{"role": "user", "content": parts}], max_tokens=12)
    want = await answer(engine, messages=[{"role": "user",
                                           "content": "What is the capital\nof France?"}],
                        max_tokens=12)
    assert got == want and "Paris" in got[0]


async def test_an_image_part_is_a_400_naming_it(engine):
    parts = [{"type": "text", "text": "What is in this picture?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]
    err = await refused(engine, job(messages=[{"role": "user", "content": parts}]))
    assert isinstance(err, EngineUnsupported)
    assert (err.status, err.param) == (400, "messages[0].content[1]")


async def test_tool_turns_and_null_content_are_accepted(engine):
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    text, usage = await answer(engine, messages=messages, max_tokens=8)
    assert text and usage.completion_tokens >= 1
    for stream in (False, True):  # streamed too
        _, usage = await run(engine, job(messages=messages, max_tokens=4, stream=stream))
        assert usage.completion_tokens >= 1


async def test_developer_is_read_as_system(engine):
    def msgs(role: str) -> list[dict[str, Any]]:
        return [{"role": role, "content": "Always answer in French."},
                {"role": "user", "content": "Hello, how are you?"}]

    assert await answer(engine, messages=msgs("developer"), max_tokens=10) == \
        await answer(engine, messages=msgs("system"), max_tokens=10)


# --- the context window -------------------------------------------------------------------

LONG = "hello " * (SMALL_CTX + 50)


@pytest.mark.parametrize(("endpoint", "stream", "param"), [
    ("chat", False, "messages"), ("chat", True, "messages"),
    ("completions", False, "prompt"), ("completions", True, "prompt")])
async def test_a_prompt_beyond_the_context_is_context_length_exceeded(small, endpoint, stream,
                                                                      param):
    fields = ({"messages": [{"role": "user", "content": LONG}]} if endpoint == "chat"
              else {"prompt": LONG})
    err = await refused(small, job(endpoint, stream=stream, max_tokens=4, **fields))
    assert isinstance(err, ContextLengthExceeded)
    assert (err.status, err.code, err.param) == (400, "context_length_exceeded", param)
    assert f"maximum context length is {SMALL_CTX} tokens" in err.message


async def test_prompt_and_max_tokens_are_checked_together_up_front(small):
    _, usage = await run(small, job(max_tokens=1))
    room = SMALL_CTX - usage.prompt_tokens
    _, fits = await run(small, job(max_tokens=room, temperature=0))  # exactly fits
    assert 1 <= fits.completion_tokens <= room
    for key in ("max_tokens", "max_completion_tokens"):
        for asked in (room + 1, 100000):
            err = await refused(small, job(**{key: asked}))
            assert isinstance(err, ContextLengthExceeded)
            assert (err.param, err.code) == (key, "context_length_exceeded")
            assert f"{usage.prompt_tokens + asked} tokens" in err.message


async def test_a_granted_cap_beyond_the_context_is_cut_to_it_not_refused(small):
    """No max_tokens in the body: the proxy's default cap applies, within the window."""
    j = job(granted=100000, temperature=0)
    _, usage = await run(small, j)
    assert usage.prompt_tokens + usage.completion_tokens <= SMALL_CTX


# --- logprobs -------------------------------------------------------------------------------

@pytest.mark.parametrize(("endpoint", "fields"), [
    ("chat", {"logprobs": True}), ("chat", {"logprobs": True, "top_logprobs": 3}),
    ("completions", {"logprobs": 2}), ("completions", {"logprobs": 0})])
async def test_logprobs_without_logits_are_a_400_naming_logprobs(engine, endpoint, fields):
    err = await refused(engine, job(endpoint, max_tokens=2, **fields))
    assert isinstance(err, EngineUnsupported)
    assert (err.status, err.param) == (400, "logprobs")
    assert "engine.llama_cpp.logprobs" in err.message


async def test_logprobs_are_honoured_when_the_engine_keeps_logits(small):
    objects, usage = await run(small, job(logprobs=True, top_logprobs=2, max_tokens=3,
                                          temperature=0))
    content = objects[0]["choices"][0]["logprobs"]["content"]
    assert len(content) == usage.completion_tokens
    assert all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content)
    objects, _ = await run(small, job("completions", logprobs=2, max_tokens=3,
                                      temperature=0))
    assert len(objects[0]["choices"][0]["logprobs"]["top_logprobs"][0]) == 2


# --- response_format --------------------------------------------------------------------------

PERSON = {"type": "object",
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
ASK = [{"role": "user", "content": "Give a JSON object for a person named Alice aged 30."}]


@pytest.mark.parametrize("rf", [
    {"type": "json_schema", "json_schema": {"name": "Person", "schema": PERSON,
                                            "strict": True}},
    {"type": "json_object", "schema": PERSON}])  # llama-cpp-python's own spelling
@pytest.mark.parametrize("stream", [False, True])
async def test_the_output_follows_the_json_schema(engine, rf, stream):
    objects, _ = await run(engine, job(messages=ASK, response_format=rf, temperature=0,
                                       max_tokens=60, stream=stream))
    if stream:
        text = "".join(o["choices"][0]["delta"].get("content") or "" for o in objects
                       if o["choices"])
    else:
        text = objects[0]["choices"][0]["message"]["content"]
    person = json.loads(text)
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and type(person["age"]) is int


async def test_a_schema_the_grammar_cannot_express_is_a_400(engine):
    rf = {"type": "json_schema",
          "json_schema": {"name": "P", "schema": {"$ref": "#/definitions/missing"}}}
    err = await refused(engine, job(messages=ASK, response_format=rf))
    assert isinstance(err, EngineUnsupported)
    assert err.param == "response_format.json_schema.schema"


async def test_an_unknown_response_format_type_is_a_400(engine):
    err = await refused(engine, job(response_format={"type": "regex", "regex": "a+"}))
    assert (err.status, err.param) == (400, "response_format.type")


# --- one request never changes another's result ---------------------------------------------

async def test_each_job_evaluates_its_whole_prompt(engine, monkeypatch):
    """No key/value cache is reused from the previous job, so nothing of it can leak into
    this one's result (or its timing)."""
    llm = engine._llm
    evaluated: list[int] = []
    real_eval = llm.eval

    def counting_eval(tokens: Any) -> None:
        evaluated.append(len(tokens))
        real_eval(tokens)

    monkeypatch.setattr(llm, "eval", counting_eval)
    first = job(max_tokens=1)
    _, usage = await run(engine, first)
    for _ in range(2):
        evaluated.clear()
        _, again = await run(engine, job(max_tokens=1))
        assert again == usage
        assert evaluated[0] == usage.prompt_tokens  # the whole prompt, not its last token


async def test_results_do_not_depend_on_earlier_requests(engine):
    question = [{"role": "user", "content": "Write one sentence about the sea."}]
    cold = [await answer(engine, messages=question, max_tokens=16),
            await answer(engine, messages=question, max_tokens=16, temperature=1.0, seed=7)]
    for other in ("Write one sentence about the sea and the sky.", "List three fruits."):
        await answer(engine, messages=[{"role": "user", "content": other}], max_tokens=8,
                     temperature=1.0, seed=99)
        assert [await answer(engine, messages=question, max_tokens=16),
                await answer(engine, messages=question, max_tokens=16, temperature=1.0,
                             seed=7)] == cold


async def test_a_request_without_seed_uses_the_configured_seed_every_time(small):
    """llama-cpp-python derives an unseeded request's seed from the previous request's:
    the engine gives every such request the config's seed instead."""
    unseeded = {"temperature": 1.5, "max_tokens": 12}
    first = await answer(small, **unseeded)
    await answer(small, temperature=1.5, max_tokens=4, seed=5)  # another client's request
    assert await answer(small, **unseeded) == first


# --- failures of llama.cpp itself -----------------------------------------------------------

async def test_a_chat_template_that_refuses_the_messages_is_a_400(engine, monkeypatch):
    def handler(**_: Any) -> Any:
        raise ValueError("Conversation roles must alternate user/assistant")

    monkeypatch.setattr(engine._llm, "chat_handler", handler)
    err = await refused(engine, job())
    assert type(err) is BadRequest
    assert err.param == "messages" and "must alternate" in err.message


async def test_a_llama_failure_is_a_500_without_its_text(engine, monkeypatch):
    def handler(*, llama: Any, messages: Any, **_: Any) -> Any:
        llama.create_completion(prompt=[1, 2, 3], max_tokens=1, stream=True)  # formatted
        raise RuntimeError("canary-3b1f: what the prompt said")

    monkeypatch.setattr(engine._llm, "chat_handler", handler)
    with pytest.raises(EngineError) as info:
        await run(engine, job())
    assert info.value.status == 500
    assert info.value.message == "llama.cpp failed: RuntimeError"
