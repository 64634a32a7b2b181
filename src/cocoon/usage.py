"""Token usage: the one type for the counts an engine reports, that travel on the wire,
that the ledger prices and that the app sees in OpenAI's ``usage`` object.

One rule for bad counts, here and nowhere else: every count is a non-negative integer,
``cached_tokens <= prompt_tokens`` (cached tokens are part of the prompt) and
``reasoning_tokens <= completion_tokens`` (reasoning is part of the completion); anything
else raises :class:`~cocoon.errors.PricingError` (also a ``ValueError``). Edges that read
counts from outside translate it into their own error: the wire decoder into
``ProtocolError``, an engine reading its upstream into ``UpstreamError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cocoon.errors import PricingError

__all__ = ["Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts exactly as the engine counted them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"):
            v = getattr(self, name)
            if type(v) is not int or v < 0:
                raise PricingError(f"{name} must be a non-negative integer, got {v!r}")
        if self.cached_tokens > self.prompt_tokens:
            raise PricingError(f"cached_tokens ({self.cached_tokens}) exceeds prompt_tokens "
                               f"({self.prompt_tokens})")
        if self.reasoning_tokens > self.completion_tokens:
            raise PricingError(f"reasoning_tokens ({self.reasoning_tokens}) exceeds "
                               f"completion_tokens ({self.completion_tokens})")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's ``usage`` object."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out

    @classmethod
    def from_openai(cls, obj: Any) -> Usage:
        """Read an OpenAI ``usage`` object; raises ValueError if it is not one (a
        :class:`~cocoon.errors.PricingError` when its counts contradict each other)."""
        if not isinstance(obj, dict):
            raise ValueError("usage is not an object")

        def count(d: Any, key: str) -> int:
            v = d.get(key, 0) if isinstance(d, dict) else 0
            if v is None:
                return 0
            if type(v) is not int or v < 0:
                raise ValueError(f"usage.{key} is not a non-negative integer")
            return v

        if type(obj.get("prompt_tokens")) is not int:
            raise ValueError("usage.prompt_tokens missing")
        return cls(
            prompt_tokens=count(obj, "prompt_tokens"),
            completion_tokens=count(obj, "completion_tokens"),
            cached_tokens=count(obj.get("prompt_tokens_details"), "cached_tokens"),
            reasoning_tokens=count(obj.get("completion_tokens_details"), "reasoning_tokens"),
        )
