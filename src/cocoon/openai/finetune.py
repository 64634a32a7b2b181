"""OpenAI's fine-tuning shapes, pure: a training file checked line by line as OpenAI checks
it, and a job's hyperparameters.

A training file is JSON lines in OpenAI's chat format: each line an object with
``messages``, a list of ``{"role", "content"}`` (roles ``system``, ``developer``, ``user``,
``assistant``, ``tool``; content a string, or a list of text parts; an assistant turn may
carry ``tool_calls`` instead of content, and ``weight`` 0 or 1 to leave it out of training
or in), with at least one assistant turn to learn from. A file that breaks a rule is refused
with a :class:`~cocoon.errors.BadRequest` naming its line and the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from cocoon.errors import BadRequest

__all__ = ["MAX_EXAMPLES", "MIN_EXAMPLES", "Hyperparameters", "TrainingFile",
           "check_training_file", "parse_hyperparameters"]

MIN_EXAMPLES: Final = 1  # OpenAI asks for 10; a test of one fact needs fewer
MAX_EXAMPLES: Final = 100_000
_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
_MAX_LINE: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class TrainingFile:
    """What a checked training file holds."""

    examples: int
    assistant_turns: int  # the turns that are learned (weight 1)
    characters: int  # of all message text: a token estimate is a quarter of it


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, part in enumerate(content):
            if (not isinstance(part, dict) or part.get("type") != "text"
                    or not isinstance(part.get("text"), str)):
                raise BadRequest(f"{where}: content part {i} is not a text part "
                                 "({\"type\": \"text\", \"text\": ...}); fine-tuning here "
                                 "takes text only", param="training_file")
            out.append(part["text"])
        return "".join(out)
    raise BadRequest(f"{where}: content must be a string or a list of text parts",
                     param="training_file")


def _check_message(m: Any, where: str) -> tuple[bool, int]:
    """(whether it is a learned assistant turn, its characters)."""
    if not isinstance(m, dict):
        raise BadRequest(f"{where} is not an object", param="training_file")
    role = m.get("role")
    if role not in _ROLES:
        raise BadRequest(f"{where} has role {str(role)[:32]!r}; roles are "
                         f"{', '.join(sorted(_ROLES))}", param="training_file")
    weight = m.get("weight", 1)
    if "weight" in m and (role != "assistant" or weight not in (0, 1)
                          or isinstance(weight, bool)):
        raise BadRequest(f"{where}: weight is 0 or 1, and only on assistant turns",
                         param="training_file")
    content = m.get("content")
    if role == "assistant" and content is None:
        if not m.get("tool_calls"):
            raise BadRequest(f"{where}: an assistant turn needs content or tool_calls",
                             param="training_file")
        return weight == 1, len(json.dumps(m["tool_calls"]))
    if content is None:
        raise BadRequest(f"{where} has no content", param="training_file")
    text = _text(content, where)
    return role == "assistant" and weight == 1, len(text)


def check_training_file(data: bytes) -> TrainingFile:
    """``data`` checked as a fine-tuning file (see the module docstring); BadRequest naming
    the first line that breaks a rule."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the file is not UTF-8 (byte {exc.start})",
                         param="training_file") from None
    examples = learned = characters = 0
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) > _MAX_LINE:
            raise BadRequest(f"line {n}: longer than {_MAX_LINE} characters",
                             param="training_file")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"line {n}: not valid JSON ({exc.msg} at column {exc.colno})",
                             param="training_file") from None
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise BadRequest(f"line {n}: each line is an object with a \"messages\" list "
                             "(OpenAI's chat format)", param="training_file")
        if not row["messages"]:
            raise BadRequest(f"line {n}: \"messages\" is empty", param="training_file")
        turns = 0
        for i, m in enumerate(row["messages"]):
            is_learned, size = _check_message(m, f"line {n}, message {i}")
            turns += is_learned
            characters += size
        if not turns:
            raise BadRequest(f"line {n}: no assistant turn to learn from (an assistant "
                             "message with weight 1)", param="training_file")
        examples += 1
        learned += turns
        if examples > MAX_EXAMPLES:
            raise BadRequest(f"more than {MAX_EXAMPLES} examples", param="training_file")
    if examples < MIN_EXAMPLES:
        raise BadRequest("the file holds no example", param="training_file")
    return TrainingFile(examples, learned, characters)


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    n_epochs: int | None = None  # None: "auto"
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None

    def to_openai(self) -> dict[str, Any]:
        return {"n_epochs": self.n_epochs or "auto", "batch_size": self.batch_size or "auto",
                "learning_rate_multiplier": self.learning_rate_multiplier or "auto"}


def _auto_or(value: Any, name: str, kind: type, low: float, high: float) -> Any:
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and not isinstance(value, int)):
        raise BadRequest(f"hyperparameters.{name} must be \"auto\" or a number",
                         param=f"hyperparameters.{name}")
    if not low <= value <= high:
        raise BadRequest(f"hyperparameters.{name} must be from {low:g} to {high:g}",
                         param=f"hyperparameters.{name}")
    return kind(value)


def parse_hyperparameters(body: dict[str, Any]) -> Hyperparameters:
    """A job's hyperparameters, from ``hyperparameters`` or
    ``method.supervised.hyperparameters`` (OpenAI's newer place for them)."""
    raw = body.get("hyperparameters")
    method = body.get("method")
    if raw is None and isinstance(method, dict):
        if method.get("type", "supervised") != "supervised":
            raise BadRequest("only supervised fine-tuning is offered", param="method.type")
        raw = (method.get("supervised") or {}).get("hyperparameters")
    raw = raw or {}
    if not isinstance(raw, dict):
        raise BadRequest("hyperparameters must be an object", param="hyperparameters")
    unknown = set(raw) - {"n_epochs", "batch_size", "learning_rate_multiplier"}
    if unknown:
        raise BadRequest(f"unknown hyperparameter {sorted(unknown)[0]!r}",
                         param="hyperparameters")
    return Hyperparameters(
        _auto_or(raw.get("n_epochs"), "n_epochs", int, 1, 50),
        _auto_or(raw.get("batch_size"), "batch_size", int, 1, 256),
        _auto_or(raw.get("learning_rate_multiplier"), "learning_rate_multiplier", float,
                 1e-3, 50.0))
