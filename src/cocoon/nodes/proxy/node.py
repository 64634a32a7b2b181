"""The proxy: accepts workers and clients, keeps the live worker registry, routes each
request to the least-loaded worker serving its model, and relays the stream both ways.

A worker slot is taken the moment a request is routed (``_take_slot``), so a burst spreads
over the workers. A request that finds every slot for its model busy waits in a bounded,
fair queue (:class:`~cocoon.routing.FairQueue`: FIFO per client, round-robin across
clients) until a slot frees (``_dispatch``), at most ``proxy.queue_timeout_s`` (then 503);
a full queue (``proxy.queue_limit``) answers 429. A worker that refuses a request for
capacity before starting it is not the end: the request is routed again, elsewhere.

Nor is a worker that fails before the app has seen a byte of the answer: one that dies,
answers a server-side error (engine or upstream failure, 5xx) or stays silent past
``idle_timeout_s`` before its first chunk. The request goes to another worker (at most
``_ROUTES`` attempts in all, within the request's own deadline), the failed attempt's
reservation is released (the client pays only for the attempt that answered), and the
failing worker is passed over for ``_PENALTY_S`` while others can serve.

Failures become typed errors for the client: a worker that dies mid-request -> WorkerLost,
no progress within ``idle_timeout_s`` or no end within ``request_timeout_s`` ->
RequestTimeout (and the worker is told to stop). A client that goes away cancels its
requests on the workers.

With billing, every request is settled to the usage the worker reports: its End, or the
Error that ends a failed or cancelled stream with the tokens generated until then (a stopped
worker is given ``_LAST_WORD_S`` to say it). A request cut off before its worker reported
(the worker lost, or silent when told to stop) is charged what the app received, as the proxy
counted it while relaying (estimated: see ``_Relay.relayed_usage``), and the worker is paid
for it. Only a request that produced nothing (refused, failed at once, lost before its first
chunk) has its reservation released.

A request cut off by the proxy's own death is settled by the next proxy run: every billed
request reaches its worker with a ``ticket`` naming its reservation, and a worker that loses
its proxy reports, on reconnecting, the usage of its recent ticketed jobs
(:class:`~cocoon.wire.JobReports`). Reservations the dead run left open are charged what their
worker reports generating, or released when it reports nothing for them; those no worker
reports on within ``billing.report_grace_s`` are released.

A sealed request (``Request.seal_size``) is never read here. Its body comes sealed once, with
its content key wrapped to each worker the client accepts (from the roster: each worker's
certificate, as it announced it and as this proxy checked it); it is routed among those
only, and goes on to the chosen one with that worker's wrapped key alone. Only when none of
them is connected does it go to another worker, whose certificate the client is sent
(``Route``) while the reservation is made; the client answers with the key wrapped to it
(``Sealed``). The answer comes back as sealed records (``cocoon.crypto.seal``) whose event
counts are in the clear, so relaying, counting and billing work as for a clear one. The
worker's signed receipt part in its ``End`` is checked and countersigned with what the
request cost (``cocoon.attestation.receipt``) before it goes on to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from cocoon.attestation.receipt import (
    ProxyPart,
    Receipt,
    check_worker_part,
    sha256_hex,
    sign_part,
)
from cocoon.chain.connect import NodeChain
from cocoon.chain.registry import ensure_listed, raw_address, read_registry
from cocoon.chain.specs import ProxyInfo
from cocoon.config import ProxyConfig, parse_hostport
from cocoon.crypto.seal import WRAPPED_SIZE, decode_keys, encode_keys, record_events
from cocoon.errors import (
    AttestationError,
    BadRequest,
    CocoonError,
    ModelNotFound,
    NoWorkerAvailable,
    PaymentRequired,
    ProtocolError,
    QueueFull,
    RequestError,
    RequestTimeout,
    TransportError,
    WorkerLost,
)
from cocoon.ledger.accounts import channel_account, client_account, worker_account
from cocoon.ledger.vouchers import public_key_bytes
from cocoon.metrics import Metric, NodeMetrics, counter, gauge
from cocoon.money import format_ton
from cocoon.nodes.channels import build_channels, describe_evidence
from cocoon.nodes.common import (
    HttpServer,
    add_health_routes,
    as_request_error,
    follow_registry,
    json_response,
    node_families,
    registry_lists,
    uptime_since,
)
from cocoon.nodes.dashboard import RecentRequest, RecentRequests, add_dashboard_routes
from cocoon.nodes.proxy.billing import Billing, Settled
from cocoon.nodes.proxy.payments import OUTAGE, ChainHealth, ProxyPayments
from cocoon.openai import count_events, effective_max_tokens
from cocoon.routing import (
    FairQueue,
    Measured,
    ModelIndex,
    pick,
    price_cap_error,
    unserved_error,
)
from cocoon.transport import Listener, OutgoingStream, Peer, Watchdog
from cocoon.usage import Usage
from cocoon.wire import (
    FEATURE_LORA,
    FEATURE_TRAIN,
    Announce,
    Cancel,
    Catalog,
    CatalogEntry,
    Chunk,
    Connection,
    End,
    Error,
    Head,
    JobReports,
    Message,
    Payment,
    Request,
    Roster,
    Route,
    Sealed,
    WorkerInfo,
)

__all__ = ["ProxyNode"]

log = logging.getLogger(__name__)

_KNOWN_MODEL_TTL = 600.0  # a model served this recently answers 503, not 404, when gone
# How long a worker told to stop has to report what it generated: it answers a Cancel as
# soon as its engine stops (within a token), so this only bounds a worker that went silent.
_LAST_WORD_S = 5.0
_TRAINING_TICKET = 1 << 63  # set in a fine-tuning job's ticket (others are time_ns counts)
_TRAINING_LAST_WORD_S = 120.0  # a fine-tuning job ends the step under way first
_RELIST_POLL_S = 60.0  # the routed models are compared with the listing at least this often
_BURST = 64  # worker chunks joined into one for the client, at most
_BURST_BYTES = 1024 * 1024  # ... and at most this many bytes (well under a frame)
_PENALTY_S = 10.0  # a worker that failed a request is passed over this long
_MIN_ATTEMPT_S = 1.0  # a request with less time left than this is not tried again
_SEAL_WAIT_S = 30.0  # how long a routed request waits for the client's wrapped key
_CLIENT_CERTS = 4096  # certificates remembered as sent, per client
_RETRY_CODES = frozenset({"engine_error", "upstream_error", "worker_lost"})
_ROUTES = 3  # a request refused for capacity by this many workers in turn fails (503)
_TRAINING_IDLE_S = 600.0  # a fine-tuning job's stream may be silent this long (loading a model)


class _Retry(Exception):
    """The worker refused the request for capacity, or failed before the app saw anything
    of it: route it again (``error`` is what the app is told if no attempt is left)."""

    def __init__(self, error: RequestError, *, capacity: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.capacity = capacity


@dataclass(eq=False, slots=True)
class _Waiter:
    """A request waiting in the queue for a slot on a worker not in ``exclude``."""

    slot: asyncio.Future[_Worker]
    exclude: frozenset[str]
    req: Request


def route_key(model: str, feature: str) -> str:
    """What a request is routed by: its model, or ``feature@model`` when it needs a
    feature (a fine-tuning job, an adapter) that only some of the model's workers offer.
    Each worker is indexed and queued under its models and each of its features' keys."""
    return f"{feature}@{model}" if feature else model


@dataclass(slots=True)
class _Worker:
    """A connected worker as routing sees it (a :class:`~cocoon.routing.Candidate`)."""

    peer: Peer
    order: int
    models: tuple[str, ...] = ()
    capacity: int = 0
    engine: str = ""
    active: int = 0
    served: int = 0
    coefficient: int = 1000  # its price coefficient (1000 = 1.0x)
    measured: Measured = field(default_factory=Measured)
    attestation: dict[str, Any] = field(default_factory=dict)
    certificate: bytes = b""  # as announced and checked: what clients seal to
    features: tuple[str, ...] = ()  # as announced: training, LoRA adapters
    keys: tuple[str, ...] = ()  # what it is routed by: its models, and feature:model

    @property
    def node_id(self) -> str:
        return self.peer.hello.node_id

    @property
    def worker_id(self) -> str:
        return self.peer.hello.node_id


