"""The OpenAI surface: request validation, response objects, SSE."""

from cocoon.openai.protocol import ENDPOINTS, Endpoint, Usage, parse_request, wants_usage
from cocoon.openai.sse import DONE, SseDecoder, encode_event

__all__ = [
    "DONE",
    "ENDPOINTS",
    "Endpoint",
    "SseDecoder",
    "Usage",
    "encode_event",
    "parse_request",
    "wants_usage",
]
