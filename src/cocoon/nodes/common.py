"""Plumbing every role shares: the stats/health HTTP server (with its connection limits),
OpenAI-shaped error answers, rate-limited logging, dialing with back-off, ready files, and
signal handling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from cocoon.chain.connect import open_chain
from cocoon.chain.metered import CALLS
from cocoon.chain.registry import RegistryAllowLists
from cocoon.config import (
    HTTP_BODY_TIMEOUT_S,
    HTTP_IDLE_TIMEOUT_S,
    PARENT_PID_ENV,
    ChainConfig,
    parse_hostport,
)
from cocoon.errors import (
    AttestationError,
    CocoonError,
    PaymentError,
    PaymentRequired,
    ProtocolError,
    RequestCancelled,
    RequestError,
    RequestTimeout,
    TransportError,
    WorkerLost,
)
from cocoon.ledger.copies import AccountCopy
from cocoon.metrics import Metric, NodeMetrics, counter, gauge
from cocoon.openai import Envelope
from cocoon.openai.protocol import dumps
from cocoon.openai.sse import DONE_EVENT, SSE_HEADERS, encode_event
from cocoon.transport import Connector, Handler, Peer
from cocoon.wire import Connection, Request, Statement

__all__ = [
    "RETRY_AFTER_S",
    "HttpServer",
    "LogLimiter",
    "add_health_routes",
    "as_request_error",
    "committed_sse",
    "dial_forever",
    "end_sse",
    "end_sse_with_trailers",
    "error_response",
    "follow_registry",
    "json_response",
    "keep_statement",
    "node_families",
    "open_sse",
    "registry_lists",
    "request_for",
    "run_until_signal",
    "serve_until_stopped",
    "write_ready_file",
]

log = logging.getLogger(__name__)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj, indent=None).encode(), status=status,
                        content_type="application/json")


RETRY_AFTER_S: Final = 1
"""``Retry-After`` on 429 and 503 answers: the condition (no free worker, the proxy
reconnecting) clears within seconds; OpenAI's SDKs honour the header."""


class HttpServer:
    """An aiohttp app bound to ``host:port`` (port 0: any free port; see ``port``).

    Slow and idle clients cannot hold connections: a connection without a request in
    progress closes after ``idle_timeout_s`` (this bounds the wait for request headers too),
    and every request's body is read within ``body_timeout_s`` before its handler runs."""

    def __init__(self, app: web.Application, hostport: str, what: str, *,
                 idle_timeout_s: float = HTTP_IDLE_TIMEOUT_S,
                 body_timeout_s: float = HTTP_BODY_TIMEOUT_S) -> None:
        self._app = app
        self.host, self._port = parse_hostport(hostport, what)
        self._runner: web.AppRunner | None = None
        self._idle_timeout_s = idle_timeout_s
        self.port = 0
        app.middlewares.append(_body_within(body_timeout_s))

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, handler_cancellation=True, access_log=None,
                                     keepalive_timeout=self._idle_timeout_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise TransportError(
                f"cannot listen on {self.host}:{self._port}: {exc.strerror or exc}"
            ) from None
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _body_within(timeout_s: float) -> Any:
    """Middleware: read the whole body (kept by aiohttp for the handler's ``read()``) under
    a deadline, so a client trickling its body cannot hold a handler."""

    @web.middleware
    async def body_within(request: web.Request, handler: RouteHandler) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(timeout_s):
                    await request.read()
            except TimeoutError:
                raise web.HTTPRequestTimeout(
                    text=f"the request body did not arrive within {timeout_s:g}s",
                    headers={"Connection": "close"}) from None
        return await handler(request)

    return body_within


def add_health_routes(app: web.Application, health: RouteHandler,
                      stats: RouteHandler, metrics: NodeMetrics | None = None) -> None:
    """Every role's operational surface: ``/healthz``, JSON stats at ``/stats`` (also
    ``/jsonstats``, COCOON's name for it), and Prometheus metrics at ``/metrics``."""
    app.router.add_get("/healthz", health)
    app.router.add_get("/stats", stats)
    app.router.add_get("/jsonstats", stats)
    if metrics is not None:
        async def scrape(request: web.Request) -> web.Response:
            body, content_type = await metrics.expose(request.headers.get("Accept"))
            response = web.Response(body=body)
            response.headers["Content-Type"] = content_type
            return response

        app.router.add_get("/metrics", scrape)


