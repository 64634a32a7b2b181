"""The proxy: accepts workers and clients, keeps the live worker registry, routes each
request to the least-loaded worker serving its model, and relays the stream both ways.

Failures become typed errors for the client: a worker that dies mid-request -> WorkerLost,
no progress within ``idle_timeout_s`` or no end within ``request_timeout_s`` ->
RequestTimeout (and the worker is told to stop). A client that goes away cancels its
requests on the workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cocoon.attestation.channels import build_channels, describe_evidence
from cocoon.config import ProxyConfig, parse_hostport
from cocoon.errors import (
    AttestationError,
    CocoonError,
    PaymentRequired,
    ProtocolError,
    RequestError,
    RequestTimeout,
    TransportError,
    WorkerLost,
)
from cocoon.nodes.common import HttpServer, add_health_routes, json_response, uptime_since
from cocoon.nodes.proxy.billing import Billing, client_account
from cocoon.routing import WorkerView, choose_worker
from cocoon.transport import Listener, OutgoingStream, Peer, Watchdog
from cocoon.wire import (
    Announce,
    Cancel,
    Catalog,
    CatalogEntry,
    Chunk,
    Connection,
    End,
    Error,
    Head,
    Message,
    Request,
    Roster,
    WorkerInfo,
)

__all__ = ["ProxyNode"]

log = logging.getLogger(__name__)

_KNOWN_MODEL_TTL = 600.0  # a model served this recently answers 503, not 404, when gone


@dataclass(slots=True)
class _Worker:
    peer: Peer
    order: int
    models: tuple[str, ...] = ()
    capacity: int = 0
    engine: str = ""
    active: int = 0
    served: int = 0
    attestation: dict[str, Any] = field(default_factory=dict)

    @property
    def node_id(self) -> str:
        return self.peer.hello.node_id

    def view(self) -> WorkerView:
        return WorkerView(self.node_id, self.models, self.active, self.capacity, self.order)


@dataclass(slots=True)
class ProxyStats:
    requests: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    cancelled: int = 0
    timeouts: int = 0
    worker_lost: int = 0
    chunks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ProxyNode:
    def __init__(self, config: ProxyConfig, listener: Listener | None = None) -> None:
        self.config = config
        self.attestation: dict[str, Any] = {"tier": "none (plain TCP)"}
        if listener is None:
            channels = build_channels(config.attestation, role="proxy")
            listener, self.attestation = channels.listener, channels.own
        self._listener = listener
        self.billing = Billing(config.billing) if config.billing.enabled else None
        self.workers: dict[Peer, _Worker] = {}
        self.clients: set[Peer] = set()
        self._accounts: dict[Peer, str] = {}  # client peer -> ledger account
        self._known: dict[str, float] = {}
        self._order = 0
        self._relays: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._watchdog = Watchdog()
        self.stats = ProxyStats()
        self._started = time.monotonic()
        self._catalog_dirty = False
        self.port = 0
        self.http = HttpServer(self._http_app(), config.http, "proxy.http")
        self._tasks: asyncio.TaskGroup | None = None

    async def run(self, stop: asyncio.Event, on_ready: Any = None) -> None:
        host, port = parse_hostport(self.config.listen, "proxy.listen")
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            server = await self._listener.listen(host, port, self._on_connect)
            self.port = server.sockets[0].getsockname()[1]
            await self.http.start()
            watchdog = tg.create_task(self._watchdog.run())
            catalog = tg.create_task(self._catalog_pusher())
            commits = tg.create_task(self.billing.commit_forever()) if self.billing else None
            log.info("proxy listening on %s:%s", host, self.port)
            if on_ready is not None:
                on_ready(self)
            try:
                await stop.wait()
            finally:
                server.close()
                for peer in list(self.workers) + list(self.clients):
                    peer.close("proxy shutting down")
                watchdog.cancel()
                catalog.cancel()
                if commits is not None:
                    commits.cancel()
                await self.http.stop()
                if self.billing is not None:
                    self.billing.close()

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
                self._catalog_dirty = True
                log.info("worker %s disconnected", hello.node_id)
        elif hello.role == "client":
            self.clients.add(peer)
            self._accounts[peer] = client_account(claims, hello.node_id)
            peer.send(self._catalog())
            peer.send(self._roster())
            try:
                await peer.run(self)
            finally:
                self.clients.discard(peer)
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
                now = time.monotonic()
                for m in msg.models:
                    self._known[m] = now
                self._catalog_dirty = True
                log.info("worker %s serves %s (capacity %d, engine %s)", worker.node_id,
                         ", ".join(msg.models), msg.max_concurrent, msg.engine)
                return
        elif peer in self.clients:
            if isinstance(msg, Request):
                self._start_relay(peer, msg)
                return
            if isinstance(msg, Cancel):
                task = self._relays.get((id(peer), msg.req_id))
                if task is not None:
                    task.cancel()
                return
        raise ProtocolError(f"{type(msg).__name__} is not allowed from a "
                            f"{peer.hello.role}")

    # --- routing and relay ------------------------------------------------------------

    def _known_models(self) -> list[str]:
        cutoff = time.monotonic() - _KNOWN_MODEL_TTL
        return [m for m, t in self._known.items() if t >= cutoff]

    def _start_relay(self, client: Peer, req: Request) -> None:
        self.stats.requests += 1
        try:
            view = choose_worker(req.model, (w.view() for w in self.workers.values()
                                             if w.capacity), self._known_models())
        except RequestError as exc:
            self.stats.rejected += 1
            client.finish(Error(req.req_id, exc.code, exc.message, exc.param or ""))
            return
        worker = next(w for w in self.workers.values() if w.node_id == view.worker_id)
        key = (id(client), req.req_id)
        self._relays[key] = client.spawn(self._relay(client, req, worker, key),
                                         f"relay-{req.req_id}")

    async def _relay(self, client: Peer, req: Request, worker: _Worker,
                     key: tuple[int, int]) -> None:
        rid = req.req_id
        timeout = self.config.request_timeout_s
        if req.timeout_ms:
            timeout = min(timeout, req.timeout_ms / 1000.0)
        worker.active += 1
        worker.served += 1
        stream: OutgoingStream | None = None
        stats = self.stats
        billing = self.billing
        bill_id = f"{self.config.node_id}:{id(client):x}:{rid}:{time.time_ns()}"
        settled = billing is None
        max_tokens = req.max_tokens
        try:
            if billing is not None:
                max_tokens = billing.cap(req.max_tokens)
                try:
                    await billing.reserve(bill_id, self._accounts.get(client, "?"),
                                          "worker:" + worker.node_id, req.max_tokens,
                                          len(req.body))
                except PaymentRequired as exc:
                    stats.rejected += 1
                    settled = True
                    client.finish(Error(rid, exc.code, exc.message, ""))
                    return
            try:
                stream = worker.peer.open_stream(
                    lambda wid: Request(wid, req.endpoint, req.model, req.stream,
                                        int(timeout * 950), req.body, max_tokens))
            except TransportError:
                stats.worker_lost += 1
                client.finish(Error(rid, WorkerLost.code,
                                    f"worker {worker.node_id} disconnected", ""))
                return
            self._watchdog.watch(stream, timeout, self.config.idle_timeout_s)
            while True:
                ev = await stream.next()
                kind = type(ev)
                if kind is Chunk:
                    await client.send_chunk(rid, ev.data)  # type: ignore[union-attr]
                    stream.consumed()
                    stats.chunks += 1
                elif kind is Head:
                    client.send(Head(rid, ev.worker))  # type: ignore[union-attr]
                elif kind is End:
                    assert isinstance(ev, End)
                    if billing is not None:
                        to_client, to_worker = await billing.settle(bill_id, ev)
                        settled = True
                        if to_worker is not None and not worker.peer.closed:
                            worker.peer.send(to_worker)
                        if to_client is not None:
                            client.send(to_client)
                    client.finish(End(rid, ev.prompt_tokens, ev.completion_tokens,
                                      ev.cached_tokens, ev.reasoning_tokens))
                    stats.completed += 1
                    stats.prompt_tokens += ev.prompt_tokens
                    stats.completion_tokens += ev.completion_tokens
                    return
                elif kind is Error:
                    assert isinstance(ev, Error)
                    stats.failed += 1
                    client.finish(Error(rid, ev.code, ev.message, ev.param))
                    return
                elif isinstance(ev, RequestTimeout):
                    stats.timeouts += 1
                    stream.cancel("timed out at the proxy")
                    client.finish(Error(rid, ev.code, ev.message, ""))
                    return
                else:  # TransportError: the worker connection is gone
                    stats.worker_lost += 1
                    err = WorkerLost(f"worker {worker.node_id} disconnected before finishing "
                                     "the request")
                    client.finish(Error(rid, err.code, err.message, ""))
                    return
        except asyncio.CancelledError:
            stats.cancelled += 1
            client.finish(Error(rid, "cancelled", "cancelled by the requester", ""))
            raise
        except TransportError:
            stats.cancelled += 1  # the client connection went away while we forwarded
        except CocoonError as exc:
            stats.failed += 1
            log.warning("relay %s failed: %s", rid, exc)
            client.finish(Error(rid, "internal_error", "proxy relay failed", ""))
        finally:
            worker.active -= 1
            self._relays.pop(key, None)
            if not settled and billing is not None:
                # No usage reported (failure, timeout, cancel): nothing is charged.
                await asyncio.shield(billing.release(bill_id))
            if stream is not None:
                self._watchdog.forget(stream)
                stream.cancel("requester went away")

    # --- catalog ----------------------------------------------------------------------

    def _catalog(self) -> Catalog:
        by_model: dict[str, list[_Worker]] = {}
        for w in self.workers.values():
            for m in w.models:
                by_model.setdefault(m, []).append(w)
        return Catalog(tuple(
            CatalogEntry(m, len(ws), sum(w.active for w in ws), sum(w.capacity for w in ws))
            for m, ws in sorted(by_model.items())
        ))

    def _roster(self) -> Roster:
        return Roster(tuple(
            WorkerInfo(w.node_id, str(w.attestation.get("tier", "")),
                       bytes.fromhex(w.attestation.get("image_hash") or ""), w.models)
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
                        c.send(roster)

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
                         "in_flight": len(self._relays)},
            "tokens": {"prompt": s.prompt_tokens, "completion": s.completion_tokens},
            "chunks_relayed": s.chunks,
            "workers": [
                {"node_id": w.node_id, "address": w.peer.address, "models": list(w.models),
                 "engine": w.engine, "active": w.active, "capacity": w.capacity,
                 "served": w.served, "attestation": w.attestation}
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
                    sorted("worker:" + w.node_id for w in self.workers.values()))
            return json_response(snap)

        add_health_routes(app, health, stats)
        return app
