"""What attestation produces and consumes, independent of how evidence is made (pure).

* :class:`Claims` are what a node asserts about itself: its TLS public key, role, model,
  config hash, model hash and (a worker) the key requests are sealed to.
  :meth:`Claims.report_data` hashes them into the 64 bytes a TDX quote binds
  (``reportdata``), so evidence cannot be moved to another key or role.
* :class:`Evidence` is what a provider makes for given report data: a kind and opaque bytes
  (a TDX quote for ``tdx`` and ``fake-tdx``; nothing for ``none``).
* :class:`VerifiedEvidence` is what a verifier establishes, with every step it checked.
* :class:`Provider` makes evidence; :class:`EvidenceVerifier` checks it. Policy
  (``attestation.policy``) then decides whether verified evidence is acceptable.
"""

from __future__ import annotations

import hashlib
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, Protocol

__all__ = [
    "TIERS",
    "Claims",
    "Evidence",
    "EvidenceKind",
    "EvidenceVerifier",
    "Measurements",
    "Provider",
    "Step",
    "Tier",
    "VerifiedEvidence",
    "image_hash",
]

EvidenceKind = Literal["none", "fake-tdx", "tdx"]
Tier = Literal["unattested", "fake-tdx", "tdx"]
TIERS: Final[tuple[Tier, ...]] = typing.get_args(Tier)  # weakest first

_CLAIMS_DOMAIN: Final = b"cocoon-ra-tls-claims-v1"


def image_hash(mrtd: bytes, mrconfigid: bytes, mrowner: bytes, mrownerconfig: bytes,
               rtmr0: bytes, rtmr1: bytes, rtmr2: bytes, rtmr3: bytes) -> bytes:
    """COCOON's image hash of a TD: SHA-256(mrtd || mrconfigid || mrowner || mrownerconfig ||
    rtmr0 || rtmr1 || rtmr2 || rtmr3 || 64 zero bytes)."""
    parts = (mrtd, mrconfigid, mrowner, mrownerconfig, rtmr0, rtmr1, rtmr2, rtmr3)
    if any(len(p) != 48 for p in parts):
        raise ValueError("TDX measurements are 48 bytes each")
    return hashlib.sha256(b"".join(parts) + bytes(64)).digest()


@dataclass(frozen=True, slots=True)
class Claims:
    """What a node asserts; ``public_key`` is the DER SubjectPublicKeyInfo of its TLS key."""

    public_key: bytes
    role: str
    model: str = ""
    config_hash: bytes = b""
    model_hash: bytes = b""  # hash of the served weights (workers), for model allow-lists
    seal_key: bytes = b""
    """A worker's X25519 public key (32 raw bytes) that clients seal requests to
    (``cocoon.crypto.seal``); empty for other roles. The evidence binds it like the rest."""

    def report_data(self) -> bytes:
        """64 bytes: SHA-512 over a length-prefixed, domain-separated encoding."""
        h = hashlib.sha512(_CLAIMS_DOMAIN)
        for part in (self.public_key, self.role.encode(), self.model.encode(),
                     self.config_hash, self.model_hash, self.seal_key):
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
        return h.digest()


@dataclass(frozen=True, slots=True)
class Evidence:
    kind: EvidenceKind
    quote: bytes = b""


@dataclass(frozen=True, slots=True)
class Measurements:
    """The TD measurements a quote reports (48 bytes each; attributes 8 bytes)."""

    mrtd: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    td_attributes: bytes

    @property
    def image_hash(self) -> bytes:
        return image_hash(self.mrtd, self.mrconfigid, self.mrowner, self.mrownerconfig,
                          self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def debug(self) -> bool:
        """TDATTRIBUTES.DEBUG is bit 0 of the first byte."""
        return bool(self.td_attributes[0] & 1)


@dataclass(frozen=True, slots=True)
class Step:
    """One verification step and its outcome, in the order checked."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VerifiedEvidence:
    tier: Tier
    report_data: bytes
    measurements: Measurements | None = None
    tcb_status: str | None = None  # from Intel collateral when provided
    steps: tuple[Step, ...] = field(default_factory=tuple)

    @property
    def image_hash(self) -> bytes | None:
        return self.measurements.image_hash if self.measurements else None


class Provider(Protocol):
    """Makes evidence binding ``report_data`` (64 bytes) to this machine."""

    name: EvidenceKind

    def evidence(self, report_data: bytes) -> Evidence: ...


class EvidenceVerifier(Protocol):
    """Checks evidence of one kind at time ``at``; raises AttestationError with the rule."""

    def verify(self, evidence: Evidence, report_data: bytes, at: datetime) -> VerifiedEvidence:
        ...