def node_families(role: str, node_id: str, uptime_s: float,
                  refusals: Mapping[str, int]) -> list[Metric]:
    """What every role's ``/metrics`` shows besides its own: who it is, how long it has
    run, the peers its attestation refused (by rule), and this process's chain calls."""
    calls = {(name,): c.calls for name, c in CALLS.items()}
    return [
        gauge("cocoon_node_info", "The node: its role and id (always 1)",
              labels={"role,node_id": {(role, node_id): 1}}),
        gauge("cocoon_uptime_seconds", "Since the node started", uptime_s),
        counter("cocoon_attestation_refusals", "Peers and certificates refused, by the "
                "attestation rule they failed", labels={"rule": {
                    (rule,): n for rule, n in refusals.items()}}),
        counter("cocoon_chain_calls", "Calls to the chain by this process",
                labels={"call": calls}),
        counter("cocoon_chain_call_errors", "Calls to the chain that failed",
                labels={"call": {(name,): c.errors for name, c in CALLS.items()}}),
        counter("cocoon_chain_call_seconds", "Time spent in calls to the chain (the "
                "long poll wait_for_change left out)",
                labels={"call": {(name,): c.seconds for name, c in CALLS.items()}}),
    ]


def error_response(err: RequestError) -> web.Response:
    """An error before the response is committed: its HTTP status, OpenAI's error body, and
    ``Retry-After`` when retrying later can succeed (429, 503)."""
    response = json_response(err.to_openai(), err.status)
    if err.status in (429, 503):
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


