"""OpenAI request validation, usage objects, response builders and the error tree."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon import errors
from cocoon.errors import BadRequest, PricingError, RequestError, request_error_from_code
from cocoon.openai.envelope import Envelope, effective_max_tokens
from cocoon.openai.protocol import (
    ENDPOINTS,
    Usage,
    chat_chunk,
    chat_completion,
    completion,
    completion_chunk,
    dumps,
    max_tokens_of,
    new_id,
    parse_request,
    usage_chunk,
    wants_usage,
)

CHAT_BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPL_BASE: dict[str, Any] = {"model": "m", "prompt": "hi"}


def chat(**fields: Any) -> dict[str, Any]:
    body = dict(CHAT_BASE)
    body.update(fields)
    return body


def compl(**fields: Any) -> dict[str, Any]:
    body = dict(COMPL_BASE)
    body.update(fields)
    return body


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


# --- valid bodies ------------------------------------------------------------------------

VALID_CHAT = [
    CHAT_BASE,
    chat(stream=True, stream_options={"include_usage": True}),
    chat(stream=True, stream_options={}),
    chat(temperature=0, top_p=1, n=1, max_tokens=1, seed=-5, presence_penalty=-2,
         frequency_penalty=2),
    chat(temperature=2.0, top_p=0.0, n=128),
    chat(stop="\n"),
    chat(stop=[]),
    chat(stop=["a", "b", "c", "d"]),
    chat(max_completion_tokens=10, max_tokens=None, temperature=None),
    chat(
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        tool_choice="auto",
        parallel_tool_calls=False,
        response_format={"type": "json_object"},
        metadata={"k": "v"},
        user="u-1",
        seed=42,
        logprobs=True,
        top_logprobs=20,
        logit_bias={"50256": -100},
        some_future_field={"nested": [1, 2, 3]},
    ),
    chat(tool_choice={"type": "function", "function": {"name": "f"}}),
    chat(messages=[
        {"role": r, "content": "x"}
        for r in ("system", "developer", "user", "assistant", "tool", "function")
    ]),
    chat(messages=[{"role": "assistant", "content": None, "tool_calls": []}]),
    chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
    chat(messages=[{"role": "user"}]),
]

VALID_COMPLETIONS = [
    COMPL_BASE,
    compl(prompt=["a", "b"]),
    compl(prompt=[1, 2, 3]),
    compl(prompt=[[1, 2], [3]]),
    compl(logprobs=0, echo=True, best_of=1, suffix="s"),
    compl(logprobs=5, stream=True, stream_options={"include_usage": False}),
    compl(tools=[1], user="x", metadata=None, response_format="anything"),
]


@pytest.mark.parametrize("body", VALID_CHAT)
def test_valid_chat_bodies_returned_unchanged(body: dict[str, Any]) -> None:
    assert parse_request("chat", raw(body)) == body


@pytest.mark.parametrize("body", VALID_COMPLETIONS)
def test_valid_completion_bodies_returned_unchanged(body: dict[str, Any]) -> None:
    assert parse_request("completions", raw(body)) == body


def test_unknown_fields_pass_through_untouched() -> None:
    extras = {
        "tools": [{"type": "function"}],
        "tool_choice": "none",
        "response_format": {"type": "text", "extra": 1},
        "metadata": {"a": "b"},
        "user": "me",
        "seed": 7,
        "logprobs": False,
        "x_vendor": [None, True, 1.5],
    }
    body = parse_request("chat", raw(chat(**extras)))
    for key, value in extras.items():
        assert body[key] == value


def test_endpoints_table() -> None:
    assert ENDPOINTS == {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


# --- invalid bodies ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"not json",
        b"{'model': 'm'}",
        b'{"model": "m",}',
        b"\xff\xfe\xfd",
        b'{"model": "\xff"}',
        b'{"model": "m"} trailing',
    ],
)
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_invalid_json_is_bad_request(endpoint: Any, data: bytes) -> None:
    with pytest.raises(BadRequest) as ei:
        parse_request(endpoint, data)
    assert ei.value.status == 400
    assert ei.value.param is None


@pytest.mark.parametrize("data", [b"[]", b"[1]", b'"s"', b"1", b"null", b"true"])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_non_object_body_is_bad_request(endpoint: Any, data: bytes) -> None:
    with pytest.raises(BadRequest, match="JSON object"):
        parse_request(endpoint, data)


CHAT_INVALID: list[tuple[str, dict[str, Any] | bytes, str]] = [
    ("model missing", {"messages": CHAT_BASE["messages"]}, "model"),
    ("model empty", chat(model=""), "model"),
    ("model int", chat(model=3), "model"),
    ("temperature str", chat(temperature="hot"), "temperature"),
    ("temperature high", chat(temperature=3), "temperature"),
    ("temperature negative", chat(temperature=-0.1), "temperature"),
    ("temperature bool", chat(temperature=True), "temperature"),
    ("temperature NaN", b'{"model":"m","messages":[{"role":"user"}],"temperature":NaN}',
     "temperature"),
    ("temperature Infinity",
     b'{"model":"m","messages":[{"role":"user"}],"temperature":Infinity}', "temperature"),
    ("top_p -Infinity", b'{"model":"m","messages":[{"role":"user"}],"top_p":-Infinity}',
     "top_p"),
    ("top_p high", chat(top_p=2), "top_p"),
    ("n zero", chat(n=0), "n"),
    ("n high", chat(n=129), "n"),
    ("n float", chat(n=1.0), "n"),
    ("max_tokens zero", chat(max_tokens=0), "max_tokens"),
    ("max_tokens float", chat(max_tokens=1.5), "max_tokens"),
    ("max_tokens integral float", chat(max_tokens=2.0), "max_tokens"),
    ("max_tokens bool", chat(max_tokens=True), "max_tokens"),
    ("max_tokens str", chat(max_tokens="10"), "max_tokens"),
    ("max_completion_tokens zero", chat(max_completion_tokens=0), "max_completion_tokens"),
    ("max_completion_tokens bool", chat(max_completion_tokens=True), "max_completion_tokens"),
    ("stop five", chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("stop int", chat(stop=1), "stop"),
    ("stop list of int", chat(stop=[1]), "stop"),
    ("seed float", chat(seed=1.5), "seed"),
    ("seed bool", chat(seed=False), "seed"),
    ("presence_penalty high", chat(presence_penalty=2.5), "presence_penalty"),
    ("frequency_penalty low", chat(frequency_penalty=-3), "frequency_penalty"),
    ("logit_bias list", chat(logit_bias=[1]), "logit_bias"),
    ("user int", chat(user=1), "user"),
    ("messages missing", {"model": "m"}, "messages"),
    ("messages null", chat(messages=None), "messages"),
    ("messages empty", chat(messages=[]), "messages"),
    ("messages not list", chat(messages={"role": "user"}), "messages"),
    ("messages str", chat(messages="hi"), "messages"),
    ("message not object", chat(messages=["hi"]), "messages[0]"),
    ("second message not object",
     chat(messages=[{"role": "user", "content": "x"}, 5]), "messages[1]"),
    ("role bad", chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    ("role missing", chat(messages=[{"content": "x"}]), "messages[0].role"),
    ("role int", chat(messages=[{"role": 1, "content": "x"}]), "messages[0].role"),
    ("content int", chat(messages=[{"role": "user", "content": 1}]), "messages[0].content"),
    ("content object",
     chat(messages=[{"role": "user", "content": {"text": "x"}}]), "messages[0].content"),
    ("stream str", chat(stream="yes"), "stream"),
    ("stream int", chat(stream=1), "stream"),
    ("stream_options without stream", chat(stream_options={"include_usage": True}),
     "stream_options"),
    ("stream_options with stream false",
     chat(stream=False, stream_options={"include_usage": True}), "stream_options"),
    ("stream_options not object", chat(stream=True, stream_options=True), "stream_options"),
    ("include_usage str", chat(stream=True, stream_options={"include_usage": "yes"}),
     "stream_options.include_usage"),
    ("include_usage int", chat(stream=True, stream_options={"include_usage": 1}),
     "stream_options.include_usage"),
    ("logprobs int", chat(logprobs=1), "logprobs"),
    ("logprobs str", chat(logprobs="true"), "logprobs"),
    ("top_logprobs high", chat(top_logprobs=21), "top_logprobs"),
    ("tools object", chat(tools={"type": "function"}), "tools"),
    ("tool_choice int", chat(tool_choice=1), "tool_choice"),
    ("parallel_tool_calls str", chat(parallel_tool_calls="yes"), "parallel_tool_calls"),
    ("response_format str", chat(response_format="json"), "response_format"),
    ("response_format no type", chat(response_format={}), "response_format"),
    ("response_format int type", chat(response_format={"type": 1}), "response_format"),
]

COMPL_INVALID: list[tuple[str, dict[str, Any] | bytes, str]] = [
    ("prompt missing", {"model": "m"}, "prompt"),
    ("prompt null", compl(prompt=None), "prompt"),
    ("prompt empty list", compl(prompt=[]), "prompt"),
    ("prompt int", compl(prompt=5), "prompt"),
    ("prompt object", compl(prompt={"a": 1}), "prompt"),
    ("prompt mixed str int", compl(prompt=["a", 1]), "prompt"),
    ("prompt mixed int list", compl(prompt=[1, [2]]), "prompt"),
    ("prompt bool tokens", compl(prompt=[True, False]), "prompt"),
    ("prompt float tokens", compl(prompt=[1.0]), "prompt"),
    ("prompt nested str", compl(prompt=[["a"]]), "prompt"),
    ("logprobs six", compl(logprobs=6), "logprobs"),
    ("logprobs negative", compl(logprobs=-1), "logprobs"),
    ("logprobs bool", compl(logprobs=True), "logprobs"),
    ("echo str", compl(echo="true"), "echo"),
    ("best_of zero", compl(best_of=0), "best_of"),
    ("suffix int", compl(suffix=1), "suffix"),
    ("temperature str", compl(temperature="hot"), "temperature"),
    ("max_tokens bool", compl(max_tokens=True), "max_tokens"),
    ("stream str", compl(stream="yes"), "stream"),
    ("stream_options without stream", compl(stream_options={}), "stream_options"),
    ("include_usage str", compl(stream=True, stream_options={"include_usage": "yes"}),
     "stream_options.include_usage"),
    ("temperature NaN", b'{"model":"m","prompt":"x","temperature":NaN}', "temperature"),
]


def _check_bad(endpoint: Any, body: dict[str, Any] | bytes, param: str) -> None:
    data = body if isinstance(body, bytes) else raw(body)
    with pytest.raises(BadRequest) as ei:
        parse_request(endpoint, data)
    err = ei.value
    assert err.param == param
    assert err.status == 400
    assert err.code == "invalid_request"
    assert f"'{param}'" in err.message
    assert err.to_openai()["error"]["param"] == param


@pytest.mark.parametrize(("case", "body", "param"), CHAT_INVALID, ids=[c[0] for c in CHAT_INVALID])
def test_chat_invalid_field_names_param(case: str, body: Any, param: str) -> None:
    _check_bad("chat", body, param)


@pytest.mark.parametrize(
    ("case", "body", "param"), COMPL_INVALID, ids=[c[0] for c in COMPL_INVALID]
)
def test_completions_invalid_field_names_param(case: str, body: Any, param: str) -> None:
    _check_bad("completions", body, param)


def test_endpoint_specific_fields_are_checked_per_endpoint() -> None:
    # logprobs is a bool for chat and an int for completions; prompt is ignored by chat.
    assert parse_request("completions", raw(compl(logprobs=3)))["logprobs"] == 3
    assert parse_request("chat", raw(chat(logprobs=True, prompt=5)))["prompt"] == 5
    assert parse_request("completions", raw(compl(messages=5)))["messages"] == 5


def test_deeply_nested_json_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        parse_request("chat", b"[" * 100_000)


def test_huge_integer_literal_is_bad_request() -> None:
    data = b'{"model":"m","prompt":"x","max_tokens":' + b"9" * 5000 + b"}"
    with pytest.raises(BadRequest):
        parse_request("completions", data)


# --- helpers -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
        ({"stream": True, "stream_options": {"include_usage": False}}, False),
        ({"stream": True, "stream_options": {}}, False),
        ({"stream": True}, False),
        ({"stream": False, "stream_options": {"include_usage": True}}, False),
        ({"stream_options": {"include_usage": True}}, False),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, False),
        ({"stream": True, "stream_options": None}, False),
        ({}, False),
    ],
)
def test_wants_usage(body: dict[str, Any], expected: bool) -> None:
    assert wants_usage(body) is expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, None),
        ({"max_tokens": 5}, 5),
        ({"max_completion_tokens": 7}, 7),
        ({"max_tokens": 5, "max_completion_tokens": 7}, 7),
        ({"max_tokens": 5, "max_completion_tokens": None}, 5),
        ({"max_tokens": None}, None),
        ({"max_tokens": True}, None),
        ({"max_tokens": 2.0}, None),
    ],
)
def test_max_tokens_of(body: dict[str, Any], expected: int | None) -> None:
    assert max_tokens_of(body) == expected


# --- usage -------------------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=2**53)


@settings(deadline=None)
@given(counts, counts, st.data())
def test_usage_round_trip(p: int, c: int, data: st.DataObject) -> None:
    # Usage holds only consistent counts (cached within prompt, reasoning within
    # completion): the one rule, tested in test_usage_rejects_contradicting_counts.
    cached = data.draw(st.integers(min_value=0, max_value=p))
    reasoning = data.draw(st.integers(min_value=0, max_value=c))
    u = Usage(p, c, cached, reasoning)
    obj = u.to_openai()
    assert obj["total_tokens"] == p + c
    assert Usage.from_openai(obj) == u
    assert Usage.from_openai(json.loads(json.dumps(obj))) == u
    assert ("prompt_tokens_details" in obj) is (cached > 0)
    assert ("completion_tokens_details" in obj) is (reasoning > 0)


@pytest.mark.parametrize("args", [(1, 0, 2, 0), (0, 1, 0, 2), (-1, 0, 0, 0), (0, 0, -1, 0),
                                  (True, 0, 0, 0), (1.0, 0, 0, 0)])
def test_usage_rejects_contradicting_counts(args: tuple[Any, ...]) -> None:
    with pytest.raises(PricingError):
        Usage(*args)
    with pytest.raises(ValueError):  # what from_openai promises for a bad usage object
        Usage.from_openai({"prompt_tokens": args[0], "completion_tokens": args[1],
                           "prompt_tokens_details": {"cached_tokens": args[2]},
                           "completion_tokens_details": {"reasoning_tokens": args[3]}})


def test_usage_to_openai_shape() -> None:
    assert Usage(3, 4).to_openai() == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert Usage(3, 4, 2, 1).to_openai() == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"prompt_tokens": 1}, Usage(1, 0)),
        ({"prompt_tokens": 1, "completion_tokens": None}, Usage(1, 0)),
        ({"prompt_tokens": 1, "completion_tokens": 2, "prompt_tokens_details": None,
          "completion_tokens_details": "n/a"}, Usage(1, 2)),
        ({"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": None}}, Usage(1, 0)),
        ({"prompt_tokens": 1, "prompt_tokens_details": {"audio_tokens": 5}}, Usage(1, 0)),
    ],
)
def test_usage_from_openai_lenient_on_optional_parts(obj: Any, expected: Usage) -> None:
    assert Usage.from_openai(obj) == expected


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "usage",
        {},
        {"prompt_tokens": None},
        {"prompt_tokens": "3"},
        {"prompt_tokens": 1.0},
        {"prompt_tokens": True},
        {"prompt_tokens": -1},
        {"prompt_tokens": 1, "completion_tokens": -1},
        {"prompt_tokens": 1, "completion_tokens": 2.5},
        {"prompt_tokens": 1, "completion_tokens": False},
        {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": -2}},
        {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": "2"}},
        {"prompt_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 1.5}},
    ],
)
def test_usage_from_openai_rejects_invalid(obj: Any) -> None:
    with pytest.raises(ValueError):
        Usage.from_openai(obj)


def test_usage_total_and_frozen() -> None:
    u = Usage(10, 5, cached_tokens=3)
    assert u.total_tokens == 15
    with pytest.raises(AttributeError):
        u.prompt_tokens = 1  # type: ignore[misc]


# --- response objects --------------------------------------------------------------------

def test_new_id() -> None:
    assert new_id("chat", 255) == "chatcmpl-00000000000000ff"
    assert new_id("completions", 1) == "cmpl-0000000000000001"


def test_dumps_is_compact_utf8() -> None:
    assert dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    assert json.loads(dumps({"x": None})) == {"x": None}


def test_chat_chunk_shape() -> None:
    c = chat_chunk("chatcmpl-1", 100, "m", {"content": "hi"}, None)
    assert c["object"] == "chat.completion.chunk"
    assert (c["id"], c["created"], c["model"]) == ("chatcmpl-1", 100, "m")
    assert c["choices"] == [
        {"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None}
    ]
    last = chat_chunk("chatcmpl-1", 100, "m", {}, "stop")
    assert last["choices"][0]["delta"] == {}
    assert last["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in c


def test_completion_chunk_shape() -> None:
    c = completion_chunk("cmpl-1", 5, "m", "tok", "length")
    assert c["object"] == "text_completion"
    assert c["choices"] == [
        {"index": 0, "text": "tok", "logprobs": None, "finish_reason": "length"}
    ]


@pytest.mark.parametrize(
    ("endpoint", "obj"), [("chat", "chat.completion.chunk"), ("completions", "text_completion")]
)
def test_usage_chunk_shape(endpoint: Any, obj: str) -> None:
    c = usage_chunk(endpoint, "id-1", 7, "m", Usage(2, 3))
    assert c["object"] == obj
    assert c["choices"] == []
    assert c["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert (c["id"], c["created"], c["model"]) == ("id-1", 7, "m")


def test_chat_completion_shape() -> None:
    c = chat_completion("chatcmpl-9", 1, "m", "hello", "stop", Usage(1, 2))
    assert c["object"] == "chat.completion"
    assert c["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert c["choices"][0]["finish_reason"] == "stop"
    assert c["choices"][0]["index"] == 0
    assert c["usage"]["total_tokens"] == 3
    assert Usage.from_openai(c["usage"]) == Usage(1, 2)


def test_completion_shape() -> None:
    c = completion("cmpl-9", 1, "m", "hello", "length", Usage(4, 1, cached_tokens=2))
    assert c["object"] == "text_completion"
    assert c["choices"] == [
        {"index": 0, "text": "hello", "logprobs": None, "finish_reason": "length"}
    ]
    assert c["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    assert json.loads(dumps(c)) == c


# --- errors ------------------------------------------------------------------------------

def _all_request_errors() -> list[type[RequestError]]:
    out: list[type[RequestError]] = [RequestError]
    todo = [RequestError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__ == errors.__name__ and sub not in out:
                out.append(sub)
                todo.append(sub)
    return out


ALL_REQUEST_ERRORS = _all_request_errors()


def test_every_request_error_is_found() -> None:
    names = {c.__name__ for c in ALL_REQUEST_ERRORS}
    assert {"BadRequest", "EngineUnsupported", "ModelNotFound", "NoWorkerAvailable",
            "WorkerLost", "UpstreamError", "RequestTimeout", "RequestCancelled",
            "EngineError", "RequestError"} <= names


def test_request_error_codes_are_unique() -> None:
    codes = [c.code for c in ALL_REQUEST_ERRORS]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("cls", ALL_REQUEST_ERRORS, ids=lambda c: c.__name__)
def test_request_error_from_code_maps_back(cls: type[RequestError]) -> None:
    err = request_error_from_code(cls.code, "boom", "field")
    assert type(err) is cls
    assert err.message == "boom"
    assert str(err) == "boom"
    assert err.param == "field"
    assert request_error_from_code(cls.code, "x").param is None


@pytest.mark.parametrize("cls", ALL_REQUEST_ERRORS, ids=lambda c: c.__name__)
def test_to_openai_shape(cls: type[RequestError]) -> None:
    err = cls("went wrong", param="p")
    assert err.to_openai() == {
        "error": {"message": "went wrong", "type": cls.type, "param": "p", "code": cls.code}
    }
    assert cls("x").to_openai()["error"]["param"] is None
    assert 400 <= cls.status <= 599
    assert isinstance(err, errors.CocoonError)


@pytest.mark.parametrize("code", ["", "nope", "INVALID_REQUEST", "bad request"])
def test_unknown_code_is_plain_request_error(code: str) -> None:
    err = request_error_from_code(code, "m", None)
    assert type(err) is RequestError
    assert err.code == "internal_error"
    assert err.status == 500


def test_error_statuses() -> None:
    assert errors.BadRequest.status == 400
    assert errors.EngineUnsupported.status == 400
    assert issubclass(errors.EngineUnsupported, errors.BadRequest)
    assert errors.ModelNotFound.status == 404
    assert errors.NoWorkerAvailable.status == 503
    assert errors.RequestTimeout.status == 504
    assert errors.WorkerLost.status == 502
    assert errors.UpstreamError.status == 502
    assert issubclass(errors.FrameTooLarge, errors.ProtocolError)
    assert issubclass(errors.FlowControlError, errors.ProtocolError)


# --- the request envelope: the generation cap decided once -------------------------------


@pytest.mark.parametrize(("requested", "default", "limit", "cap"), [
    (None, 0, 0, 0),        # nothing asked, no default: no cap
    (None, 256, 0, 256),    # the proxy's billing default fills a missing cap
    (100, 256, 0, 100),     # what the app asked wins over the default
    (1000, 0, 300, 300),    # never above what was granted
    (None, 0, 300, 300),
    (100, 0, 300, 100),
])
def test_effective_max_tokens(requested: int | None, default: int, limit: int,
                              cap: int) -> None:
    assert effective_max_tokens(requested, default=default, limit=limit) == cap


def test_envelope_is_built_once_from_the_body() -> None:
    raw = json.dumps({"model": "m", "stream": True, "max_completion_tokens": 7,
                      "messages": [{"role": "user", "content": "hi"}]}).encode()
    env, body = Envelope.parse("chat", raw)
    assert (env.endpoint, env.model, env.stream, env.max_tokens, env.body) == (
        "chat", "m", True, 7, raw)
    assert body["messages"][0]["content"] == "hi"
    with pytest.raises(BadRequest) as info:
        Envelope.parse("chat", b'{"model": "m", "messages": [], "max_tokens": 0}')
    assert info.value.param in ("max_tokens", "messages")
