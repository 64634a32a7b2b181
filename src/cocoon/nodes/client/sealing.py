"""One request's seal at the client: the worker checked, the body sealed to it, the answer
opened, the receipt checked (see ``cocoon.crypto.seal`` and ``cocoon.attestation.receipt``).

With ``client.seal`` on, a request leaves with no body; the proxy names the worker it chose
in a ``Route`` with that worker's certificate, which is checked here against this client's
own attestation policy (evidence, tiers, image and model allow-lists) before the body,
sealed to the key in the certificate's claims, goes out. A failover brings another ``Route``
and the body is sealed anew. The answer's records are opened in order as they come (a record
that fails ends the request, none of it delivered); at the ``End`` the worker's receipt must
name the sealed request and the records received, or the answer was cut or altered.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Final

from cocoon.attestation.receipt import Receipt, sha256_hex, verify
from cocoon.crypto.seal import ResponseOpener, seal_request
from cocoon.errors import AttestationError, SealBroken, UntrustedWorker
from cocoon.nodes.channels import PeerCheck
from cocoon.openai import Envelope
from cocoon.transport import Peer
from cocoon.wire import End, Route, Sealed

__all__ = ["ReceiptBook", "RequestSeal"]

log = logging.getLogger(__name__)

_KEPT: Final = 4096  # receipts answered at GET /v1/receipts/{id}


class RequestSeal:
    """The seal of one request (``mode`` on or require), or its clear counterpart (off),
    which still hashes the answer for the receipt."""

    __slots__ = ("_check", "_clear", "_env", "_mode", "_opener", "_request_hash",
                 "_seal_key", "worker")

    def __init__(self, env: Envelope, mode: str, check: PeerCheck) -> None:
        self._env = env
        self._mode = mode
        self._check = check
        self._opener: ResponseOpener | None = None
        self._clear = hashlib.sha256()
        self._request_hash = "" if self.sealed else sha256_hex(env.body)
        self._seal_key = b""
        self.worker = ""

    @property
    def sealed(self) -> bool:
        return self._mode != "off"

    def route(self, route: Route, peer: Peer, req_id: int) -> None:
        """The proxy chose ``route.worker``: check its certificate, seal the body to it and
        send it. UntrustedWorker when the certificate fails this client's policy."""
        try:
            _, claims, verified = self._check(route.certificate, "worker")
        except AttestationError as exc:
            raise UntrustedWorker(f"the worker {route.worker[:64]!r} the proxy chose fails "
                                  f"this client's policy: {exc.rule}: {exc}") from None
        if self._mode == "require" and verified.tier == "unattested":
            raise UntrustedWorker(f"the worker {route.worker[:64]!r} is unattested and "
                                  "client.seal is require: its seal key is only its word")
        if len(claims.seal_key) != 32:
            raise UntrustedWorker(f"the worker {route.worker[:64]!r} offers no seal key")
        env = self._env
        payload, response_key = seal_request(env.body, claims.seal_key, endpoint=env.endpoint,
                                             model=env.model, stream=env.stream)
        self._opener = ResponseOpener(response_key)
        self._request_hash = sha256_hex(payload)
        self._seal_key = claims.seal_key
        self.worker = route.worker
        peer.send(Sealed(req_id, route.worker, payload))

    def open(self, data: bytes) -> bytes:
        """The app's bytes in a chunk: opened (SealBroken if a record fails), or as they
        came."""
        opener = self._opener
        if opener is not None:
            return opener.open(data)
        if self.sealed:
            raise SealBroken("an answer came before the request was sealed to a worker")
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
        receipt = Receipt.decode(end.receipt)
        verified = verify(receipt, lambda der, role, _at: self._check(der, role))
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
            claims = self._check(receipt.worker_certificate, "worker")[1]
            if claims.seal_key != self._seal_key:
                raise SealBroken("the receipt is signed by another worker than the one the "
                                 "request was sealed to")
        elif w.response_sha256 != self._clear.hexdigest():
            raise SealBroken("the answer that arrived is not the one the worker sent")
        if (w.prompt_tokens, w.completion_tokens) != (end.prompt_tokens,
                                                      end.completion_tokens):
            raise SealBroken("the receipt's token counts differ from the reported ones")
        del verified
        return receipt


class ReceiptBook:
    """The receipts this client got: the newest in memory (by id), and every one appended
    to a daily JSON-lines file under ``directory`` (0600) when it is set."""

    def __init__(self, directory: str) -> None:
        self._dir = Path(directory) if directory else None
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def keep(self, receipt_id: str, receipt: Receipt) -> None:
        whole = receipt.encode(receipt_id=receipt_id)
        self._kept[receipt_id] = whole
        while len(self._kept) > _KEPT:
            self._kept.popitem(last=False)
        if self._dir is None:
            return
        path = self._dir / time.strftime("receipts-%Y-%m-%d.jsonl", time.gmtime())
        line = whole + b"\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("could not keep a receipt in %s: %s", path, exc)

    def get(self, receipt_id: str) -> bytes | None:
        return self._kept.get(receipt_id)
