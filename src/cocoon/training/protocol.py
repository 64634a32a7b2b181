"""What a fine-tuning job is on the network, pure: the request a client sends, the events a
worker streams back, and the adapter reassembled from them.

A job travels like any request (endpoint ``fine_tune``, sealed to the worker when sealing
is on): its body is a :class:`TrainingRequest` as JSON, and its ``max_tokens`` is
:func:`reserve_tokens` of it, the most tokens the job can train (every example cut at
``max_length`` tokens, times the epochs), which the proxy reserves funds for and the
worker refuses to go beyond. The worker answers with a stream of JSON events:

* ``{"type": "started", "examples", "total_steps", "tokens_per_epoch", "load_s"}`` once the
  model is loaded and the examples encoded;
* ``{"type": "step", "step", "total_steps", "epoch", "loss", "trained_tokens",
  "elapsed_s"}`` after each optimizer step;
* ``{"type": "epoch", "epoch", "step", "train_loss", "valid_loss"}`` after each epoch
  (``valid_loss`` null without validation examples);
* ``{"type": "adapter", "index", "count", "data"}``: the trained adapter in llama.cpp's GGUF
  LoRA format, base64 in pieces of at most :data:`ADAPTER_PIECE` bytes;
* ``{"type": "done", "trained_tokens", "steps", "adapter_bytes", "adapter_sha256"}`` last.

Its usage counts the trained tokens (every token of every example trained, each epoch) as
``prompt_tokens``; the proxy prices them with the registry's training multiplier.
:class:`AdapterAssembler` rebuilds the adapter and checks it against ``done``.

A request served with an adapter (``ft:`` models) carries it in its body under
:data:`ADAPTER_FIELD` (``{"sha256": hex, "gguf": base64}``); the worker takes it out before
the body reaches its engine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Final

from cocoon.errors import BadRequest, EngineError

__all__ = ["ADAPTER_FIELD", "ADAPTER_PIECE", "ENDPOINT", "MAX_LENGTH", "Adapter",
           "AdapterAssembler", "TrainingRequest", "adapter_events", "auto_epochs",
           "fine_tuned_name", "reserve_tokens", "take_adapter"]

ENDPOINT: Final = "fine_tune"
ADAPTER_FIELD: Final = "cocoon_lora_adapter"
ADAPTER_PIECE: Final = 192 * 1024  # raw bytes per adapter event (256 KiB as base64)
MAX_LENGTH: Final = 512  # tokens of one example; longer ones are cut
DEFAULT_BATCH: Final = 4
MAX_ADAPTER: Final = 64 * 1024 * 1024


def auto_epochs(examples: int) -> int:
    """``n_epochs: "auto"``: enough passes that a small file is seen about 64 times in all,
    3 to 10."""
    return min(10, max(3, math.ceil(64 / max(1, examples))))


@dataclass(frozen=True, slots=True)
class TrainingRequest:
    """One job as the worker receives it."""

    model: str
    examples: tuple[tuple[dict[str, Any], ...], ...]  # each a chat's messages
    validation: tuple[tuple[dict[str, Any], ...], ...] = ()
    n_epochs: int = 3
    batch_size: int = DEFAULT_BATCH
    learning_rate_multiplier: float = 1.0
    seed: int = 0

    def encode(self) -> bytes:
        return json.dumps({
            "model": self.model, "examples": [list(e) for e in self.examples],
            "validation": [list(e) for e in self.validation], "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier, "seed": self.seed},
            separators=(",", ":")).encode()

    @classmethod
    def parse(cls, raw: bytes) -> TrainingRequest:
        """BadRequest for a body that is not a job."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the fine-tuning job is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the fine-tuning job must be an object")

        def chats(name: str) -> tuple[tuple[dict[str, Any], ...], ...]:
            rows = body.get(name, [])
            if not isinstance(rows, list) or not all(
                    isinstance(r, list) and r and all(isinstance(m, dict) for m in r)
                    for r in rows):
                raise BadRequest(f"{name} must be a list of message lists", param=name)
            return tuple(tuple(r) for r in rows)

        def number(name: str, kind: type, low: float, high: float) -> Any:
            v = body.get(name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                    kind is int and not isinstance(v, int)) or not low <= v <= high:
                raise BadRequest(f"{name} must be a number from {low:g} to {high:g}",
                                 param=name)
            return kind(v)

        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required", param="model")
        examples = chats("examples")
        if not examples:
            raise BadRequest("the job has no example", param="examples")
        return cls(model, examples, chats("validation"), number("n_epochs", int, 1, 50),
                   number("batch_size", int, 1, 256),
                   number("learning_rate_multiplier", float, 1e-3, 50.0),
                   number("seed", int, 0, 2**31 - 1))


