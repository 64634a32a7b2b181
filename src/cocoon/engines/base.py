"""The engine interface: one method, ``generate``.

An engine turns a validated OpenAI request into the exact sequence of JSON objects the app
will see (stream chunks, or one whole response when not streaming), followed by exactly one
:class:`~cocoon.openai.protocol.Usage` with the engine's own token counts. Closing the
iterator early (``aclose``, or cancelling the task awaiting it) must stop generation in the
engine: that is how a disconnecting app frees a GPU.

``InferenceJob`` carries the request as a dict and names the endpoint, so jobs that are not
token streams (fine-tuning, on the roadmap) can be new endpoints, not a new interface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from cocoon.openai.protocol import Endpoint, Usage

__all__ = ["Engine", "EngineOutput", "InferenceJob"]

EngineOutput = bytes | Usage


@dataclass(frozen=True, slots=True)
class InferenceJob:
    endpoint: Endpoint
    body: dict[str, Any]
    request_id: int  # unique per worker; engines derive the OpenAI response id from it

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
        """Yield the response's JSON objects (as bytes), then one Usage, then stop."""
        ...


def require(condition: bool, message: str, param: str) -> None:
    """Raise EngineUnsupported unless ``condition``: a valid field this engine can't honour."""
    if not condition:
        from cocoon.errors import EngineUnsupported

        raise EngineUnsupported(message, param=param)