class LogLimiter:
    """At most ``burst`` lines per ``interval_s`` for one kind of event (a client's bad
    requests, say), so a flood cannot fill the disk; what is held back is counted and
    reported as one "suppressed K similar" line once the interval is over (at the next
    event, or at :meth:`flush`, which a role calls periodically). ``clock`` is injectable."""

    __slots__ = ("_burst", "_clock", "_interval", "_logged", "_logger", "_start",
                 "_suppressed", "_what")

    def __init__(self, logger: logging.Logger, what: str, *, burst: int = 10,
                 interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._what = what
        self._burst = burst
        self._interval = interval_s
        self._clock = clock
        self._start = -interval_s - 1.0
        self._logged = 0
        self._suppressed = 0

    @property
    def suppressed(self) -> int:
        """Events held back in the current interval (not yet reported)."""
        return self._suppressed

    def log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        self.flush()
        if self._logged >= self._burst:
            self._suppressed += 1
            return
        self._logged += 1
        self._logger.log(level, msg, *args, exc_info=exc_info or None, stacklevel=2)

    def flush(self) -> None:
        """Close the interval if it is over: report what it held back, start a new one."""
        now = self._clock()
        if now - self._start < self._interval:
            return
        if self._suppressed:
            self._logger.warning("suppressed %d similar %s in the last %.0fs",
                                 self._suppressed, self._what, now - self._start)
        self._start = now
        self._logged = 0
        self._suppressed = 0

    async def flush_forever(self) -> None:
        """Flush every interval, so a burst's count is reported even if nothing follows."""
        while True:
            await asyncio.sleep(self._interval)
            self.flush()


_SSE: Final = web.RequestKey("cocoon.sse", web.StreamResponse)


async def open_sse(request: web.Request,
                   headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Commit an HTTP response as an OpenAI event stream (its status and headers, with
    ``headers`` added, go out)."""
    response = web.StreamResponse(headers={**SSE_HEADERS, **headers} if headers
                                  else SSE_HEADERS)
    await response.prepare(request)
    request[_SSE] = response
    return response


def committed_sse(request: web.Request) -> web.StreamResponse | None:
    """The event stream :func:`open_sse` committed for ``request`` (None: nothing sent yet,
    so an error can still be a whole HTTP answer)."""
    return request.get(_SSE)


async def end_sse(response: web.StreamResponse, err: RequestError | None = None, *,
                  before: bytes = b"") -> web.StreamResponse:
    """End an event stream, after the events in ``before``: ``data: [DONE]``, or, after a
    failure once the stream is committed, one ``error`` event in OpenAI's shape (as OpenAI
    does); one write."""
    await response.write_eof(before + (DONE_EVENT if err is None
                                       else encode_event(dumps(err.to_openai()))))
    return response


_FIELD_VALUE: Final = re.compile(r"[\x21-\x7e]+")


async def end_sse_with_trailers(request: web.Request, response: web.StreamResponse,
                                before: bytes, trailers: dict[str, str]
                                ) -> web.StreamResponse:
    """End an event stream as :func:`end_sse` does, after ``before``, with HTTP trailer
    fields (RFC 9112 7.1.2: header fields sent after the body of a chunked response, which
    clients that do not read them skip), all in one write. An HTTP/1.0 response, which is
    not chunked, ends without them."""
    writer = await response.prepare(request)  # already started: its writer
    tail = before + DONE_EVENT
    if not isinstance(writer, StreamWriter) or not writer.chunked:
        await response.write_eof(tail)
        return response
    for name, value in trailers.items():
        if not _FIELD_VALUE.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"not a trailer field: {name!r}")
    fields = "".join(f"{name}: {value}\r\n" for name, value in trailers.items()).encode()
    # aiohttp frames no trailer fields: this last chunk and the end of the body are framed
    # here, and the writer told to send them as they are.
    writer.chunked = False
    await response.write_eof(b"%x\r\n%b\r\n0\r\n%b\r\n" % (len(tail), tail, fields))
    return response


def as_request_error(exc: BaseException, *, where: str,
                     fallback: type[RequestError] = RequestError) -> RequestError:
    """What the requester is told when ``exc`` stopped its request: the one mapping from
    an exception to a wire code (and so to an HTTP status).

    A :class:`RequestError` is itself; the requester going away is ``cancelled``; a payment
    refusal is 402; a lost connection is ``worker_lost``; a timeout is ``timeout``; anything
    else is ``fallback``, whose message says only ``where`` and the exception's type (never
    its text, which may carry request content)."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return RequestCancelled("cancelled by the requester")
    if isinstance(exc, PaymentError) and exc.status == 402:
        return PaymentRequired(str(exc))
    if isinstance(exc, TransportError):
        return WorkerLost(f"{where}: a connection was lost before the request finished")
    if isinstance(exc, TimeoutError):
        return RequestTimeout(f"{where}: timed out")
    return fallback(f"{where}: {type(exc).__name__}")


def request_for(env: Envelope, req_id: int, timeout_ms: int) -> Request:
    """The wire Request that opens stream ``req_id`` for an envelope."""
    return Request(req_id, env.endpoint, env.model, env.stream, timeout_ms, env.body,
                   env.max_tokens, max_coefficient=env.max_coefficient)


def write_ready_file(path: str | None, info: dict[str, Any]) -> None:
    """Atomically write ``info`` as JSON: a parent process polls for it."""
    if not path:
        return
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".ready-")
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.replace(tmp, target)


async def dial_forever(
    connector: Connector,
    hostport: str,
    make_connection: Callable[[], Connection],
    on_peer: Callable[[Peer], Awaitable[None]],
    handler: Handler,
    on_state: Callable[[str], None] = lambda s: None,
) -> None:
    """Keep one connection to ``hostport`` up: connect, handshake, ``on_peer``, serve;
    on loss wait (0.1 s doubling to 5 s, each wait drawn between half and all of that so
    that many nodes that lost one proxy do not come back in step) and again. Never returns;
    cancel to stop."""
    host, port = parse_hostport(hostport, "proxy address")
    backoff = 0.1
    while True:
        on_state("connecting")
        try:
            reader, writer = await connector.connect(host, port)
            peer = Peer(reader, writer, make_connection())
            try:
                await peer.handshake()
            except BaseException:
                peer.close()
                raise
            backoff = 0.1
            log.info("connected to %s:%s", host, port)
            on_state("connected")
            await _serve(peer, on_peer, handler)
            on_state("disconnected")
            log.warning("lost connection to %s:%s%s", host, port,
                        f" ({peer.close_reason})" if peer.close_reason else "")
        except AttestationError as exc:
            on_state("rejected")
            log.warning("proxy %s:%s rejected: rule=%s: %s; retrying in %.1fs", host, port,
                        exc.rule, exc, backoff)
        except (TransportError, ProtocolError) as exc:
            on_state("disconnected")
            log.warning("proxy %s:%s: %s; retrying in %.1fs", host, port, exc, backoff)
        await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
        backoff = min(backoff * 2, 5.0)


