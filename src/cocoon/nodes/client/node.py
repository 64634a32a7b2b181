"""The client: an OpenAI-compatible HTTP API for apps, relaying each request through a proxy.

It keeps connections to the proxies its config names (``client.proxy``, comma-separated) and,
with ``chain.registry`` set, to those listed there (at most ``client.max_proxies``; those it
has a payment channel to first), each one a :class:`_ProxyLink`. Each request goes through the
connected proxy that offers its model and has the fewest of this client's requests in flight.
When a proxy's connection drops before any worker took the request (no ``Head`` came back,
so the app has had no byte and nobody can have charged it), the request is sent again
through another proxy, at most ``_MAX_SENDS`` times in all, within its deadline. Once a
worker took it, the request is not sent again: the dead proxy may have charged it already
(it settles a completion before passing it on), and a second proxy would charge it again;
the app gets a clear error (502 ``worker_lost`` before any byte, an ``error`` event in a
stream under way), billed as before. What remains: a proxy killed with its socket buffer
holding a request's Head, answer and End all at once loses them together (a kill resets
the connection), so a request answered within that instant can be sent again and charged by
both proxies.

Payment: one channel per proxy paid (``chain.contract``, comma-separated). With several, the
client reads each channel's parties from the chain at start and binds a proxy's connection to
the channel whose payee key is the proxy's voucher key (from its registry listing, or the key
its Catalog announces); each channel has its own signer and its own copy of the account,
pinned to that payee key.

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
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from aiohttp import web

from cocoon.attestation.receipt import HEADER as RECEIPT_HEADER
from cocoon.attestation.receipt import Receipt
from cocoon.config import ClientConfig
from cocoon.crypto import load_or_create_ec_key
from cocoon.crypto.seal import KeyWrapper
from cocoon.errors import (
    ConfigError,
    FrameTooLarge,
    ModelNotFound,
    NoWorkerAvailable,
    PaymentError,
    RequestError,
    RequestTooLarge,
    SealBroken,
    TransportError,
    UntrustedWorker,
    WorkerLost,
)
from cocoon.ledger.copies import AccountCopy
from cocoon.metrics import Metric, NodeMetrics, counter, gauge
from cocoon.money import ton_decimal
from cocoon.nodes.channels import build_channels
from cocoon.nodes.client.finetune import FineTuning
from cocoon.nodes.client.payments import ChargeSigner
from cocoon.nodes.client.sealing import ReceiptBook, RequestSeal
from cocoon.nodes.common import (
    HttpServer,
    LogLimiter,
    add_health_routes,
    committed_sse,
    end_sse,
    end_sse_with_trailers,
    error_response,
    follow_registry,
    json_response,
    keep_statement,
    node_families,
    open_sse,
    registry_lists,
    request_for,
    serve_until_stopped,
    uptime_since,
)
from cocoon.nodes.dashboard import RecentRequest, RecentRequests, add_dashboard_routes
from cocoon.nodes.links import ProxyLink, ProxyLinks, keys_of_channels
from cocoon.openai import ENDPOINTS, Envelope
from cocoon.openai.protocol import dumps
from cocoon.training.protocol import ADAPTER_FIELD
from cocoon.training.protocol import ENDPOINT as TRAINING
from cocoon.transport import Connector, OutgoingStream, Peer, Watchdog
from cocoon.wire import (
    FEATURE_LORA,
    FEATURE_TRAIN,
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
    Route,
    Statement,
    WorkerInfo,
)

__all__ = ["ClientNode"]

log = logging.getLogger(__name__)

_BURST = 64
_MAX_SENDS = 3  # a request is sent through at most this many proxies
_CORS_METHODS = "GET, POST, OPTIONS"
_CORS_HEADERS = "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project"
_CORS_MAX_AGE_S = 600
RECEIPT_ID: Final = "x-cocoon-receipt-id"  # where the app finds the receipt: /v1/receipts/ID


@dataclass(slots=True)
class ClientStats:
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    invalid: int = 0
    disconnected: int = 0
    resent: int = 0  # requests sent again through another proxy
    receipts: int = 0  # answers whose receipt was checked and kept
    seal_failures: int = 0  # refused workers, and sealed answers that did not hold
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Resend(Exception):
    """The proxy's connection dropped before any worker took the request: send it again."""


