"""The live dashboard a node serves (the proxy's: the network; the client's: its view).

``GET /dashboard`` is a page (HTML, CSS and JavaScript shipped in this package: no build
step, no CDN) that reads ``GET /dashboard/events``, server-sent events carrying one JSON
*view* of the node a second (``GET /dashboard/view``: the same, once). A view holds figures
only (who serves, their tier and image hash, load, price, measured TTFT and tokens/s,
totals, money, and the recent requests' model, worker, status, timings, sizes and costs),
never a prompt or a completion. It reads well on a phone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from cocoon.openai.protocol import dumps

__all__ = ["RECENT", "RecentRequest", "RecentRequests", "add_dashboard_routes"]

RECENT: Final = 50  # the requests a view lists
_INTERVAL_S: Final = 1.0
_STATIC: Final = Path(__file__).parent / "static"
_TYPES: Final = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}

View = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class RecentRequest:
    """One ended request as the dashboard lists it: figures, never content."""

    t: float  # when it ended (Unix time)
    model: str  # a label value (a model the node serves, or "other")
    worker: str
    outcome: str  # ok, or the error code
    ttft_ms: float | None
    duration_ms: float
    prompt_tokens: int
    completion_tokens: int
    bytes: int  # of the answer, as relayed
    cost: int | None  # nanoTON charged (None: not billed here)


class RecentRequests:
    """The newest :data:`RECENT` requests."""

    def __init__(self) -> None:
        self._kept: deque[RecentRequest] = deque(maxlen=RECENT)

    def add(self, request: RecentRequest) -> None:
        self._kept.append(request)

    def view(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self._kept]


def add_dashboard_routes(app: web.Application, view: View) -> None:
    """``/dashboard`` (the page), its static files, ``/dashboard/view`` and
    ``/dashboard/events`` on ``app``; ``view()`` makes the node's current view."""

    async def page(_: web.Request) -> web.StreamResponse:
        return _file("index.html")

    async def static(request: web.Request) -> web.StreamResponse:
        return _file(request.match_info["name"])

    async def once(_: web.Request) -> web.Response:
        return web.Response(body=dumps(await _stamped(view)), content_type="application/json")

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while True:
                await response.write(b"data: " + dumps(await _stamped(view)) + b"\n\n")
                await asyncio.sleep(_INTERVAL_S)
        return response

    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/", page)
    app.router.add_get("/dashboard/static/{name}", static)
    app.router.add_get("/dashboard/view", once)
    app.router.add_get("/dashboard/events", events)


async def _stamped(view: View) -> dict[str, Any]:
    return {**await view(), "time": time.time()}


def _file(name: str) -> web.StreamResponse:
    path = _STATIC / name
    kind = _TYPES.get(path.suffix)
    if kind is None or path.parent != _STATIC or not path.is_file():
        raise web.HTTPNotFound()
    return web.Response(body=path.read_bytes(), content_type=kind, charset="utf-8",
                        headers={"Cache-Control": "no-cache"})
