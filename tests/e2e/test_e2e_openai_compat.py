"""Issue 11: OpenAI compatibility as apps meet it. The official openai SDK and LangChain
(langchain-openai) against a local network whose worker runs SmolLM2 in llama.cpp, and one
whose worker forwards to a real llama_cpp.server (engine openai-http): every request shape of
the issue's table is answered, or refused with a 400 naming its parameter; never a bare 500.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import openai
import pytest
from pydantic import BaseModel

pytestmark = [pytest.mark.e2e, pytest.mark.llama]

MODEL = "SmolLM2-135M-Instruct"
ORIGIN = "http://localhost:5173"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TOOL_TURNS: list[Any] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]


class Person(BaseModel):
    name: str
    age: int


ASK_PERSON = "Give a JSON object for a person named Alice aged 30."


@pytest.fixture(scope="module")
def net(start_network):
    return start_network(engine="llama-cpp", client_sets=[f"cors_origins={ORIGIN}"])


@pytest.fixture(scope="module")
def client(net):
    with openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0,
                       timeout=120) as c:
        yield c


def bad_request(call: Any) -> dict[str, Any]:
    """The OpenAI error body of a call that must be refused with 400."""
    with pytest.raises(openai.BadRequestError) as info:
        call()
    assert info.value.status_code == 400
    return info.value.body  # type: ignore[return-value]


def text_of(completion: Any) -> str:
    return completion.choices[0].message.content  # type: ignore[no-any-return]


# --- message shapes -----------------------------------------------------------------------

def test_content_as_text_parts_is_answered(client):
    parts = [{"type": "text", "text": "What is the capital"},
             {"type": "text", "text": "of France?"}]
    got = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=12,
                                         messages=[{"role": "user", "content": parts}])
    want = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=12,
        messages=[{"role": "user", "content": "What is the capital\nof France?"}])
    assert text_of(got) == text_of(want) and "Paris" in text_of(got)
    assert got.usage.prompt_tokens == want.usage.prompt_tokens


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}])
def test_a_non_text_part_to_a_text_only_model_is_a_400_naming_it(client, part):
    body = bad_request(lambda: client.chat.completions.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"}, part]}]))
    assert body["param"] == "messages[0].content[1]"
    assert body["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
def test_tool_turns_with_null_content_are_accepted(client, stream):
    out = client.chat.completions.create(model=MODEL, messages=TOOL_TURNS, max_tokens=6,
                                         temperature=0, stream=stream)
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in out if c.choices)
    else:
        assert text_of(out) and out.usage.completion_tokens >= 1


def test_developer_is_treated_as_system(client):
    def ask(role: str) -> Any:
        return client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=10,
            messages=[{"role": role, "content": "Always answer in French."},
                      {"role": "user", "content": "Hello, how are you?"}])

    dev, system = ask("developer"), ask("system")
    assert text_of(dev) == text_of(system)
    assert dev.usage.prompt_tokens == system.usage.prompt_tokens


# --- the context window and out-of-range values ------------------------------------------------

LONG = "hello " * 3000


@pytest.mark.parametrize(("endpoint", "stream"), [
    ("chat", False), ("chat", True), ("completions", False), ("completions", True)])
def test_a_prompt_beyond_the_context_window_is_context_length_exceeded(client, endpoint,
                                                                       stream):
    if endpoint == "chat":
        body = bad_request(lambda: client.chat.completions.create(
            model=MODEL, max_tokens=4, stream=stream,
            messages=[{"role": "user", "content": LONG}]))
    else:
        body = bad_request(lambda: client.completions.create(
            model=MODEL, max_tokens=4, stream=stream, prompt=LONG))
    assert body["code"] == "context_length_exceeded"
    assert body["param"] == ("messages" if endpoint == "chat" else "prompt")
    assert "maximum context length is 2048 tokens" in body["message"]


@pytest.mark.parametrize(("fields", "param", "code"), [
    ({"max_tokens": 100000}, "max_tokens", "context_length_exceeded"),
    ({"max_completion_tokens": 2040}, "max_completion_tokens", "context_length_exceeded"),
    ({"logit_bias": {"50256": 200}}, "logit_bias", "invalid_request"),
    ({"top_logprobs": 2}, "top_logprobs", "invalid_request"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_request"),
    ({"logprobs": True}, "logprobs", "unsupported_by_engine"),
    ({"logprobs": True, "top_logprobs": 2}, "logprobs", "unsupported_by_engine"),
])
def test_values_the_model_cannot_take_are_a_400_naming_them(client, fields, param, code):
    body = bad_request(lambda: client.chat.completions.create(
        model=MODEL, messages=QUESTION, **fields))
    assert (body["param"], body["code"]) == (param, code)


def test_completions_logprobs_are_a_400_naming_logprobs(client):
    body = bad_request(lambda: client.completions.create(model=MODEL, prompt="Hi",
                                                         max_tokens=2, logprobs=2))
    assert (body["param"], body["code"]) == ("logprobs", "unsupported_by_engine")


# --- structured output ----------------------------------------------------------------------

def test_sdk_parse_with_a_pydantic_model(client):
    got = client.chat.completions.parse(
        model=MODEL, temperature=0, max_tokens=60, response_format=Person,
        messages=[{"role": "user", "content": ASK_PERSON}])
    person = got.choices[0].message.parsed
    assert isinstance(person, Person) and person.name and person.age >= 0


def test_langchain_with_structured_output(net):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=net.base_url, api_key="unused", temperature=0,
                     max_tokens=60, max_retries=0, timeout=120)
    person = llm.with_structured_output(Person).invoke(ASK_PERSON)
    assert isinstance(person, Person) and person.name and person.age >= 0


def test_langchain_message_shapes(net):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=net.base_url, api_key="unused", temperature=0,
                     max_tokens=8, max_retries=0, timeout=120)
    history = [
        SystemMessage("Be brief."),
        HumanMessage(content=[{"type": "text", "text": "What is the weather"},
                              {"type": "text", "text": "in Paris?"}]),
        AIMessage(content="", tool_calls=[{"id": "call_1", "name": "weather",
                                           "args": {"city": "Paris"}}]),
        ToolMessage(content="sunny, 21 C", tool_call_id="call_1"),
        HumanMessage("So, should I take an umbrella?"),
    ]
    reply = llm.invoke(history)
    assert isinstance(reply.content, str) and reply.content
    assert reply.usage_metadata is not None and reply.usage_metadata["input_tokens"] > 0
    chunks = list(llm.stream(history))
    assert "".join(str(c.content) for c in chunks)


# --- models, determinism, CORS --------------------------------------------------------------

def test_models_retrieve(client):
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_the_same_request_gives_the_same_answer_whatever_came_before(client):
    def ask(**kw: Any) -> str:
        return text_of(client.chat.completions.create(
            model=MODEL, max_tokens=12,
            messages=[{"role": "user", "content": "Write one sentence about the sea."}], **kw))

    first = [ask(temperature=0), ask(temperature=1.0, seed=11)]
    for other in ("Write one sentence about the sea and the sky.", "List three fruits."):
        client.chat.completions.create(model=MODEL, max_tokens=4, temperature=1.0,
                                       messages=[{"role": "user", "content": other}])
        assert [ask(temperature=0), ask(temperature=1.0, seed=11)] == first


def test_cors_headers_on_a_stream_for_an_allowed_origin(net):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 3, "stream": True}
    req = urllib.request.Request(net.base_url + "/chat/completions",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Origin": ORIGIN})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert resp.read().endswith(b"data: [DONE]\n\n")
    pre = urllib.request.Request(net.base_url + "/chat/completions", method="OPTIONS",
                                 headers={"Origin": ORIGIN,
                                          "Access-Control-Request-Method": "POST"})
    with urllib.request.urlopen(pre, timeout=10) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN


# --- through openai-http, in front of llama_cpp.server -----------------------------------------

@pytest.fixture(scope="module")
def http_client(start_network, llama_server):
    net = start_network(engine="openai-http", upstream=llama_server)
    with openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0,
                       timeout=120) as c:
        yield c


@pytest.mark.parametrize("stream", [False, True])
def test_n_2_through_an_upstream_that_ignores_it_is_a_400(http_client, stream):
    body = bad_request(lambda: http_client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=4, n=2, stream=stream))
    assert body["param"] == "n"


def test_streamed_usage_the_upstream_omits_is_counted_or_marked_estimated(http_client):
    kw: dict[str, Any] = {"model": MODEL, "temperature": 0, "max_tokens": 6}
    # Completions: llama_cpp.server's tokenizer counts the prompt exactly.
    want = http_client.completions.create(prompt="Once upon a time", **kw).usage
    chunks = list(http_client.completions.create(prompt="Once upon a time", stream=True,
                                                 stream_options={"include_usage": True},
                                                 **kw))
    assert chunks[-1].usage.prompt_tokens == want.prompt_tokens
    assert chunks[-1].usage.model_extra == {"estimated": True}
    # Chat: it cannot apply the template, so the estimate is marked as one.
    chunks = list(http_client.chat.completions.create(
        messages=QUESTION, stream=True, stream_options={"include_usage": True}, **kw))
    usage = chunks[-1].usage
    assert usage.completion_tokens >= 1 and usage.model_extra == {"estimated": True}


def test_a_prompt_beyond_the_upstream_context_is_context_length_exceeded(http_client):
    body = bad_request(lambda: http_client.chat.completions.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": LONG}]))
    assert body["code"] == "context_length_exceeded"
