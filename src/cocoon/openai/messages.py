"""Chat messages: their shape (checked once per request) and their text for text-only models.

OpenAI's ``content`` is a string, an array of content parts (``{"type": "text", "text":
...}``, ``image_url``, ``input_audio``, ``file``, an assistant's ``refusal``) or, for an
assistant message that calls tools, ``null`` (accepted, as absent, for any role: it reads as
empty text). :func:`check_messages` checks those shapes, so a
malformed message is a 400 naming it (``messages[0].content[1].text``); part types it does not
know pass through, for an upstream that knows them.

:func:`text_messages` is what an engine whose model reads only text gives its chat template:
every ``content`` a string (text parts joined by a newline, as vLLM joins them; ``null``
empty), ``developer`` read as ``system`` (what OpenAI defines it to be for models that predate
it), and any other part refused with a 400 naming it (``messages[0].content[1]``). Other keys
(``name``, ``tool_calls``, ``tool_call_id``) stay, for templates that render them.
"""

from __future__ import annotations

from typing import Any, Final

from cocoon.errors import BadRequest, EngineUnsupported

__all__ = ["ROLES", "check_messages", "text_messages"]

ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ROLE_LIST: Final = ", ".join(sorted(ROLES))
# Part type -> the key holding its payload and the JSON type that payload must have.
_PART_SHAPES: Final[dict[str, tuple[str, type]]] = {
    "text": ("text", str),
    "refusal": ("refusal", str),
    "image_url": ("image_url", dict),
    "input_audio": ("input_audio", dict),
    "file": ("file", dict),
}
_TEXT_PARTS: Final = {"text": "text", "refusal": "refusal"}


def _fail(param: str, what: str) -> BadRequest:
    return BadRequest(f"Invalid type or value for '{param}': expected {what}.", param=param)


def _check_parts(parts: list[Any], param: str) -> None:
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _fail(where, "a content part: an object with a string 'type'")
        shape = _PART_SHAPES.get(part["type"])
        if shape is not None and not isinstance(part.get(shape[0]), shape[1]):
            key, kind = shape
            raise _fail(f"{where}.{key}", "a string" if kind is str else "an object")
        if part["type"] == "image_url" and not isinstance(part["image_url"].get("url"), str):
            raise _fail(f"{where}.image_url.url", "a string")


def check_messages(messages: Any) -> None:
    """The shape of a chat request's ``messages``; BadRequest naming the first bad field."""
    if not isinstance(messages, list) or not messages:
        raise _fail("messages", "a non-empty array of message objects")
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _fail(param, "an object")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _fail(f"{param}.role", f"one of {_ROLE_LIST}")
        content = m.get("content")
        if isinstance(content, list):
            _check_parts(content, f"{param}.content")
        elif content is not None and not isinstance(content, str):
            raise _fail(f"{param}.content", "a string or an array of content parts")
        calls = m.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise _fail(f"{param}.tool_calls", "an array")
        for key in ("name", "tool_call_id"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise _fail(f"{param}.{key}", "a string")


def text_messages(messages: list[dict[str, Any]], engine: str) -> list[dict[str, Any]]:
    """``messages`` (already checked) as a text-only model's chat template takes them;
    EngineUnsupported naming the first part that is not text. Messages that need no change
    are passed on as they are (no copy)."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        content = m.get("content")
        role = m["role"]
        if type(content) is str and role != "developer":
            out.append(m)
            continue
        if isinstance(content, list):
            texts: list[str] = []
            for j, part in enumerate(content):
                key = _TEXT_PARTS.get(part["type"])
                if key is None:
                    raise EngineUnsupported(
                        f"engine {engine} serves a text-only model, which cannot read "
                        f"messages[{i}].content[{j}] (type {part['type']!r})",
                        param=f"messages[{i}].content[{j}]")
                texts.append(part[key])
            content = "\n".join(texts)
        out.append({**m, "role": "system" if role == "developer" else role,
                    "content": content or ""})
    return out
