"""OpenAI request validation and response objects (pure).

Validation checks the *types and ranges* of the fields OpenAI defines, so a wrong type gets
a 400 naming the parameter, exactly where OpenAI itself would answer 400. Fields we do not
know are passed through untouched: whether an engine can honour them is the engine's call
(:class:`~cocoon.errors.EngineUnsupported`).

Integers have bounds every hop can carry: a generation cap or a token id is at most
:data:`MAX_TOKENS_LIMIT` (2**31 - 1, llama.cpp's ``int32`` and far above any context), a
``seed`` and any other top-level integer fit a signed 64-bit integer (what vLLM, SGLang and
the wire's ``u64`` fields take). A body whose strings hold an unpaired UTF-16 surrogate
(``"\\ud800"``: valid JSON, but no UTF-8 text) is refused too, since no engine can encode it.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from typing import Any, Final, Literal

from cocoon.errors import BadRequest
from cocoon.openai.messages import check_messages
from cocoon.usage import Usage

__all__ = [
    "ENDPOINTS",
    "MAX_MODEL_NAME",
    "MAX_TOKENS_LIMIT",
    "Endpoint",
    "Usage",
    "chat_chunk",
    "chat_completion",
    "completion",
    "completion_chunk",
    "dumps",
    "new_id",
    "parse_request",
    "usage_chunk",
    "wants_usage",
]

Endpoint = Literal["chat", "completions"]
ENDPOINTS: Final[dict[str, Endpoint]] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
}

MAX_TOKENS_LIMIT: Final = 2**31 - 1
"""The largest ``max_tokens`` / ``max_completion_tokens`` / token id accepted (int32)."""
MAX_MODEL_NAME: Final = 256
"""The longest model name accepted (the wire carries names of up to 4096 characters)."""
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
# Only a body whose raw bytes contain one of these needs the slower walk: a surrogate escape
# (paired ones are fine), or a run of 19+ digits (an integer that may not fit 64 bits).
_SUSPECT: Final = re.compile(rb"\\u[dD][89a-fA-F]|[0-9]{19}")
_SCHEMA_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


# --- validation ------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_num(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and math.isfinite(v)


def _fail(param: str, what: str) -> BadRequest:
    return BadRequest(f"Invalid type or value for '{param}': expected {what}.", param=param)


def _check_optional(body: dict[str, Any], param: str, ok: Callable[[Any], bool], what: str) -> None:
    if param in body and body[param] is not None and not ok(body[param]):
        raise _fail(param, what)


def _range(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: _is_num(v) and lo <= v <= hi


def _int_range(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and lo <= v <= hi


def _is_token_id(v: Any) -> bool:
    return _is_int(v) and 0 <= v <= MAX_TOKENS_LIMIT


_is_bias = _range(-100, 100)


def _is_logit_bias(v: Any) -> bool:
    """OpenAI's shape: token id (a decimal string, JSON keys being strings) -> -100..100."""
    return isinstance(v, dict) and all(
        len(k) <= 10 and k.isascii() and k.isdigit() and int(k) <= MAX_TOKENS_LIMIT
        and _is_bias(b)
        for k, b in v.items())


def _is_stop(v: Any) -> bool:
    return isinstance(v, str) or (
        isinstance(v, list) and len(v) <= 4 and all(isinstance(s, str) for s in v)
    )


def _is_prompt(v: Any) -> bool:
    if isinstance(v, str):
        return True
    if not isinstance(v, list) or not v:
        return False
    return (
        all(isinstance(x, str) for x in v)
        or all(_is_token_id(x) for x in v)
        or all(isinstance(x, list) and all(_is_token_id(t) for t in x) for x in v)
    )


_is_cap = _int_range(1, MAX_TOKENS_LIMIT)
_CAP: Final = f"an integer between 1 and {MAX_TOKENS_LIMIT}"

_COMMON: Final[tuple[tuple[str, Callable[[Any], bool], str], ...]] = (
    ("stream", lambda v: type(v) is bool, "a boolean"),
    ("max_tokens", _is_cap, _CAP),
    ("temperature", _range(0, 2), "a number between 0 and 2"),
    ("top_p", _range(0, 1), "a number between 0 and 1"),
    ("n", _int_range(1, 128), "an integer between 1 and 128"),
    ("stop", _is_stop, "a string or an array of at most 4 strings"),
    ("seed", _int_range(_INT64_MIN, _INT64_MAX), "a signed 64-bit integer"),
    ("presence_penalty", _range(-2, 2), "a number between -2 and 2"),
    ("frequency_penalty", _range(-2, 2), "a number between -2 and 2"),
    ("logit_bias", _is_logit_bias, "an object mapping token ids to numbers between -100 and 100"),
    ("user", lambda v: isinstance(v, str), "a string"),
    ("stream_options", lambda v: isinstance(v, dict), "an object"),
)

_CHAT: Final[tuple[tuple[str, Callable[[Any], bool], str], ...]] = (
    ("max_completion_tokens", _is_cap, _CAP),
    ("logprobs", lambda v: type(v) is bool, "a boolean"),
    ("top_logprobs", _int_range(0, 20), "an integer between 0 and 20"),
    ("tools", lambda v: isinstance(v, list), "an array"),
    ("tool_choice", lambda v: isinstance(v, str | dict), "a string or an object"),
    ("parallel_tool_calls", lambda v: type(v) is bool, "a boolean"),
)

