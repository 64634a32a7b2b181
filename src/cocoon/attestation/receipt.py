"""Receipts: who produced an answer and what it cost, signed by both who know (pure).

For every completion the worker signs its part, :class:`WorkerPart`: the hash of the request
it received (sealed, when it was), the hash of its answer as it sent it (for a sealed answer
the SHA-256 of its records, ``cocoon.crypto.seal``; else of the answer's bytes), how many
records, the model, the hash of its weights, its image hash, the token counts and the time,
and the SHA-256 of its certificate. The proxy countersigns :class:`ProxyPart`: the hash of
the worker's signed part, the price, the cost, the client's cumulative charge and the seqno
of the voucher that covers it, and the SHA-256 of its own certificate (its evidence). The
client checks both, keeps the whole receipt (with both certificates) under its data dir,
and gives the app the compact one (certificates named by hash only) in the
``x-cocoon-receipt`` header.

Each part is canonical JSON (sorted keys, no spaces, UTF-8) signed with ECDSA P-256 / SHA-256 by
the key of the signer's RA-TLS certificate, so :func:`verify` needs nothing but the receipt
and a way to check certificates (the Intel root, or the local fake authority), offline.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cocoon.attestation.evidence import Claims, VerifiedEvidence
from cocoon.errors import AttestationError, ReceiptInvalid

__all__ = [
    "CERTIFICATES",
    "HEADER",
    "ProxyPart",
    "Receipt",
    "VerifiedReceipt",
    "WorkerPart",
    "check_signature",
    "check_worker_part",
    "sha256_hex",
    "sign_part",
    "verify",
]

HEADER: Final = "x-cocoon-receipt"
CERTIFICATES: Final = "certificates"
"""Where, beside a client's receipt files, the certificates they name are kept
(``SHA256.der``): the files hold receipts in their compact form."""
_VERSION: Final = 1

CertCheck = Callable[[bytes, str, int], tuple[x509.Certificate, Claims, VerifiedEvidence]]
"""(certificate DER, expected role, unix time) -> what verified; AttestationError if not."""


def _canonical(obj: dict[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8: what is signed, byte for byte."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _fields(part: WorkerPart | ProxyPart) -> dict[str, Any]:
    """A part's fields by name (all plain values: no copying, unlike ``asdict``)."""
    return {name: getattr(part, name) for name in part.__slots__}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ReceiptInvalid(f"{what} is missing", rule="receipt_format")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ReceiptInvalid(f"{what} is not base64", rule="receipt_format") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class WorkerPart:
    worker: str
    request_sha256: str
    response_sha256: str
    records: int
    sealed: bool
    model: str
    model_hash: str
    image_hash: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    time: int
    certificate_sha256: str
    v: int = _VERSION


@dataclass(frozen=True, slots=True)
class ProxyPart:
    proxy: str
    worker_part_sha256: str
    price_per_token: int
    coefficient: int
    billed_tokens: int
    cost_nanoton: int
    charged_total_nanoton: int
    voucher_seqno: int
    time: int
    certificate_sha256: str
    v: int = _VERSION


def _part(cls: type[Any], data: Any, what: str) -> Any:
    if not isinstance(data, dict):
        raise ReceiptInvalid(f"the {what} part is missing", rule="receipt_format")
    try:
        part = cls(**data)
    except TypeError:
        raise ReceiptInvalid(f"the {what} part has other fields than a receipt's",
                             rule="receipt_format") from None
    for name, typ in cls.__annotations__.items():
        value = getattr(part, name)
        want = {"str": str, "int": int, "bool": bool}[typ]
        if type(value) is not want:
            raise ReceiptInvalid(f"{what}.{name} is not a {typ}", rule="receipt_format")
    if part.v != _VERSION:
        raise ReceiptInvalid(f"receipt version {part.v} is not {_VERSION}",
                             rule="receipt_format")
    return part


