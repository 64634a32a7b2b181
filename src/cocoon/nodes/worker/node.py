"""The worker: keeps a connection to each proxy it serves, announces its models, runs
requests on its engine and streams the results back under flow control.

The proxies it serves are those its config names (``worker.proxy``, comma-separated) and,
with ``chain.registry`` set, every proxy listed there (re-read every
``chain.registry_refresh_s``); a proxy whose attestation fails the worker's policy is refused
at the handshake and tried again with backoff. One engine serves them all: each proxy is told
the whole capacity, and a request that finds every engine slot taken by another proxy's waits
at the worker for the next free one (at most as many wait as the other proxies were
promised; beyond that it is refused "at capacity", which the proxy routes elsewhere). A proxy
that leaves the registry is told the worker takes nothing more and is let go once its
requests have finished.

Per proxy (:class:`_Link`), it remembers the usage of its recent ticketed jobs (the proxy's
``Request.ticket``) and, after it loses that proxy, reports them first thing on the next
connection to it (:class:`~cocoon.wire.JobReports`): a proxy that died mid-request then
charges what was generated, and the worker is paid for it.

SIGTERM drains the worker: it tells the proxy it takes nothing more (an Announce of no
capacity), refuses what still arrives as "at capacity" (so the proxy routes it elsewhere),
lets the requests in flight finish, at most ``worker.drain_timeout_s``, then exits. A second
signal stops it at once.

Sealing: the worker's claims carry an X25519 key of this process (``Claims.seal_key``), and
it announces its certificate to each proxy. A request sealed to that key
(``Request.seal_size``) is opened here and nowhere else; its answer goes back as records
under the client's response key (``cocoon.crypto.seal``). Every completion ends with the
worker's signed receipt part in its ``End`` (``cocoon.attestation.receipt``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cocoon.attestation.receipt import Receipt, WorkerPart, sha256_hex, sign_part
from cocoon.chain.vouchers import (
    ChainVoucher,
    parse_voucher,
    read_voucher_file,
    verify_voucher,
    voucher_path,
    write_voucher_file,
)
from cocoon.config import WorkerConfig
from cocoon.crypto.seal import (
    KeyUnwrapper,
    ResponseSealer,
    decode_keys,
    new_seal_key,
    open_request,
    route_info,
    seal_public_bytes,
)
from cocoon.engines import Engine, EngineOutput, InferenceJob, UsageMeter
from cocoon.errors import (
    BadRequest,
    EngineError,
    EngineUnsupported,
    NoWorkerAvailable,
    PaymentError,
    ProtocolError,
    RequestError,
    RequestTimeout,
    SealBroken,
    TransportError,
    WorkerLost,
)
from cocoon.ledger.copies import AccountCopy
from cocoon.ledger.errors import VoucherInvalid
from cocoon.metrics import Metric, NodeMetrics, counter, gauge
from cocoon.nodes.channels import build_channels
from cocoon.nodes.common import (
    HttpServer,
    add_health_routes,
    as_request_error,
    follow_registry,
    json_response,
    keep_statement,
    node_families,
    registry_lists,
    serve_until_stopped,
    uptime_since,
)
from cocoon.nodes.links import ProxyLink, ProxyLinks, keys_of_channels
from cocoon.nodes.worker.training import Training
from cocoon.openai import Endpoint, encode_event, encode_events, parse_request
from cocoon.training.protocol import ENDPOINT as TRAINING
from cocoon.training.protocol import TrainingRequest, take_adapter
from cocoon.transport import Connector, Peer
from cocoon.transport.tls_identity import utcnow
from cocoon.usage import Usage
from cocoon.wire import (
    FEATURE_LORA,
    FEATURE_TRAIN,
    Announce,
    Cancel,
    Connection,
    End,
    Error,
    Head,
    JobReport,
    JobReports,
    Message,
    Request,
    Statement,
)

__all__ = ["WorkerNode"]

log = logging.getLogger(__name__)

_ENDPOINTS: dict[str, Endpoint] = {"chat": "chat", "completions": "completions"}
_MAX_REPORTS = 4096  # recent ticketed jobs remembered for the next connection's report
_BURST_BYTES = 256 * 1024  # the most event data one Chunk carries (well under any frame)


@dataclass(eq=False)
class _Link(ProxyLink):
    """A proxy this worker serves, and what the worker keeps of it."""

    channel: str = ""  # the payout channel announced to it ("" while unknown)
    account: AccountCopy = field(default_factory=lambda: AccountCopy("worker_payout"))
    # ticket -> usage of the most recent ticketed jobs, oldest first (see module doc)
    recent: collections.OrderedDict[int, Usage] = field(
        default_factory=collections.OrderedDict)
    retiring: bool = False  # no longer listed: let go once its jobs end
    jobs: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "active": self.jobs, "channel": self.channel or None,
                **({"retiring": True} if self.retiring else {})}


@dataclass(slots=True)
class WorkerStats:
    received: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    cancelled: int = 0
    waited: int = 0  # requests that waited for an engine slot another proxy's held
    sealed: int = 0  # requests that came sealed to this worker
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chunks: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class WorkerNode:
    def __init__(self, config: WorkerConfig, engine: Engine,
                 connector: Connector | None = None, *,
                 training: Training | None = None) -> None:
        self.config = config
        self.engine = engine
        self.training = training  # fine-tuning jobs, when this worker offers them
        self.features = ((FEATURE_TRAIN,) if training is not None else ()) + (
            (FEATURE_LORA,) if engine.adapters else ())
        self.node_id = config.node_id or f"worker-{os.getpid()}"
        self.attestation: dict[str, Any] = {"tier": "none (plain TCP)"}
        self._registry = registry_lists(config.chain)
        self._seal_key = new_seal_key()
        self._unwrapper = KeyUnwrapper(self._seal_key)
        self._channels_of = build_channels(
            config.attestation, role="worker", model=engine.models[0] if engine.models else "",
            model_hash=engine.model_hash, seal_key=seal_public_bytes(self._seal_key),
            expect_peer_role="proxy", lists=self._registry)
        if connector is None:
            connector, self.attestation = self._channels_of.connector, self._channels_of.own
        self._connector = connector
        self._identity = self._channels_of.identity
        self._announced_generation = self._identity.generation
        self.stats = WorkerStats()
        self.metrics = NodeMetrics(self._families, known=lambda m: m in engine.models)
        # payout channel -> its newest on-chain payout voucher (kept in a file, if set);
        # with several channels, which proxy key signs each (read on chain at start)
        self._channels = config.channels()
        self.payouts: dict[str, ChainVoucher] = {}
        self._payers: dict[bytes, str] = {}
        for ch in self._channels:
            kept = (read_voucher_file(self._voucher_path(ch)) if config.chain.voucher_file
                    else None)
            if kept is not None and kept.channel == ch:
                self.payouts[ch] = kept
        self.active = 0  # requests taken: running, or waiting for an engine slot
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self.running = 0  # requests on the engine
        self.draining = False
        self._idle = asyncio.Event()  # set whenever no request is in flight
        self._idle.set()
        self.links: ProxyLinks[_Link] = ProxyLinks(
            connector, self._connection, self, _Link, self._announce)
        self._jobs: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._seq = 0
        self._started = time.monotonic()
        self.http = HttpServer(self._http_app(), config.http, "worker.http")

    # --- proxy connection -------------------------------------------------------------

    def _connection(self) -> Connection:
        return Connection(role="worker", node_id=self.node_id)

    @property
    def proxy_state(self) -> str:
        return self.links.state

    def _voucher_path(self, channel: str) -> str:
        return voucher_path(self.config.chain.voucher_file, channel,
                            several=len(self._channels) > 1)

    @property
    def payout(self) -> ChainVoucher | None:
        """The newest payout voucher of the first channel."""
        return self.payouts.get(self._channels[0]) if self._channels else None

    def _channel_for(self, link: _Link) -> str:
        """The channel this proxy pays through: the only one, or the one its key signs."""
        if len(self._channels) == 1:
            return self._channels[0]
        return self._payers.get(link.proxy_pubkey or link.account.pubkey or b"", "")

    def _announcement(self, link: _Link) -> Announce:
        link.channel = self._channel_for(link)
        return Announce(tuple(self.engine.models), self._capacity(link), self.engine.name,
                        link.channel, self.config.coefficient,
                        self._channels_of.certificate_der(), self.features)

    async def _read_payers(self) -> None:
        """With several channels: which proxy key signs each one's vouchers (on chain)."""
        if len(self._channels) >= 2:
            self._payers = await keys_of_channels(self.config.chain, self._channels,
                                                  lambda parties: parties.signer_pubkey)

    def _capacity(self, link: _Link) -> int:
        return 0 if self.draining or link.retiring else self.config.max_concurrent

    async def _announce(self, link: _Link, peer: Peer) -> None:
        peer.send(self._announcement(link))
        if link.recent:
            # Jobs of earlier connections to this proxy, all ended (a connection's jobs end
            # with it): a proxy that restarted charges those it was relaying when it died;
            # one that did not has settled them and ignores the report. They are kept, not
            # cleared: a proxy killed again before it read them gets them from its successor.
            peer.send(JobReports(tuple(JobReport.of(t, u) for t, u in link.recent.items())))
            log.info("reported the usage of %d recent job(s) to the proxy %s",
                     len(link.recent), link.address)

    def _sync_links(self, listed: dict[str, bytes]) -> None:
        """Serve the proxies listed now (endpoint -> voucher key); let go of those no longer
        listed once idle."""
        for address in sorted(listed.keys() - self.links.by_address.keys()):
            self.links.open(address, "registry", listed[address])
        for link in self.links:
            if link.source != "registry":
                continue
            if link.address in listed:
                if link.retiring:  # listed again
                    link.retiring = False
                    self._tell_capacity(link)
                continue
            if not link.retiring:
                link.retiring = True
                self._tell_capacity(link)
                log.info("the proxy %s left the registry: no new requests from it",
                         link.address)
            if not link.jobs:
                self.links.close(link, "retired")

    def _tell_capacity(self, link: _Link) -> None:
        peer = link.peer
        if peer is not None and not peer.closed:
            with contextlib.suppress(TransportError):
                peer.send(self._announcement(link))

    async def _renew_certificate(self) -> None:
        """Re-issue the certificate before it expires and announce the new one, so clients
        always get one they can check (a connection made meanwhile may have renewed it)."""
        identity = self._identity
        # well inside the last quarter of its life, when it is renewed
        period = max(0.1, min(60.0, identity.lifetime.total_seconds() / 16))
        while True:
            await asyncio.sleep(period)
            identity.refresh_if_needed(utcnow())
            if identity.generation != self._announced_generation:
                self._announce_certificate()

    def _announce_certificate(self) -> None:
        """Tell every proxy the current certificate (it was renewed)."""
        self._announced_generation = self._identity.generation
        for link in self.links:
            self._tell_capacity(link)

    async def _serve_proxies(self) -> None:
        """Keep a connection to every proxy served, following the registry when it lists
        proxies for this worker to find (and letting go of those retiring once idle)."""
        await self.links.serve(
            self.config.static_proxies(), self._registry if self.config.discovers else None,
            lambda p: p.info.worker_endpoint if p.info else "", self._sync_links,
            again=lambda: any(link.retiring for link in self.links))

    async def run(self, stop: asyncio.Event, on_ready: Any = None) -> None:
        drained = asyncio.Event()

        async def drain_on_stop() -> None:
            await stop.wait()
            await self.drain()
            drained.set()

        try:
            await self._read_payers()
            registry = await follow_registry(self.config.chain, self._registry)
            await serve_until_stopped(
                self.http, self, on_ready, drained, self._serve_proxies(), drain_on_stop(),
                self._renew_certificate(), *([registry] if registry is not None else []))
        finally:
            await self.engine.close()

    async def drain(self) -> None:
        """Take no new request, and wait (at most ``drain_timeout_s``) for those in flight."""
        self.draining = True
        for link in self.links:
            self._tell_capacity(link)
        if self.active:
            log.info("draining: %d request(s) in flight finish first (at most %gs); no new "
                     "ones", self.active, self.config.drain_timeout_s)
            try:
                async with asyncio.timeout(self.config.drain_timeout_s):
                    await self._idle.wait()
                log.info("drained")
            except TimeoutError:
                log.warning("drain timed out: %d request(s) cut off", self.active)

    async def on_message(self, peer: Peer, msg: Message) -> None:
        link = self.links.of(peer)
        if link is None:  # a message racing its connection's end
            return
        if isinstance(msg, Request):
            self.stats.received += 1
            # every proxy was promised the whole capacity: what more than that arrives waits
            limit = self.config.max_concurrent * max(1, len(self.links.by_peer))
            if self.draining or link.retiring or self.active >= limit:
                self.stats.rejected += 1
                peer.finish(Error.of(msg.req_id, NoWorkerAvailable(
                    f"worker {self.node_id} is "
                    + ("shutting down" if self.draining or link.retiring
                       else "at capacity"))))
                return
            self.active += 1
            link.jobs += 1
            self._idle.clear()
            key = (id(peer), msg.req_id)
            self._jobs[key] = peer.spawn(self._job(link, peer, msg, key),
                                         f"job-{msg.req_id}")
        elif isinstance(msg, Cancel):
            task = self._jobs.get((id(peer), msg.req_id))
            if task is not None:
                task.cancel()
        elif isinstance(msg, Statement):
            if keep_statement(link.account, msg):
                if not link.channel and self._channel_for(link):
                    self._tell_capacity(link)  # its key is known now: name its channel
                if msg.chain_voucher:
                    self._keep_payout(link, msg)
        else:
            log.warning("ignoring unexpected %s from the proxy", type(msg).__name__)

    def _keep_payout(self, link: _Link, msg: Statement) -> None:
        """Keep the on-chain payout voucher of a statement we accepted, if it pays exactly
        what the statement says, on our channel, under the proxy's key."""
        try:
            v = verify_voucher(parse_voucher(msg.chain_voucher), link.account.pubkey or b"")
            if v.kind != "worker" or not link.channel or v.channel != link.channel:
                raise VoucherInvalid(f"payout voucher for {v.kind} channel {v.channel}, not "
                                     f"the one this proxy pays ({link.channel or 'none'})")
            if v.cumulative != msg.earned:
                raise VoucherInvalid(f"payout voucher pays {v.cumulative}, statement says "
                                     f"{msg.earned}")
            kept = self.payouts.get(v.channel)
            if kept is not None and v == kept:
                return  # the same voucher again (re-sent on reconnect)
            if kept is not None and v.seqno <= kept.seqno:
                raise VoucherInvalid(f"payout voucher seqno {v.seqno} is not newer")
        except PaymentError as exc:
            log.error("proxy payout voucher rejected: %s", exc)
            return
        self.payouts[v.channel] = v
        if self.config.chain.voucher_file:
            write_voucher_file(self._voucher_path(v.channel), v)

    async def _job(self, link: _Link, peer: Peer, req: Request, key: tuple[int, int]) -> None:
        rid = req.req_id
        job: InferenceJob | _TrainingJob | None = None
        usage: Usage | None = None
        start, outcome, out = time.monotonic(), "cancelled", _Answer(None)
        try:
            peer.send(Head(rid, self.node_id))
            if req.endpoint != TRAINING and req.endpoint not in _ENDPOINTS:
                raise BadRequest(f"unsupported endpoint {req.endpoint!r}")
            raw, out = req.body, _Answer(None)
            if req.seal_size:
                self.stats.sealed += 1
                raw, response_key = self._open(req)
                out = _Answer(ResponseSealer(response_key))
            if req.model not in self.engine.models:
                raise BadRequest(f"this worker does not serve model {req.model!r}",
                                 param="model")
            if req.endpoint == TRAINING:
                job = _TrainingJob(self._training_request(req, raw))
                assert self.training is not None  # _training_request checked it
                outputs = self.training.run(job.request, req.max_tokens, job.meter)
            else:
                job = self._inference_job(req, raw)
                outputs = self.engine.generate(job)
            if self._slots.locked():  # another proxy's requests hold every slot
                self.stats.waited += 1
            async with self._slots:
                self.running += 1
                try:
                    usage = await self._generate(peer, rid, outputs, job.stream,
                                                 req.timeout_ms / 1000.0, out)
                finally:
                    self.running -= 1
            peer.finish(End.of(rid, usage, self._receipt(req, out, usage)))
            self.stats.completed += 1
            outcome = "ok"
            self._count_tokens(usage)
        except asyncio.CancelledError as exc:
            self.stats.cancelled += 1
            err = (WorkerLost(f"worker {self.node_id} shut down before finishing the request")
                   if self.draining else as_request_error(exc, where="worker"))
            peer.finish(self._failed(rid, job, err))
            raise
        except TransportError:
            self.stats.failed += 1
            outcome = "worker_lost"  # the proxy's connection went away
        except RequestError as exc:
            self._count_error(exc.code)
            outcome = exc.code
            peer.finish(self._failed(rid, job, exc))
        except Exception as exc:
            log.exception("request %s failed inside the worker", rid)
            err = as_request_error(exc, where="worker error", fallback=EngineError)
            self._count_error(err.code)
            outcome = err.code
            peer.finish(self._failed(rid, job, err))
        finally:
            used = usage if usage is not None else job.meter.usage() if job else None
            self.metrics.request(
                req.endpoint, req.model, outcome, time.monotonic() - start,
                ttft_s=out.first - start if out.first else None,
                prompt_tokens=used.prompt_tokens if used else 0,
                completion_tokens=used.completion_tokens if used else 0)
            self.active -= 1
            link.jobs -= 1
            if not self.active:
                self._idle.set()
            self._jobs.pop(key, None)
            if req.ticket and job is not None:
                self._remember(link, req.ticket,
                               usage if usage is not None else job.meter.usage())

    def _inference_job(self, req: Request, raw: bytes) -> InferenceJob:
        """The engine's job of a completion request (with the LoRA adapter it carries, if
        any: only an engine that applies adapters takes one)."""
        body = parse_request(_ENDPOINTS[req.endpoint], raw)
        if body["model"] != req.model:
            raise BadRequest("model in the body does not match the request", param="model")
        adapter = take_adapter(body)
        if adapter is not None and not self.engine.adapters:
            raise EngineUnsupported(f"engine {self.engine.name} does not apply LoRA adapters "
                                    "(a fine-tuned model is served by llama-cpp workers)",
                                    param="model")
        self._seq += 1
        # The job's cap never exceeds what the proxy granted (reserved funds for).
        return InferenceJob(_ENDPOINTS[req.endpoint], body, (os.getpid() << 32) | self._seq,
                            granted=req.max_tokens,
                            lora=None if adapter is None else (adapter.sha256, adapter.data))

    def _training_request(self, req: Request, raw: bytes) -> TrainingRequest:
        if self.training is None:
            raise EngineUnsupported("this worker does not run fine-tuning jobs",
                                    param="model")
        job = TrainingRequest.parse(raw)
        if job.model != req.model:
            raise BadRequest("model in the job does not match the request", param="model")
        return job

    @staticmethod
    def _remember(link: _Link, ticket: int, usage: Usage) -> None:
        """Keep a ticketed job's usage for the report after a lost connection."""
        if not usage.total_tokens:
            return
        recent = link.recent
        recent[ticket] = usage
        if len(recent) > _MAX_REPORTS:
            recent.popitem(last=False)

    def _failed(self, rid: int, job: InferenceJob | _TrainingJob | None,
                err: RequestError) -> Error:
        """The Error that ends a stream early, with the usage of what the engine generated
        before it stopped (its meter; zero if generation never started), so it is billed."""
        if job is None:
            return Error.of(rid, err)
        usage = job.meter.usage()
        self._count_tokens(usage)
        if job.meter.estimated and usage.total_tokens:
            log.info("request %s ended early; its usage is estimated", rid)
        return Error.of(rid, err, usage)

    def _count_tokens(self, usage: Usage) -> None:
        self.stats.prompt_tokens += usage.prompt_tokens
        self.stats.completion_tokens += usage.completion_tokens

    def _count_error(self, code: str) -> None:
        self.stats.failed += 1
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1

    def _open(self, req: Request) -> tuple[bytes, bytes]:
        """A sealed request's body and response key (SealBroken if it does not open here)."""
        try:
            wrapped = decode_keys(req.seal_keys).get(self.node_id)
        except ProtocolError as exc:
            raise SealBroken(f"the sealed request's keys: {exc}") from None
        if wrapped is None:
            raise SealBroken(f"the request is not sealed to this worker ({self.node_id})")
        return open_request(req.body, wrapped, self._unwrapper,
                            route_info(req.endpoint, req.model, req.stream))

    def _receipt(self, req: Request, out: _Answer, usage: Usage) -> bytes:
        """The worker's signed part of this completion's receipt."""
        identity = self._identity
        if identity.generation != self._announced_generation:
            self._announce_certificate()  # renewed by a connection: the proxy learns it first
        key = identity.key
        image = self._channels_of.own.get("image_hash") or ""
        part = WorkerPart(
            worker=self.node_id, request_sha256=sha256_hex(req.body),
            response_sha256=out.transcript.hex(), records=out.count,
            sealed=out.sealer is not None, model=req.model,
            model_hash=self.engine.model_hash.hex(), image_hash=image,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens, reasoning_tokens=usage.reasoning_tokens,
            time=int(time.time()), certificate_sha256=self._channels_of.certificate_sha256())
        return Receipt(part, sign_part(part, key)).encode(compact=True)

    async def _generate(self, peer: Peer, rid: int,
                        outputs: AsyncIterator[EngineOutput],
                        stream: bool, limit_s: float, answer: _Answer) -> Usage:
        """Send what ``outputs`` yields (an engine's, or a fine-tuning job's events) and
        return its Usage; ``stream``: as server-sent events."""
        usage: Usage | None = None
        send = answer.sender(peer, rid)
        try:
            async with asyncio.timeout(limit_s if limit_s > 0 else None):
                async for out in outputs:
                    if isinstance(out, Usage):
                        usage = out
                    elif not stream:
                        await send(out, 1)  # type: ignore[arg-type]
                        self.stats.chunks += 1
                    elif type(out) is bytes:
                        await send(encode_event(out), 1)
                        self.stats.chunks += 1
                    else:  # a burst of events: as few messages as the frame size allows
                        for part in _bursts(out):  # type: ignore[arg-type]
                            await send(encode_events(part), len(part))
                        self.stats.chunks += len(out)
        except TimeoutError:
            raise RequestTimeout(f"generation did not finish within {limit_s:g}s") from None
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]
        if usage is None:
            raise RequestError("engine finished without reporting usage")
        return usage

    # --- health and stats -------------------------------------------------------------

    def _payout_snapshot(self, channel: str) -> dict[str, Any]:
        v = self.payouts.get(channel)
        return {"channel": channel, "payout_voucher": None if v is None else {
            "seqno": v.seqno, "cumulative_nanoton": v.cumulative, "boc": v.body_b64()}}

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        first = next(iter(self.links), None)
        paid = self._channels[0] if self._channels else ""
        account = next((link.account for link in self.links
                        if link.account.pubkey and (not paid or link.channel == paid)),
                       first.account if first else AccountCopy("worker_payout"))
        return {
            "role": "worker",
            "node_id": self.node_id,
            "uptime_s": uptime_since(self._started),
            # the first proxy served (its state "connected" when any is), then each
            "proxy": {**(first.snapshot() if first else {}), "state": self.proxy_state},
            "proxies": [link.snapshot() for link in self.links],
            "attestation": self.attestation,
            "engine": {"name": self.engine.name, "models": list(self.engine.models),
                       "cancelled": self.engine.cancelled,
                       "usage_estimated": self.engine.usage_estimated},
            "features": list(self.features),
            **({"training": {"jobs": self.training.jobs, "steps": self.training.steps,
                             "cancelled": self.training.cancelled}}
               if self.training is not None else {}),
            "active": self.active,
            "running": self.running,
            "max_concurrent": self.config.max_concurrent,
            "draining": self.draining,
            "requests": {"received": s.received, "completed": s.completed,
                         "failed": s.failed, "rejected": s.rejected,
                         "cancelled": s.cancelled, "waited": s.waited, "sealed": s.sealed,
                         "errors": dict(s.errors)},
            "tokens": {"prompt": s.prompt_tokens, "completion": s.completion_tokens},
            "chunks_sent": s.chunks,
            # the account kept from the proxy paying the first channel (else the first
            # proxy that sent a statement), then every channel's newest payout voucher
            "billing": {**account.snapshot(),
                        **(self._payout_snapshot(paid) if paid else {})},
            "payouts": [self._payout_snapshot(ch) for ch in self._channels],
        }

    def _http_app(self) -> web.Application:
        app = web.Application()

        async def health(_: web.Request) -> web.Response:
            ok = self.proxy_state == "connected"
            return json_response({"status": "ok" if ok else "degraded",
                                  "proxy": self.proxy_state}, 200 if ok else 503)

        async def stats(_: web.Request) -> web.Response:
            return json_response(self.snapshot())

        add_health_routes(app, health, stats, self.metrics)
        return app

    async def _families(self) -> list[Metric]:
        """The worker's /metrics read from its state (see ``cocoon.metrics``)."""
        s = self.stats
        earned = {(link.channel or link.address,): link.account.earned for link in self.links
                  if link.account.pubkey}
        paid = {(ch,): v.cumulative for ch, v in self.payouts.items()}
        return [
            *node_families("worker", self.node_id, uptime_since(self._started),
                           self._channels_of.refusals()),
            gauge("cocoon_worker_slots", "Requests the engine runs at once (what the worker "
                  "offers each proxy)", 0 if self.draining else self.config.max_concurrent),
            gauge("cocoon_worker_active_requests", "Requests under way, waiting included",
                  self.active),
            gauge("cocoon_worker_running_requests", "Requests the engine is running",
                  self.running),
            gauge("cocoon_worker_proxies_connected", "Proxies this worker serves",
                  sum(1 for link in self.links if link.up)),
            counter("cocoon_worker_waited_requests", "Requests that waited for a slot "
                    "another proxy's requests held", s.waited),
            counter("cocoon_worker_sealed_requests", "Requests that came sealed to this "
                    "worker", s.sealed),
            counter("cocoon_worker_chunks_sent", "Chunks of answers sent", s.chunks),
            gauge("cocoon_worker_seal_sessions", "Clients' session keys held open",
                  self._unwrapper.sessions),
            gauge("cocoon_channel_earned_nanoton", "Earned, per the paying proxy's last "
                  "statement", labels={"channel": earned}),
            gauge("cocoon_channel_payout_voucher_nanoton", "The newest payout voucher's "
                  "cumulative amount, by channel", labels={"channel": paid}),
        ]


