"""Chain access: one interface (:class:`Chain`), backends in submodules.

``embedded`` (default): :class:`cocoon.chain.embedded.EmbeddedChain`, a local chain that
executes the compiled contracts (``contracts/build/*.json``) in the TVM emulator
(``@ton/sandbox`` in a Node child process), persists its state and lets tests control time.
"""

from cocoon.chain.base import (
    DEFAULT_MSG_VALUE,
    TOPUP_FEE,
    Chain,
    ChannelSpec,
    ChannelState,
    ChannelStatus,
    OutMessage,
    TxInfo,
    TxResult,
)
from cocoon.chain.errors import ChainError, ChainUnavailable, ContractRejected
from cocoon.chain.vouchers import ChainVoucher, ChannelKind, sign_voucher

__all__ = [
    "DEFAULT_MSG_VALUE",
    "TOPUP_FEE",
    "Chain",
    "ChainError",
    "ChainUnavailable",
    "ChainVoucher",
    "ChannelKind",
    "ChannelSpec",
    "ChannelState",
    "ChannelStatus",
    "ContractRejected",
    "OutMessage",
    "TxInfo",
    "TxResult",
    "sign_voucher",
]