def sign_part(part: WorkerPart | ProxyPart, key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.sign(_canonical(_fields(part)), ec.ECDSA(hashes.SHA256()))


def check_signature(cert: x509.Certificate, signature: bytes, part: WorkerPart | ProxyPart,
                    who: str) -> None:
    """``signature`` over ``part`` under ``cert``'s key (ReceiptInvalid, rule
    ``{who}_signature``, if not)."""
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise ReceiptInvalid(f"the {who}'s certificate key is not ECDSA",
                             rule=f"{who}_signature")
    try:
        pub.verify(signature, _canonical(_fields(part)), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ReceiptInvalid(f"the {who}'s signature does not verify under its certificate",
                             rule=f"{who}_signature") from None


@dataclass(frozen=True, slots=True)
class Receipt:
    """A receipt: the worker's signed part, the proxy's countersigned one, and (whole)
    both certificates."""

    worker: WorkerPart
    worker_signature: bytes
    proxy: ProxyPart | None = None
    proxy_signature: bytes = b""
    worker_certificate: bytes = b""
    proxy_certificate: bytes = b""

    def worker_bytes(self) -> bytes:
        """The worker's part with its signature: what the proxy's part hashes."""
        return _canonical(_fields(self.worker)) + self.worker_signature

    def to_json(self, *, compact: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"cocoon_receipt": _VERSION, "worker": _fields(self.worker),
                               "worker_signature": _b64(self.worker_signature)}
        if self.proxy is not None:
            out["proxy"] = _fields(self.proxy)
            out["proxy_signature"] = _b64(self.proxy_signature)
        if not compact:
            out["worker_certificate"] = _b64(self.worker_certificate)
            if self.proxy is not None:
                out["proxy_certificate"] = _b64(self.proxy_certificate)
        return out

    def with_certificates(self, find: Callable[[str], bytes | None]) -> Receipt:
        """The whole receipt of a compact one (or of one that carries only some of its
        certificates), those it lacks looked up by hash (``find``: SHA-256 hex -> DER, or
        None); itself when it is whole already."""
        worker = self.worker_certificate or find(self.worker.certificate_sha256) or b""
        proxy = self.proxy_certificate or (
            (find(self.proxy.certificate_sha256) or b"") if self.proxy else b"")
        if worker is self.worker_certificate and proxy is self.proxy_certificate:
            return self
        return replace(self, worker_certificate=worker, proxy_certificate=proxy)

    def encode(self, *, compact: bool = False, receipt_id: str = "") -> bytes:
        """Canonical JSON; ``receipt_id`` (the client's name for it) added as ``id``."""
        out = self.to_json(compact=compact)
        if receipt_id:
            out["id"] = receipt_id
        return _canonical(out)

    def header_value(self, receipt_id: str = "") -> str:
        """The compact receipt as an HTTP header value (base64url of its JSON)."""
        return base64.urlsafe_b64encode(
            self.encode(compact=True, receipt_id=receipt_id)).decode().rstrip("=")

    @classmethod
    def from_json(cls, data: Any) -> Receipt:
        if not isinstance(data, dict) or data.get("cocoon_receipt") != _VERSION:
            raise ReceiptInvalid("not a cocoon receipt (no \"cocoon_receipt\": 1)",
                                 rule="receipt_format")
        worker = _part(WorkerPart, data.get("worker"), "worker")
        proxy = (_part(ProxyPart, data["proxy"], "proxy") if "proxy" in data else None)
        return cls(worker, _unb64(data.get("worker_signature"), "worker_signature"),
                   proxy,
                   _unb64(data.get("proxy_signature"), "proxy_signature") if proxy else b"",
                   _unb64(data["worker_certificate"], "worker_certificate")
                   if "worker_certificate" in data else b"",
                   _unb64(data["proxy_certificate"], "proxy_certificate")
                   if "proxy_certificate" in data else b"")

    @classmethod
    def decode(cls, raw: bytes | str) -> Receipt:
        """A receipt as JSON, or as the header's base64url of it."""
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        text = text.strip()
        if not text.startswith("{"):
            try:
                text = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            except (binascii.Error, ValueError):
                raise ReceiptInvalid("neither receipt JSON nor its base64url",
                                     rule="receipt_format") from None
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ReceiptInvalid("the receipt is not JSON", rule="receipt_format") from None
        return cls.from_json(data)


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    receipt: Receipt
    worker_tier: str
    worker_image_hash: str
    proxy_tier: str | None
    worker_seal_key: bytes = b""  # the X25519 key the worker's certificate binds (sealing)

    def summary(self) -> dict[str, Any]:
        w, p = self.receipt.worker, self.receipt.proxy
        return {
            "valid": True,
            "worker": {"node": w.worker, "tier": self.worker_tier,
                       "image_hash": self.worker_image_hash or None, "model": w.model,
                       "model_hash": w.model_hash or None, "sealed": w.sealed},
            "tokens": {"prompt": w.prompt_tokens, "completion": w.completion_tokens,
                       "cached": w.cached_tokens, "reasoning": w.reasoning_tokens},
            "time": w.time,
            "proxy": None if p is None else {
                "node": p.proxy, "tier": self.proxy_tier, "cost_nanoton": p.cost_nanoton,
                "price_per_token_nanoton": p.price_per_token, "coefficient": p.coefficient,
                "billed_tokens": p.billed_tokens, "voucher_seqno": p.voucher_seqno,
                "charged_total_nanoton": p.charged_total_nanoton},
        }


def check_worker_part(receipt: Receipt, cert: x509.Certificate, claims: Claims,
                      verified: VerifiedEvidence, *, signature: bool = True) -> None:
    """The worker's part against its (checked) certificate: certificate hash, model hash,
    image hash and (unless ``signature`` is False: the proxy, which countersigns what it
    billed and leaves the worker's signature to the client) signature."""
    w = receipt.worker
    if w.certificate_sha256 != sha256_hex(receipt.worker_certificate):
        raise ReceiptInvalid("the worker's part names another certificate",
                             rule="worker_certificate")
    if signature:
        check_signature(cert, receipt.worker_signature, w, "worker")
    if w.model_hash != claims.model_hash.hex():
        raise ReceiptInvalid("the model hash differs from the worker's attested one",
                             rule="model_hash")
    image = verified.image_hash
    if w.image_hash != (image.hex() if image else ""):
        raise ReceiptInvalid("the image hash differs from the worker's evidence",
                             rule="image_hash")


def verify(receipt: Receipt, check: CertCheck, *,
           proxy_signature: bool = True) -> VerifiedReceipt:
    """Check a whole receipt: each certificate (evidence and all, at the time the receipt
    was signed), each signature under its certificate, and the hashes that tie the parts
    together. ReceiptInvalid (or the AttestationError of a certificate) naming the rule.
    ``proxy_signature=False`` leaves the proxy's signature unchecked (the client, which
    got the receipt from that proxy over its attested connection: ``cocoon receipt verify``
    checks it)."""
    if not receipt.worker_certificate:
        raise ReceiptInvalid("this receipt names its certificates by hash only (the compact "
                             "form) and they were not found: verify the whole one "
                             "(GET /v1/receipts/ID on the client), or keep its receipt "
                             "file beside the certificates/ directory the client writes",
                             rule="receipt_format")
    w = receipt.worker
    try:
        cert, claims, verified = check(receipt.worker_certificate, "worker", w.time)
    except AttestationError as exc:
        raise ReceiptInvalid(f"the worker's certificate: {exc}", rule=exc.rule) from None
    check_worker_part(receipt, cert, claims, verified)
    proxy_tier = None
    p = receipt.proxy
    if p is not None:
        if p.certificate_sha256 != sha256_hex(receipt.proxy_certificate):
            raise ReceiptInvalid("the proxy's part names another certificate",
                                 rule="proxy_certificate")
        try:
            pcert, _, pverified = check(receipt.proxy_certificate, "proxy", p.time)
        except AttestationError as exc:
            raise ReceiptInvalid(f"the proxy's certificate: {exc}", rule=exc.rule) from None
        if proxy_signature:
            check_signature(pcert, receipt.proxy_signature, p, "proxy")
        if p.worker_part_sha256 != sha256_hex(receipt.worker_bytes()):
            raise ReceiptInvalid("the proxy countersigned another worker part",
                                 rule="countersignature")
        proxy_tier = pverified.tier
    image = verified.image_hash
    return VerifiedReceipt(receipt, verified.tier, image.hex() if image else "", proxy_tier,
                           claims.seal_key)