@dataclass(slots=True)
class _TrainingJob:
    """A fine-tuning job under way: its request, and how far it has got (trained tokens
    as prompt tokens: what it is billed for, should it end early)."""

    request: TrainingRequest
    meter: UsageMeter = field(default_factory=UsageMeter)
    stream: bool = True  # its events go out as server-sent events


class _Answer:
    """What a job sends back: sealed records under the client's response key, or the bytes
    as they are; either way hashed as sent, for the receipt."""

    __slots__ = ("_hash", "first", "records", "sealer")

    def __init__(self, sealer: ResponseSealer | None) -> None:
        self.sealer = sealer
        self._hash = hashlib.sha256()
        self.records = 0
        self.first = 0.0  # time.monotonic() of its first chunk

    def sender(self, peer: Peer, rid: int) -> Callable[[bytes, int], Awaitable[None]]:
        sealer, send_chunk = self.sealer, peer.send_chunk
        if sealer is not None:
            async def sealed(data: bytes, events: int) -> None:
                if not self.first:
                    self.first = time.monotonic()
                await send_chunk(rid, sealer.seal(data, events))
            return sealed

        async def clear(data: bytes, events: int) -> None:
            if not self.first:
                self.first = time.monotonic()
            self._hash.update(data)
            self.records += 1
            await send_chunk(rid, data)
        return clear

    @property
    def transcript(self) -> bytes:
        return self.sealer.transcript if self.sealer is not None else self._hash.digest()

    @property
    def count(self) -> int:
        return self.sealer.records if self.sealer is not None else self.records


def _bursts(events: list[bytes]) -> list[list[bytes]]:
    """``events`` in runs of at most ``_BURST_BYTES`` of data (an event bigger than that
    alone): one Chunk each."""
    out: list[list[bytes]] = [[]]
    size = 0
    for e in events:
        if out[-1] and size + len(e) > _BURST_BYTES:
            out.append([])
            size = 0
        out[-1].append(e)
        size += len(e)
    return out
