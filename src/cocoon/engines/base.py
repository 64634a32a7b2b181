"""The engine interface: one method, ``generate``.

An engine turns a validated OpenAI request into the exact sequence of JSON objects the app
will see (stream chunks, or one whole response when not streaming), followed by exactly one
:class:`~cocoon.usage.Usage` with the engine's own token counts. A stream's chunks may come
one at a time (``bytes``) or several together (a ``list`` of them: an engine that receives
them in bursts passes a burst on in one piece, and it travels as one wire message). Closing the
iterator early (``aclose``, or cancelling the task awaiting it) must stop generation in the
engine: that is how a disconnecting app frees a GPU.

A generation that ends early (cancelled, failed, timed out) yields no Usage, yet its tokens
were generated and must be billed: while it generates, an engine keeps the job's
:class:`UsageMeter` current with what it has produced so far, and the worker reports the
meter when the final Usage never comes.

``InferenceJob`` carries the request as a dict and names the endpoint, so jobs that are not
token streams (fine-tuning, on the roadmap) can be new endpoints, not a new interface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from cocoon.errors import EngineUnsupported
from cocoon.openai.envelope import effective_max_tokens
from cocoon.openai.protocol import Endpoint, max_tokens_of
from cocoon.usage import Usage

__all__ = ["Engine", "EngineOutput", "InferenceJob", "UsageMeter", "objects_of", "require"]

EngineOutput = bytes | list[bytes] | Usage


def objects_of(outputs: list[EngineOutput]) -> list[bytes]:
    """The JSON objects of an engine's outputs (the Usage left out), one per chunk whether
    they came one at a time or in bursts. TypeError on anything an engine may not yield."""
    objects: list[bytes] = []
    for out in outputs:
        if type(out) is bytes:
            objects.append(out)
        elif type(out) is list and out and all(type(o) is bytes for o in out):
            objects += out
        elif not isinstance(out, Usage):
            raise TypeError(f"an engine yielded {type(out).__name__}")
    return objects


@dataclass(slots=True)
class UsageMeter:
    """How far one job has got, kept current by the engine: a progress counter, read as a
    :class:`~cocoon.usage.Usage`.

    ``prompt_tokens`` is set once the prompt is evaluated and ``completion_tokens`` counts
    every token generated, whether or not the app has seen it yet: plain integers, because
    engines bump them once per token. ``set`` records the engine's exact final counts (with
    cached and reasoning tokens); ``usage()`` is those, or the running counts when they have
    moved on. ``estimated`` is set by an engine that cannot count exactly and records an
    estimate instead (see ``engines.openai_http``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    exact: Usage | None = None

    def set(self, usage: Usage) -> None:
        """Record exact counts (an engine that learns them mid-way, or at the end)."""
        self.exact = usage
        self.prompt_tokens, self.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        self.estimated = False

    def usage(self) -> Usage:
        exact = self.exact
        if (exact is not None and exact.prompt_tokens == self.prompt_tokens
                and exact.completion_tokens == self.completion_tokens):
            return exact
        return Usage(self.prompt_tokens, self.completion_tokens)


@dataclass(frozen=True, slots=True)
class InferenceJob:
    """One request for an engine: the validated body, and ``max_tokens``, the generation cap
    every engine honours (decided once by :func:`~cocoon.openai.envelope.effective_max_tokens`
    from the body and ``granted``, what the proxy reserved funds for; 0: no cap). Engines
    read the cap here, never from the body."""

    endpoint: Endpoint
    body: dict[str, Any]
    request_id: int  # unique per worker; engines derive the OpenAI response id from it
    granted: int = 0  # the cap the proxy granted (0: none)
    # a LoRA adapter to apply for this job only: (its SHA-256 hex, the GGUF LoRA bytes);
    # only an engine whose ``adapters`` is true is given one
    lora: tuple[str, bytes] | None = field(default=None, repr=False)
    meter: UsageMeter = field(default_factory=UsageMeter, compare=False, repr=False)
    max_tokens: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_tokens",
                           effective_max_tokens(max_tokens_of(self.body), limit=self.granted))

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def model(self) -> str:
        return str(self.body["model"])


class Engine(Protocol):
    """A source of completions: everything the worker calls on an engine is here (and in
    the engines' conformance suite). ``name``, ``models`` and ``model_hash`` (SHA-256 of the
    weights file that model allow-lists name; empty when the engine cannot know it) are
    fixed for the engine's life; ``cancelled`` counts generations stopped early and
    ``usage_estimated`` those whose usage had to be estimated. ``adapters``: whether it
    applies a job's LoRA adapter (``InferenceJob.lora``)."""

    name: str
    models: tuple[str, ...]
    model_hash: bytes
    adapters: bool
    cancelled: int
    usage_estimated: int

    def generate(self, job: InferenceJob) -> AsyncIterator[EngineOutput]:
        """Yield the response's JSON objects (as bytes), then one Usage, then stop; keep
        ``job.meter`` current on the way, so an early end still knows what it used."""
        ...

    async def close(self) -> None:
        """Release what the engine holds (connections, the model); generate is not called
        again."""
        ...


def require(condition: bool, message: str, param: str) -> None:
    """Raise EngineUnsupported unless ``condition``: a valid field this engine can't honour."""
    if not condition:
        raise EngineUnsupported(message, param=param)
