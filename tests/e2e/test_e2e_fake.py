"""The official openai SDK against a local network (proxy, worker, client processes) running
the fake engine: both endpoints, streamed and not, usage, stats and OpenAI-shaped errors."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.e2e

CHUNKS = 50
PIECE = "x" * 127 + " "  # FakeEngineConfig.chunk_bytes = 128
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there, fake engine! \u00e9\u00e8"}]
PROMPT = "Once upon a time, in a test suite far away"


def chat_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """engines.fake.prompt_tokens_of, written out: 1 token per 4 UTF-8 bytes, at least 1."""
    return max(1, len("".join(m["content"] for m in messages).encode()) // 4)


def text_prompt_tokens(prompt: str) -> int:
    return max(1, len(prompt.encode()) // 4)


@pytest.fixture(scope="module")
def net(start_network):
    return start_network(engine="fake")


@pytest.fixture(scope="module")
def client(net):
    with openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0,
                       timeout=30) as c:
        yield c


# --- happy paths -----------------------------------------------------------------------

def test_models_lists_the_fake_model(client):
    assert [m.id for m in client.models.list().data] == ["fake"]


@pytest.mark.parametrize(("max_tokens", "finish"), [(None, "stop"), (7, "length")])
def test_chat_non_stream(client, max_tokens, finish):
    r = client.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=max_tokens)
    n = CHUNKS if max_tokens is None else max_tokens
    assert r.object == "chat.completion"
    assert r.model == "fake"
    assert len(r.choices) == 1
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == PIECE * n
    assert r.choices[0].finish_reason == finish
    assert r.usage is not None
    assert r.usage.prompt_tokens == chat_prompt_tokens(MESSAGES)
    assert r.usage.completion_tokens == n
    assert r.usage.total_tokens == n + chat_prompt_tokens(MESSAGES)


def test_chat_stream_with_usage(client):
    chunks = list(client.chat.completions.create(
        model="fake", messages=MESSAGES, max_tokens=9, stream=True,
        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in with_choices if c.choices[0].delta.content]
    assert contents == [PIECE] * 9
    assert with_choices[-1].choices[0].finish_reason == "length"
    # Exactly one usage chunk, the last, with no choices.
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == chat_prompt_tokens(MESSAGES)
    assert last.usage.completion_tokens == 9
    assert last.usage.total_tokens == 9 + chat_prompt_tokens(MESSAGES)


def test_chat_stream_without_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="fake", messages=MESSAGES, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == PIECE * CHUNKS
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completions_non_stream(client):
    r = client.completions.create(model="fake", prompt=PROMPT, max_tokens=5)
    assert r.object == "text_completion"
    assert r.choices[0].text == PIECE * 5
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == text_prompt_tokens(PROMPT)
    assert r.usage.completion_tokens == 5


def test_completions_stream_with_usage(client):
    chunks = list(client.completions.create(
        model="fake", prompt=PROMPT, max_tokens=60, stream=True,
        stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert texts == [PIECE] * CHUNKS  # max_tokens above the engine's 50 chunks
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == text_prompt_tokens(PROMPT)
    assert chunks[-1].usage.completion_tokens == CHUNKS


def test_stats_reflect_tokens(net, client, stats, wait_for):
    roles = {"worker": net.workers[0].http, "proxy": net.proxy.http, "client": net.client.http}
    before = {k: stats(v) for k, v in roles.items()}
    client.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=3)
    list(client.completions.create(model="fake", prompt=PROMPT, max_tokens=4, stream=True))
    prompt = chat_prompt_tokens(MESSAGES) + text_prompt_tokens(PROMPT)

    def grew(role: str) -> dict[str, Any] | None:
        now = stats(roles[role])
        delta = {k: now["tokens"][k] - before[role]["tokens"][k] for k in ("prompt",
                                                                            "completion")}
        return now if delta == {"prompt": prompt, "completion": 7} else None

    worker = wait_for(lambda: grew("worker"), "worker tokens updated")
    proxy = wait_for(lambda: grew("proxy"), "proxy tokens updated")
    client_stats = wait_for(lambda: grew("client"), "client tokens updated")
    assert worker["requests"]["completed"] - before["worker"]["requests"]["completed"] == 2
    assert worker["active"] == 0
    assert worker["engine"]["name"] == "fake"
    assert worker["engine"]["cancelled"] == before["worker"]["engine"]["cancelled"]
    assert proxy["requests"]["completed"] - before["proxy"]["requests"]["completed"] == 2
    assert proxy["requests"]["in_flight"] == 0
    assert proxy["workers"][0]["models"] == ["fake"]
    assert client_stats["requests"]["succeeded"] - before["client"]["requests"]["succeeded"] == 2


# --- errors ----------------------------------------------------------------------------

def assert_openai_error(body: Any, status: int, param: str | None = None) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert err["param"] == param
    return err


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_invalid_json_is_400(net, http, path):
    status, body = http("POST", net.base_url + path, b'{"model": "fake", "messages": [')
    assert status == 400
    err = assert_openai_error(body, 400)
    assert "JSON" in err["message"]


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", "hot"),
    ("messages", "hello"),
    ("max_tokens", -1),
    ("stream", "yes"),
    ("top_p", 3),
    ("model", 42),
])
def test_wrong_types_are_400_naming_the_param(net, http, field, value):
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], field: value}
    status, resp = http("POST", net.base_url + "/chat/completions", body)
    assert status == 400
    err = assert_openai_error(resp, 400, param=field)
    assert field in err["message"]


def test_wrong_type_through_the_sdk(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fake", prompt=PROMPT, temperature="hot")
    assert info.value.status_code == 400
    assert info.value.body["param"] == "temperature"


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404(client, stream):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=stream)
    assert info.value.status_code == 404
    assert info.value.body["code"] == "model_not_found"
    assert "no-such-model" in info.value.body["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_n_greater_than_one_is_rejected_by_the_engine(client, stream):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake", messages=MESSAGES, n=2, stream=stream)
    body = info.value.body
    assert body["param"] == "n"
    assert body["code"] == "unsupported_by_engine"
    assert "n=1" in body["message"]
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.completions.create(model="fake", prompt=PROMPT, n=2)


def test_valid_openai_fields_pass_through(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    r = client.chat.completions.create(
        model="fake", messages=MESSAGES, max_tokens=2, tools=tools, tool_choice="auto",
        response_format={"type": "json_object"}, seed=7, stop=["\n", "END"], logprobs=True,
        top_logprobs=2, user="user-1", metadata={"k": "v"}, presence_penalty=0.5,
        frequency_penalty=0.1, logit_bias={"42": 1}, parallel_tool_calls=False)
    assert r.choices[0].message.content == PIECE * 2
    r = client.completions.create(model="fake", prompt=[PROMPT], max_tokens=2, seed=1,
                                  stop="\n", user="u", echo=False, logprobs=1)
    assert r.choices[0].text == PIECE * 2
    chunks = list(client.chat.completions.create(
        model="fake", messages=MESSAGES, max_tokens=1, stream=True, user="u", seed=3,
        stream_options={"include_usage": True}, extra_body={"some_vendor_field": 1}))
    assert chunks[-1].usage.completion_tokens == 1


def test_unknown_path_is_404_json(net, http):
    status, body = http("POST", net.base_url + "/embeddingz", {"model": "fake"})
    assert status == 404
    assert assert_openai_error(body, 404)["code"] == "not_found"
    status, body = http("GET", net.client.http + "/nope")
    assert status == 404
    assert assert_openai_error(body, 404)["code"] == "not_found"


def test_get_on_chat_completions_is_405_json(net, http):
    status, body = http("GET", net.base_url + "/chat/completions")
    assert status == 405
    assert assert_openai_error(body, 405)["code"] == "method_not_allowed"


def test_errors_are_counted_as_invalid(net, http, stats):
    before = stats(net.client.http)["requests"]["invalid"]
    http("POST", net.base_url + "/chat/completions", b"not json")
    assert stats(net.client.http)["requests"]["invalid"] == before + 1
    # and the network still serves
    status, body = http("POST", net.base_url + "/completions",
                        {"model": "fake", "prompt": "a", "max_tokens": 1})
    assert status == 200, json.dumps(body)[:300]
    assert body["usage"]["completion_tokens"] == 1
