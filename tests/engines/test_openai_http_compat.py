"""Issue 11 on the OpenAI-HTTP engine, against a scripted upstream whose behaviour each test
sets: ``n`` passed through, and a 400 naming ``n`` when the upstream answers fewer choices;
an upstream's context-window refusal as ``context_length_exceeded``; a stream whose upstream
omits usage counted with the upstream's tokenizer where it has one, and marked estimated."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from cocoon.engines import InferenceJob
from cocoon.engines.base import objects_of
from cocoon.engines.fake import prompt_tokens_of
from cocoon.engines.openai_http import OpenAIHttpConfig, OpenAIHttpEngine
from cocoon.errors import BadRequest, ContextLengthExceeded, EngineUnsupported
from cocoon.openai import Usage, parse_request

_ids = iter(range(1, 1 << 30))


def chunk(index: int, text: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "up",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


class Upstream:
    """A scripted OpenAI server: ``choices`` answered per request (it honours ``n`` unless
    ``ignore_n``), ``usage`` in streams or not, optional tokenizer endpoints, an optional
    error answer; every request body it got is kept in ``seen``."""

    def __init__(self) -> None:
        self.ignore_n = False
        self.stream_usage = True
        self.tokenize: str | None = None  # None, "vllm", "llama-cpp-python"
        self.error: tuple[int, dict[str, Any]] | None = None
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.chunks = 3

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append((request.path, body))
        if self.error is not None:
            return web.json_response(self.error[1], status=self.error[0])
        n = 1 if self.ignore_n else body.get("n") or 1
        if not body.get("stream"):
            return web.json_response({
                "id": "x", "object": "chat.completion", "created": 1, "model": "up",
                "choices": [{"index": i, "message": {"role": "assistant", "content": f"c{i}"},
                             "finish_reason": "stop"} for i in range(n)],
                "usage": {"prompt_tokens": 9, "completion_tokens": n,
                          "total_tokens": 9 + n}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for k in range(self.chunks):  # choices interleaved, as vLLM sends them
            for i in range(n):
                await resp.write(sse(chunk(i, f"w{k} ")))
        for i in range(n):
            await resp.write(sse(chunk(i, None, "stop")))
        if self.stream_usage:
            await resp.write(sse({"id": "x", "object": "chat.completion.chunk",
                                  "created": 1, "model": "up", "choices": [],
                                  "usage": {"prompt_tokens": 9,
                                            "completion_tokens": n * self.chunks,
                                            "total_tokens": 9 + n * self.chunks}}))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def vllm_tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append((request.path, body))
        if self.tokenize != "vllm":
            return web.json_response({"detail": "Not Found"}, status=404)
        n = 40 if "messages" in body else len(body["prompt"].split())
        return web.json_response({"count": n, "max_model_len": 2048, "tokens": [1] * n})

    async def extras_count(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append((request.path, body))
        if self.tokenize != "llama-cpp-python":
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response({"count": len(body["input"].split()) + 1})  # + BOS


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[OpenAIHttpEngine, Upstream]]:
    up = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", up.completions)
    app.router.add_post("/v1/completions", up.completions)
    app.router.add_post("/tokenize", up.vllm_tokenize)
    app.router.add_post("/extras/tokenize/count", up.extras_count)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    engine = OpenAIHttpEngine(OpenAIHttpConfig(base_url=f"http://127.0.0.1:{port}",
                                               model="up"), ("up",))
    try:
        yield engine, up
    finally:
        await engine.close()
        await runner.cleanup()


def job(endpoint: str = "chat", **fields: Any) -> InferenceJob:
    body: dict[str, Any] = {"model": "up", **fields}
    if endpoint == "chat":
        body.setdefault("messages", [{"role": "user", "content": "Say hello to Bob."}])
    else:
        body.setdefault("prompt", "one two three four five")
    return InferenceJob(endpoint, parse_request(endpoint, json.dumps(body).encode()),  # type: ignore[arg-type]
                        next(_ids))


async def run(engine: OpenAIHttpEngine, j: InferenceJob) -> tuple[list[dict[str, Any]], Usage]:
    *objects, usage = [o async for o in engine.generate(j)]
    assert isinstance(usage, Usage)
    return [json.loads(o) for o in objects_of(objects)], usage


# --- n ------------------------------------------------------------------------------------

async def test_n_passes_through_to_an_upstream_that_honours_it(upstream):
    engine, up = upstream
    objects, usage = await run(engine, job(n=2))
    assert [c["message"]["content"] for c in objects[0]["choices"]] == ["c0", "c1"]
    assert up.seen[-1][1]["n"] == 2
    objects, usage = await run(engine, job(n=2, stream=True))
    text = {0: "", 1: ""}
    for o in objects:
        for c in o["choices"]:
            text[c["index"]] += c["delta"].get("content") or ""
    assert text == {0: "w0 w1 w2 ", 1: "w0 w1 w2 "}
    assert usage == Usage(9, 6)


@pytest.mark.parametrize("fields", [{}, {"stream": True},
                                    {"stream": True, "stream_options": {"include_usage": True}}])
async def test_an_upstream_that_ignores_n_is_a_400_naming_n(upstream, fields):
    engine, up = upstream
    up.ignore_n = True
    gen = engine.generate(job(n=2, **fields))
    with pytest.raises(EngineUnsupported) as info:
        await anext(gen)  # before anything reached the app: a whole 400, not a broken stream
    assert (info.value.status, info.value.param) == (400, "n")
    assert "n=2" in info.value.message


async def test_a_long_stream_that_never_starts_the_second_choice_is_refused_early(upstream):
    engine, up = upstream
    up.ignore_n, up.chunks = True, 1000
    gen = engine.generate(job(n=3, stream=True))
    with pytest.raises(EngineUnsupported):
        await anext(gen)  # nothing reached the app: the refusal is a whole 400
    assert up.seen[-1][1]["n"] == 3


# --- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "error", "param"), [
    (400, {"error": {"message": "This model's maximum context length is 2048 tokens. "
                                "However, you requested 6031 tokens", "type": "BadRequestError",
                     "param": None, "code": 400}}, "messages"),
    (400, {"error": {"message": "too long", "code": "context_length_exceeded",
                     "param": "max_tokens"}}, "max_tokens"),
    (400, {"error": {"message": "Requested tokens (6031) exceed context window of 2048",
                     "type": "internal_server_error"}}, "messages"),
])
async def test_an_upstream_context_refusal_is_context_length_exceeded(upstream, status, error,
                                                                      param):
    engine, up = upstream
    up.error = (status, error)
    with pytest.raises(ContextLengthExceeded) as info:
        await run(engine, job())
    assert (info.value.status, info.value.code, info.value.param) == \
        (400, "context_length_exceeded", param)


async def test_other_upstream_refusals_keep_their_param(upstream):
    engine, up = upstream
    up.error = (400, {"error": {"message": "bad temperature", "param": "temperature"}})
    with pytest.raises(BadRequest) as info:
        await run(engine, job())
    assert type(info.value) is BadRequest and info.value.param == "temperature"


# --- usage of a stream whose upstream reports none ------------------------------------------

async def test_reported_usage_is_used_as_it_is(upstream):
    engine, up = upstream
    objects, usage = await run(engine, job(stream=True,
                                           stream_options={"include_usage": True}))
    assert usage == Usage(9, 3) and engine.usage_estimated == 0
    assert "estimated" not in objects[-1]["usage"]
    assert not any(path != "/v1/chat/completions" for path, _ in up.seen)


@pytest.mark.parametrize(("tokenizer", "endpoint", "prompt_tokens"), [
    ("vllm", "chat", 40),                    # /tokenize applies the chat template
    ("vllm", "completions", 5),
    ("llama-cpp-python", "completions", 6),  # /extras/tokenize/count, BOS included
    ("llama-cpp-python", "chat", None),      # counts text only: the estimate stays
    (None, "chat", None),
    (None, "completions", None),
])
async def test_missing_stream_usage_is_counted_by_the_upstream_tokenizer(
        upstream, tokenizer, endpoint, prompt_tokens):
    engine, up = upstream
    up.stream_usage, up.tokenize = False, tokenizer
    for _ in range(2):  # the tokenizer is found once, then used
        j = job(endpoint, stream=True, stream_options={"include_usage": True})
        objects, usage = await run(engine, j)
        want = prompt_tokens if prompt_tokens is not None else prompt_tokens_of(j)
        assert usage == Usage(want, 3) and j.meter.estimated
        assert objects[-1]["choices"] == []
        assert objects[-1]["usage"] == {**usage.to_openai(), "estimated": True}
    # Probed once (/tokenize, then /extras/tokenize/count), then asked only where it counts.
    calls = ([p for p, _ in up.seen].count("/tokenize"),
             [p for p, _ in up.seen].count("/extras/tokenize/count"))
    assert calls == {"vllm": (3, 0), "llama-cpp-python": (1, 3 if endpoint == "completions"
                                                           else 1), None: (1, 1)}[tokenizer]
    assert engine.usage_estimated == 2


async def test_the_sdk_parses_an_estimated_usage_chunk(upstream):
    import openai.types.chat as t

    engine, up = upstream
    up.stream_usage = False
    objects, usage = await run(engine, job(stream=True, stream_options={"include_usage": True}))
    parsed = t.ChatCompletionChunk.model_validate(objects[-1])
    assert parsed.usage is not None and parsed.usage.prompt_tokens == usage.prompt_tokens
    assert parsed.usage.model_extra == {"estimated": True}
