"""The engine interface: one method, ``generate``.

An engine turns a validated OpenAI request into the exact sequence of JSON objects the app
will see (stream chunks, or one whole response when not streaming), followed by exactly one
:class:`~cocoon.openai.protocol.Usage` with the engine's own token counts. Closing the
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

from cocoon.openai.protocol import Endpoint, Usage

__all__ = ["Engine", "EngineOutput", "InferenceJob", "UsageMeter"]

EngineOutput = bytes | Usage


@dataclass(slots=True)
class UsageMeter:
    """The tokens one job has consumed and produced so far, kept current by the engine.

    Counted like the final Usage (``prompt`` once the prompt is evaluated, ``completion``
    per token generated, whether or not the app has seen it yet). ``estimated`` is set by
    an engine that cannot count exactly and records an estimate instead (see
    ``engines.openai_http``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    def set(self, usage: Usage) -> None:
        """Record exact counts (an engine that learns them mid-way, or at the end)."""
        self.prompt_tokens, self.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        self.cached_tokens, self.reasoning_tokens = usage.cached_tokens, usage.reasoning_tokens
        self.estimated = False

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens,
                     self.reasoning_tokens)


@dataclass(frozen=True, slots=True)
class InferenceJob:
    endpoint: Endpoint
    body: dict[str, Any]
    request_id: int  # unique per worker; engines derive the OpenAI response id from it
    meter: UsageMeter = field(default_factory=UsageMeter, compare=False, repr=False)

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def model(self) -> str:
        return str(self.body["model"])


class Engine(Protocol):
    """A source of completions. ``name`` and ``models`` are fixed for the engine's life."""

    name: str
    models: tuple[str, ...]

    def generate(self, job: InferenceJob) -> AsyncIterator[EngineOutput]:
        """Yield the response's JSON objects (as bytes), then one Usage, then stop; keep
        ``job.meter`` current on the way, so an early end still knows what it used."""
        ...


def require(condition: bool, message: str, param: str) -> None:
    """Raise EngineUnsupported unless ``condition``: a valid field this engine can't honour."""
    if not condition:
        from cocoon.errors import EngineUnsupported

        raise EngineUnsupported(message, param=param)
