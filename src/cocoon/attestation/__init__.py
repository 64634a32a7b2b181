"""Attestation: evidence (TDX quotes), RA-TLS certificates, policy, and providers."""

from cocoon.attestation.evidence import (
    Claims,
    Evidence,
    EvidenceKind,
    EvidenceVerifier,
    Measurements,
    Provider,
    Step,
    Tier,
    VerifiedEvidence,
    image_hash,
)

__all__ = [
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