_COMPLETIONS: Final[tuple[tuple[str, Callable[[Any], bool], str], ...]] = (
    ("logprobs", _int_range(0, 5), "an integer between 0 and 5"),
    ("echo", lambda v: type(v) is bool, "a boolean"),
    ("best_of", _int_range(1, 20), "an integer between 1 and 20"),
    ("suffix", lambda v: isinstance(v, str), "a string"),
)


def _check_response_format(rf: Any) -> None:
    """``response_format``: ``{"type": "text" | "json_object"}``, or ``{"type":
    "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": bool}}``. Other
    types pass (an engine that can't honour one says so)."""
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise _fail("response_format", "an object with a string 'type'")
    if rf["type"] != "json_schema":
        return
    js = rf.get("json_schema")
    if not isinstance(js, dict):
        raise _fail("response_format.json_schema", "an object")
    name = js.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise _fail("response_format.json_schema.name",
                    "a string of 1 to 64 letters, digits, '_' or '-'")
    if js.get("schema") is not None and not isinstance(js["schema"], dict):
        raise _fail("response_format.json_schema.schema", "an object (a JSON Schema)")
    if js.get("strict") is not None and type(js["strict"]) is not bool:
        raise _fail("response_format.json_schema.strict", "a boolean")


def _has_lone_surrogate(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:
        return True
    return False


def _check_strings(v: Any, param: str) -> None:
    """No string (key or value) anywhere in ``v`` holds an unpaired surrogate."""
    if isinstance(v, str):
        if _has_lone_surrogate(v):
            raise BadRequest(f"Invalid value for '{param}': the string contains an unpaired "
                             "UTF-16 surrogate escape, which is not valid Unicode.",
                             param=param)
    elif isinstance(v, dict):
        for k, item in v.items():
            _check_strings(k, param)
            _check_strings(item, f"{param}.{k}")
    elif isinstance(v, list):
        for i, item in enumerate(v):
            _check_strings(item, f"{param}[{i}]")


def _check_values(body: dict[str, Any]) -> None:
    """What the raw-bytes scan flagged: invalid Unicode anywhere, and top-level integers
    (including ones we do not know, which go to the engine as they are) beyond 64 bits."""
    for key, value in body.items():
        _check_strings(key, "body")
        _check_strings(value, key)
        if _is_int(value) and not _INT64_MIN <= value <= _INT64_MAX:
            raise _fail(key, "an integer that fits in 64 bits")


def parse_request(endpoint: Endpoint, raw: bytes) -> dict[str, Any]:
    """Parse and validate an OpenAI request body; raises BadRequest naming the parameter."""
    try:
        # Strict UTF-8 (RFC 8259): json.loads(bytes) would let encoded surrogates through.
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, ...
        raise BadRequest(f"Request body is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_NAME:
        raise _fail("model", f"a non-empty string of at most {MAX_MODEL_NAME} characters")
    for param, ok, what in _COMMON:
        _check_optional(body, param, ok, what)
    if endpoint == "chat":
        check_messages(body.get("messages"))
        for param, ok, what in _CHAT:
            _check_optional(body, param, ok, what)
        if body.get("response_format") is not None:
            _check_response_format(body["response_format"])
        if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
            raise BadRequest("Invalid value for 'top_logprobs': 'logprobs' must be true "
                             "when 'top_logprobs' is given.", param="top_logprobs")
    else:
        if "prompt" not in body or not _is_prompt(body["prompt"]):
            raise _fail("prompt", "a string, an array of strings or an array of token ids")
        for param, ok, what in _COMPLETIONS:
            _check_optional(body, param, ok, what)
    opts = body.get("stream_options")
    if opts is not None:
        if body.get("stream") is not True:
            raise BadRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is true.",
                param="stream_options",
            )
        if "include_usage" in opts and type(opts["include_usage"]) is not bool:
            raise _fail("stream_options.include_usage", "a boolean")
    if _SUSPECT.search(raw):
        _check_values(body)
    return body


def wants_usage(body: dict[str, Any]) -> bool:
    """Whether a streamed response must end with a usage chunk."""
    opts = body.get("stream_options")
    return bool(body.get("stream")) and isinstance(opts, dict) and opts.get("include_usage") is True


def max_tokens_of(body: dict[str, Any]) -> int | None:
    """The generation cap the request asks for (``max_completion_tokens`` wins)."""
    v = body.get("max_completion_tokens")
    if v is None:
        v = body.get("max_tokens")
    return v if _is_int(v) else None


# --- response objects ------------------------------------------------------------------

def new_id(endpoint: Endpoint, request_id: int) -> str:
    return f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{request_id:016x}"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def chat_chunk(
    rid: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None,
                     "finish_reason": finish_reason}],
    }


def completion_chunk(
    rid: str, created: int, model: str, text: str, finish_reason: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None,
                     "finish_reason": finish_reason}],
    }


def usage_chunk(endpoint: Endpoint, rid: str, created: int, model: str,
                usage: Usage) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage.to_openai(),
    }


def chat_completion(rid: str, created: int, model: str, content: str, finish_reason: str,
                    usage: Usage) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": usage.to_openai(),
    }


def completion(rid: str, created: int, model: str, text: str, finish_reason: str,
               usage: Usage) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage.to_openai(),
    }


def now() -> int:
    return int(time.time())
