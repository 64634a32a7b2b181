"""One request's seal at the client: the workers checked, the body sealed for them, the
answer opened, the receipt checked (see ``cocoon.crypto.seal`` and
``cocoon.attestation.receipt``).

With ``client.seal`` on, a request's body is sealed once, and its key wrapped to each worker
of the proxy's roster that serves the model and whose certificate passes this client's own
attestation policy (evidence, tiers, image and model allow-lists; at most
``_CANDIDATES``, drawn at random when more do): the proxy routes it among those, with no
round trip. Should it pick another (one that joined since the roster), it sends that
worker's certificate in a ``Route``; it is checked the same way before the key is wrapped to
it. The answer's records are opened in order as they come (a record that fails ends the
request, none of it delivered); at the ``End`` the worker's receipt must name the sealed
request and the records received, or the answer was cut or altered.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Final

from cocoon.attestation.receipt import CERTIFICATES, Receipt, sha256_hex, verify
from cocoon.crypto.seal import (
    KeyWrapper,
    ResponseOpener,
    SealedBody,
    encode_keys,
    route_info,
    seal_body,
)
from cocoon.errors import AttestationError, SealBroken, UntrustedWorker
from cocoon.nodes.channels import PeerCheck
from cocoon.openai import Envelope
from cocoon.transport import Peer
from cocoon.wire import End, Request, Route, Sealed, WorkerInfo

__all__ = ["ReceiptBook", "RequestSeal"]

log = logging.getLogger(__name__)

_KEPT: Final = 4096  # receipts answered at GET /v1/receipts/{id}
_CANDIDATES: Final = 4  # the most workers a request is sealed to up front
# certificates known by hash: more than the proxies remember sending (4096 each, up to
# client.max_proxies of them), so a receipt that leaves one out always finds it here
_KEPT_CERTIFICATES: Final = 16384


class RequestSeal:
    """The seal of one request (``mode`` on or require), or its clear counterpart (off),
    which still hashes the answer for the receipt."""

    __slots__ = ("_body", "_check", "_clear", "_env", "_find", "_info", "_keys", "_mode",
                 "_opener", "_request_hash", "_seal_keys", "_wrapper")

    def __init__(self, env: Envelope, mode: str, check: PeerCheck, wrapper: KeyWrapper,
                 roster: tuple[WorkerInfo, ...] = (),
                 find: Callable[[str], bytes | None] = lambda _: None,
                 requires: str = "") -> None:
        self._env = env
        self._wrapper = wrapper  # the client's sessions with the workers
        self._find = find  # certificates by SHA-256 hex, for receipts that name them
        self._mode = mode
        self._check = check
        self._clear = hashlib.sha256()
        self._keys: dict[str, bytes] = {}  # worker -> the content key wrapped to it
        self._seal_keys: set[bytes] = set()  # the workers' keys it was wrapped to
        self._opener: ResponseOpener | None = None
        self._info = route_info(env.endpoint, env.model, env.stream)
        if mode == "off":
            self._body: SealedBody | None = None
            self._request_hash = sha256_hex(env.body)
            return
        self._body = seal_body(env.body, self._info)
        self._opener = ResponseOpener(self._body.response_key)
        self._request_hash = sha256_hex(self._body.data)
        accepted = [(w.node_id, key) for w in roster if env.model in w.models
                    and (not requires or requires in w.features)
                    and (key := self._accepted(w)) is not None]
        if len(accepted) > _CANDIDATES:
            accepted = random.sample(accepted, _CANDIDATES)
        for worker, key in accepted:
            self._wrap(worker, key)

    @property
    def sealed(self) -> bool:
        return self._body is not None

    def request(self, clear: Request) -> Request:
        """The wire request: ``clear`` as it is, or with the sealed body and its keys."""
        if self._body is None:
            return clear
        return replace(clear, body=self._body.data, seal_size=len(self._body.data),
                       seal_keys=encode_keys(self._keys))

    def _accepted(self, worker: WorkerInfo) -> bytes | None:
        """The seal key of a roster's worker this client accepts; None (logged) if not."""
        try:
            return self._trusted(worker.node_id, worker.certificate)
        except UntrustedWorker as exc:
            log.debug("not sealing to %s: %s", worker.node_id, exc)
            return None

    def _trusted(self, worker: str, certificate: bytes) -> bytes:
        """The seal key of a worker whose certificate passes this client's policy;
        UntrustedWorker naming the rule otherwise."""
        try:
            _, claims, verified = self._check(certificate, "worker")
        except AttestationError as exc:
            raise UntrustedWorker(f"the worker {worker[:64]!r} fails this client's policy: "
                                  f"{exc.rule}: {exc}") from None
        if self._mode == "require" and verified.tier == "unattested":
            raise UntrustedWorker(f"the worker {worker[:64]!r} is unattested and "
                                  "client.seal is require: its seal key is only its word")
        if len(claims.seal_key) != 32:
            raise UntrustedWorker(f"the worker {worker[:64]!r} offers no seal key")
        return claims.seal_key

    def _wrap(self, worker: str, seal_key: bytes) -> bytes:
        """The content key wrapped to ``worker``, whose (checked) key is ``seal_key``."""
        assert self._body is not None
        wrapped = self._keys[worker] = self._wrapper.wrap(self._body.content_key, seal_key,
                                                          self._info)
        self._seal_keys.add(seal_key)
        return wrapped

    def route(self, route: Route, peer: Peer, req_id: int) -> None:
        """The proxy chose ``route.worker``, whom the request was not sealed to: check its
        certificate and send it the content key. UntrustedWorker when it fails this
        client's policy."""
        if self._body is None:
            raise SealBroken("the proxy asked for a key of a request sent in the clear")
        seal_key = self._trusted(route.worker, route.certificate)
        peer.send(Sealed(req_id, route.worker, self._wrap(route.worker, seal_key)))

    def open(self, data: bytes) -> bytes:
        """The app's bytes in a chunk: opened (SealBroken if a record fails), or as they
        came."""
        opener = self._opener
        if opener is not None:
            return opener.open(data)
        self._clear.update(data)
        return data

    def receipt(self, end: End) -> Receipt | None:
        """The receipt of a completed answer, checked. For a sealed one it must name the
        request as sealed and every record received (else SealBroken: the answer was cut or
        altered); a clear one whose receipt does not hold gets none (logged)."""
        try:
            receipt = self._checked(end)
        except (AttestationError, SealBroken) as exc:
            if self.sealed:
                raise SealBroken(f"the answer's receipt does not hold: {exc}") from None
            log.warning("a receipt that does not hold was dropped: %s", exc)
            return None
        return receipt

    def _checked(self, end: End) -> Receipt | None:
        if not end.receipt:
            if self.sealed:
                raise SealBroken("the answer ended without the worker's receipt")
            return None
        receipt = Receipt.decode(end.receipt).with_certificates(self._find)
        # the worker's signature here (it ties the answer to the worker); the proxy's, which
        # came over the proxy's own attested connection, is cocoon receipt verify's to check
        verified = verify(receipt, lambda der, role, _at: self._check(der, role),
                          proxy_signature=False)
        w = receipt.worker
        opener = self._opener
        if w.request_sha256 != self._request_hash:
            raise SealBroken("the receipt names another request")
        if opener is not None:
            if not opener.complete or w.records != opener.records:
                raise SealBroken(f"the worker sent {w.records} records, {opener.records} "
                                 "arrived whole")
            if w.response_sha256 != opener.transcript.hex():
                raise SealBroken("the records that arrived are not those the worker sent")
            if verified.worker_seal_key not in self._seal_keys:
                raise SealBroken("the receipt is signed by a worker the request was not "
                                 "sealed to")
        elif w.response_sha256 != self._clear.hexdigest():
            raise SealBroken("the answer that arrived is not the one the worker sent")
        if (w.prompt_tokens, w.completion_tokens) != (end.prompt_tokens,
                                                      end.completion_tokens):
            raise SealBroken("the receipt's token counts differ from the reported ones")
        return receipt


