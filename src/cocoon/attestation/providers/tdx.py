"""The ``tdx`` provider: real TDX quotes through Linux configfs-tsm.

For each quote: ``mkdir <base>/<name>``, write the 64 report-data bytes to ``inblob``, read
``outblob`` (the quote), ``rmdir``. ``base`` defaults to ``/sys/kernel/config/tsm/report`` and
is a constructor argument so tests can emulate the interface in a directory. Construction on a
host without it raises :class:`~cocoon.errors.AttestationError` (rule ``tdx_unavailable``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Final

from cocoon.attestation.evidence import Evidence, EvidenceKind
from cocoon.errors import AttestationError

__all__ = ["DEFAULT_TSM_REPORT_PATH", "TdxProvider"]

DEFAULT_TSM_REPORT_PATH: Final = Path("/sys/kernel/config/tsm/report")


class TdxProvider:
    """Produces TDX quotes via configfs-tsm at ``base``."""

    name: EvidenceKind = "tdx"

    def __init__(self, base: Path = DEFAULT_TSM_REPORT_PATH) -> None:
        if not base.is_dir():
            raise AttestationError(
                f"configfs-tsm not found at {base}: this host cannot produce TDX quotes; "
                "use --attestation fake or none", rule="tdx_unavailable")
        self.base = base

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        entry = self.base / f"cocoon-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            entry.mkdir()
        except OSError as e:
            raise AttestationError(f"configfs-tsm: cannot create {entry}: {e}",
                                   rule="tdx_unavailable") from None
        try:
            (entry / "inblob").write_bytes(report_data)
            quote = self._read_outblob(entry)
        except OSError as e:
            raise AttestationError(f"configfs-tsm: quote generation failed: {e}",
                                   rule="tdx_unavailable") from None
        finally:
            with contextlib.suppress(OSError):
                self._remove(entry)
        if not quote:
            raise AttestationError("configfs-tsm returned an empty quote",
                                   rule="tdx_unavailable")
        return Evidence("tdx", quote)

    # The two kernel-side effects, separate so a test can emulate configfs in a directory.
    def _read_outblob(self, entry: Path) -> bytes:
        return (entry / "outblob").read_bytes()

    def _remove(self, entry: Path) -> None:
        entry.rmdir()  # configfs removes the attribute files with the directory
