"""Node lifecycles for every test that runs nodes (imported by name: pytest puts this folder
on the path for its conftest; tests/nodes/loopback.py re-exports them)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

T = 30.0


@contextlib.asynccontextmanager
async def running(node: Any) -> AsyncIterator[Any]:
    """A node (proxy, worker or client) running until the block ends: ready on entry,
    stopped and awaited on exit."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(node.run(stop, lambda _: ready.set()))
    try:
        await asyncio.wait_for(ready.wait(), T)
        yield node
    finally:
        stop.set()
        await asyncio.wait_for(task, T)


def unused() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