class ReceiptBook:
    """The receipts this client got: the newest in memory (by id), and every one appended
    to a daily JSON-lines file under ``directory`` (0600) when it is set, in its compact
    form; the certificates it names are written once each, as ``certificates/SHA256.der``
    beside it (where ``cocoon receipt verify`` finds them). A receipt's certificates are
    shared in memory, not copied per receipt."""

    def __init__(self, directory: str) -> None:
        self._dir = Path(directory) if directory else None
        # the newest receipts, compact (certificates by hash): about 1.3 KB each
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._certs: OrderedDict[str, bytes] = OrderedDict()  # SHA-256 hex -> DER
        self._open: tuple[str, int] | None = None  # today's file: (name, descriptor)
        if self._dir is not None:
            (self._dir / CERTIFICATES).mkdir(parents=True, exist_ok=True, mode=0o700)

    def learn(self, der: bytes) -> None:
        """Keep a certificate the proxy sent (roster, route): receipts name it by hash."""
        self._intern(der)

    def find(self, digest: str) -> bytes | None:
        return self._certs.get(digest)

    def _intern(self, der: bytes) -> bytes:
        if not der:
            return der
        digest = sha256_hex(der)
        kept = self._certs.get(digest)
        if kept is not None:
            self._certs.move_to_end(digest)
            return kept
        self._certs[digest] = der
        while len(self._certs) > _KEPT_CERTIFICATES:
            self._certs.popitem(last=False)
        if self._dir is not None:
            path = self._dir / CERTIFICATES / f"{digest}.der"
            if not path.exists():
                self._write(path, der, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
        return der

    def keep(self, receipt_id: str, receipt: Receipt) -> None:
        self._intern(receipt.worker_certificate)
        self._intern(receipt.proxy_certificate)
        compact = receipt.encode(compact=True, receipt_id=receipt_id)
        # a copy: orjson's own bytes keep its whole working buffer (4 KiB and more each)
        self._kept[receipt_id] = bytes(memoryview(compact))
        while len(self._kept) > _KEPT:
            self._kept.popitem(last=False)
        if self._dir is not None:
            try:
                os.write(self._day_file(), compact + b"\n")
            except OSError as exc:
                log.error("could not keep a receipt in %s: %s", self._dir, exc)

    def _day_file(self) -> int:
        """The descriptor of today's receipt file (opened once a day, appended to)."""
        assert self._dir is not None
        name = time.strftime("receipts-%Y-%m-%d.jsonl", time.gmtime())
        if self._open is None or self._open[0] != name:
            self.close()
            fd = os.open(self._dir / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._open = (name, fd)
        return self._open[1]

    def close(self) -> None:
        if self._open is not None:
            os.close(self._open[1])
            self._open = None

    @staticmethod
    def _write(path: Path, data: bytes, flags: int) -> None:
        try:
            fd = os.open(path, flags, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("could not keep a receipt in %s: %s", path, exc)

    def get(self, receipt_id: str) -> bytes | None:
        """The whole receipt (both certificates in it, while this book still holds them),
        as JSON."""
        compact = self._kept.get(receipt_id)
        if compact is None:
            return None
        return Receipt.decode(compact).with_certificates(self.find).encode(
            receipt_id=receipt_id)
