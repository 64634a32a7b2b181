"""The request envelope: what every hop needs of an OpenAI request, decided once at the edge.

An :class:`Envelope` is built by the client node from the app's HTTP request (validated by
:func:`~cocoon.openai.protocol.parse_request`) and travels as the wire ``Request``: the
endpoint, the model, the stream flag, the effective generation cap and the raw body. Hops
that only route and bill (the proxy) read the envelope, never the body.

An app may cap the price it pays (``max_coefficient``, COCOON's worker coefficient with
1000 = 1.0x): as a body field (the ``openai`` SDK's ``extra_body``), taken out of the body
here so engines never see it, or in the client's config; the stricter of the two holds.

The generation cap has one owner, :func:`effective_max_tokens`: the proxy fills a request
without a cap with its billing default (what it reserves funds for), and the worker never
generates past what the proxy granted, whatever the body says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cocoon.errors import BadRequest
from cocoon.openai.protocol import Endpoint, dumps, max_tokens_of, parse_request

MAX_COEFFICIENT = 1_000_000  # 1000x: far above any sane price, far below u64

__all__ = ["Envelope", "effective_max_tokens"]


def effective_max_tokens(requested: int | None, *, default: int = 0, limit: int = 0) -> int:
    """The generation cap of a request (0: none): what was asked (``max_completion_tokens``
    or ``max_tokens``; 0 or None: nothing), else ``default``; never above ``limit`` when one
    is given (non-zero)."""
    cap = requested or default
    if limit and (not cap or cap > limit):
        cap = limit
    return cap


@dataclass(frozen=True, slots=True)
class Envelope:
    """One OpenAI request as the network carries it."""

    endpoint: Endpoint
    model: str
    stream: bool
    max_tokens: int  # the effective generation cap; 0: none
    body: bytes  # the request JSON as the app sent it (without max_coefficient)
    max_coefficient: int = 0  # the app's price cap; 0: none

    @classmethod
    def parse(cls, endpoint: Endpoint, raw: bytes, *, max_coefficient: int = 0
              ) -> tuple[Envelope, dict[str, Any]]:
        """Validate an app's request body (BadRequest naming the parameter) and wrap it; the
        parsed body comes back too, for the one hop that runs it. ``max_coefficient`` is the
        client's configured price cap (0: none)."""
        body = parse_request(endpoint, raw)
        if "max_coefficient" in body:
            asked = body.pop("max_coefficient")
            if asked is None:  # as OpenAI reads an optional null: not given
                asked = 0
            if type(asked) is not int or not 0 <= asked <= MAX_COEFFICIENT:
                raise BadRequest(f"Invalid 'max_coefficient': expected an integer from 0 to "
                                 f"{MAX_COEFFICIENT} (1000 = 1.0x the base price).",
                                 param="max_coefficient")
            raw = dumps(body)
            if asked and (not max_coefficient or asked < max_coefficient):
                max_coefficient = asked
        return cls(endpoint, body["model"], body.get("stream") is True,
                   effective_max_tokens(max_tokens_of(body)), raw, max_coefficient), body
