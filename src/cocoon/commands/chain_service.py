"""``cocoon chain run``: the embedded chain as a local service every role can reach (its
arguments: :func:`cocoon.commands.chain.add_chain_arguments`).

One process owns the ``@ton/sandbox`` chain (:class:`EmbeddedChain`, state persisted after
every mutation) and serves its JSON-RPC over HTTP on a loopback address, the way a liteserver
serves a real chain: ``POST /rpc`` with ``{"cmd": ..., ...params}`` answers the chain server's
own response object.  Nodes and CLI commands connect with :meth:`EmbeddedChain.connect`.
``GET /watch?since=MARK&timeout=S`` long-polls for the chain's next transaction (see
:meth:`EmbeddedChain.wait_for_change`): how a proxy notices a channel close at once.
Every ``/rpc`` and ``/watch`` call must carry the service's token (``Authorization: Bearer``,
from the 0600 ``--token-file``, created at the first start and kept): any local process may
reach the port, only the holders of the file may move the named wallets' money. Others get
401.

The clock: with ``clock="wall"`` (the default for a live network) the chain's time follows
the wall clock, moved forward before every command, so close delays elapse in real time;
``clock="manual"`` leaves time to ``set_time`` calls (tests).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import time
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from cocoon.chain.embedded import EmbeddedChain
from cocoon.chain.token import default_token_file, load_or_create_token
from cocoon.errors import CocoonError
from cocoon.nodes.common import HttpServer, run_until_signal, write_ready_file

__all__ = ["REFUSED_COMMANDS", "ChainService", "run_chain", "run_service"]

log = logging.getLogger(__name__)

REFUSED_COMMANDS = frozenset({"shutdown", "snapshot"})
"""Commands only the owning process may run (stopping the chain, writing files)."""

Clock = Literal["wall", "manual"]
_MAX_WATCH_S = 60.0


class ChainService:
    """Serves an owned :class:`EmbeddedChain` at ``/rpc`` (plus ``/healthz``); with a
    ``token`` (what ``cocoon chain run`` always gives) every ``/rpc`` call must carry it."""

    def __init__(self, chain: EmbeddedChain, clock: Clock = "wall",
                 token: str | None = None) -> None:
        self.chain = chain
        self.clock = clock
        self._expected = f"Bearer {token}".encode() if token is not None else None
        self.calls = 0
        self.refused = 0
        self.started = time.monotonic()
        self.app = web.Application(client_max_size=16 * 1024 * 1024)
        self.app.router.add_post("/rpc", self._rpc)
        self.app.router.add_get("/watch", self._watch)
        self.app.router.add_get("/healthz", self._health)
        self._lock = asyncio.Lock()
        self._chain_now: int | None = None  # the chain's time as last seen (wall clock)

    async def _follow_wall_clock(self) -> None:
        # One set_time per wall-clock second, not a `now` round trip per command: the chain's
        # time is remembered (and refreshed when a client sets it).
        now = int(time.time())
        if self._chain_now is None:
            self._chain_now = await self.chain.now()
        if now > self._chain_now:
            self._chain_now = await self.chain.set_time(now)

    def _refused(self, request: web.Request) -> web.Response | None:
        """401 unless the request carries the service's token."""
        if self._expected is None or hmac.compare_digest(
                request.headers.get("Authorization", "").encode(), self._expected):
            return None
        self.refused += 1
        log.warning("refused a %s call from %s: missing or wrong token", request.path,
                    request.remote)
        return web.json_response({"ok": False, "error": "missing or wrong chain token "
                                  "(Authorization: Bearer, see chain.token_file)"}, status=401)

    async def _watch(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            since = int(request.query.get("since", "-1"))
            timeout = float(request.query.get("timeout", "25"))
            if not 0.0 <= timeout <= _MAX_WATCH_S:
                raise ValueError(f"timeout must be between 0 and {_MAX_WATCH_S:g} seconds")
        except ValueError as exc:
            return web.json_response({"ok": False, "error": f"bad request: {exc}"}, status=400)
        # No lock: waiting reads nothing from the chain, and must not hold up the commands.
        return web.json_response({"ok": True,
                                  "mark": await self.chain.wait_for_change(since, timeout)})

    async def _rpc(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("cmd"), str):
                raise ValueError("expected a JSON object with a string 'cmd'")
        except ValueError as exc:
            return web.json_response({"ok": False, "error": f"bad request: {exc}"}, status=400)
        cmd = body.pop("cmd")
        if cmd in REFUSED_COMMANDS:
            return web.json_response(
                {"ok": False, "error": f"command {cmd!r} is not served over HTTP"}, status=403)
        async with self._lock:  # one command at a time, clock move included
            try:
                if self.clock == "wall" and cmd != "set_time":
                    await self._follow_wall_clock()
                resp: dict[str, Any] = await self.chain.rpc(cmd, body)
                if cmd == "set_time":
                    self._chain_now = None  # re-read before the next command
            except CocoonError as exc:
                log.error("chain command %s failed: %s", cmd, exc)
                return web.json_response({"ok": False, "error": str(exc)}, status=502)
            self.calls += 1
        return web.json_response(resp)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "now": await self.chain.now(), "calls": self.calls,
                                  "clock": self.clock})


async def run_service(state: str, http: str, clock: Clock, ready: Any,
                      stop: asyncio.Event, token_file: str = "") -> None:
    """Own the chain at ``state`` and serve it on ``http`` until ``stop``, to the callers
    holding the token in ``token_file`` (created 0600 if missing; default next to ``state``)."""
    Path(state).parent.mkdir(parents=True, exist_ok=True)
    token_path = Path(token_file) if token_file else default_token_file(state)
    token = load_or_create_token(token_path)
    chain = await EmbeddedChain.start(state, now=int(time.time()))
    try:
        service = ChainService(chain, clock, token)
        server = HttpServer(service.app, http, "chain.http")
        await server.start()
        try:
            log.info("embedded chain (%s, clock %s) serving on %s",
                     "restored" if chain.restored else "new", clock, server.url)
            ready({"http": server.url, "restored": chain.restored, "state": state,
                   "token_file": str(token_path)})
            await stop.wait()
        finally:
            await server.stop()
    finally:
        await chain.aclose()


def run_chain(args: argparse.Namespace) -> int:
    """Run ``cocoon chain run`` until SIGINT/SIGTERM."""
    asyncio.run(run_until_signal(lambda stop: run_service(
        args.state, args.http, args.clock, lambda info: write_ready_file(args.ready_file, info),
        stop, args.token_file)))
    return 0
