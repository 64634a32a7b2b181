"""Per-request deadlines and idle limits without a timer per chunk.

Streams register with an absolute deadline and an idle limit; one task scans them a few
times a second and hands an expired stream a RequestTimeout as its next event. The hot path
(a chunk arriving) only stores a timestamp.
"""

from __future__ import annotations

import asyncio

from cocoon.errors import RequestTimeout
from cocoon.transport.peer import OutgoingStream

__all__ = ["Watchdog"]


class Watchdog:
    def __init__(self, tick: float = 0.25) -> None:
        self._tick = tick
        self._streams: dict[OutgoingStream, tuple[float, float, float]] = {}

    def watch(self, stream: OutgoingStream, timeout: float, idle: float) -> None:
        now = asyncio.get_running_loop().time()
        self._streams[stream] = (now + timeout, idle, timeout)

    def forget(self, stream: OutgoingStream) -> None:
        self._streams.pop(stream, None)

    def scan(self, now: float) -> int:
        """Expire what is due at ``now``; returns how many streams expired."""
        expired = 0
        for stream, (deadline, idle, timeout) in list(self._streams.items()):
            if stream.done:
                del self._streams[stream]
            elif now >= deadline:
                del self._streams[stream]
                stream.expire(RequestTimeout(f"request did not finish within {timeout:g}s"))
                expired += 1
            elif now - stream.last_activity >= idle:
                del self._streams[stream]
                stream.expire(RequestTimeout(f"no progress for {idle:g}s"))
                expired += 1
        return expired

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._tick)
            self.scan(loop.time())
