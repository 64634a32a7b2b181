"""Issue 10, item 6: integers beyond what the wire or an engine can take, and text that is no
Unicode, are a 400 naming the parameter (never a 500 further in); the largest body the
client accepts always fits one wire frame."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cocoon.errors import BadRequest
from cocoon.openai import Envelope
from cocoon.openai.protocol import MAX_MODEL_NAME, MAX_TOKENS_LIMIT, parse_request
from cocoon.wire import DEFAULT_MAX_FRAME, MAX_REQUEST_BODY, Request, encode, encode_frame
from cocoon.wire.messages import REQUEST_OVERHEAD

MSGS = [{"role": "user", "content": "hi"}]


def chat(**kw: Any) -> bytes:
    return json.dumps({"model": "m", "messages": MSGS, **kw}).encode()


def compl(**kw: Any) -> bytes:
    return json.dumps({"model": "m", "prompt": "p", **kw}).encode()


OUT_OF_RANGE = [
    # (endpoint, body, the parameter the 400 names)
    ("chat", chat(max_tokens=2**64), "max_tokens"),
    ("chat", chat(max_tokens=10**30), "max_tokens"),
    ("chat", chat(max_tokens=2**63), "max_tokens"),
    ("chat", chat(max_tokens=MAX_TOKENS_LIMIT + 1), "max_tokens"),
    ("completions", compl(max_tokens=2**64), "max_tokens"),
    ("chat", chat(max_completion_tokens=2**64), "max_completion_tokens"),
    ("chat", chat(max_completion_tokens=10**30), "max_completion_tokens"),
    ("chat", chat(seed=2**63), "seed"),
    ("chat", chat(seed=-(2**63) - 1), "seed"),
    ("chat", chat(seed=10**30), "seed"),
    ("chat", chat(n=0), "n"),
    ("chat", chat(n=2**64), "n"),
    ("chat", chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    ("chat", chat(logprobs=True, top_logprobs=-1), "top_logprobs"),
    ("chat", chat(top_logprobs=2), "top_logprobs"),  # OpenAI: needs logprobs=true
    ("chat", chat(logprobs=False, top_logprobs=2), "top_logprobs"),
    ("chat", chat(logit_bias={"50256": 101}), "logit_bias"),
    ("chat", chat(logit_bias={"50256": -100.5}), "logit_bias"),
    ("chat", chat(logit_bias={"50256": 10**30}), "logit_bias"),
    ("chat", chat(logit_bias={"not-a-token": 1}), "logit_bias"),
    ("chat", chat(logit_bias={"-1": 1}), "logit_bias"),
    ("chat", chat(logit_bias={str(2**64): 1}), "logit_bias"),
    ("chat", chat(logit_bias={"9" * 5000: 1}), "logit_bias"),
    ("chat", chat(logit_bias={"1": True}), "logit_bias"),
    ("completions", compl(best_of=21), "best_of"),
    ("completions", compl(prompt=[-1]), "prompt"),
    ("completions", compl(prompt=[2**64]), "prompt"),
    ("completions", compl(prompt=[[1, 10**30]]), "prompt"),
    # fields we do not know go to the engine as they are: still no integer past 64 bits
    ("chat", chat(top_k=2**64), "top_k"),
    ("completions", compl(min_tokens=-(2**64)), "min_tokens"),
    ("chat", json.dumps({"model": "m" * (MAX_MODEL_NAME + 1), "messages": MSGS}).encode(),
     "model"),
]


@pytest.mark.parametrize(("endpoint", "body", "param"), OUT_OF_RANGE)
def test_out_of_range_integers_are_a_400_naming_the_parameter(
        endpoint: Any, body: bytes, param: str) -> None:
    with pytest.raises(BadRequest) as info:
        Envelope.parse(endpoint, body)
    assert info.value.status == 400
    assert info.value.param == param
    assert f"'{param}'" in info.value.message


IN_RANGE = [
    ("chat", chat(max_tokens=MAX_TOKENS_LIMIT)),
    ("chat", chat(max_completion_tokens=MAX_TOKENS_LIMIT)),
    ("chat", chat(seed=2**63 - 1)),
    ("chat", chat(seed=-(2**63))),
    ("chat", chat(logprobs=True, top_logprobs=0)),
    ("chat", chat(logprobs=True, top_logprobs=20)),
    ("chat", chat(logit_bias={"0": -100, "50256": 100, "7": 0.5})),
    ("chat", chat(logit_bias={})),
    ("completions", compl(best_of=20)),
    ("completions", compl(prompt=[0, MAX_TOKENS_LIMIT])),
    ("chat", chat(x_vendor=2**63 - 1, y_vendor=-(2**63))),
    # deep inside a tool's JSON schema a big integer is data, not a parameter
    ("chat", chat(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "integer", "maximum": 10**30}}}])),
    ("chat", json.dumps({"model": "m" * MAX_MODEL_NAME, "messages": MSGS}).encode()),
]


@pytest.mark.parametrize(("endpoint", "body"), IN_RANGE)
def test_bounds_themselves_are_accepted(endpoint: Any, body: bytes) -> None:
    env, parsed = Envelope.parse(endpoint, body)
    assert parsed == json.loads(body)
    assert env.max_tokens <= MAX_TOKENS_LIMIT


def test_the_largest_cap_fits_the_wire() -> None:
    env, _ = Envelope.parse("chat", chat(max_tokens=MAX_TOKENS_LIMIT))
    assert env.max_tokens == MAX_TOKENS_LIMIT
    encode(Request(1, env.endpoint, env.model, env.stream, 1000, env.body, env.max_tokens))


LONE_SURROGATES = [
    ("chat", b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}',
     "messages[0].content"),
    ("chat", b'{"model":"m","messages":[{"role":"user","content":"a\\uDFFFb"}]}',
     "messages[0].content"),
    ("chat", b'{"model":"m","messages":[{"role":"user","content":"\\ude00\\ud83d"}]}',
     "messages[0].content"),
    ("chat", b'{"model":"m\\ud800","messages":[{"role":"user","content":"x"}]}', "model"),
    ("chat", b'{"model":"m","messages":[{"role":"user","content":[{"type":"text",'
             b'"text":"\\udbff"}]}]}', "messages[0].content[0].text"),
    ("chat", b'{"model":"m","messages":[{"role":"user","content":"x"}],"user":"\\ud800"}',
     "user"),
    ("chat", b'{"model":"m","messages":[{"role":"user","content":"x"}],'
             b'"metadata":{"\\ud800":"v"}}', "metadata"),
    ("completions", b'{"model":"m","prompt":["ok","\\ud800"]}', "prompt[1]"),
    ("completions", b'{"model":"m","prompt":"x","stop":["\\udc00"]}', "stop[0]"),
]


@pytest.mark.parametrize(("endpoint", "raw", "param"), LONE_SURROGATES)
def test_lone_surrogates_are_a_400(endpoint: Any, raw: bytes, param: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(endpoint, raw)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    assert info.value.param == param
    assert "surrogate" in info.value.message


def test_paired_surrogates_and_escaped_backslashes_are_fine() -> None:
    # An emoji written as a surrogate pair is valid Unicode.
    body = parse_request("chat", b'{"model":"m","messages":[{"role":"user",'
                                 b'"content":"\\ud83d\\ude00"}]}')
    assert body["messages"][0]["content"] == "\U0001F600"
    # "\\ud800" is a backslash followed by text, not an escape.
    body = parse_request("chat", b'{"model":"m","messages":[{"role":"user",'
                                 b'"content":"\\\\ud800"}]}')
    assert body["messages"][0]["content"] == "\\ud800"


@pytest.mark.parametrize("raw", [
    b'{"model":"m","messages":[{"role":"user","content":"\xff"}]}',  # not UTF-8
    b'{"model":"m","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',  # CESU surrogate
])
def test_invalid_utf8_is_a_400(raw: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request("chat", raw)
    assert info.value.status == 400


def test_max_request_body_fits_one_frame_at_worst() -> None:
    """The client's HTTP limit: the largest body with the longest names and the largest
    integers the schema allows still fits one default frame; one byte more may not."""
    longest = "\U0001F600" * 4096  # 4 UTF-8 bytes each, the schema's longest string
    worst = Request(2**64 - 1, longest, longest, True, 2**64 - 1, b"x" * MAX_REQUEST_BODY,
                    2**64 - 1, 2**64 - 1, 2**64 - 1)
    assert len(encode_frame(encode(worst))) <= DEFAULT_MAX_FRAME + 4
    assert MAX_REQUEST_BODY == DEFAULT_MAX_FRAME - REQUEST_OVERHEAD
    assert MAX_REQUEST_BODY > 4_000_000  # still close to the frame: ~4 MB of prompt
