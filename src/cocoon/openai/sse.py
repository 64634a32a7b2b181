"""Server-sent events as OpenAI uses them: encode ``data:`` events, decode them incrementally."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from cocoon.errors import UpstreamError

__all__ = ["DONE", "DONE_EVENT", "SSE_HEADERS", "SseDecoder", "count_events", "encode_event",
           "encode_events"]

DONE: Final = b"[DONE]"
_MAX_EVENT: Final = 8 * 1024 * 1024


SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def encode_event(data: bytes) -> bytes:
    """One SSE event carrying ``data``. Data with newlines (an upstream's multi-line JSON)
    goes on several ``data:`` lines, which a reader joins back with newlines; so an encoded
    event holds a blank line (``\\n\\n``) only at its end."""
    if b"\n" in data:
        data = data.replace(b"\n", b"\ndata: ")
    return b"data: " + data + b"\n\n"


def encode_events(data: Iterable[bytes]) -> bytes:
    """Several events in one buffer (one write for a burst of events that arrived together)."""
    return b"".join([encode_event(d) for d in data])


def count_events(encoded: bytes) -> int:
    """How many events a buffer of whole events made by :func:`encode_events` holds."""
    return encoded.count(b"\n\n")


DONE_EVENT: Final = encode_event(DONE)


class SseDecoder:
    """Bytes in, the ``data`` payload of each complete event out (multi-line data joined by
    newline, as the SSE spec says). Comments, ``event:``/``id:``/``retry:`` lines are ignored.
    An event growing past 8 MiB is an UpstreamError, so a broken upstream cannot exhaust us.

    Events end at a blank line: the buffer is cut there in one pass, and an event of a
    single ``data: `` line (what OpenAI-compatible servers send) is taken without looking
    at its lines one by one."""

    __slots__ = ("_parts", "_size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # the unfinished event, CRLFs made LFs once it is cut
        self._size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk:  # the middle of an event: kept, not scanned again and again
            self._size += len(chunk)
            if self._size > _MAX_EVENT:
                raise UpstreamError("upstream sent an oversized server-sent event")
            self._parts.append(chunk)
            return []
        if self._parts:
            self._parts.append(chunk)
            chunk = b"".join(self._parts)
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        blocks = chunk.split(b"\n\n")
        rest = blocks.pop()
        if len(rest) > _MAX_EVENT:
            raise UpstreamError("upstream sent an oversized server-sent event")
        self._parts, self._size = ([rest], len(rest)) if rest else ([], 0)
        out: list[bytes] = []
        for block in blocks:
            if block[:6] == b"data: " and b"\n" not in block:
                out.append(block[6:])
                continue
            data = _data_of(block)
            if data is not None:
                out.append(data)
        return out

    def close(self) -> list[bytes]:
        """End of stream: a final event without its blank line still counts."""
        rest = b"".join(self._parts).replace(b"\r\n", b"\n").rstrip(b"\r\n")
        self._parts, self._size = [], 0
        data = _data_of(rest) if rest else None
        return [] if data is None else [data]


def _data_of(block: bytes) -> bytes | None:
    """The data of one event's lines (None: the block has no data line)."""
    values = []
    for line in block.split(b"\n"):
        if line[:5] == b"data:":
            value = line[5:]
            values.append(value[1:] if value[:1] == b" " else value)
    return b"\n".join(values) if values else None