def _example_bound(messages: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> int:
    """At least the tokens the example renders to: a byte-level tokenizer never makes more
    tokens than bytes, and each turn's template (role markers, a default system prompt)
    is counted generously."""
    size = 160  # a default system prompt the template may add
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            text = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        elif isinstance(content, str):
            text = content
        else:
            text = json.dumps(m.get("tool_calls") or "")
        size += len(text.encode()) + 16
    return min(size, MAX_LENGTH)


def reserve_tokens(job: TrainingRequest) -> int:
    """The most tokens ``job`` can train: what the proxy reserves funds for."""
    return sum(_example_bound(e) for e in job.examples) * job.n_epochs


def fine_tuned_name(base: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's shape: ``ft:<base>:<suffix>:<job id>`` (the suffix left empty if none)."""
    return f"ft:{base}:{suffix or ''}:{job_id}"


def adapter_events(data: bytes) -> list[bytes]:
    """The adapter as ``adapter`` events, then ``done`` is the caller's."""
    count = max(1, math.ceil(len(data) / ADAPTER_PIECE))
    return [json.dumps({"type": "adapter", "index": i, "count": count,
                        "data": base64.b64encode(
                            data[i * ADAPTER_PIECE:(i + 1) * ADAPTER_PIECE]).decode()}
                       ).encode() for i in range(count)]


class AdapterAssembler:
    """The adapter rebuilt from its events, in order, and checked against ``done``:
    EngineError when a piece is missing, out of order, or the whole is not what ``done``
    says it is."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._count = 0
        self._size = 0

    def add(self, event: dict[str, Any]) -> None:
        index, count = event.get("index"), event.get("count")
        if (not isinstance(index, int) or not isinstance(count, int) or count < 1
                or index != len(self._pieces) or (self._count and count != self._count)):
            raise EngineError("the worker sent the adapter's pieces out of order")
        try:
            piece = base64.b64decode(event.get("data", ""), validate=True)
        except (ValueError, TypeError):
            raise EngineError("an adapter piece is not base64") from None
        self._size += len(piece)
        if self._size > MAX_ADAPTER:
            raise EngineError(f"the adapter is larger than {MAX_ADAPTER} bytes")
        self._count = count
        self._pieces.append(piece)

    def finish(self, done: dict[str, Any]) -> bytes:
        data = b"".join(self._pieces)
        if not self._count or len(self._pieces) != self._count:
            raise EngineError(f"the adapter came in {len(self._pieces)} of "
                              f"{self._count} pieces")
        if (done.get("adapter_bytes") != len(data)
                or done.get("adapter_sha256") != hashlib.sha256(data).hexdigest()):
            raise EngineError("the adapter received is not the one the worker trained "
                              "(size or SHA-256 differ)")
        return data


@dataclass(frozen=True, slots=True)
class Adapter:
    """A LoRA adapter in llama.cpp's GGUF format, named by its SHA-256."""

    sha256: str
    data: bytes

    @classmethod
    def of(cls, data: bytes) -> Adapter:
        return cls(hashlib.sha256(data).hexdigest(), data)

    def field(self) -> dict[str, str]:
        """The body field a request carries it in."""
        return {"sha256": self.sha256, "gguf": base64.b64encode(self.data).decode()}


def take_adapter(body: dict[str, Any]) -> Adapter | None:
    """Remove :data:`ADAPTER_FIELD` from a parsed request body and return its adapter
    (None when it has none); BadRequest when the field is malformed or does not match its
    hash."""
    raw = body.pop(ADAPTER_FIELD, None)
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("gguf"), str) \
            or not isinstance(raw.get("sha256"), str):
        raise BadRequest(f"{ADAPTER_FIELD} must be {{\"sha256\": hex, \"gguf\": base64}}",
                         param=ADAPTER_FIELD)
    try:
        data = base64.b64decode(raw["gguf"], validate=True)
    except ValueError:
        raise BadRequest(f"{ADAPTER_FIELD}.gguf is not base64", param=ADAPTER_FIELD) from None
    adapter = Adapter.of(data)
    if adapter.sha256 != raw["sha256"].lower() or not data.startswith(b"GGUF"):
        raise BadRequest(f"{ADAPTER_FIELD} is not the GGUF adapter its sha256 names",
                         param=ADAPTER_FIELD)
    return adapter
