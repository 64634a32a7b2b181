"""The ``none`` provider: no attestation at all (tier ``unattested``)."""

from __future__ import annotations

from cocoon.attestation.evidence import Evidence, EvidenceKind

__all__ = ["NoneProvider"]


class NoneProvider:
    """Makes empty evidence of kind ``none``, whatever the report data."""

    name: EvidenceKind = "none"

    def evidence(self, report_data: bytes) -> Evidence:
        return Evidence("none")
