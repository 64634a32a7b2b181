"""The bench's load generator: N concurrent streams, each a closed loop of streamed requests.

It shares the machine's cores with the servers it measures, so it does as little as it can:
one pre-encoded request body, one aiohttp session, and SSE "parsing" that only counts event
terminators (``\\n\\n``; a comment block, ``: ...``, as SSE clients skip it, is not one) and
checks the stream ends with ``data: [DONE]``. A request counts
only if it completed: HTTP 200, ended with ``[DONE]``, and (when the expected count is known)
carried exactly the expected number of data events. Everything else is an error, by kind.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import aiohttp

__all__ = ["LoadGenerator", "LoadResult", "events_in", "percentile"]

_DONE_TAIL = b"data: [DONE]\n\n"
_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


def events_in(data: bytes, tail: bytes) -> int:
    """The SSE events that end in ``data``, a read that follows ``tail`` (the end of what
    was read before): event terminators (``\\n\\n``, one split across the two reads
    included), less those of comment blocks (``: ...``, which SSE clients skip: the
    client's receipt), also when the comment's start is split from what came before."""
    n = data.count(b"\n\n")
    if data[0] == 10 and tail[-1:] == b"\n" and tail[-2:] != b"\n\n":
        n += 1
    n -= data.count(b"\n\n:")
    comment_first = data[0] == 58 and (not tail or tail[-2:] == b"\n\n")
    split_comment = data[:2] == b"\n:" and tail[-1:] == b"\n" and tail[-2:] != b"\n\n"
    if comment_first or split_comment:
        n -= 1
    return n


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class LoadResult:
    """What one load phase produced. Times are in seconds."""

    streams: int
    completed: int = 0
    chunks: int = 0  # SSE data events of completed requests, [DONE] excluded
    elapsed_s: float = 0.0  # first request sent -> last request finished (drain included)
    # Closed-loop rate: the sum over streams of (requests / time from its first request sent
    # to its last one finished), so staggered starts and the drain do not dilute it.
    stream_rate: float = 0.0  # requests per second
    stream_chunk_rate: float = 0.0  # chunks per second
    ttft_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{kind}: {detail}"[:300] if detail else kind)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        el = self.elapsed_s or math.nan
        return {
            "streams": self.streams,
            "requests": self.completed,
            "chunks": self.chunks,
            "chunks_per_request": (self.chunks / self.completed) if self.completed else 0.0,
            "errors": self.error_count,
            "error_kinds": dict(self.errors),
            "error_samples": list(self.error_samples),
            "elapsed_s": self.elapsed_s,
            "requests_per_s": self.stream_rate,
            "chunks_per_s": self.stream_chunk_rate,
            "requests_per_s_wall": self.completed / el,
            "chunks_per_s_wall": self.chunks / el,
            "ttft_ms": {"p50": percentile(self.ttft_s, 50) * 1000.0,
                        "p99": percentile(self.ttft_s, 99) * 1000.0},
            "latency_ms": {"p50": percentile(self.latency_s, 50) * 1000.0,
                           "p99": percentile(self.latency_s, 99) * 1000.0},
        }


class LoadGenerator:
    """``async with LoadGenerator(...) as lg: await lg.warm_up(); result = await lg.run(d)``.

    ``expected_events``: data events (``[DONE]`` excluded) every response must carry, or
    None not to check.
    """

    def __init__(self, url: str, body: bytes, streams: int,
                 expected_events: int | None = None, request_timeout: float = 120.0) -> None:
        if streams < 1:
            raise ValueError("streams must be at least 1")
        self.url = url
        self.body = body
        self.streams = streams
        self.expected_events = expected_events
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=10.0)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoadGenerator:
        connector = aiohttp.TCPConnector(limit=self.streams, limit_per_host=self.streams,
                                         keepalive_timeout=60.0)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                              auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, result: LoadResult, record: bool) -> int:
        """One request; its data events if it completed, else -1 (the error is counted)."""
        session = self._session
        assert session is not None
        t0 = perf_counter()
        ttft = 0.0
        events = 0
        tail = b""
        try:
            async with session.post(self.url, data=self.body, headers=_HEADERS) as resp:
                if resp.status != 200:
                    text = (await resp.read())[:200].decode(errors="replace")
                    result.error(f"http_{resp.status}", text)
                    return -1
                content = resp.content
                while True:
                    data = await content.readany()
                    if not data:
                        break
                    n = events_in(data, tail)
                    if n and not events:
                        ttft = perf_counter() - t0
                    events += n
                    tail = data[-16:] if len(data) >= 16 else (tail + data)[-16:]
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            result.error(type(exc).__name__, str(exc))
            return -1
        end = perf_counter()
        if not tail.endswith(_DONE_TAIL):
            result.error("incomplete_stream", tail.decode(errors="replace"))
            return -1
        events -= 1  # [DONE]
        if self.expected_events is not None and events != self.expected_events:
            result.error("wrong_chunk_count", f"{events} != {self.expected_events}")
            return -1
        if record:
            result.completed += 1
            result.chunks += events
            result.ttft_s.append(ttft)
            result.latency_s.append(end - t0)
        return events

    async def warm_up(self) -> LoadResult:
        """One request per stream, not recorded (opens the connections). Returns the errors."""
        result = LoadResult(self.streams)
        await asyncio.gather(*(self._request(result, False) for _ in range(self.streams)))
        return result

    async def run(self, duration: float, stagger: float = 0.0) -> LoadResult:
        """Every stream starts requests back to back for ``duration`` seconds; requests in
        flight then are waited for (drained) and counted. Stream ``i`` starts
        ``stagger * i / streams`` seconds late (and ends as late), so paced streams do not
        all tick in lockstep."""
        result = LoadResult(self.streams)
        start = perf_counter()
        rates: list[tuple[float, float]] = []

        async def stream(i: int) -> None:
            offset = stagger * i / self.streams
            if offset:
                await asyncio.sleep(offset)
            first = perf_counter()
            deadline = start + offset + duration
            n = c = 0
            while perf_counter() < deadline:
                events = await self._request(result, True)
                if events < 0:
                    await asyncio.sleep(0.01)  # never spin on a failing server
                else:
                    n += 1
                    c += events
            busy = perf_counter() - first
            if n and busy > 0:
                rates.append((n / busy, c / busy))

        await asyncio.gather(*(stream(i) for i in range(self.streams)))
        result.elapsed_s = perf_counter() - start
        result.stream_rate = sum(r for r, _ in rates)
        result.stream_chunk_rate = sum(c for _, c in rates)
        return result