@dataclass(slots=True)
class _Relay:
    """The state of one relayed request; it lives as long as the request's task."""

    client: Peer
    req: Request
    worker: _Worker
    key: tuple[int, int]  # (id(client), req_id): the task's entry in ProxyNode._relays
    bill_id: str
    ticket: int = 0  # names the reservation to the worker (0: unbilled)
    stream: OutgoingStream | None = None  # the worker's stream, once opened
    report: End | Error | None = None  # the worker's final word: its usage
    settled: bool = False  # nothing (more) to charge or release
    cap: int = 0  # the generation cap granted to the worker (0: none)
    deadline: float = 0.0  # loop time by which the request must end (0: the config's)
    retried: bool = False  # failed before the app saw anything; routed again, not billed
    relayed: int = 0  # events (a whole response: pieces) the client was sent
    relayed_bytes: int = 0
    keys: dict[str, bytes] = field(default_factory=dict)  # sealed: wrapped keys by worker
    wrapped: asyncio.Future[bytes] | None = None  # a wrapped key asked for with a Route
    reserving: asyncio.Future[bool] | None = None  # its reservation (True: made)
    first: float = 0.0  # loop time of its first chunk
    outcome: str = ""  # how it ended for the requester (ok or the code); "" if routed again
    cost: int | None = None  # nanoTON charged for it, once settled

    @property
    def training(self) -> bool:
        """A fine-tuning job: billed per trained token at the training multiplier."""
        return self.req.requires == FEATURE_TRAIN

    def relayed_usage(self) -> Usage:
        """What the app received of a request the worker never reported on (it was lost,
        or went silent when told to stop), estimated the way engines estimate: a quarter of
        the request's bytes for the prompt, and a token per streamed event (a quarter of the
        bytes of a whole response), never above the granted cap."""
        completion = self.relayed if self.req.stream else self.relayed_bytes // 4
        if self.cap:
            completion = min(completion, self.cap)
        return Usage((self.req.seal_size or len(self.req.body)) // 4, completion)


@dataclass(slots=True)
class ProxyStats:
    requests: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    cancelled: int = 0
    timeouts: int = 0
    worker_lost: int = 0
    rerouted: int = 0  # requests a worker refused for capacity, routed again
    failovers: int = 0  # requests a worker failed before their first chunk, routed again
    sealed: int = 0  # requests that came sealed (bodies this proxy cannot read)
    seal_routes: int = 0  # sealed requests routed to a worker they were not sealed to
    queued: int = 0  # requests that waited for a slot
    queue_full: int = 0  # refused with 429: the model's queue was full
    queue_timeouts: int = 0  # waited queue_timeout_s without a slot: 503
    queue_wait_s: float = 0.0  # total time requests waited
    queue_wait_max_s: float = 0.0
    # started on a worker while their reservation committed, which then found the client
    # unable to pay: stopped before the app saw anything, the worker's start unpaid
    unpaid_starts: int = 0
    chunks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ProxyNode:
    def __init__(self, config: ProxyConfig, listener: Listener | None = None) -> None:
        self.config = config
        self._registry = registry_lists(config.chain)
        self.attestation: dict[str, Any] = {"tier": "none (plain TCP)"}
        self._channels_of = build_channels(config.attestation, role="proxy",
                                           lists=self._registry)
        if listener is None:
            listener, self.attestation = self._channels_of.listener, self._channels_of.own
        self._listener = listener
        self._sealing: dict[tuple[int, int], _Relay] = {}  # relays waiting for a key
        # the certificates (SHA-256 hex) each client was sent: a receipt leaves them out
        self._client_certs: dict[Peer, set[str]] = {}
        self.billing = Billing(config.billing) if config.billing.enabled else None
        if self.billing is not None and self._registry is not None:
            self._registry.on_params = self.billing.adopt_registry_params
        self.workers: dict[Peer, _Worker] = {}
        self.clients: set[Peer] = set()
        self._accounts: dict[Peer, str] = {}  # client peer -> ledger account
        self._binding: set[Peer] = set()  # clients whose binding waits for the chain
        self._known: dict[str, float] = {}
        self._order = 0
        # Reservation tickets: unique across runs too (a run issues far fewer than one per
        # nanosecond), so a report to the next run never names another run's request.
        self._tickets = itertools.count(time.time_ns())
        self._relays: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._queue: FairQueue[_Waiter] = FairQueue(config.queue_limit)
        # the peers owed a statement at the next push: peer -> (account, kind)
        self._outbox: dict[Peer, tuple[str, str]] = {}
        self._watchdog = Watchdog()
        self._penalties: dict[str, float] = {}  # worker id -> loop time its penalty ends
        self._index: dict[str, ModelIndex] = {}  # model -> its workers, by coefficient
        # what a worker that declares no coefficient asks
        self._default_coefficient = config.billing.worker_coefficient
        self._max_coefficient = config.billing.max_worker_coefficient
        self._rng = random.Random()
        self.stats = ProxyStats()
        self.metrics = NodeMetrics(self._families, known=lambda m: m in self._index)
        self.recent = RecentRequests()  # for the dashboard
        self._started = time.monotonic()
        self._catalog_dirty = False
        self.port = 0
        self.http = HttpServer(self._http_app(), config.http, "proxy.http")
        self._tasks: asyncio.TaskGroup | None = None
        self.listing: dict[str, Any] = {"state": "not asked"}  # in the registry (/stats)
        self._workers_moved = asyncio.Event()  # a worker came, went or changed its models

    async def run(self, stop: asyncio.Event, on_ready: Any = None) -> None:
        host, port = parse_hostport(self.config.listen, "proxy.listen")
        # The chain first: no peer is judged before the registry's allow-lists are read.
        chain = None
        if self.billing is not None and self.config.chain.enabled:
            chain = await self._open_payments(self.billing)
        registry = await follow_registry(self.config.chain, self._registry, chain)
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            server = await self._listener.listen(host, port, self._on_connect)
            self.port = server.sockets[0].getsockname()[1]
            await self.http.start()
            background = [tg.create_task(self._watchdog.run()),
                          tg.create_task(self._catalog_pusher())]
            if self.billing is not None:
                background.append(tg.create_task(self.billing.commit_forever()))
                background.append(tg.create_task(self._statement_pusher()))
                if self.billing.unreported:
                    background.append(tg.create_task(self._release_unreported_later()))
                if self.billing.payments is not None:
                    background.append(tg.create_task(self.billing.payments.watch_forever()))
            if registry is not None:
                background.append(tg.create_task(registry))
            if (self.billing is not None and self.billing.payments is not None
                    and self.config.register and self.config.chain.registry
                    and self.config.chain.contract):
                background.append(tg.create_task(self._list_in_registry(
                    self.billing.payments.chain)))
            log.info("proxy listening on %s:%s", host, self.port)
            if on_ready is not None:
                on_ready(self)
            try:
                await stop.wait()
            finally:
                server.close()
                for peer in list(self.workers) + list(self.clients):
                    peer.close("proxy shutting down")
                # The relays cut off by the closing connections settle what they relayed:
                # let them, before the ledger closes.
                relays = list(self._relays.values())
                if relays:
                    await asyncio.wait(relays, timeout=_LAST_WORD_S + 1.0)
                for task in background:
                    task.cancel()
                await self.http.stop()
                if self.billing is not None:
                    if self.billing.payments is not None:
                        await self.billing.payments.chain.aclose()
                    self.billing.close()

    async def _list_in_registry(self, nc: NodeChain) -> None:
        """List this proxy in the registry through its stake (``proxy.register``), with the
        endpoint others dial and the models it routes; list it again when those change, at
        most once per ``proxy.relist_interval_s`` (each listing is a transaction). A refusal
        is logged, shown in /stats and tried again after that interval; the proxy goes on
        serving whoever is configured to dial it."""
        cfg = self.config
        listed: tuple[str, ...] | None = None  # the models the listing names
        while True:
            try:
                endpoint = cfg.advertised_endpoint(self.port)
                models = tuple(sorted(self._known_models()))
                if listed is None:  # at start: keep the models a listing of ours names
                    mine = next((p for p in (await read_registry(
                        nc.chain, cfg.chain.registry)).proxies
                        if p.stake_contract == raw_address(cfg.chain.contract)), None)
                    if (mine is not None and mine.info is not None
                            and mine.info.client_endpoint == endpoint and not models):
                        models = mine.info.models
                info = ProxyInfo(endpoint, endpoint, models)
                listing, sent = await ensure_listed(nc.chain, cfg.chain.registry,
                                                    cfg.chain.contract, info, sender=nc.sender)
                listed = models
                self.listing = {"state": "listed", "endpoint": endpoint,
                                "models": list(models), "version": listing.version,
                                "stake_nanoton": listing.stake}
                log.info("%s in the registry %s as %s, routing %s (stake %s)",
                         "listed" if sent else "already listed", cfg.chain.registry, endpoint,
                         ", ".join(models) or "any model", format_ton(listing.stake))
            except (CocoonError, OSError) as exc:
                self.listing = {"state": "not listed", "error": str(exc)}
                log.warning("listing this proxy in the registry %s failed: %s (clients and "
                            "workers that find proxies there will not find it)%s",
                            cfg.chain.registry, exc,
                            f"; trying again in {cfg.relist_interval_s:g} s"
                            if cfg.relist_interval_s else "")
                listed = listed if listed is not None else ()
            if not cfg.relist_interval_s:
                return
            await asyncio.sleep(cfg.relist_interval_s)
            while (self.listing["state"] == "listed"
                   and tuple(sorted(self._known_models())) == listed):
                self._workers_moved.clear()
                with contextlib.suppress(TimeoutError):  # a model known falls out in time
                    await asyncio.wait_for(self._workers_moved.wait(), _RELIST_POLL_S)

    async def _open_payments(self, billing: Billing) -> Any:
        """Connect to the chain and put the ledger's accounts on its channels. A chain that
        cannot be reached yet is waited for, with the outage backoff (nothing is served
        before: no peer is judged without the registry's allow-lists)."""
        health = ChainHealth()
        while True:
            try:
                chain = await NodeChain.open(self.config.chain)
                break
            except OUTAGE as exc:
                delay = health.failed(exc)
                log.warning("the chain at %s is unreachable (try %d); waiting %.1f s before "
                            "the next: %s", self.config.chain.url or self.config.chain.backend,
                            health.retries, delay, exc)
                await asyncio.sleep(delay)
        if health.down:
            log.warning("the chain is reachable: starting")
        billing.payments = ProxyPayments(chain, billing.key, billing.run, billing.ledger,
                                         self.config.billing.max_unsigned,
                                         self.config.chain.contract,
                                         max_unsigned_fraction=(
                                             self.config.billing.max_unsigned_fraction),
                                         redeem_threshold=self.config.billing.redeem_threshold,
                                         recheck_s=self.config.billing.channel_recheck_s)
        if self.config.chain.registry:
            params = await chain.chain.registry_params(self.config.chain.registry)
            billing.payments.min_close_delay = params.client_close_delay
        log.info("payments on chain (%s): wallet %s, stake contract %s",
                 self.config.chain.backend, chain.wallet, self.config.chain.contract or "-")
        return chain.chain

    # --- connections ------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, Connection(role="proxy", node_id=self.config.node_id))
        try:
            hello = await peer.handshake()
        except AttestationError as exc:
            log.warning("peer %s rejected: rule=%s: %s", peer.address, exc.rule, exc)
            peer.close()
            return
        except (ProtocolError, TransportError) as exc:
            log.warning("handshake with %s failed: %s", peer.address, exc)
            peer.close()
            return
        claims = peer.extra("peer_claims")
        if claims is not None and claims.role != hello.role:
            log.warning("peer %s rejected: rule=role: certificate says %r, hello says %r",
                        peer.address, claims.role, hello.role)
            peer.close()
            return
        if hello.role == "worker":
            self._order += 1
            worker = _Worker(peer, self._order,
                             attestation=describe_evidence(peer.extra("verified_evidence")))
            self.workers[peer] = worker
            log.info("worker %s connected from %s", hello.node_id, peer.address)
            try:
                await peer.run(self)
            finally:
                del self.workers[peer]
                self._reindex()
                self._fail_unserved_waiters()
                self._catalog_dirty = True
                self._workers_moved.set()
                log.info("worker %s disconnected", hello.node_id)
        elif hello.role == "client":
            self.clients.add(peer)
            self._accounts[peer] = client_account(
                claims.public_key if claims is not None else None, hello.node_id)
            peer.send(self._catalog())
            self._send_roster(peer, self._roster())
            try:
                await peer.run(self)
            finally:
                self.clients.discard(peer)
                self._client_certs.pop(peer, None)
                self._accounts.pop(peer, None)
        else:
            log.warning("peer %s claims unknown role %r; closing", peer.address, hello.role)
            peer.close()

    async def on_message(self, peer: Peer, msg: Message) -> None:
        worker = self.workers.get(peer)
        if worker is not None:
            if isinstance(msg, Announce):
                worker.models, worker.capacity, worker.engine = (
                    msg.models, msg.max_concurrent, msg.engine)
                worker.features = msg.features
                worker.keys = msg.models + tuple(route_key(m, f) for f in msg.features
                                                 for m in msg.models)
                worker.coefficient = msg.coefficient or self._default_coefficient
                worker.certificate = self._checked_certificate(worker, msg.certificate)
                if msg.certificate and not worker.certificate:
                    worker.capacity = 0
                elif worker.coefficient > self._max_coefficient:
                    log.warning("worker %s asks a price coefficient of %d, above "
                                "billing.max_worker_coefficient (%d): not routed to",
                                worker.node_id, worker.coefficient, self._max_coefficient)
                    worker.capacity = 0
                self._reindex()
                now = time.monotonic()
                for m in msg.models:
                    self._known[m] = now
                self._catalog_dirty = True
                self._workers_moved.set()
                log.info("worker %s serves %s (capacity %d, engine %s)", worker.node_id,
                         ", ".join(msg.models), msg.max_concurrent, msg.engine)
                self._dispatch()  # new slots: the queue moves
                payments = self.billing.payments if self.billing is not None else None
                if msg.channel and payments is not None:
                    try:
                        await payments.bind_worker(worker_account(worker.node_id), msg.channel)
                        log.info("worker %s is paid on channel %s", worker.node_id,
                                 msg.channel)
                        self._post(peer, worker_account(worker.node_id),
                                                     "worker")
                    except CocoonError as exc:
                        log.warning("worker %s channel %s refused: %s", worker.node_id,
                                    msg.channel, exc)
                return
            if isinstance(msg, JobReports):
                await self._on_job_reports(worker, msg)
                return
        elif peer in self.clients:
            if isinstance(msg, Request):
                self._start_relay(peer, msg)
                return
            if isinstance(msg, Sealed):
                relay = self._sealing.get((id(peer), msg.req_id))
                if (relay is not None and relay.wrapped is not None
                        and not relay.wrapped.done() and msg.worker == relay.worker.node_id):
                    relay.wrapped.set_result(msg.payload)
                return  # else for a worker the request no longer goes to: dropped
            if isinstance(msg, Cancel):
                task = self._relays.get((id(peer), msg.req_id))
                if task is not None:
                    task.cancel()
                return
            if isinstance(msg, Payment):
                await self._on_payment(peer, msg)
                return
        raise ProtocolError(f"{type(msg).__name__} is not allowed from a "
                            f"{peer.hello.role}")

    def _checked_certificate(self, worker: _Worker, der: bytes) -> bytes:
        """The certificate a worker announced if it passes this proxy's policy and names
        that worker's role (empty otherwise: one that fails is given no requests; one that
        announced none gets only clear ones, as clients refuse to seal to it)."""
        if not der:
            log.info("worker %s announced no certificate: sealed requests to it fail",
                     worker.node_id)
            return b""
        try:
            self._channels_of.check(der, "worker")
        except AttestationError as exc:
            log.warning("worker %s announced a certificate that fails: rule=%s: %s; not "
                        "routed to", worker.node_id, exc.rule, exc)
            return b""
        return der

    def _post(self, peer: Peer, account: str, kind: str) -> None:
        """Have ``peer`` sent the newest statement of ``account`` (``client``/``worker``)
        at the next push: :meth:`_statement_pusher` builds and sends one per peer every
        ``billing.statement_interval_s``, so under load a client signs (and a worker stores)
        a few statements a second, not one per request."""
        if not peer.closed:
            self._outbox[peer] = (account, kind)

    async def _statement_pusher(self) -> None:
        assert self.billing is not None
        interval = self.config.billing.statement_interval_s
        while True:
            await asyncio.sleep(interval)
            if self._outbox:
                out, self._outbox = self._outbox, {}
                for peer, (account, kind) in out.items():
                    if peer.closed:
                        continue
                    try:
                        statement = await self.billing.statement(account, kind)
                    except CocoonError as exc:  # the next settlement posts it again
                        log.warning("statement for %s not sent: %s", account, exc)
                        continue
                    if statement is not None and not peer.closed:
                        peer.send(statement)

    async def _on_payment(self, peer: Peer, msg: Payment) -> None:
        """A client's signed charge voucher: the first binds the connection to its channel.
        A bad one is logged and dropped (the client's unsigned debt then stops it)."""
        payments = self.billing.payments if self.billing is not None else None
        if payments is None:
            log.debug("payment from %s ignored: no chain configured", peer.hello.node_id)
            return
        account = self._accounts.get(peer, "")
        try:
            if account != channel_account(msg.channel):
                await self._bind(peer, msg, payments)
            else:
                await payments.accept(account, msg.voucher)
        except OUTAGE as exc:
            # The chain cannot be reached to check the channel: bind it when it can.
            payments.note_outage(exc, f"binding the channel of client {peer.hello.node_id}")
            if peer not in self._binding:
                self._binding.add(peer)
                peer.spawn(self._bind_when_reachable(peer, msg, payments), "bind-later")
        except CocoonError as exc:
            log.warning("payment from client %s refused: %s", peer.hello.node_id, exc)

    async def _bind(self, peer: Peer, msg: Payment, payments: ProxyPayments) -> None:
        self._accounts[peer] = await payments.bind_client(msg.channel, msg.voucher)
        log.info("client %s pays through channel %s", peer.hello.node_id, msg.channel)
        self._post(peer, self._accounts[peer], "client")

    async def _bind_when_reachable(self, peer: Peer, msg: Payment,
                                   payments: ProxyPayments) -> None:
        """Retry a client's binding that met a chain outage, on the outage's backoff, until
        it binds, is refused, or the client goes away (it is served nothing meanwhile)."""
        try:
            while not peer.closed:
                await asyncio.sleep(payments.health.wait_s())
                if not payments.health.due():
                    continue
                try:
                    await self._bind(peer, msg, payments)
                except OUTAGE as exc:
                    payments.note_outage(exc, f"binding the channel of client "
                                              f"{peer.hello.node_id}")
                    continue
                except CocoonError as exc:
                    log.warning("payment from client %s refused: %s", peer.hello.node_id, exc)
                payments.note_reached()
                return
        finally:
            self._binding.discard(peer)

    # --- routing and relay ------------------------------------------------------------

    def _known_models(self) -> list[str]:
        cutoff = time.monotonic() - _KNOWN_MODEL_TTL
        return [m for m, t in self._known.items() if t >= cutoff]

    def _start_relay(self, client: Peer, req: Request) -> None:
        self.stats.requests += 1
        try:
            keys = self._sealed_to(req)
            others = self._not_sealed_to(req, keys)
            # Waiting requests go first: a new one only takes a slot nobody waits for.
            worker = (None if self._queue.depth(route_key(req.model, req.requires))
                      else self._take_slot(req, others))
        except RequestError as exc:  # no such model, or a malformed sealed request
            self.stats.rejected += 1
            self.metrics.request(req.endpoint, req.model, exc.code, 0.0)
            client.finish(Error.of(req.req_id, exc))
            return
        key = (id(client), req.req_id)
        self._relays[key] = client.spawn(self._route(client, req, key, worker, keys),
                                         f"relay-{req.req_id}")

    def _sealed_to(self, req: Request) -> dict[str, bytes]:
        """The wrapped keys of a sealed request, by worker (BadRequest if malformed)."""
        if not req.seal_size:
            return {}
        self.stats.sealed += 1
        if len(req.body) != req.seal_size:
            raise BadRequest(f"the sealed body is {len(req.body)} bytes, not the "
                             f"{req.seal_size} announced")
        try:
            return decode_keys(req.seal_keys)
        except ProtocolError as exc:
            raise BadRequest(f"the sealed request's keys: {exc}") from None

    def _not_sealed_to(self, req: Request, keys: dict[str, bytes]) -> frozenset[str]:
        """The connected workers of the request's model it is not sealed to: passed over
        while one it is sealed to can take it (none, for a request in the clear or one
        sealed to none, which then takes a Route)."""
        if not keys:
            return frozenset()
        key = route_key(req.model, req.requires)
        others = frozenset(w.node_id for w in self.workers.values()
                           if key in w.keys and w.node_id not in keys)
        return others if self._serves(key, others) else frozenset()

    def _take_slot(self, req: Request, exclude: frozenset[str] = frozenset()) -> _Worker | None:
        """Take a slot on the least-loaded worker serving ``model`` (it counts as busy from
        now on), passing over workers that recently failed a request while another has a
        free slot; None when every slot is busy (the request may wait). ModelNotFound for a
        model nobody serves, NoWorkerAvailable when none is connected for a known one."""
        if self._penalties:
            penalized = self._penalized()
            if penalized - exclude:
                try:
                    worker = self._pick(req, exclude | penalized)
                except RequestError:
                    worker = None
                if worker is not None:
                    return worker
        return self._pick(req, exclude)

    def _penalized(self) -> frozenset[str]:
        now = asyncio.get_running_loop().time()
        for worker_id in [w for w, until in self._penalties.items() if until <= now]:
            del self._penalties[worker_id]
        return frozenset(self._penalties)

    def _reindex(self) -> None:
        """Rebuild the per-model indexes (a worker joined, left or announced anew); each
        model's measurements of its workers together carry over."""
        old, self._index = self._index, {}
        for w in self.workers.values():
            for m in w.keys:
                index = self._index.get(m)
                if index is None:
                    index = self._index[m] = ModelIndex()
                    if m in old:
                        index.typical = old[m].typical
                index.add(w)

    def _pick(self, req: Request, exclude: frozenset[str]) -> _Worker | None:
        """Routing's choice (:mod:`cocoon.routing.select`) among the model's workers within
        the request's price cap, its slot taken; None when all are busy. ModelNotFound for a
        model nobody serves or served lately, NoWorkerAvailable when none is connected for a
        known one, or none asks at most the request's ``max_coefficient``."""
        model = route_key(req.model, req.requires)
        index = self._index.get(model)
        if index is None:
            raise self._unserved(model)
        within = index.within(req.max_coefficient)
        if not within:
            raise price_cap_error(model, req.max_coefficient, index.cheapest())
        max_tokens = req.max_tokens or (self.billing.config.default_max_tokens
                                        if self.billing is not None else 0)
        chosen = pick(within, max_tokens=max_tokens, typical=index.typical, exclude=exclude,
                      rng=self._rng)
        if chosen is None:  # all busy, or none takes requests (draining, too dear)
            if not self._serves(model):
                raise self._unserved(model)
            return None
        assert isinstance(chosen, _Worker)
        chosen.active += 1
        return chosen

    def _unserved(self, key: str) -> RequestError:
        """No connected worker takes requests for ``key`` (a model, or a feature of one:
        see ``route_key``; see ``unserved_error``)."""
        feature, _, model = key.rpartition("@")
        if feature:
            what = {FEATURE_TRAIN: "fine-tunes", FEATURE_LORA: "applies LoRA adapters to"
                    }.get(feature, f"offers {feature} for")
            if model in self._known_models():
                return NoWorkerAvailable(f"no connected worker {what} '{model}'")
            return ModelNotFound(f"The model '{model}' does not exist or no worker serves "
                                 "it.", param="model")
        return unserved_error(key, self._known_models())

    def _serves(self, key: str, exclude: frozenset[str] = frozenset()) -> bool:
        return any(key in w.keys and w.capacity and w.node_id not in exclude
                   for w in self.workers.values())

    def _fail_unserved_waiters(self) -> None:
        """Requests waiting for a model no connected worker serves any more: 503 now."""
        for model in self._queue.models():
            if self._serves(model):
                continue
            while (waiter := self._queue.pop(model)) is not None:
                if not waiter.slot.done():
                    waiter.slot.set_exception(NoWorkerAvailable(
                        f"no worker is currently connected for model '{model}'"))

    def _free_slot(self, worker: _Worker) -> None:
        worker.active -= 1
        self._dispatch(worker.keys)

    def _dispatch(self, models: tuple[str, ...] | None = None) -> None:
        """Give free slots to waiting requests, in the queue's fair order."""
        for model in self._queue.models() if models is None else models:
            while (waiter := self._queue.peek(model)) is not None:
                if waiter.slot.done():  # its requester went away or gave up
                    self._queue.remove(waiter)
                    continue
                try:
                    worker = self._take_slot(waiter.req, waiter.exclude)
                except RequestError as exc:
                    if exc.param == "max_coefficient":  # no worker is cheap enough now
                        self._queue.pop(model)
                        waiter.slot.set_exception(exc)
                        continue
                    break  # nobody serves it now: its waiters are failed on disconnect
                if worker is None:
                    # Strict order: the head waits for a slot it may take (only a request a
                    # worker refused excludes any), and the others wait behind it.
                    break
                taken = self._queue.pop(model)  # the same one; pop passes the turn on
                assert taken is waiter
                waiter.slot.set_result(worker)

    async def _wait_for_slot(self, client: Peer, req: Request,
                             exclude: frozenset[str] = frozenset()) -> _Worker:
        """Queue the request until :meth:`_dispatch` gives it a slot (on a worker not in
        ``exclude``); QueueFull when the model's queue is full, NoWorkerAvailable when no
        slot frees within ``proxy.queue_timeout_s`` (or the request's own timeout)."""
        loop = asyncio.get_running_loop()
        limit = self.config.queue_timeout_s
        if req.timeout_ms:
            limit = min(limit, req.timeout_ms / 1000.0)
        self.stats.queued += 1
        started = loop.time()
        try:
            async with asyncio.timeout(limit):
                return await self._queued(client, req, exclude)
        except TimeoutError:
            self.stats.queue_timeouts += 1
            raise NoWorkerAvailable(
                f"every worker serving '{req.model}' stayed busy for {limit:g}s; retry "
                "shortly") from None
        finally:
            waited = loop.time() - started
            self.stats.queue_wait_s += waited
            self.stats.queue_wait_max_s = max(self.stats.queue_wait_max_s, waited)

    async def _queued(self, client: Peer, req: Request, exclude: frozenset[str]) -> _Worker:
        """Wait in the queue for the worker whose slot :meth:`_dispatch` gives."""
        waiter = _Waiter(asyncio.get_running_loop().create_future(), exclude, req)
        self._queue.push(route_key(req.model, req.requires), id(client), waiter)
        got = False
        try:
            worker = await waiter.slot
            got = True
            return worker
        finally:
            self._queue.remove(waiter)
            slot = waiter.slot
            if (not got and slot.done() and not slot.cancelled()
                    and slot.exception() is None):
                self._free_slot(slot.result())  # a slot came as we gave up: pass it on

    async def _route(self, client: Peer, req: Request, key: tuple[int, int],
                     worker: _Worker | None, keys: dict[str, bytes]) -> None:
        """Wait for a slot if the request has none, then relay it. A worker that refuses it
        for capacity, or fails before the app saw anything, gets it no more: it is routed
        again (at most ``_ROUTES`` attempts, while the request's deadline leaves time)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self._timeout_of(req)
        tried: frozenset[str] = frozenset()
        last: _Retry | None = None
        relay: _Relay | None = None
        outcome = "cancelled"
        relaying = False  # the relay answers the requester itself, whatever happens
        try:
            for _ in range(_ROUTES):
                if last is not None and (deadline - loop.time() < _MIN_ATTEMPT_S
                                         or not self._serves(
                                             route_key(req.model, req.requires), tried)):
                    break  # no time left, or nobody left to try
                if worker is None:
                    # those it is sealed to first, while one of them is connected
                    others = self._not_sealed_to(req, {k: v for k, v in keys.items()
                                                       if k not in tried})
                    worker = self._take_slot(req, tried | others)
                    if worker is None:
                        worker = await self._wait_for_slot(client, req, tried | others)
                ticket = next(self._tickets) if self.billing is not None else 0
                if ticket and req.requires == FEATURE_TRAIN:
                    ticket |= _TRAINING_TICKET  # a report after a restart is priced so too
                relay = _Relay(client, req, worker, key, self._bill_id(ticket), ticket,
                               settled=self.billing is None, deadline=deadline, keys=keys)
                relaying = True
                try:
                    await self._relay(relay)
                    return
                except _Retry as retry:
                    relaying = False
                    last = retry
                    if retry.capacity:
                        self.stats.rerouted += 1
                    else:
                        self.stats.failovers += 1
                        self._penalties[worker.node_id] = loop.time() + _PENALTY_S
                        log.warning("worker %s failed request %s before its first chunk "
                                    "(%s); routing it again", worker.node_id, req.req_id,
                                    retry.error.code)
                    tried |= {worker.node_id}
                    worker = None
            assert last is not None
            if last.capacity:
                raise NoWorkerAvailable(f"{len(tried)} worker(s) in turn refused the request "
                                        "for capacity; retry shortly")
            raise last.error
        except RequestError as exc:  # waited in vain, the queue is full, or every try failed
            if isinstance(exc, QueueFull):
                self.stats.queue_full += 1
            if last is not None and exc is last.error:  # counted as what reached the app
                if isinstance(exc, WorkerLost):
                    self.stats.worker_lost += 1
                elif isinstance(exc, RequestTimeout):
                    self.stats.timeouts += 1
                else:
                    self.stats.failed += 1
            else:
                self.stats.rejected += 1
            outcome = exc.code
            client.finish(Error.of(req.req_id, exc))
        except asyncio.CancelledError as exc:
            if not relaying:  # the requester went away while it waited for a slot
                self.stats.cancelled += 1
                client.finish(Error.of(req.req_id, as_request_error(exc, where="proxy")))
            raise
        finally:
            self._relays.pop(key, None)
            self._meter(req, start, relay, outcome)

    def _meter(self, req: Request, start: float, relay: _Relay | None, outcome: str) -> None:
        """A routed request ended: into /metrics (the last relay's outcome, if it ran to
        the end, else what the routing ended with)."""
        now = asyncio.get_running_loop().time()
        report = relay.report if relay is not None else None
        end = report if type(report) is End else None
        if relay is not None and relay.outcome:
            outcome = relay.outcome
        ttft_s = relay.first - start if relay is not None and relay.first else None
        prompt, completion = (end.prompt_tokens, end.completion_tokens) if end else (0, 0)
        self.metrics.request(req.endpoint, req.model, outcome, now - start, ttft_s=ttft_s,
                             prompt_tokens=prompt, completion_tokens=completion)
        self.recent.add(RecentRequest(
            time.time(), self.metrics.model(req.model),
            relay.worker.node_id if relay is not None else "", outcome,
            None if ttft_s is None else round(ttft_s * 1000, 1),
            round((now - start) * 1000, 1), prompt, completion,
            relay.relayed_bytes if relay is not None else 0,
            relay.cost if relay is not None else None))

    def _timeout_of(self, req: Request) -> float:
        """The request's deadline, from now: the proxy's limit (a fine-tuning job's:
        ``proxy.training_timeout_s``), or the requester's if less."""
        timeout = (self.config.training_timeout_s if req.requires == FEATURE_TRAIN
                   else self.config.request_timeout_s)
        if req.timeout_ms:
            timeout = min(timeout, req.timeout_ms / 1000.0)
        return timeout

    async def _relay(self, relay: _Relay) -> None:
        """One request on the worker whose slot it holds, in three steps: reserve its worst
        case (while the worker starts, when the client's funds are known to cover it), pump
        the worker's stream to the client, then settle what the worker reported (or release
        the reservation). _Retry when the worker refused it for capacity or
        failed before the app saw anything (the reservation is then released)."""
        client, rid, stats = relay.client, relay.req.req_id, self.stats
        relay.worker.served += 1
        try:
            if relay.req.seal_size and relay.worker.node_id not in relay.keys:
                # a worker the client did not seal to: it wraps the key for this one while
                # the reservation is made
                self.stats.seal_routes += 1
                relay.wrapped = asyncio.get_running_loop().create_future()
                self._sealing[relay.key] = relay
                client.send(Route(rid, relay.worker.node_id, relay.worker.certificate))
                self._has_certificate(client, relay.worker.certificate)
            billing = self.billing
            if billing is None:
                relay.cap = relay.req.max_tokens
                await self._pump(relay)
                return
            relay.cap = effective_max_tokens(relay.req.max_tokens,
                                             default=billing.config.default_max_tokens)
            reserving = relay.reserving = asyncio.ensure_future(
                self._reserve(billing, relay))
            if billing.likely_covered(self._accounts.get(client, "?"),
                                      self._reservation_amount(billing, relay)):
                # the worker starts while the reservation commits; nothing of its answer
                # goes on before it has (_pump)
                await self._pump(relay, reserving)
            elif await reserving:
                await self._pump(relay)
        except _Retry:
            relay.retried = True
            raise
        except asyncio.CancelledError as exc:
            stats.cancelled += 1
            relay.outcome = "cancelled"
            client.finish(Error.of(rid, as_request_error(exc, where="proxy")))
            await self._hear_last_word(relay, "requester went away")
            raise
        except TransportError:
            stats.cancelled += 1  # the client connection went away while we forwarded
            relay.outcome = "cancelled"
            await self._hear_last_word(relay, "requester went away")
        except CocoonError as exc:
            stats.failed += 1
            log.warning("relay %s failed: %s", rid, exc)
            err = as_request_error(exc, where="proxy relay failed")
            relay.outcome = err.code
            client.finish(Error.of(rid, err))
        finally:
            if relay.wrapped is not None:
                self._sealing.pop(relay.key, None)
            self._free_slot(relay.worker)
            await self._settle_or_release(relay)
            if relay.stream is not None:
                self._watchdog.forget(relay.stream)
                relay.stream.cancel("requester went away")

    @staticmethod
    def _reservation_amount(billing: Billing, relay: _Relay) -> int:
        req = relay.req
        return billing.reservation_amount(relay.cap, req.seal_size or len(req.body),
                                          relay.worker.coefficient, training=relay.training)

    async def _reserve(self, billing: Billing, relay: _Relay) -> bool:
        """Reserve funds for the request's worst case (generation capped at ``relay.cap``).
        False when the client cannot pay (it has been answered 402)."""
        req = relay.req
        try:
            await billing.reserve(relay.bill_id, self._accounts.get(relay.client, "?"),
                                  worker_account(relay.worker.node_id), relay.cap,
                                  req.seal_size or len(req.body), relay.worker.coefficient,
                                  training=relay.training)
        except PaymentRequired as exc:
            self.stats.rejected += 1
            relay.outcome = exc.code
            relay.settled = True
            relay.client.finish(Error.of(req.req_id, exc))
            if relay.stream is not None:  # started meanwhile: its answer ends _pump
                relay.stream.cancel("the client cannot pay")
            return False
        return True

    async def _pump(self, relay: _Relay,
                    reserving: asyncio.Future[bool] | None = None) -> None:
        """Forward the request to the worker and its stream back to the client, until the
        worker's End or Error, a timeout, or the worker's connection is lost. With
        ``reserving`` (the request's reservation, still committing), nothing the worker
        sends is acted on before it has; a client that turns out unable to pay has been
        answered 402, and the worker is told to stop."""
        client, req, worker, stats = relay.client, relay.req, relay.worker, self.stats
        rid = req.req_id
        keys = b""
        if req.seal_size:  # the sealed body goes with this worker's wrapped key alone
            wrapped = (relay.keys.get(worker.node_id) if relay.wrapped is None
                       else await self._wrapped_key(relay))
            assert wrapped is not None
            keys = encode_keys({worker.node_id: wrapped})
        if reserving is not None and reserving.done() and not reserving.result():
            return  # the client cannot pay, and has been told
        timeout = (relay.deadline - asyncio.get_running_loop().time() if relay.deadline
                   else self._timeout_of(req))
        try:
            stream = relay.stream = worker.peer.open_stream(
                lambda wid: replace(req, req_id=wid, timeout_ms=int(timeout * 950),
                                    max_tokens=relay.cap, ticket=relay.ticket, seal_keys=keys))
        except TransportError:  # gone before it got the request: another may serve it
            worker.measured.failed()
            raise _Retry(WorkerLost(f"worker {worker.node_id} disconnected"),
                         capacity=False) from None
        # a fine-tuning job is silent while its worker loads the model and between steps
        self._watchdog.watch(stream, timeout, self.config.idle_timeout_s
                             if req.requires != FEATURE_TRAIN
                             else max(self.config.idle_timeout_s, _TRAINING_IDLE_S))
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = 0.0  # loop time of the first chunk
        while True:
            ev = await stream.next()
            if reserving is not None:
                if not await reserving:
                    self.stats.unpaid_starts += 1
                    stream.cancel("the client cannot pay")
                    return
                reserving = None
            kind = type(ev)
            if kind is Chunk:
                if not first:
                    first = relay.first = loop.time()
                # The worker's chunks that wait here already go on as one (bytes of the
                # app's answer join as they are): one message, one TLS record, one credit.
                data: bytes = ev.data  # type: ignore[union-attr]
                more = stream.take_chunks(_BURST, _BURST_BYTES - len(data))
                if more:
                    data = b"".join([data, *more])
                await client.send_chunk(rid, data)
                stream.consumed(1 + len(more))
                events = (record_events(data) if req.seal_size
                          else count_events(data) if req.stream else 1 + len(more))
                stats.chunks += events
                relay.relayed += events
                relay.relayed_bytes += len(data)
            elif kind is Head:
                client.send(Head(rid, ev.worker))  # type: ignore[union-attr]
            elif kind is End:
                assert isinstance(ev, End)
                usage = ev.usage  # the one rule for counts: contradicting ones are refused
                relay.report = ev
                settled = None
                if self.billing is not None:
                    relay.settled = True  # the ledger settles even if we are cancelled now
                    settled = await self._settle(self.billing, relay.bill_id, ev, client,
                                                 worker, training=relay.training)
                    relay.cost = settled.bill.client_cost if settled is not None else None
                client.finish(replace(ev, req_id=rid,
                                      receipt=self._countersign(relay, ev, settled)))
                if first and not relay.training:  # a job's pace says nothing of inference
                    self._measured(worker, first - started, usage.completion_tokens,
                                   loop.time() - first)
                stats.completed += 1
                relay.outcome = "ok"
                stats.prompt_tokens += usage.prompt_tokens
                stats.completion_tokens += usage.completion_tokens
                return
            elif kind is Error:
                assert isinstance(ev, Error)
                relay.report = ev  # billed in _settle_or_release, after the client's answer
                if not relay.relayed:
                    if ev.code == NoWorkerAvailable.code and not ev.has_usage:
                        # at capacity (its own count): try another worker
                        raise _Retry(ev.to_exception(), capacity=True)
                    if ev.code in _RETRY_CODES:
                        worker.measured.failed()
                        raise _Retry(ev.to_exception(), capacity=False)
                stats.failed += 1
                relay.outcome = ev.code
                client.finish(Error(rid, ev.code, ev.message, ev.param))  # usage stays here
                return
            elif isinstance(ev, RequestTimeout):
                worker.measured.failed()
                if not relay.relayed:  # silent from the start: another worker may answer
                    relay.report = await self._last_word(stream, "timed out at the proxy")
                    raise _Retry(ev, capacity=False)
                stats.timeouts += 1
                relay.outcome = ev.code
                client.finish(Error.of(rid, ev))
                relay.report = await self._last_word(stream, "timed out at the proxy")
                return
            else:  # TransportError: the worker connection is gone
                worker.measured.failed()
                lost = WorkerLost(
                    f"worker {worker.node_id} disconnected before finishing the request")
                if not relay.relayed:
                    raise _Retry(lost, capacity=False)
                stats.worker_lost += 1
                relay.outcome = lost.code
                client.finish(Error.of(rid, lost))
                return

    async def _wrapped_key(self, relay: _Relay) -> bytes:
        """The content key the client wrapped for the relay's worker after its Route, once
        it comes (at most ``_SEAL_WAIT_S``, within the request's deadline)."""
        assert relay.wrapped is not None
        loop = asyncio.get_running_loop()
        wait = _SEAL_WAIT_S if not relay.deadline else max(
            0.0, min(_SEAL_WAIT_S, relay.deadline - loop.time()))
        try:
            async with asyncio.timeout(wait):
                wrapped = await relay.wrapped
        except TimeoutError:
            raise RequestTimeout(f"the client sent no key for its route within {wait:.0f}s"
                                 ) from None
        if len(wrapped) != WRAPPED_SIZE:
            raise BadRequest(f"a wrapped key is {WRAPPED_SIZE} bytes, not {len(wrapped)}")
        return wrapped

    def _countersign(self, relay: _Relay, end: End, settled: Settled | None) -> bytes:
        """The worker's receipt part, checked against the certificate it announced (its
        signature is the client's to check), with this proxy's countersigned part and both
        certificates; empty when the worker sent none or one that names another
        certificate (the client then says so)."""
        if not end.receipt:
            return b""
        worker = relay.worker
        try:
            receipt = Receipt.decode(end.receipt)
            cert, claims, verified = self._channels_of.check(worker.certificate, "worker")
            receipt = replace(receipt, worker_certificate=worker.certificate)
            check_worker_part(receipt, cert, claims, verified, signature=False)
        except AttestationError as exc:
            log.warning("worker %s sent a receipt that does not hold (rule=%s): not "
                        "countersigned", worker.node_id, exc.rule)
            return b""
        own = self._channels_of.certificate_der()
        # the client keeps the certificates it was sent (roster, route, earlier receipts):
        # a receipt carries only those it has not had
        worker_der = (b"" if not self._has_certificate(relay.client, worker.certificate)
                      else worker.certificate)
        own_der = b"" if not self._has_certificate(relay.client, own) else own
        bill = settled.bill if settled is not None else None
        part = ProxyPart(
            proxy=self.config.node_id, worker_part_sha256=sha256_hex(receipt.worker_bytes()),
            price_per_token=bill.price_per_token if bill else 0,
            coefficient=worker.coefficient, billed_tokens=bill.adjusted_tokens if bill else 0,
            cost_nanoton=bill.client_cost if bill else 0,
            charged_total_nanoton=settled.charged_total if settled else 0,
            voucher_seqno=settled.voucher_seqno if settled else 0, time=int(time.time()),
            certificate_sha256=self._channels_of.certificate_sha256())
        return replace(receipt, proxy=part,
                       proxy_signature=sign_part(part, self._channels_of.identity.key),
                       worker_certificate=worker_der, proxy_certificate=own_der).encode()

    def _has_certificate(self, client: Peer, der: bytes) -> bool:
        """Note that ``client`` is being sent certificate ``der``: True the first time
        (it goes with what is being sent), False when it was sent before."""
        if not der:
            return False
        known = self._client_certs.setdefault(client, set())
        digest = hashlib.sha256(der).hexdigest()
        if digest in known:
            return False
        if len(known) >= _CLIENT_CERTS:
            known.clear()  # bounded: what was forgotten is sent again
        known.add(digest)
        return True

    def _send_roster(self, client: Peer, roster: Roster) -> None:
        client.send(roster)
        for w in roster.workers:
            self._has_certificate(client, w.certificate)

    def _measured(self, worker: _Worker, ttft_s: float, tokens: int, decode_s: float) -> None:
        """A request the worker answered: into its measurements and its models'."""
        worker.measured.served(ttft_s, tokens, decode_s)
        for m in worker.models:
            index = self._index.get(m)
            if index is not None:
                index.typical.served(ttft_s, tokens, decode_s)

    def _bill_id(self, ticket: int) -> str:
        """The ledger's request id of the reservation a ticket names."""
        return f"{self.config.node_id}:{ticket}"

    async def _on_job_reports(self, worker: _Worker, msg: JobReports) -> None:
        """A reconnected worker's usage of its recent jobs: charge the requests a previous
        run of this proxy left open for it (see the module docstring)."""
        billing = self.billing
        if billing is None or not billing.unreported:
            return  # nothing was cut off by a restart: every report is settled already
        reported: dict[str, Usage] = {}
        training: set[str] = set()
        for job in msg.jobs:
            try:
                reported[self._bill_id(job.ticket)] = job.usage
            except ProtocolError as exc:
                log.warning("worker %s reported impossible usage: %s", worker.node_id, exc)
            if job.ticket & _TRAINING_TICKET:
                training.add(self._bill_id(job.ticket))
        account = worker_account(worker.node_id)
        clients, charged, _ = await billing.charge_reported(account, reported,
                                                            worker.coefficient, training)
        if charged:
            self._post(worker.peer, account, "worker")
            for peer, client in list(self._accounts.items()):
                if client in clients:
                    self._post(peer, client, "client")

    async def _release_unreported_later(self) -> None:
        assert self.billing is not None
        await asyncio.sleep(self.config.billing.report_grace_s)
        await self.billing.release_unreported()

    async def _hear_last_word(self, relay: _Relay, reason: str) -> None:
        if relay.stream is not None and relay.report is None:
            relay.report = await self._last_word(
                relay.stream, reason, _TRAINING_LAST_WORD_S if relay.training else _LAST_WORD_S)

    async def _settle_or_release(self, relay: _Relay) -> None:
        """Charge what a failed, cancelled or cut-off request produced: what its worker
        reported, or, when the worker never did (lost, silent when told to stop, or
        reporting impossible counts), what the proxy relayed to the app, estimated. Release
        the reservation of one that produced nothing."""
        billing, report = self.billing, relay.report
        reserving = relay.reserving
        if reserving is not None:
            if not reserving.done():  # what comes next goes to the ledger after it
                await asyncio.wait({reserving})
            if not reserving.cancelled() and reserving.exception() is not None:
                return  # it reserved nothing (its error reached the client: _relay)
        if relay.settled or billing is None:
            return
        if relay.retried:  # the app saw nothing of it and it goes to another worker
            await asyncio.shield(billing.release(relay.bill_id))
            return
        usage: Usage | None = None
        if report is not None:
            try:
                usage = report.usage  # the one rule for counts
            except ProtocolError as exc:
                log.warning("worker %s reported impossible usage for %s: %s",
                            relay.worker.node_id, relay.bill_id, exc)
        if usage is None and relay.relayed and not relay.training:
            usage = relay.relayed_usage()
            log.info("%s was cut off before its worker reported: charging what the app "
                     "received (%d chunks; estimated)", relay.bill_id, relay.relayed)
        if usage is not None and usage.total_tokens:
            try:
                await asyncio.shield(self._settle(billing, relay.bill_id, usage, relay.client,
                                                  relay.worker, training=relay.training))
            except CocoonError as exc:
                log.warning("settling %s failed: %s", relay.bill_id, exc)
        else:
            # Nothing generated or relayed (refused, failed at once, lost before a chunk):
            # nothing is charged.
            await asyncio.shield(billing.release(relay.bill_id))

    async def _settle(self, billing: Billing, bill_id: str, report: End | Error | Usage,
                      client: Peer, worker: _Worker, *, training: bool = False) -> Settled:
        """Charge the worker's reported usage (a fine-tuning job's at the training
        prices); send each side its new statement. What was charged comes back, for the
        receipt."""
        settled = await billing.settle_accounts(bill_id, report, worker.coefficient,
                                                training=training)
        if settled.worker is not None:
            self._post(worker.peer, settled.worker, "worker")
        if settled.client is not None:
            self._post(client, settled.client, "client")
        return settled

    async def _last_word(self, stream: OutgoingStream, reason: str,
                         wait_s: float = _LAST_WORD_S) -> End | Error | None:
        """Tell the worker to stop, and wait at most ``wait_s`` for the End or Error that
        answers: it reports the tokens generated until the stop (a fine-tuning job: the
        tokens of the steps done, once its step under way ends). None if it never comes
        (the worker is gone or silent)."""
        self._watchdog.forget(stream)
        stream.stop(reason)
        expiry = asyncio.get_running_loop().call_later(
            wait_s, stream.expire,
            RequestTimeout(f"no final report within {wait_s:g}s of the stop"))
        try:
            while True:
                ev = await stream.next()
                if type(ev) is End or type(ev) is Error:
                    return ev
                if type(ev) is not Chunk and type(ev) is not Head:
                    return None  # TransportError, or our own expiry
        finally:
            expiry.cancel()

    # --- catalog ----------------------------------------------------------------------

    def _catalog(self) -> Catalog:
        by_model: dict[str, list[_Worker]] = {}
        for w in self.workers.values():
            for m in w.models:
                by_model.setdefault(m, []).append(w)
        price = self.billing.prices.price_per_token if self.billing is not None else 0

        def per_million(coefficient: int) -> int:  # nanoTON per 1M tokens at this price
            return price * coefficient * 1_000_000 // 1000

        return Catalog(tuple(
            CatalogEntry(m, len(ws), sum(w.active for w in ws), sum(w.capacity for w in ws),
                         per_million(min(w.coefficient for w in ws)),
                         per_million(max(w.coefficient for w in ws)))
            for m, ws in sorted(by_model.items())
        ), public_key_bytes(self.billing.key) if self.billing is not None else b"")

    def _roster(self) -> Roster:
        return Roster(tuple(
            WorkerInfo(w.node_id, str(w.attestation.get("tier", "")),
                       bytes.fromhex(w.attestation.get("image_hash") or ""), w.models,
                       w.certificate, w.features)
            for w in self.workers.values()
        ))

    async def _catalog_pusher(self) -> None:
        """Push the catalog to clients when workers come or go (at most 4 times a second)."""
        while True:
            await asyncio.sleep(0.25)
            if self._catalog_dirty:
                self._catalog_dirty = False
                catalog, roster = self._catalog(), self._roster()
                for c in list(self.clients):
                    if not c.closed:
                        c.send(catalog)
                        self._send_roster(c, roster)

    # --- health and stats -------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {
            "role": "proxy",
            "node_id": self.config.node_id,
            "uptime_s": uptime_since(self._started),
            "listen": f"{self.config.listen.rpartition(':')[0]}:{self.port}",
            "requests": {"total": s.requests, "completed": s.completed, "failed": s.failed,
                         "rejected": s.rejected, "cancelled": s.cancelled,
                         "timeouts": s.timeouts, "worker_lost": s.worker_lost,
                         "rerouted": s.rerouted, "failovers": s.failovers,
                         "sealed": s.sealed, "seal_routes": s.seal_routes,
                         "unpaid_starts": s.unpaid_starts, "in_flight": len(self._relays)},
            "registry_listing": self.listing,
            "queue": {"waiting": self._queue.depth(),
                      "by_model": {m: self._queue.depth(m) for m in self._queue.models()},
                      "limit_per_model": self.config.queue_limit,
                      "timeout_s": self.config.queue_timeout_s, "queued": s.queued,
                      "full": s.queue_full, "timeouts": s.queue_timeouts,
                      "wait_avg_ms": round(1000 * s.queue_wait_s / s.queued, 1)
                      if s.queued else 0.0,
                      "wait_max_ms": round(1000 * s.queue_wait_max_s, 1)},
            "tokens": {"prompt": s.prompt_tokens, "completion": s.completion_tokens},
            "chunks_relayed": s.chunks,
            "workers": [
                {"node_id": w.node_id, "address": w.peer.address, "models": list(w.models),
                 "features": list(w.features), "engine": w.engine, "active": w.active,
                 "capacity": w.capacity, "served": w.served, "attestation": w.attestation}
                for w in self.workers.values()
            ],
            "clients": len(self.clients),
            "attestation": self.attestation,
            "models": [e.model for e in self._catalog().entries],
        }

    def _http_app(self) -> web.Application:
        app = web.Application()

        async def health(_: web.Request) -> web.Response:
            return json_response({"status": "ok", "workers": len(self.workers)})

        async def stats(_: web.Request) -> web.Response:
            snap = self.snapshot()
            if self.billing is not None:
                snap["billing"] = await self.billing.snapshot(
                    sorted(set(self._accounts.values())),
                    sorted(worker_account(w.node_id) for w in self.workers.values()))
                if self.billing.payments is not None:
                    snap["billing"]["chain"] = self.billing.payments.snapshot()
            return json_response(snap)

        add_health_routes(app, health, stats, self.metrics)
        add_dashboard_routes(app, self._dashboard_view)
        return app

    async def _dashboard_view(self) -> dict[str, Any]:
        """What the dashboard shows of the network this proxy routes (figures only)."""
        s = self.stats
        money = None
        if self.billing is not None:
            clients = sorted(set(self._accounts.values()))
            workers = sorted(worker_account(w.node_id) for w in self.workers.values())
            snap = await self.billing.snapshot(clients, workers)
            t = snap["totals"]
            channels = (self.billing.payments.snapshot()["client_channels"]
                        if self.billing.payments is not None else {})
            money = {**{k: t[k] for k in ("charged", "earned", "commission", "reserved",
                                          "deposited", "settled_requests")},
                     "clients": [{"account": a, "channel": channels.get(a),
                                  "deposit": b["deposited"], "charged": b["charged"],
                                  "available": b["deposited"] - b["charged"] - b["reserved"]}
                                 for a, b in snap["clients"].items()],
                     "workers": [{"account": a, "earned": e["earned"]}
                                 for a, e in snap["workers"].items()]}
        return {
            "role": "proxy", "node_id": self.config.node_id,
            "uptime_s": uptime_since(self._started),
            "totals": {"requests": s.requests, "completed": s.completed,
                       "failed": s.failed + s.rejected + s.timeouts + s.worker_lost,
                       "prompt_tokens": s.prompt_tokens,
                       "completion_tokens": s.completion_tokens},
            "in_flight": len(self._relays), "queue": self._queue.depth(),
            "attestation": {"tier": self.attestation.get("tier"),
                            "image_hash": self.attestation.get("image_hash")},
            "workers": [{
                "node_id": w.node_id, "tier": w.attestation.get("tier"),
                "image_hash": w.attestation.get("image_hash"), "models": list(w.models),
                "active": w.active, "capacity": w.capacity, "coefficient": w.coefficient,
                "ttft_ms": (None if w.measured.ttft_s is None
                            else round(w.measured.ttft_s * 1000, 1)),
                "tokens_per_s": w.measured.tokens_per_s, "error_rate": w.measured.error_rate,
                "served": w.served} for w in self.workers.values()],
            "money": money,
            "recent": self.recent.view(),
        }

    async def _families(self) -> list[Metric]:
        """The proxy's /metrics read from its state (see ``cocoon.metrics``): its
        requests, queue and workers, and the ledger's totals."""
        s = self.stats
        workers = list(self.workers.values())

        def per_worker(value: Callable[[_Worker], float | None]) -> dict[tuple[str], float]:
            out = {}
            for w in workers:
                v = value(w)
                if v is not None:
                    out[(w.node_id,)] = v
            return out

        out: list[Metric] = [
            *node_families("proxy", self.config.node_id, uptime_since(self._started),
                           self._channels_of.refusals()),
            gauge("cocoon_proxy_requests_in_flight", "Requests routed and not yet ended",
                  len(self._relays)),
            gauge("cocoon_proxy_clients_connected", "Clients connected", len(self.clients)),
            gauge("cocoon_proxy_queue_depth", "Requests waiting for a worker's slot, by model",
                  labels={"model": {(self.metrics.model(m),): self._queue.depth(m)
                                    for m in self._queue.models()}}),
            counter("cocoon_proxy_queued_requests", "Requests that waited for a slot",
                    s.queued),
            counter("cocoon_proxy_queue_wait_seconds", "Time requests waited for a slot",
                    s.queue_wait_s),
            counter("cocoon_proxy_queue_refusals", "Requests the queue refused: full (429) "
                    "or waited out (503)", labels={"reason": {
                        ("full",): s.queue_full, ("timeout",): s.queue_timeouts}}),
            counter("cocoon_proxy_reroutes", "Requests routed again: a worker refused them "
                    "for capacity, or failed before their first chunk", labels={"reason": {
                        ("capacity",): s.rerouted, ("failover",): s.failovers}}),
            counter("cocoon_proxy_sealed_requests", "Requests that came sealed", s.sealed),
            counter("cocoon_proxy_chunks_relayed", "Events of answers relayed", s.chunks),
            gauge("cocoon_proxy_worker_slots", "A worker's request slots",
                  labels={"worker": per_worker(lambda w: w.capacity)}),
            gauge("cocoon_proxy_worker_active_requests", "A worker's requests under way",
                  labels={"worker": per_worker(lambda w: w.active)}),
            counter("cocoon_proxy_worker_requests", "Requests routed to a worker",
                    labels={"worker": per_worker(lambda w: w.served)}),
            gauge("cocoon_proxy_worker_ttft_seconds", "A worker's time to first token, as "
                  "routing measures it (EWMA)",
                  labels={"worker": per_worker(lambda w: w.measured.ttft_s)}),
            gauge("cocoon_proxy_worker_tokens_per_second", "A worker's decode speed after its "
                  "first token, as routing measures it (EWMA)",
                  labels={"worker": per_worker(lambda w: w.measured.tokens_per_s)}),
            gauge("cocoon_proxy_worker_error_ratio", "A worker's share of failed requests, as "
                  "routing weighs it (EWMA)",
                  labels={"worker": per_worker(lambda w: w.measured.error_rate)}),
            gauge("cocoon_proxy_worker_price_coefficient", "What a worker asks (1000 = 1.0x)",
                  labels={"worker": per_worker(lambda w: w.coefficient)}),
        ]
        if self.billing is not None:
            t = await self.billing.totals()
            out += [
                counter("cocoon_ledger_charged_nanoton", "Charged to clients", t.charged),
                counter("cocoon_ledger_earned_nanoton", "Earned by workers", t.earned),
                counter("cocoon_ledger_commission_nanoton", "Kept by this proxy",
                        t.commission),
                counter("cocoon_ledger_deposited_nanoton", "Deposited by clients",
                        t.deposited),
                gauge("cocoon_ledger_reserved_nanoton", "Reserved for requests under way",
                      t.reserved),
                gauge("cocoon_ledger_open_reservations", "Reservations not yet settled",
                      t.open_reservations),
                counter("cocoon_ledger_settled_requests", "Requests settled",
                        t.settled_requests),
            ]
        return out
