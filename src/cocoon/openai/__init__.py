"""The OpenAI surface: request validation, the request envelope, response objects, SSE."""

from cocoon.openai.envelope import Envelope, effective_max_tokens
from cocoon.openai.protocol import ENDPOINTS, Endpoint, Usage, parse_request, wants_usage
from cocoon.openai.sse import DONE, SseDecoder, count_events, encode_event, encode_events

__all__ = [
    "DONE",
    "ENDPOINTS",
    "Endpoint",
    "Envelope",
    "SseDecoder",
    "Usage",
    "count_events",
    "effective_max_tokens",
    "encode_event",
    "encode_events",
    "parse_request",
    "wants_usage",
]
