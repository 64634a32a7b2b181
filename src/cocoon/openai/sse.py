"""Server-sent events as OpenAI uses them: encode ``data:`` events, decode them incrementally."""

from __future__ import annotations

from typing import Final

from cocoon.errors import UpstreamError

__all__ = ["DONE", "DONE_EVENT", "SSE_HEADERS", "SseDecoder", "encode_event", "encode_events"]

DONE: Final = b"[DONE]"
_MAX_EVENT: Final = 8 * 1024 * 1024


SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def encode_event(data: bytes) -> bytes:
    """One SSE event carrying ``data`` (which must not contain a newline)."""
    return b"data: " + data + b"\n\n"


def encode_events(data: list[bytes]) -> bytes:
    """Several events in one buffer (one write for a burst of chunks that arrived together)."""
    return b"".join([b"data: " + d + b"\n\n" for d in data])


DONE_EVENT: Final = encode_event(DONE)


class SseDecoder:
    """Bytes in, the ``data`` payload of each complete event out (multi-line data joined by
    newline, as the SSE spec says). Comments, ``event:``/``id:``/``retry:`` lines are ignored.
    An event growing past 8 MiB is an UpstreamError, so a broken upstream cannot exhaust us."""

    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        out: list[bytes] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                self._data.append(value)
        if len(self._buf) + sum(len(d) for d in self._data) > _MAX_EVENT:
            raise UpstreamError("upstream sent an oversized server-sent event")
        return out

    def close(self) -> list[bytes]:
        """End of stream: a final event without its blank line still counts."""
        out = self.feed(b"\n\n") if (self._buf or self._data) else []
        return out
