"""The ``[attestation]`` table: how a node proves itself and judges its peers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cocoon.attestation.evidence import TIERS
from cocoon.errors import ConfigError
from cocoon.validation import require_positive

__all__ = ["AttestationConfig", "split_tiers"]


def split_tiers(accept: str) -> tuple[str, ...]:
    """``"fake-tdx, tdx"`` -> ``("fake-tdx", "tdx")``: the names, unchecked."""
    return tuple(t.strip() for t in accept.split(",") if t.strip())


@dataclass(frozen=True, slots=True)
class AttestationConfig:
    """How a node proves itself and judges its peers (section ``[attestation]``)."""

    mode: Literal["none", "fake", "tdx"] = "none"  # the evidence this node presents
    tls: bool = True  # false: plain TCP, no identity at all (benchmarks, debugging only)
    accept: str = ""  # comma-separated tiers accepted from attested peers; "": by mode
    allow_list_file: str = ""  # TOML with image_hashes / model_hashes; "": any
    allow_debug: bool = False
    min_tcb_status: str = "UpToDate"
    require_tcb_status: bool = False
    # Intel collateral as JSON, offline: dcap-qvl's combined shape or PCS responses kept
    # verbatim (signed TCB info and QE identity, issuer chains, CRLs; all checked)
    collateral_file: str = ""
    fake_dir: str = ".cocoon/fake-tdx"  # keys of the simulated TDX authority (mode fake)
    fake_image: str = "cocoon"  # the simulated image whose measurements fake quotes carry
    cert_lifetime_s: float = 3600.0
    max_evidence_age_s: float = 86400.0

    def __post_init__(self) -> None:
        for tier in self.accepted_tiers():
            if tier not in TIERS:
                raise ConfigError(f"attestation.accept: unknown tier {tier!r} "
                                  f"({', '.join(TIERS)})")
        require_positive(self.cert_lifetime_s, "attestation.cert_lifetime_s")
        require_positive(self.max_evidence_age_s, "attestation.max_evidence_age_s")

    def accepted_tiers(self) -> tuple[str, ...]:
        if self.accept.strip():
            return split_tiers(self.accept)
        return {"none": TIERS, "fake": ("fake-tdx", "tdx"), "tdx": ("tdx",)}[self.mode]
