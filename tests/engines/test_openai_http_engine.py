"""OpenAIHttpEngine against a real, independently written upstream: llama_cpp.server with
SmolLM2 (started once per session by the ``llama_server`` fixture in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from cocoon.engines import InferenceJob
from cocoon.engines.base import objects_of
from cocoon.engines.fake import prompt_tokens_of
from cocoon.engines.openai_http import OpenAIHttpConfig, OpenAIHttpEngine, _event_object
from cocoon.errors import BadRequest, ConfigError, ContextLengthExceeded, UpstreamError
from cocoon.openai import Usage, parse_request

pytestmark = pytest.mark.llama

MODEL = "SmolLM2-135M-Instruct"
# An answer in plain ASCII words, so llama_cpp.server sends exactly one chunk per token.
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello to Bob."}],
        "temperature": 0, "seed": 1, "max_tokens": 16}

_ids = iter(range(1, 1 << 30))


def job(endpoint: str = "chat", **fields: Any) -> InferenceJob:
    body = {**CHAT, **fields} if endpoint == "chat" else {
        "model": MODEL, "prompt": "Once upon a time", "temperature": 0, "max_tokens": 8,
        **fields}
    return InferenceJob(endpoint, parse_request(endpoint, json.dumps(body).encode()),
                        next(_ids))


async def run(engine: OpenAIHttpEngine, j: InferenceJob) -> tuple[list[dict[str, Any]], Usage]:
    outputs = [o async for o in engine.generate(j)]
    *objects, usage = outputs
    assert isinstance(usage, Usage)
    return [json.loads(o) for o in objects_of(objects)], usage


@pytest.fixture
async def engine(llama_server):
    eng = await OpenAIHttpEngine.connect(OpenAIHttpConfig(base_url=llama_server))
    yield eng
    await eng.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


async def test_connect_learns_the_model_name(engine):
    assert engine.models == (MODEL,)
    assert engine.name == "openai-http"


async def test_non_stream_returns_the_upstream_body_and_its_usage(engine):
    (body,), usage = await run(engine, job())
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    assert usage == Usage.from_openai(body["usage"])
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16
    assert engine.usage_estimated == 0


async def test_stream_matches_non_stream_with_estimated_usage(engine):
    (body,), usage = await run(engine, job())
    want = body["choices"][0]["message"]["content"]
    assert want.isascii()
    chunks, stream_usage = await run(engine, job(stream=True))
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all(c["choices"] for c in chunks), "no usage chunk: the app did not ask for one"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == want
    # llama_cpp.server ignores stream_options.include_usage: the usage is estimated, one
    # token per content chunk (exact for an ASCII answer), a quarter-byte per prompt token.
    assert engine.usage_estimated == 1
    assert stream_usage.completion_tokens == usage.completion_tokens
    assert stream_usage.prompt_tokens == prompt_tokens_of(job())


async def test_stream_include_usage_gets_a_usage_chunk(engine):
    chunks, usage = await run(engine, job(stream=True, max_tokens=4,
                                          stream_options={"include_usage": True}))
    assert chunks[-1]["choices"] == []
    # llama_cpp.server reports no usage for streams: the one the app gets says so.
    assert chunks[-1]["usage"] == {**usage.to_openai(), "estimated": True}
    assert usage.completion_tokens == 4
    assert all(c["choices"] for c in chunks[:-1])


async def test_completions_stream_and_non_stream(engine):
    (body,), usage = await run(engine, job("completions"))
    assert body["object"] == "text_completion"
    assert usage == Usage.from_openai(body["usage"])
    chunks, _ = await run(engine, job("completions", stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == body["choices"][0]["text"]


async def test_upstream_4xx_is_bad_request(engine):
    too_long = [{"role": "user", "content": "hello " * 3000}]  # over n_ctx=2048: HTTP 400
    with pytest.raises(BadRequest) as info:
        await run(engine, job(messages=too_long, max_tokens=4))
    assert type(info.value) is ContextLengthExceeded
    assert info.value.code == "context_length_exceeded"
    assert "context length" in info.value.message
    # Streamed, llama_cpp.server answers 200 and then closes an empty event stream: all
    # the engine can say is that the upstream broke off.
    with pytest.raises(UpstreamError, match=r"without \[DONE\]"):
        await run(engine, job(messages=too_long, max_tokens=4, stream=True))


async def test_upstream_5xx_is_upstream_error(engine):
    # llama_cpp.server answers a body it cannot validate with HTTP 500.
    j = job()
    bad = InferenceJob("chat", {**j.body, "temperature": "hot"}, j.request_id)
    with pytest.raises(UpstreamError, match="HTTP 500"):
        await run(engine, bad)


async def test_unreachable_upstream_is_upstream_error():
    config = OpenAIHttpConfig(base_url=f"http://127.0.0.1:{closed_port()}",
                              connect_timeout_s=5)
    with pytest.raises(UpstreamError, match="unreachable"):
        await OpenAIHttpEngine.connect(config)
    eng = OpenAIHttpEngine(config, (MODEL,))
    try:
        for stream in (False, True):
            with pytest.raises(UpstreamError):
                await run(eng, job(stream=stream))
    finally:
        await eng.close()


async def test_closing_early_cancels_and_the_engine_still_works(engine):
    gen = engine.generate(job(stream=True, max_tokens=200))
    got = [await anext(gen), await anext(gen)]
    await asyncio.wait_for(gen.aclose(), 10)
    assert len(objects_of(got)) >= 2
    assert engine.cancelled == 1
    (body,), usage = await run(engine, job(max_tokens=3))
    assert usage.completion_tokens == 3
    assert body["choices"][0]["finish_reason"] == "length"
    assert engine.cancelled == 1


@pytest.mark.parametrize(("given", "root"), [
    ("http://h:8000", "http://h:8000"),
    ("http://h:8000/", "http://h:8000"),
    ("http://h:8000/v1", "http://h:8000"),
    ("http://h:8000/v1/", "http://h:8000"),
    ("https://api.example.com/openai/v1", "https://api.example.com/openai"),
    ("http://h:8000/v10", "http://h:8000/v10"),
])
def test_base_urls_with_or_without_v1_name_the_same_server(given: str, root: str) -> None:
    """Issue 12: `--upstream http://host:8000/v1` (how vLLM, llama-server and the OpenAI SDK
    write base URLs) failed at start with "upstream /v1/models answered HTTP 404"."""
    assert OpenAIHttpConfig(base_url=given).base_url == root


@pytest.mark.parametrize("bad", ["localhost:8000", "ftp://h/v1", "http://", "h"])
def test_a_base_url_that_is_not_http_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIHttpConfig(base_url=bad)


async def test_an_upstream_given_with_v1_is_reached(llama_server: str) -> None:
    eng = await OpenAIHttpEngine.connect(OpenAIHttpConfig(base_url=llama_server + "/v1"))
    try:
        assert eng.models
    finally:
        await eng.close()


def test_stream_events_read_what_python_json_reads() -> None:
    """Events are read by orjson, and by the standard library where orjson refuses what
    Python's JSON allows (an upstream's -Infinity logprob, a huge integer)."""
    assert _event_object(b'{"a":[1,"\\u00e9"]}') == {"a": [1, "\u00e9"]}
    assert _event_object(b'{"logprob":-Infinity}') == {"logprob": float("-inf")}
    assert _event_object(b'{"n":%d}' % 2**70) == {"n": 2**70}
    for bad in (b"{", b"not json", b'{"a":1}x', b"\xff"):
        with pytest.raises(UpstreamError, match="non-JSON event"):
            _event_object(bad)
