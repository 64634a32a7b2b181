"""Issue 11, the pure half: chat message shapes (content parts, null content, tool turns,
developer), ``response_format`` ``json_schema``, and the range checks every engine relies on,
each a 400 naming its parameter; and the text a text-only model's chat template is given."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cocoon.errors import BadRequest, EngineUnsupported
from cocoon.openai import parse_request
from cocoon.openai.messages import check_messages, text_messages


def chat(messages: list[Any], **fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": messages, **fields}).encode()


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


TOOL_TURNS: list[dict[str, Any]] = [
    user("What is the weather in Paris?"),
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]

# --- shapes the client accepts --------------------------------------------------------------


@pytest.mark.parametrize("messages", [
    [user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])],
    [user([{"type": "text", "text": "a"},
           {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}])],
    [user([{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}])],
    [user([{"type": "some_future_part", "payload": 1}])],  # for an upstream that knows it
    [{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}],
    TOOL_TURNS,
    [{"role": "developer", "content": "Be brief."}, user("hi")],
    [{"role": "function", "name": "f", "content": None}],
], ids=["text parts", "image part", "audio part", "unknown part", "refusal part",
        "tool turns", "developer", "function null"])
def test_valid_messages_pass_unchanged(messages: list[Any]) -> None:
    assert parse_request("chat", chat(messages))["messages"] == messages


@pytest.mark.parametrize(("messages", "param"), [
    ([user(["a"])], "messages[0].content[0]"),
    ([user([{"text": "a"}])], "messages[0].content[0]"),
    ([user([{"type": "text"}])], "messages[0].content[0].text"),
    ([user([{"type": "text", "text": 1}])], "messages[0].content[0].text"),
    ([user("x"), user([{"type": "text", "text": "a"}, {"type": "image_url"}])],
     "messages[1].content[1].image_url"),
    ([user([{"type": "image_url", "image_url": {}}])], "messages[0].content[0].image_url.url"),
    ([user([{"type": "input_audio", "input_audio": "AA"}])],
     "messages[0].content[0].input_audio"),
    ([{"role": "assistant", "content": None, "tool_calls": {"id": 1}}],
     "messages[0].tool_calls"),
    ([{"role": "tool", "content": "x", "tool_call_id": 5}], "messages[0].tool_call_id"),
    ([{"role": "user", "content": "x", "name": ["n"]}], "messages[0].name"),
])
def test_malformed_messages_name_the_field(messages: list[Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request("chat", chat(messages))
    assert info.value.param == param
    assert info.value.status == 400 and info.value.code == "invalid_request"


# --- what a text-only model reads -----------------------------------------------------------

def test_text_parts_are_joined_and_nothing_else_changes() -> None:
    msgs = [user([{"type": "text", "text": "What is the capital"},
                  {"type": "text", "text": "of France?"}])]
    check_messages(msgs)
    assert text_messages(msgs, "e") == [user("What is the capital\nof France?")]
    assert msgs[0]["content"][0]["text"] == "What is the capital"  # not modified in place


def test_string_messages_are_passed_on_as_they_are() -> None:
    msgs = [{"role": "system", "content": "s"}, user("u")]
    out = text_messages(msgs, "e")
    assert out == msgs and all(a is b for a, b in zip(out, msgs, strict=True))


def test_null_content_and_tool_turns_become_text_keeping_their_keys() -> None:
    out = text_messages(TOOL_TURNS, "e")
    assert [m["content"] for m in out] == ["What is the weather in Paris?", "",
                                           "sunny, 21 C"]
    assert out[1]["tool_calls"] == TOOL_TURNS[1]["tool_calls"]
    assert out[2]["tool_call_id"] == "call_1" and out[2]["role"] == "tool"
    assert text_messages([{"role": "user"}], "e") == [user("")]


def test_developer_is_read_as_system() -> None:
    out = text_messages([{"role": "developer", "content": "Be brief."}, user("hi")], "e")
    assert out == [{"role": "system", "content": "Be brief."}, user("hi")]
    out = text_messages([{"role": "developer",
                          "content": [{"type": "text", "text": "Be brief."}]}], "e")
    assert out == [{"role": "system", "content": "Be brief."}]


def test_a_refusal_part_is_text() -> None:
    msgs = [{"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}]
    assert text_messages(msgs, "e") == [{"role": "assistant", "content": "I can't."}]


@pytest.mark.parametrize(("part", "kind"), [
    ({"type": "image_url", "image_url": {"url": "https://x/y.png"}}, "image_url"),
    ({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}, "input_audio"),
    ({"type": "file", "file": {"file_id": "f"}}, "file"),
    ({"type": "some_future_part"}, "some_future_part"),
])
def test_a_part_that_is_not_text_is_refused_by_position(part: dict[str, Any],
                                                        kind: str) -> None:
    msgs = [user("first"), user([{"type": "text", "text": "Describe this:"}, part])]
    check_messages(msgs)
    with pytest.raises(EngineUnsupported) as info:
        text_messages(msgs, "llama-cpp")
    assert info.value.param == "messages[1].content[1]"
    assert info.value.status == 400
    assert kind in info.value.message and "llama-cpp" in info.value.message


# --- response_format ------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
          "additionalProperties": False}


@pytest.mark.parametrize("rf", [
    {"type": "text"},
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "Person", "schema": SCHEMA,
                                            "strict": True}},
    {"type": "json_schema", "json_schema": {"name": "a-b_C9"}},
    {"type": "some_future_type", "x": 1},
])
def test_valid_response_formats(rf: dict[str, Any]) -> None:
    assert parse_request("chat", chat([user("x")], response_format=rf))["response_format"] == rf


@pytest.mark.parametrize(("rf", "param"), [
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": "Person"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": SCHEMA}},
     "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "has space"}},
     "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "x" * 65}},
     "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "P", "schema": [SCHEMA]}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "P", "strict": "yes"}},
     "response_format.json_schema.strict"),
])
def test_malformed_json_schema_names_the_field(rf: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request("chat", chat([user("x")], response_format=rf))
    assert info.value.param == param


# --- the out-of-range rows ----------------------------------------------------------

@pytest.mark.parametrize(("endpoint", "fields", "param"), [
    ("chat", {"logit_bias": {"50256": 200}}, "logit_bias"),
    ("completions", {"logit_bias": {"50256": -101}}, "logit_bias"),
    ("chat", {"top_logprobs": 2}, "top_logprobs"),  # without logprobs
    ("chat", {"top_logprobs": 2, "logprobs": False}, "top_logprobs"),
    ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("chat", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ("completions", {"logprobs": 6}, "logprobs"),
    ("chat", {"max_tokens": 2**31}, "max_tokens"),
])
def test_out_of_range_values_name_the_parameter(endpoint: str, fields: dict[str, Any],
                                                 param: str) -> None:
    body = {"model": "m", **({"messages": [user("x")]} if endpoint == "chat"
                             else {"prompt": "x"}), **fields}
    with pytest.raises(BadRequest) as info:
        parse_request(endpoint, json.dumps(body).encode())  # type: ignore[arg-type]
    assert info.value.param == param and info.value.status == 400
