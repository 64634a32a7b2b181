"""A network whose worker forwards to a real llama_cpp.server (engine openai-http), driven
by the openai SDK: the app sees the upstream's answers, streamed and not."""

from __future__ import annotations

import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.llama]

MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "Say hello to Bob."}]


@pytest.fixture(scope="module")
def net(start_network, llama_server):
    return start_network(engine="openai-http", upstream=llama_server)


@pytest.fixture(scope="module")
def client(net):
    with openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0,
                       timeout=120) as c:
        yield c


def test_chat_stream_and_non_stream_through_the_network(net, client, llama_server, stats):
    assert [m.id for m in client.models.list().data] == [MODEL]
    kw = {"model": MODEL, "messages": MESSAGES, "temperature": 0, "seed": 1, "max_tokens": 12}
    with openai.OpenAI(base_url=llama_server + "/v1", api_key="unused", max_retries=0,
                       timeout=120) as upstream:
        want = upstream.chat.completions.create(**kw)
    got = client.chat.completions.create(**kw)
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.usage.completion_tokens == want.usage.completion_tokens
    assert got.usage.prompt_tokens == want.usage.prompt_tokens

    chunks = list(client.chat.completions.create(**kw, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.choices[0].message.content
    assert chunks[-1].choices == []
    # llama_cpp.server reports no usage for streams: the worker estimates it (exact here,
    # one chunk per token of an ASCII answer) and says so in its stats.
    assert chunks[-1].usage.completion_tokens == want.usage.completion_tokens
    assert stats(net.workers[0].http)["engine"]["usage_estimated"] == 1


def test_completions_through_the_network(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5,
                                  temperature=0)
    assert r.choices[0].text
    assert r.usage.completion_tokens == 5
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time",
                                            max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text


def test_upstream_rejection_reaches_the_app_as_400(client):
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello " * 3000}], max_tokens=2)