@dataclass(eq=False)
class _ProxyLink(ProxyLink):
    """A proxy this client sends through: what it offers, how it is paid."""

    catalog: tuple[CatalogEntry, ...] = ()
    roster: tuple[WorkerInfo, ...] = ()
    signer: ChargeSigner | None = None  # the channel it is paid through, once bound
    account: AccountCopy = field(default_factory=lambda: AccountCopy("client_charge"))
    in_flight: int = 0

    def offers(self, model: str) -> bool:
        return any(e.model == model for e in self.catalog)

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "in_flight": self.in_flight,
                "channel": self.signer.channel if self.signer else None}


class ClientNode:
    def __init__(self, config: ClientConfig, connector: Connector | None = None) -> None:
        self.config = config
        self.node_id = config.node_id or f"client-{os.getpid()}"
        self._registry = registry_lists(config.chain)
        key = load_or_create_ec_key(config.key_file) if config.key_file else None
        own = build_channels(config.attestation, role="client", expect_peer_role="proxy",
                             key=key, lists=self._registry)
        if connector is None:
            connector = own.connector
        self._connector = connector
        self._channels_of = own
        self._check = own.check  # workers' certificates, as the connections' peers
        self._wrapper = KeyWrapper()  # session keys with the workers requests are sealed to
        self.receipts = ReceiptBook(config.receipt_dir)
        # channel -> its signer; with several, channel -> its payee's key (read at start)
        self._signers: dict[str, ChargeSigner] = {}
        self._payees: dict[bytes, str] = {}
        channels = config.channels()
        if channels and not config.chain.key_file:
            raise ConfigError("chain.key_file (the key that signs this client's charge "
                              "vouchers) is required with chain.contract")
        for ch in channels:
            self._signers[ch] = ChargeSigner(config.chain.key_file, ch,
                                             shared_state=len(channels) == 1)
        self.links: ProxyLinks[_ProxyLink] = ProxyLinks(
            connector, self._connection, self, _ProxyLink, self._on_proxy, self._on_down)
        self._turn = 0  # the proxy that takes the next tie
        self.stats = ClientStats()
        self.metrics = NodeMetrics(self._families, known=lambda m: any(
            link.offers(m) for link in self.links))
        self.recent = RecentRequests()  # for the dashboard
        self.finetuning = FineTuning(config.finetune_dir,
                                     lambda: sorted({e.model for e in self.catalog}),
                                     self._invalid, self.run_job)
        self._watchdog = Watchdog()
        self._started = time.monotonic()
        self._cors = frozenset(o.strip() for o in config.cors_origins.split(",") if o.strip())
        self._app_errors = LogLimiter(log, "client errors")
        self._internal_errors = LogLimiter(log, "internal errors")
        self.http = HttpServer(self._http_app(), config.http, "client.http",
                               idle_timeout_s=config.http_idle_timeout_s,
                               body_timeout_s=config.http_body_timeout_s)

    # --- proxy connections ------------------------------------------------------------

    def _connection(self) -> Connection:
        return Connection(role="client", node_id=self.node_id)

    @property
    def proxy_state(self) -> str:
        return self.links.state

    @property
    def catalog(self) -> tuple[CatalogEntry, ...]:
        """Every connected proxy's models (a lost connection's are cleared), merged: worker
        counts and capacity added up, prices spanning them all."""
        merged: dict[str, CatalogEntry] = {}
        for link in self.links:
            for e in link.catalog:
                m = merged.get(e.model)
                merged[e.model] = e if m is None else CatalogEntry(
                    e.model, m.workers + e.workers, m.active + e.active,
                    m.capacity + e.capacity,
                    min(x for x in (m.price_min, e.price_min) if x) if (
                        m.price_min or e.price_min) else 0,
                    max(m.price_max, e.price_max))
        return tuple(merged[k] for k in sorted(merged))

    @property
    def roster(self) -> tuple[WorkerInfo, ...]:
        return tuple(w for link in self.links for w in link.roster)

    def _bind(self, link: _ProxyLink) -> None:
        """Bind this connection to the channel that pays this proxy (proves the key): the
        only one, or the one whose payee key is the proxy's."""
        peer = link.peer
        if peer is None or link.signer is not None or not self._signers:
            return
        if len(self._signers) == 1:
            signer = next(iter(self._signers.values()))
        else:
            channel = self._payees.get(link.proxy_pubkey)
            if channel is None:
                if link.proxy_pubkey:
                    log.warning("no payment channel to the proxy %s (its key %s…): its "
                                "requests are not paid", link.address,
                                link.proxy_pubkey.hex()[:16])
                return
            signer = self._signers[channel]
            link.account.pubkey = link.proxy_pubkey  # its statements must be signed so
        link.signer = signer
        v = signer.sign(signer.cumulative)
        peer.send(Payment(v.channel, v.body_boc()))

    async def _on_proxy(self, link: _ProxyLink, peer: Peer) -> None:
        self._bind(link)

    @staticmethod
    def _on_down(link: _ProxyLink) -> None:
        link.signer = None  # bound again on the next connection
        link.catalog, link.roster = (), ()

    async def on_message(self, peer: Peer, msg: Message) -> None:
        link = self.links.of(peer)
        if link is None:
            return
        if isinstance(msg, Catalog):
            link.catalog = msg.entries
            if msg.payee_pubkey and not link.proxy_pubkey:
                link.proxy_pubkey = msg.payee_pubkey
            self._bind(link)
        elif isinstance(msg, Roster):
            link.roster = msg.workers
            for w in msg.workers:  # receipts name them by hash
                self.receipts.learn(w.certificate)
        elif isinstance(msg, Statement):
            if keep_statement(link.account, msg) and link.signer is not None:
                try:
                    v = link.signer.sign(msg.charged)
                except PaymentError as exc:
                    log.error("not signing the proxy's statement: %s", exc)
                else:
                    peer.send(Payment(v.channel, v.body_boc()))
        else:
            log.warning("ignoring unexpected %s from the proxy", type(msg).__name__)

    def _sync_links(self, listed: dict[str, bytes]) -> None:
        """Connect to the listed proxies (endpoint -> voucher key), those this client pays
        first, at most ``client.max_proxies`` from the registry; drop the unlisted ones
        when nothing of ours runs through them."""
        paid = [a for a, key in listed.items() if key in self._payees or len(self._signers) < 2]
        order = sorted(listed, key=lambda a: (a not in paid, a))
        keep = set(order[:self.config.max_proxies])
        for address in order:
            if address in keep and address not in self.links.by_address:
                self.links.open(address, "registry", listed[address])
        for link in self.links:
            if link.source == "registry" and link.address not in keep and not link.in_flight:
                self.links.close(link, "dropped")
                log.info("the proxy %s is no longer listed: disconnected", link.address)

    async def _read_payees(self) -> None:
        """With several channels: which proxy key each one pays (read on chain once)."""
        if len(self._signers) >= 2:
            self._payees = await keys_of_channels(self.config.chain, self._signers,
                                                  lambda parties: parties.payee_pubkey)

    async def _serve_proxies(self) -> None:
        await self.links.serve(
            self.config.static_proxies(), self._registry if self.config.discovers else None,
            lambda p: p.info.client_endpoint if p.info else "", self._sync_links)

    async def run(self, stop: asyncio.Event, on_ready: Any = None) -> None:
        await self._read_payees()
        registry = await follow_registry(self.config.chain, self._registry)
        self.finetuning.resume()
        try:
            await serve_until_stopped(
                self.http, self, on_ready, stop, self._serve_proxies(),
                self._watchdog.run(), self._app_errors.flush_forever(),
                self._internal_errors.flush_forever(),
                *([registry] if registry is not None else []))
        finally:
            await self.finetuning.close()
            self.receipts.close()

    def _pick(self, model: str, tried: set[_ProxyLink]) -> _ProxyLink | None:
        """The connected proxy offering ``model`` with the fewest of our requests in flight
        (one that offers nothing yet will do when none offers it), not yet tried; ties
        taken in turn."""
        up = [link for link in self.links if link.up and link not in tried]
        offering = [link for link in up if link.offers(model)] or up
        if not offering:
            return None
        self._turn += 1
        n = len(offering)
        return min(enumerate(offering),
                   key=lambda il: (il[1].in_flight, (il[0] - self._turn) % n))[1]

    # --- OpenAI HTTP ------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        endpoint = ENDPOINTS[request.path]
        self.stats.requests += 1
        requires = ""
        rename: tuple[bytes, bytes] | None = None
        try:
            env, body = Envelope.parse(endpoint, await request.read(),
                                       max_coefficient=self.config.max_coefficient)
            tuned = self.finetuning.adapter(env.model)
            if tuned is not None:  # one of our fine-tuned models: its adapter goes along
                base, adapter = tuned
                # the answer names the model the app asked for, as OpenAI's do
                rename = (dumps({"model": base})[1:-1], dumps({"model": env.model})[1:-1])
                body["model"] = base
                body[ADAPTER_FIELD] = adapter.field()
                env = replace(env, model=base, body=dumps(body))
                requires = FEATURE_LORA
        except RequestError as exc:
            return self._invalid(request, exc)
        meter = _Meter(time.monotonic())
        try:
            return await self._send(request, env, meter, requires, rename)
        except (asyncio.CancelledError, ConnectionError):
            meter.outcome = "cancelled"  # the app went away
            raise
        except Exception:
            meter.outcome = "internal_error"
            raise
        finally:
            self._metered(endpoint, env.model, meter)

    def _metered(self, endpoint: str, model: str, meter: _Meter) -> None:
        """A request ended: into /metrics and the dashboard's recent requests."""
        end, duration = meter.end, time.monotonic() - meter.start
        ttft = meter.first - meter.start if meter.first else None
        prompt, completion = (end.prompt_tokens, end.completion_tokens) if end else (0, 0)
        self.metrics.request(endpoint, model, meter.outcome, duration, ttft_s=ttft,
                             prompt_tokens=prompt, completion_tokens=completion)
        self.recent.add(RecentRequest(
            time.time(), self.metrics.model(model), meter.worker, meter.outcome,
            None if ttft is None else round(ttft * 1000, 1), round(duration * 1000, 1),
            prompt, completion, meter.bytes, meter.cost))

    async def _send(self, request: web.Request, env: Envelope, meter: _Meter,
                    requires: str = "", rename: tuple[bytes, bytes] | None = None
                    ) -> web.StreamResponse:
        """Send the request through a proxy (another, should the first go away before any
        worker took it) and answer the app. ``requires``: the feature its worker must
        offer (``lora`` for a fine-tuned model's request); ``rename``: the answer's
        ``"model":…`` field as it comes, and as the app gets it."""
        timeout = self.config.request_timeout_s
        deadline = time.monotonic() + timeout
        tried: set[_ProxyLink] = set()
        receipt_id = os.urandom(16).hex()
        while True:
            link = self._pick(env.model, tried)
            if link is None or link.peer is None:
                self.stats.failed += 1
                return error_response(meter.failed(NoWorkerAvailable(
                    "the connection to the proxy was lost" if tried else
                    f"the client is not connected to a proxy ({self.proxy_state}); retry "
                    "shortly")))
            tried.add(link)
            left = deadline - time.monotonic()
            seal = RequestSeal(env, self.config.seal, self._check, self._wrapper,
                               link.roster, self.receipts.find, requires)
            try:
                stream = link.peer.open_stream(functools.partial(
                    _request_of, env, int(left * 1000), seal, requires))
            except FrameTooLarge:  # the proxy announced frames smaller than ours
                return self._invalid(request, meter.failed(RequestTooLarge(
                    "Request body too large for the proxy's frame limit.")))
            except TransportError:
                continue
            # Our own deadline, a little past the proxy's, so its precise error wins.
            self._watchdog.watch(stream, left + 2.0, left + 2.0)
            link.in_flight += 1
            answer = _Answer(link.peer, stream, seal, receipt_id, meter, rename)
            try:
                if env.stream:
                    return await self._stream(request, answer, resend=len(tried) < _MAX_SENDS)
                return await self._unary(answer, resend=len(tried) < _MAX_SENDS)
            except _Resend:
                self.stats.resent += 1
                log.info("the proxy %s went away before answering: sending the request "
                         "through another", link.address)
                continue
            except (asyncio.CancelledError, ConnectionResetError):
                self.stats.disconnected += 1
                raise
            finally:
                link.in_flight -= 1
                self._watchdog.forget(stream)
                stream.cancel("app disconnected")

    async def run_job(self, model: str, body: bytes, max_tokens: int, timeout_s: float,
                      on_event: Callable[[dict[str, Any]], None], job_id: str) -> End:
        """Send a fine-tuning job through a proxy to a worker that trains ``model`` (sealed
        to it like any request), hand each event of its answer to ``on_event``, and return
        its End (its receipt kept under ``job_id``); the RequestError that ended it
        otherwise."""
        env = Envelope(TRAINING, model, True, max_tokens, body)  # type: ignore[arg-type]
        link = self._pick(model, set())
        if link is None or link.peer is None:
            raise NoWorkerAvailable(f"the client is not connected to a proxy "
                                    f"({self.proxy_state}); retry shortly")
        peer = link.peer
        seal = RequestSeal(env, self.config.seal, self._check, self._wrapper, link.roster,
                           self.receipts.find, FEATURE_TRAIN)
        stream = peer.open_stream(functools.partial(
            _request_of, env, int(timeout_s * 1000), seal, FEATURE_TRAIN))
        link.in_flight += 1
        pending = b""
        try:
            while True:
                ev = await stream.next()
                if type(ev) is Chunk:
                    pending += seal.open(ev.data)
                    stream.consumed()
                    *events, pending = pending.split(b"\n\n")
                    for event in events:
                        if event.startswith(b"data: "):
                            on_event(json.loads(event[6:]))
                elif type(ev) is Route:
                    self.receipts.learn(ev.certificate)
                    seal.route(ev, peer, stream.req_id)
                elif type(ev) is End:
                    receipt = seal.receipt(ev)
                    if receipt is not None:
                        self.receipts.keep(job_id, receipt)
                    return ev
                elif type(ev) is not Head:
                    raise self._failure(ev)  # type: ignore[arg-type]
        finally:
            link.in_flight -= 1
            stream.cancel("job ended")

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

    def _failure(self, ev: Error | TransportError | RequestError) -> RequestError:
        self.stats.failed += 1
        if isinstance(ev, Error):
            return ev.to_exception()
        if isinstance(ev, TransportError):
            return WorkerLost("the connection to the proxy was lost mid-request")
        if isinstance(ev, SealBroken | UntrustedWorker):
            self.stats.seal_failures += 1
            self._app_errors.log(logging.WARNING, "request failed: %s: %s", ev.code, ev)
        return ev

    def _count(self, end: End) -> None:
        self.stats.succeeded += 1
        self.stats.prompt_tokens += end.prompt_tokens
        self.stats.completion_tokens += end.completion_tokens

    def _receipt(self, answer: _Answer, end: End) -> Receipt | None:
        """The answer's receipt, checked and kept (SealBroken for a sealed answer whose
        receipt does not hold)."""
        receipt = answer.seal.receipt(end)
        if receipt is not None:
            self.receipts.keep(answer.receipt_id, receipt)
            self.stats.receipts += 1
        return receipt

    async def _unary(self, answer: _Answer, *, resend: bool) -> web.Response:
        stream, seal = answer.stream, answer.seal
        body = b""
        try:
            while True:
                ev = await stream.next()
                if resend and isinstance(ev, TransportError):
                    raise _Resend
                if type(ev) is Chunk:
                    if not answer.meter.first:
                        answer.meter.first = time.monotonic()
                    body += answer.renamed(seal.open(ev.data))
                    stream.consumed()
                elif type(ev) is Route:
                    self.receipts.learn(ev.certificate)  # its receipt names it by hash
                    seal.route(ev, answer.peer, stream.req_id)
                elif type(ev) is Head:
                    resend = False  # a worker took it: the proxy may charge it
                    answer.meter.worker = ev.worker
                    continue
                elif type(ev) is End:
                    receipt = self._receipt(answer, ev)
                    self._count(ev)
                    answer.meter.end, answer.meter.bytes = ev, len(body)
                    answer.meter.cost = (receipt.proxy.cost_nanoton if receipt is not None
                                         and receipt.proxy is not None else None)
                    headers = {RECEIPT_ID: answer.receipt_id}
                    if receipt is not None:
                        headers[RECEIPT_HEADER] = receipt.header_value(answer.receipt_id)
                    return web.Response(body=body, content_type="application/json",
                                        headers=headers)
                else:
                    return error_response(answer.meter.failed(
                        self._failure(ev)))  # type: ignore[arg-type]
        except (SealBroken, UntrustedWorker) as exc:
            return error_response(answer.meter.failed(self._failure(exc)))

    async def _stream(self, request: web.Request, answer: _Answer, *,
                      resend: bool) -> web.StreamResponse:
        stream, seal = answer.stream, answer.seal
        response: web.StreamResponse | None = None
        headers = {RECEIPT_ID: answer.receipt_id, "Trailer": RECEIPT_HEADER}
        held = b""  # the last events, when the End came with them: sent with the end
        while True:
            ev = await stream.next()
            kind = type(ev)
            if resend and isinstance(ev, TransportError):
                raise _Resend
            try:
                if kind is Chunk:
                    resend = False
                    if not answer.meter.first:
                        answer.meter.first = time.monotonic()
                    # Chunks are whole events (the worker framed them): every one already
                    # here goes out in one write, one syscall per burst.
                    data: bytes = ev.data  # type: ignore[union-attr]
                    more = stream.take_chunks(_BURST)
                    data = answer.renamed(seal.open(b"".join([data, *more]) if more else data))
                    if response is None:
                        response = await open_sse(request, headers)
                    answer.meter.bytes += len(data)
                    stream.consumed(1 + len(more))
                    if stream.ends_next():  # one write for the last events and the end
                        held = data
                        continue
                    await response.write(data)
                    continue
                if kind is Route:
                    self.receipts.learn(ev.certificate)  # type: ignore[union-attr]
                    seal.route(ev, answer.peer, stream.req_id)  # type: ignore[arg-type]
                    continue
                if kind is Head:
                    resend = False  # a worker took it: the proxy may charge it
                    answer.meter.worker = ev.worker  # type: ignore[union-attr]
                    continue
                if kind is End:
                    receipt = self._receipt(answer, ev)  # type: ignore[arg-type]
                    self._count(ev)  # type: ignore[arg-type]
                    answer.meter.end = ev  # type: ignore[assignment]
                    answer.meter.cost = (receipt.proxy.cost_nanoton if receipt is not None
                                         and receipt.proxy is not None else None)
                    if response is None:
                        response = await open_sse(request, headers)
                    if receipt is None:
                        return await end_sse(response, before=held)
                    # the receipt as the trailer its header announced, and as an SSE comment
                    # (clients skip it) for those that do not read trailers
                    value = receipt.header_value(answer.receipt_id)
                    return await end_sse_with_trailers(
                        request, response,
                        held + b": %s %s\n\n" % (RECEIPT_HEADER.encode(), value.encode()),
                        {RECEIPT_HEADER: value})
                err = self._failure(ev)  # type: ignore[arg-type]
            except (SealBroken, UntrustedWorker) as exc:
                err = self._failure(exc)
            answer.meter.failed(err)
            if response is None:
                return error_response(err)
            return await end_sse(response, err, before=held)

    async def _receipt_of(self, request: web.Request) -> web.Response:
        """``GET /v1/receipts/{id}``: a recent answer's whole receipt (with both
        certificates), as ``cocoon receipt verify`` reads it."""
        whole = self.receipts.get(request.match_info["id"])
        if whole is None:
            err = RequestError("no receipt by that id here (the newest 4096 are kept in "
                               "memory; client.receipt_dir keeps them all)", param="id")
            err.status, err.type, err.code = 404, "invalid_request_error", "not_found"
            return self._invalid(request, err)
        return web.Response(body=whole, content_type="application/json")

    async def _models(self, _: web.Request) -> web.Response:
        return json_response({"object": "list", "data": [_model(e) for e in self.catalog]
                              + self.finetuning.fine_tuned()})

    async def _model(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{id}`` (``client.models.retrieve``): one model, or OpenAI's 404."""
        model = request.match_info["model"]
        for e in self.catalog:
            if e.model == model:
                return json_response(_model(e))
        for m in self.finetuning.fine_tuned():
            if m["id"] == model:
                return json_response(m)
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
            response.headers["Access-Control-Expose-Headers"] = (
                f"Retry-After, {RECEIPT_HEADER}, {RECEIPT_ID}")
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
            # the first proxy (its state "connected" when any is), then each
            "proxy": {**(next(iter(self.links)).snapshot() if len(self.links) else {}),
                      "state": self.proxy_state},
            "proxies": [link.snapshot() for link in self.links],
            "workers": [{"node_id": w.node_id, "tier": w.tier,
                         "image_hash": w.image_hash.hex() or None, "models": list(w.models)}
                        for w in self.roster],
            "api": self.http.url + "/v1",
            "requests": {"total": s.requests, "succeeded": s.succeeded, "failed": s.failed,
                         "invalid": s.invalid, "disconnected": s.disconnected,
                         "resent": s.resent, "receipts": s.receipts,
                         "seal_failures": s.seal_failures},
            "seal": self.config.seal,
            "tokens": {"prompt": s.prompt_tokens, "completion": s.completion_tokens},
            "models": [{"id": e.model, "workers": e.workers, "capacity": e.capacity}
                       for e in self.catalog],
            # the first channel's account (the one `cocoon client balance` reads), then each
            "billing": self._billing(self._first_paid()),
            "channels": [self._billing(link) for link in self.links
                         if link.signer is not None],
        }

    async def _dashboard_view(self) -> dict[str, Any]:
        """What the client's dashboard shows: the proxies and workers it uses, its channels
        and its recent requests (figures only)."""
        s = self.stats
        first = next(iter(self.links), None)
        channels = self._channel_figures()
        return {
            "role": "client", "node_id": self.node_id,
            "uptime_s": uptime_since(self._started),
            "totals": {"requests": s.requests, "completed": s.succeeded, "failed": s.failed,
                       "prompt_tokens": s.prompt_tokens,
                       "completion_tokens": s.completion_tokens},
            "in_flight": sum(link.in_flight for link in self.links), "queue": None,
            "attestation": ({"tier": first.attestation.get("tier"),
                             "image_hash": first.attestation.get("image_hash")}
                            if first is not None else {}),
            "proxies": [{"address": link.address, "up": link.up} for link in self.links],
            "workers": [{"node_id": w.node_id, "tier": w.tier,
                         "image_hash": w.image_hash.hex() or None, "models": list(w.models)}
                        for w in self.roster],
            "money": {"channels": channels} if channels else None,
            "recent": self.recent.view(),
        }

    def _channel_figures(self) -> list[dict[str, Any]]:
        """Each paying channel's amounts (nanoTON), as the proxy last stated them and as
        this client signed: for /metrics and the dashboard."""
        out = []
        for link in self.links:
            if link.signer is None:
                continue
            a, signed = link.account, link.signer.cumulative
            out.append({"channel": link.signer.channel, "deposit": a.deposited,
                        "charged": a.charged, "reserved": a.reserved,
                        "available": a.deposited - a.charged - a.reserved,
                        "signed": signed, "unsigned": max(0, a.charged - signed)})
        return out

    async def _families(self) -> list[Metric]:
        """The client's /metrics read from its state (see ``cocoon.metrics``)."""
        s = self.stats
        figures = self._channel_figures()
        channels: dict[str, dict[tuple[str, ...], float]] = {
            k: {(c["channel"],): c[k] for c in figures}
            for k in ("deposit", "charged", "reserved", "available", "signed", "unsigned")}
        docs = {"deposit": "What the channel holds in all, per the proxy's last statement",
                "charged": "What the proxy has charged the channel",
                "reserved": "Reserved for requests under way",
                "available": "Deposit less charged and reserved: what requests can spend",
                "signed": "The cumulative charge this client has signed",
                "unsigned": "Charged but not yet signed by this client"}
        return [
            *node_families("client", self.node_id, uptime_since(self._started),
                           self._channels_of.refusals()),
            gauge("cocoon_client_requests_in_flight", "Requests sent and not yet answered",
                  sum(link.in_flight for link in self.links)),
            gauge("cocoon_client_proxies_connected", "Proxies this client is connected to",
                  sum(1 for link in self.links if link.up)),
            counter("cocoon_client_requests_resent", "Requests sent again through another "
                    "proxy", s.resent),
            counter("cocoon_client_invalid_requests", "App requests refused as invalid",
                    s.invalid),
            counter("cocoon_client_receipts", "Answers whose receipt was checked and kept",
                    s.receipts),
            counter("cocoon_client_seal_failures", "Refused workers and sealed answers that "
                    "did not hold", s.seal_failures),
            *(gauge(f"cocoon_channel_{k}_nanoton", docs[k], labels={"channel": v})
              for k, v in channels.items()),
        ]

    def _first_paid(self) -> _ProxyLink | None:
        """The link of the first channel; without channels (billing off the chain), the
        first that sent a statement."""
        first = next(iter(self._signers), None)
        if first is None:
            return next((link for link in self.links
                         if link.account.voucher is not None), None)
        return next((link for link in self.links
                     if link.signer is not None and link.signer.channel == first), None)

    def _billing(self, link: _ProxyLink | None) -> dict[str, Any]:
        if link is None:
            signer = next(iter(self._signers.values()), None)
            account = AccountCopy("client_charge")
        else:
            signer, account = link.signer, link.account
        out = account.snapshot()
        if signer is not None:
            out.update(channel=signer.channel, signed={
                "seqno": signer.seqno, "cumulative_nanoton": signer.cumulative})
        return out

    def _http_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BODY,
                              middlewares=[self._openai_errors])

        async def health(_: web.Request) -> web.Response:
            ok = any(link.up for link in self.links)
            return json_response({"status": "ok" if ok else "degraded",
                                  "proxy": self.proxy_state,
                                  "models": [e.model for e in self.catalog]},
                                 200 if ok else 503)

        async def stats(_: web.Request) -> web.Response:
            return json_response(self.snapshot())

        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/receipts/{id}", self._receipt_of)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        for path in ENDPOINTS:
            app.router.add_post(path, self._completions)
        add_health_routes(app, health, stats, self.metrics)
        add_dashboard_routes(app, self._dashboard_view)
        self.finetuning.add_routes(app)
        app.on_response_prepare.append(self._cors_headers)
        return app


def _request_of(env: Envelope, timeout_ms: int, seal: RequestSeal, requires: str,
                rid: int) -> Any:
    req = request_for(env, rid, timeout_ms)
    return seal.request(replace(req, requires=requires) if requires else req)


@dataclass(slots=True)
class _Answer:
    """One attempt at a request: the proxy connection and stream it went on, its seal, and
    the name its receipt is kept under."""

    peer: Peer
    stream: OutgoingStream
    seal: RequestSeal
    receipt_id: str
    meter: _Meter
    rename: tuple[bytes, bytes] | None = None  # a fine-tuned model's: base -> its own name

    def renamed(self, data: bytes) -> bytes:
        return data if self.rename is None else data.replace(*self.rename)


@dataclass(slots=True)
class _Meter:
    """What /metrics learns of one request: when its first chunk came, how it ended."""

    start: float
    first: float = 0.0
    outcome: str = "ok"
    end: End | None = None
    worker: str = ""  # the worker that took it (its Head)
    bytes: int = 0  # of the answer, as the app got it
    cost: int | None = None  # nanoTON, from the proxy's part of its receipt

    def failed(self, err: RequestError) -> RequestError:
        self.outcome = err.code
        return err


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
