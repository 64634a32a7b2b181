"""This node's RA-TLS identity: its TLS key and certificate, issued and renewed.

The certificate carries the node's claims and the evidence its
:class:`~cocoon.attestation.evidence.Provider` made over them
(:func:`~cocoon.attestation.ratls.make_certificate`); :class:`TlsIdentity` re-issues it
(new key unless the key is fixed, new evidence) before it expires.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from cocoon.attestation.evidence import Claims, Evidence, Provider
from cocoon.attestation.ratls import make_certificate, public_key_der

__all__ = ["Clock", "TlsIdentity", "utcnow"]

_SKEW: Final = timedelta(minutes=5)  # certificates are backdated for peers' clock skew

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class TlsIdentity:
    """This node's TLS key and RA-TLS certificate, re-issued before it expires."""

    provider: Provider
    claims: Claims
    evidence: Evidence
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    lifetime: timedelta
    generation: int = 0  # bumped by each renewal
    fixed_key: bool = False  # renewals keep the key (a persistent identity)

    @classmethod
    def create(cls, provider: Provider, role: str, model: str = "", config_hash: bytes = b"",
               *, model_hash: bytes = b"", seal_key: bytes = b"",
               lifetime: timedelta = timedelta(hours=1),
               now: datetime | None = None,
               key: ec.EllipticCurvePrivateKey | None = None) -> TlsIdentity:
        """Evidence from ``provider`` over the claims of a key, and the certificate. The key
        is fresh (and renewed with the certificate) unless ``key`` is given: a persistent
        key is a client's account identity."""
        if lifetime <= timedelta(0):
            raise ValueError("lifetime must be positive")
        template = Claims(b"", role, model, config_hash, model_hash, seal_key)
        new_key, claims, evidence, cert = cls._issue(provider, template, lifetime,
                                                     now or utcnow(), key)
        return cls(provider, claims, evidence, new_key, cert, lifetime, fixed_key=key is not None)

    @staticmethod
    def _issue(provider: Provider, template: Claims, lifetime: timedelta, now: datetime,
               key: ec.EllipticCurvePrivateKey | None = None,
               ) -> tuple[ec.EllipticCurvePrivateKey, Claims, Evidence, x509.Certificate]:
        key = key or ec.generate_private_key(ec.SECP256R1())
        claims = dataclasses.replace(template, public_key=public_key_der(key.public_key()))
        evidence = provider.evidence(claims.report_data())
        cert = make_certificate(key, claims, evidence, not_before=now - _SKEW,
                                lifetime=lifetime + _SKEW)
        return key, claims, evidence, cert

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def refresh_if_needed(self, now: datetime, *, margin: float = 0.25) -> bool:
        """Re-issue (new key, new evidence) once less than ``margin`` of the lifetime is
        left; True if it did. Open connections keep their certificate."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        if self.not_after - now >= self.lifetime * margin:
            return False
        c = self.claims
        self.key, self.claims, self.evidence, self.certificate = self._issue(
            self.provider, c, self.lifetime, now, self.key if self.fixed_key else None)
        self.generation += 1
        return True
