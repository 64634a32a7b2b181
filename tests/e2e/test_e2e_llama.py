"""The openai SDK against a network whose worker runs SmolLM2 in llama.cpp. At temperature 0
the answers and token counts must be exactly what llama-cpp-python gives when called
directly in this process."""

from __future__ import annotations

from typing import Any

import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.llama]

MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The three primary colours are"


@pytest.fixture(scope="module")
def direct():
    """The same model, loaded the way the worker loads it, called without cocoon."""
    from llama_cpp import Llama

    from cocoon.engines.llama_cpp import default_model_path

    llm = Llama(model_path=str(default_model_path()), n_ctx=2048, seed=0, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def net(start_network):
    return start_network(engine="llama-cpp")


@pytest.fixture(scope="module")
def client(net):
    with openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0,
                       timeout=120) as c:
        yield c


def counts(usage: Any) -> tuple[int, int, int]:
    if isinstance(usage, dict):
        return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def test_serves_smollm2(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


@pytest.mark.parametrize("max_tokens", [6, 40])
def test_chat_non_stream_equals_direct(client, direct, max_tokens):
    want = direct.create_chat_completion(messages=MESSAGES, temperature=0,
                                         max_tokens=max_tokens)
    got = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0,
                                         max_tokens=max_tokens)
    assert got.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert got.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert counts(got.usage) == counts(want["usage"])


def test_chat_stream_equals_direct(net, client, direct, stats, wait_for):
    want = direct.create_chat_completion(messages=MESSAGES, temperature=0, max_tokens=12)
    before = {"worker": stats(net.workers[0].http), "proxy": stats(net.proxy.http),
              "client": stats(net.client.http)}
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want["choices"][0]["message"]["content"]
    assert chunks[-1].choices == []
    assert counts(chunks[-1].usage) == counts(want["usage"])
    # Every role counted the same tokens.
    p, c, _ = counts(want["usage"])
    for role, http in (("worker", net.workers[0].http), ("proxy", net.proxy.http),
                       ("client", net.client.http)):
        wait_for(lambda role=role, http=http: stats(http)["tokens"] == {
            "prompt": before[role]["tokens"]["prompt"] + p,
            "completion": before[role]["tokens"]["completion"] + c}, f"{role} tokens")


def test_completions_stream_and_non_stream_equal_direct(client, direct):
    want = direct.create_completion(prompt=PROMPT, temperature=0, max_tokens=10)
    got = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=10)
    assert got.choices[0].text == want["choices"][0]["text"]
    assert counts(got.usage) == counts(want["usage"])
    chunks = list(client.completions.create(
        model=MODEL, prompt=PROMPT, temperature=0, max_tokens=10, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want["choices"][0]["text"]
    assert counts(chunks[-1].usage) == counts(want["usage"])


def test_tools_are_refused_by_llama(client):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=tools,
                                       max_tokens=2)
    assert info.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, max_tokens=2)
