"""The client: an OpenAI-compatible HTTP API for apps, relaying each request to the proxy.

The HTTP response is committed at the first chunk, so any failure before it (validation,
routing, engine refusal) reaches the app as a proper OpenAI error with its HTTP status.
A failure after it ends the SSE stream with an ``error`` event, as OpenAI does. An app that
disconnects cancels its request all the way to the engine; the client also arms its own
deadline, so a lost answer never hangs an app.

An app's mistakes (bad JSON, out-of-range fields, a body too large for one wire frame:
``MAX_REQUEST_BODY``, 413) are answered in OpenAI's shape and logged without a traceback,
at most a few lines per interval, naming only the status, code and parameter: never a
prompt, a completion or a key. Anything unexpected is a 500 in the same shape.

``GET /v1/models`` lists the models the proxy's catalog offers and ``GET /v1/models/{id}``
returns one (404 ``model_not_found`` otherwise). A browser app on an origin named in
``client.cors_origins`` gets CORS headers on every answer (streams included), and any
``OPTIONS`` preflight is answered 204.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cocoon.config import ClientConfig
from cocoon.crypto import load_or_create_ec_key
from cocoon.errors import (
    ConfigError,
    FrameTooLarge,
    ModelNotFound,
    NoWorkerAvailable,
    PaymentError,
    RequestError,
    RequestTimeout,
    RequestTooLarge,
    TransportError,
    WorkerLost,
)
from cocoon.ledger.copies import AccountCopy
from cocoon.money import ton_decimal
from cocoon.nodes.channels import build_channels, describe_evidence
from cocoon.nodes.client.payments import ChargeSigner
from cocoon.nodes.common import (
    HttpServer,
    LogLimiter,
    add_health_routes,
    committed_sse,
    dial_forever,
    end_sse,
    error_response,
    follow_registry,
    json_response,
    keep_statement,
    open_sse,
    registry_lists,
    request_for,
    serve_until_stopped,
    uptime_since,
)
from cocoon.openai import ENDPOINTS, Envelope
from cocoon.transport import Connector, OutgoingStream, Peer, Watchdog
from cocoon.wire import (
    MAX_REQUEST_BODY,
    Catalog,
    CatalogEntry,
    Chunk,
    Connection,
    End,
    Error,
    Head,
    Message,
    Payment,
    Roster,
    Statement,
    WorkerInfo,
)

__all__ = ["ClientNode"]

log = logging.getLogger(__name__)

_BURST = 64
_CORS_METHODS = "GET, POST, OPTIONS"
_CORS_HEADERS = "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project"
_CORS_MAX_AGE_S = 600


@dataclass(slots=True)
class ClientStats:
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    invalid: int = 0
    disconnected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ClientNode:
    def __init__(self, config: ClientConfig, connector: Connector | None = None) -> None:
        self.config = config
        self.node_id = config.node_id or f"client-{os.getpid()}"
        self._registry = registry_lists(config.chain)
        if connector is None:
            key = load_or_create_ec_key(config.key_file) if config.key_file else None
            connector = build_channels(config.attestation, role="client",
                                       expect_peer_role="proxy", key=key,
                                       lists=self._registry).connector
        self._connector = connector
        self.proxy_attestation: dict[str, Any] = {}
        self.roster: tuple[WorkerInfo, ...] = ()
        self.account = AccountCopy("client_charge")
        self.signer: ChargeSigner | None = None
        if config.chain.contract:
            if not config.chain.key_file:
                raise ConfigError("chain.key_file (the key that signs this client's charge "
                                  "vouchers) is required with chain.contract")
            self.signer = ChargeSigner(config.chain.key_file, config.chain.contract)
        self.proxy: Peer | None = None
        self.proxy_state = "starting"
        self.catalog: tuple[CatalogEntry, ...] = ()
        self.stats = ClientStats()
        self._watchdog = Watchdog()
        self._started = time.monotonic()
        self._cors = frozenset(o.strip() for o in config.cors_origins.split(",") if o.strip())
        self._app_errors = LogLimiter(log, "client errors")
        self._internal_errors = LogLimiter(log, "internal errors")
        self.http = HttpServer(self._http_app(), config.http, "client.http",
                               idle_timeout_s=config.http_idle_timeout_s,
                               body_timeout_s=config.http_body_timeout_s)

    # --- proxy connection -------------------------------------------------------------

    def _connection(self) -> Connection:
        return Connection(role="client", node_id=self.node_id)

    async def _on_proxy(self, peer: Peer) -> None:
        self.proxy = peer
        self.proxy_attestation = describe_evidence(peer.extra("verified_evidence"))
        if self.signer is not None:  # bind this connection to our channel (proves the key)
            v = self.signer.sign(self.signer.cumulative)
            peer.send(Payment(v.channel, v.body_boc()))

    def _set_state(self, state: str) -> None:
        self.proxy_state = state
        if state != "connected":
            self.proxy = None

    async def on_message(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, Catalog):
            self.catalog = msg.entries
        elif isinstance(msg, Roster):
            self.roster = msg.workers
        elif isinstance(msg, Statement):
            if keep_statement(self.account, msg) and self.signer is not None:
                try:
                    v = self.signer.sign(msg.charged)
                except PaymentError as exc:
                    log.error("not signing the proxy's statement: %s", exc)
                else:
                    peer.send(Payment(v.channel, v.body_boc()))
        else:
            log.warning("ignoring unexpected %s from the proxy", type(msg).__name__)

    async def run(self, stop: asyncio.Event, on_ready: Any = None) -> None:
        registry = await follow_registry(self.config.chain, self._registry)
        await serve_until_stopped(
            self.http, self, on_ready, stop,
            dial_forever(self._connector, self.config.proxy, self._connection, self._on_proxy,
                         self, self._set_state),
            self._watchdog.run(), self._app_errors.flush_forever(),
            self._internal_errors.flush_forever(),
            *([registry] if registry is not None else []))

    # --- OpenAI HTTP ------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        endpoint = ENDPOINTS[request.path]
        self.stats.requests += 1
        try:
            env, _ = Envelope.parse(endpoint, await request.read(),
                                    max_coefficient=self.config.max_coefficient)
        except RequestError as exc:
            return self._invalid(request, exc)
        peer = self.proxy
        if peer is None or peer.closed:
            self.stats.failed += 1
            return error_response(NoWorkerAvailable(
                f"the client is not connected to the proxy ({self.proxy_state}); retry shortly"))
        timeout = self.config.request_timeout_s
        try:
            stream = peer.open_stream(lambda rid: request_for(env, rid, int(timeout * 1000)))
        except FrameTooLarge:  # the proxy announced frames smaller than ours
            return self._invalid(request, RequestTooLarge(
                "Request body too large for the proxy's frame limit."))
        except TransportError:
            self.stats.failed += 1
            return error_response(NoWorkerAvailable("the connection to the proxy was lost"))
        # Our own deadline, a little past the proxy's, so its precise error wins the race.
        self._watchdog.watch(stream, timeout + 2.0, timeout + 2.0)
        try:
            if env.stream:
                return await self._stream(request, stream)
            return await self._unary(stream)
        except (asyncio.CancelledError, ConnectionResetError):
            self.stats.disconnected += 1
            raise
        finally:
            self._watchdog.forget(stream)
            stream.cancel("app disconnected")

    def _invalid(self, request: web.Request, err: RequestError) -> web.Response:
        """An app's mistake: counted, logged (rate-limited, no content), answered."""
        self.stats.invalid += 1
        self._app_errors.log(logging.INFO, "%s %s: %d %s%s", request.method, request.path,
                             err.status, err.code, f" (param {err.param})" if err.param else "")
        return error_response(err)

    @web.middleware
    async def _openai_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Unknown paths, wrong methods, oversize or slow bodies answer in OpenAI's error
        shape; an unexpected exception is a 500 in that shape, its traceback rate-limited.
        ``OPTIONS`` (a CORS preflight) is answered here, whatever the path."""
        if request.method == "OPTIONS":  # any path: a route would turn 404s into 405s
            return self._preflight(request)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = self._invalid(request, _http_error(request, exc))
            if exc.status == 408:  # a client too slow to send its body: not kept alive
                response.force_close()
            return response
        except ConnectionError:
            raise  # the app went away: aiohttp ends the connection quietly
        except Exception:
            self.stats.failed += 1
            self._internal_errors.log(logging.ERROR, "%s %s failed", request.method,
                                      request.path, exc_info=True)
            err = RequestError("internal error in the cocoon client")
            committed = committed_sse(request)
            return error_response(err) if committed is None else await end_sse(committed, err)

    def _failure(self, ev: Error | TransportError | RequestTimeout) -> RequestError:
        self.stats.failed += 1
        if isinstance(ev, Error):
            return ev.to_exception()
        if isinstance(ev, TransportError):
            return WorkerLost("the connection to the proxy was lost mid-request")
        return ev

    def _count(self, end: End) -> None:
        self.stats.succeeded += 1
        self.stats.prompt_tokens += end.prompt_tokens
        self.stats.completion_tokens += end.completion_tokens

    async def _unary(self, stream: OutgoingStream) -> web.Response:
        body = b""
        while True:
            ev = await stream.next()
            if type(ev) is Chunk:
                body += ev.data
                stream.consumed()
            elif type(ev) is Head:
                continue
            elif type(ev) is End:
                self._count(ev)
                return web.Response(body=body, content_type="application/json")
            else:
                return error_response(self._failure(ev))  # type: ignore[arg-type]

    async def _stream(self, request: web.Request, stream: OutgoingStream) -> web.StreamResponse:
        response: web.StreamResponse | None = None
        while True:
            ev = await stream.next()
            kind = type(ev)
            if kind is Chunk:
                if response is None:
                    response = await open_sse(request)
                # Chunks are whole events (the worker framed them): every one already
                # here goes out in one write, one syscall per burst.
                data: bytes = ev.data  # type: ignore[union-attr]
                more = stream.take_chunks(_BURST)
                await response.write(b"".join([data, *more]) if more else data)
                stream.consumed(1 + len(more))
            elif kind is Head:
                continue
            elif kind is End:
                self._count(ev)  # type: ignore[arg-type]
                return await end_sse(response if response is not None
                                     else await open_sse(request))
            else:
                err = self._failure(ev)  # type: ignore[arg-type]
                if response is None:
                    return error_response(err)
                return await end_sse(response, err)

    async def _models(self, _: web.Request) -> web.Response:
        return json_response({"object": "list", "data": [_model(e) for e in self.catalog]})

    async def _model(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{id}`` (``client.models.retrieve``): one model, or OpenAI's 404."""
        model = request.match_info["model"]
        for e in self.catalog:
            if e.model == model:
                return json_response(_model(e))
        return self._invalid(request, ModelNotFound(f"The model '{model}' does not exist",
                                                    param="model"))

    # --- CORS -------------------------------------------------------------------------

    def _allowed_origin(self, request: web.Request) -> str | None:
        """The value of Access-Control-Allow-Origin for this request (None: no CORS)."""
        origin = request.headers.get("Origin")
        if not origin or not self._cors:
            return None
        if origin in self._cors:
            return origin
        return "*" if "*" in self._cors else None

    async def _cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Before any answer's headers go out (a stream's included): the CORS headers."""
        allowed = self._allowed_origin(request)
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Expose-Headers"] = "Retry-After"
            if allowed != "*":
                response.headers.add("Vary", "Origin")

    def _preflight(self, request: web.Request) -> web.Response:
        """``OPTIONS`` on any path: 204; with the preflight's CORS answer for an allowed
        origin (its headers added by :meth:`_cors_headers`)."""
        response = web.Response(status=204, headers={"Allow": _CORS_METHODS})
        if self._allowed_origin(request) is not None:
            response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", _CORS_HEADERS)
            response.headers["Access-Control-Max-Age"] = str(_CORS_MAX_AGE_S)
        return response

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {
            "role": "client",
            "node_id": self.node_id,
            "uptime_s": uptime_since(self._started),
            "proxy": {"address": self.config.proxy, "state": self.proxy_state,
                      "attestation": self.proxy_attestation},
            "workers": [{"node_id": w.node_id, "tier": w.tier,
                         "image_hash": w.image_hash.hex() or None, "models": list(w.models)}
                        for w in self.roster],
            "api": self.http.url + "/v1",
            "requests": {"total": s.requests, "succeeded": s.succeeded, "failed": s.failed,
                         "invalid": s.invalid, "disconnected": s.disconnected},
            "tokens": {"prompt": s.prompt_tokens, "completion": s.completion_tokens},
            "models": [{"id": e.model, "workers": e.workers, "capacity": e.capacity}
                       for e in self.catalog],
            "billing": {**self.account.snapshot(), **self._signed()},
        }

    def _signed(self) -> dict[str, Any]:
        if self.signer is None:
            return {}
        return {"channel": self.signer.channel, "signed": {
            "seqno": self.signer.seqno, "cumulative_nanoton": self.signer.cumulative}}

    def _http_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BODY,
                              middlewares=[self._openai_errors])

        async def health(_: web.Request) -> web.Response:
            ok = self.proxy is not None and not self.proxy.closed
            return json_response({"status": "ok" if ok else "degraded",
                                  "proxy": self.proxy_state,
                                  "models": [e.model for e in self.catalog]},
                                 200 if ok else 503)

        async def stats(_: web.Request) -> web.Response:
            return json_response(self.snapshot())

        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        for path in ENDPOINTS:
            app.router.add_post(path, self._completions)
        add_health_routes(app, health, stats)
        app.on_response_prepare.append(self._cors_headers)
        return app


def _model(e: CatalogEntry) -> dict[str, Any]:
    """A catalog entry as an OpenAI model object (with cocoon's capacity fields, and the
    range of what its workers ask, in TON per million tokens, when the proxy bills)."""
    out: dict[str, Any] = {"id": e.model, "object": "model", "created": 0, "owned_by": "cocoon",
                           "workers": e.workers, "active": e.active, "capacity": e.capacity}
    if e.price_max:
        out["price_per_million_tokens"] = {"min": ton_decimal(e.price_min),
                                           "max": ton_decimal(e.price_max), "currency": "TON"}
    return out


def _http_error(request: web.Request, exc: web.HTTPException) -> RequestError:
    """aiohttp's refusal of a request as the error OpenAI would answer."""
    if exc.status == 413:
        return RequestTooLarge(f"Request body too large: the limit is {MAX_REQUEST_BODY} "
                               "bytes.")
    err = RequestError(f"{exc.reason}: {request.method} {request.path}")
    err.status = exc.status
    err.type = "invalid_request_error"
    err.code = {404: "not_found", 405: "method_not_allowed",
                408: "request_timeout"}.get(exc.status, "http_error")
    return err
