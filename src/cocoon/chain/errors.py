"""Errors of the chain layer.

Contract rejections are :class:`cocoon.errors.PaymentError` subclasses carrying the compute
phase exit code and its meaning from contracts/README.md ("Exit codes").  Use
:func:`rejection_for` to get the right class for an exit code. A code whose failure already
has a name in :mod:`cocoon.errors` is also that class (one name per failure: a replay is a
:class:`~cocoon.errors.VoucherReplay` whether the ledger or the contract caught it).

:class:`ChainError`, :class:`ChainUnavailable` and :class:`ChainTimeout` are defined in
:mod:`cocoon.errors` and re-exported here; :class:`ChainUnauthorized` (the chain service
refused the caller's token) is a :class:`ChainError` of this layer.
"""

from __future__ import annotations

from typing import Any

from cocoon.errors import (
    ChainError,
    ChainTimeout,
    ChainUnavailable,
    InsufficientFunds,
    PaymentError,
    VoucherInvalid,
    VoucherRegression,
    VoucherReplay,
)

__all__ = [
    "EXIT_MEANINGS",
    "BadVoucherSignature",
    "ChainError",
    "ChainTimeout",
    "ChainUnauthorized",
    "ChainUnavailable",
    "ContractRejected",
    "EarlyClose",
    "HashAlreadyPresent",
    "HashNotPresent",
    "InsufficientChannelBalance",
    "InsufficientValue",
    "StakeTooLow",
    "UnknownOp",
    "VoucherAmountDecreased",
    "VoucherReplayed",
    "VoucherWrongChannel",
    "VoucherWrongKind",
    "WrongRegistry",
    "WrongSender",
    "WrongState",
    "rejection_for",
]

EXIT_MEANINGS: dict[int, str] = {
    100: "wrong sender (not the funder / payee / registry owner, or a proxy listing that "
         "does not come from a genuine stake contract)",
    101: "bad voucher / state commit signature",
    102: "replay: voucher / commit seqno not newer than the last accepted",
    103: "voucher cumulative amount below the already charged amount",
    104: "insufficient balance for the voucher's delta",
    105: "early close: finalize before closeAt",
    106: "wrong state for this op",
    107: "insufficient value attached to a top-up (< amount + 0.01 TON)",
    108: "voucher / commit is for another contract address",
    109: "voucher of the other kind (client charge vs worker payout), or wrong commit op",
    110: "registry: hash already present",
    111: "registry: hash not present (or no proxy listing to remove)",
    112: "proxy: stake below the minimum (the stake's own, or the registry's for a listing)",
    113: "registry: the stake contract lists in another registry",
    0xFFFF: "unknown op",
    9: "malformed message/params cell (TVM cell underflow)",
}


class ChainUnauthorized(ChainError):
    """The chain service refused this caller's RPC token (missing or wrong): the message
    names ``chain.token_file``, the key that gives it."""


class ContractRejected(PaymentError):
    """A contract's compute phase failed; ``exit_code`` and ``meaning`` say why."""

    status = 402
    exit_code: int = -1

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None,
        address: str = "",
        result: Any = None,
    ) -> None:
        code = -1 if exit_code is None else exit_code
        self.exit_code = code
        self.meaning = EXIT_MEANINGS.get(code, "transaction failed")
        self.address = address
        self.result = result
        super().__init__(f"{message}: exit code {code} ({self.meaning})")


class WrongSender(ContractRejected):
    exit_code = 100


class BadVoucherSignature(ContractRejected, VoucherInvalid):
    exit_code = 101


class VoucherReplayed(ContractRejected, VoucherReplay):
    exit_code = 102


class VoucherAmountDecreased(ContractRejected, VoucherRegression):
    exit_code = 103


class InsufficientChannelBalance(ContractRejected, InsufficientFunds):
    exit_code = 104


class EarlyClose(ContractRejected):
    exit_code = 105


class WrongState(ContractRejected):
    exit_code = 106


class InsufficientValue(ContractRejected):
    exit_code = 107


class VoucherWrongChannel(ContractRejected):
    exit_code = 108


class VoucherWrongKind(ContractRejected):
    exit_code = 109


class HashAlreadyPresent(ContractRejected):
    exit_code = 110


class HashNotPresent(ContractRejected):
    exit_code = 111


class StakeTooLow(ContractRejected):
    exit_code = 112


class WrongRegistry(ContractRejected):
    exit_code = 113


class UnknownOp(ContractRejected):
    exit_code = 0xFFFF


_BY_CODE: dict[int, type[ContractRejected]] = {
    cls.exit_code: cls
    for cls in (
        WrongSender,
        BadVoucherSignature,
        VoucherReplayed,
        VoucherAmountDecreased,
        InsufficientChannelBalance,
        EarlyClose,
        WrongState,
        InsufficientValue,
        VoucherWrongChannel,
        VoucherWrongKind,
        HashAlreadyPresent,
        HashNotPresent,
        StakeTooLow,
        WrongRegistry,
        UnknownOp,
    )
}


def rejection_for(exit_code: int | None) -> type[ContractRejected]:
    """The :class:`ContractRejected` subclass for an exit code (the base class if unmapped)."""
    if exit_code is None:
        return ContractRejected
    return _BY_CODE.get(exit_code, ContractRejected)
