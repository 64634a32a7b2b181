"""Evidence providers: ``none``, ``tdx`` (configfs-tsm); ``fake-tdx`` lives in ``fake_tdx``."""

from cocoon.attestation.providers.none import NoneProvider
from cocoon.attestation.providers.tdx import DEFAULT_TSM_REPORT_PATH, TdxProvider

__all__ = ["DEFAULT_TSM_REPORT_PATH", "NoneProvider", "TdxProvider"]