async def _serve(peer: Peer, on_peer: Callable[[Peer], Awaitable[None]],
                 handler: Handler) -> None:
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(peer.run(handler))
        try:
            await on_peer(peer)
        except CocoonError as exc:
            log.error("setting up the connection failed: %s", exc)
            peer.close(str(exc))
        await run


async def serve_until_stopped(http: HttpServer, node: Any, on_ready: Any,
                              stop: asyncio.Event, *tasks: Coroutine[Any, Any, None]) -> None:
    """Start ``http``, announce readiness, run ``tasks`` until ``stop``; always stop http."""
    await http.start()
    if on_ready is not None:
        on_ready(node)
    try:
        async with asyncio.TaskGroup() as tg:
            running = [tg.create_task(t) for t in tasks]
            await stop.wait()
            for t in running:
                t.cancel()
    finally:
        await http.stop()


def registry_lists(config: ChainConfig) -> RegistryAllowLists | None:
    """The root registry's allow-lists when ``chain.registry`` names one (else None: the
    attestation config's own allow-list file applies)."""
    if not (config.enabled and config.registry):
        return None

    return RegistryAllowLists(config.registry)


async def follow_registry(config: ChainConfig, lists: RegistryAllowLists | None,
                          chain: Any = None) -> Coroutine[Any, Any, None] | None:
    """Read the registry once (a node serves nobody before it knows the allow-lists) and
    return the task that keeps re-reading it; None without a registry."""
    if lists is None:
        return None
    if chain is not None:  # the caller's connection: the caller closes it
        await lists.refresh(chain)
        return lists.refresh_forever(chain, config.registry_refresh_s)

    own = await open_chain(config)
    try:
        await lists.refresh(own)
    except BaseException:
        await own.aclose()
        raise

    async def follow() -> None:
        try:
            await lists.refresh_forever(own, config.registry_refresh_s)
        finally:
            await own.aclose()

    return follow()


def keep_statement(account: AccountCopy, msg: Statement) -> bool:
    """Keep our own copy of the account; a statement that does not check out is logged and
    counted, never adopted (False)."""
    try:
        account.accept(msg.voucher, deposited=msg.deposited, charged=msg.charged,
                       reserved=msg.reserved, earned=msg.earned)
    except PaymentError as exc:
        log.error("proxy statement rejected: %s", exc)
        return False
    return True


async def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)``; SIGINT/SIGTERM set ``stop`` so the role can shut down cleanly, and
    so does the loss of the supervisor named in ``config.PARENT_PID_ENV``. A second signal
    while it shuts down (a worker draining its requests) stops it at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    forced = False
    task: asyncio.Future[None] | None = None

    def on_signal() -> None:
        nonlocal forced
        if not stop.is_set():
            stop.set()
        elif task is not None and not forced:
            forced = True
            log.warning("second signal: stopping at once")
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    parent = os.environ.get(PARENT_PID_ENV, "")
    async with asyncio.TaskGroup() as tg:
        watcher = (tg.create_task(_stop_when_orphaned(int(parent), stop))
                   if parent.isdigit() else None)
        task = asyncio.ensure_future(main(stop))  # awaited right here: it ends before us
        try:
            await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if not forced or (me is not None and me.cancelling()):
                raise  # we were cancelled ourselves, not stopped by a second signal
        finally:
            if watcher is not None:
                watcher.cancel()


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("the process that started this role (pid %d) is gone: stopping", parent)
            stop.set()
            return
        await asyncio.sleep(0.5)


def uptime_since(start: float) -> float:
    return round(time.monotonic() - start, 3)
