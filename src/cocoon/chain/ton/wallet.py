"""The ``ton`` backend's wallet: a WalletV4R2 loaded from a 24-word mnemonic file, and the
signed external messages that make it send one :class:`OutgoingMessage`.  Pure (no network).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytoniq.contract.contract import Contract
from pytoniq.contract.wallets.wallet import WALLET_V4_R2_CODE, Wallet, WalletV4
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.cell import Cell
from pytoniq_core.crypto.keys import mnemonic_is_valid, mnemonic_to_private_key
from pytoniq_core.tlb.account import StateInit

from cocoon.chain import messages
from cocoon.chain.ton._cells import parse
from cocoon.errors import ConfigError

__all__ = ["SEND_MODE", "WALLET_ID", "OutgoingMessage", "TonWallet", "load_mnemonic"]

WALLET_ID = 698983191
"""Standard WalletV4R2 subwallet id for workchain 0 (what wallet apps use)."""
SEND_MODE = 3
"""Wallet send mode: pay forward fees separately (1) + ignore action errors (2), so a failed
send still bumps the wallet's seqno instead of letting the external be replayed."""
_MNEMONIC_WORDS = 24


def load_mnemonic(path: str | os.PathLike[str]) -> list[str]:
    """The 24 words of a TON mnemonic file; ConfigError (naming the file, never echoing the
    words) when the file is missing, accessible by group/others, or not a valid mnemonic."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ConfigError(f"chain.mnemonic_file {p}: cannot read it ({exc.strerror})") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"chain.mnemonic_file {p} is accessible by group/others (mode {mode:o}); "
            f"chmod 600 {p}"
        )
    try:
        words = p.read_text("utf-8").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"chain.mnemonic_file {p}: cannot read it ({exc})") from None
    if len(words) != _MNEMONIC_WORDS:
        raise ConfigError(
            f"chain.mnemonic_file {p}: expected {_MNEMONIC_WORDS} words, found {len(words)}"
        )
    words = [w.lower() for w in words]
    if not mnemonic_is_valid(words):
        raise ConfigError(
            f"chain.mnemonic_file {p}: not a valid TON mnemonic (wrong word or checksum; "
            "mnemonics with a password are not supported)"
        )
    return words


def _v4r2_code() -> Cell:
    code: Cell = WALLET_V4_R2_CODE
    return code


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One internal message a :class:`TonChain` operation sends from its wallet."""

    destination: str
    value: int
    body: Cell
    state_init: Cell | None = None
    bounce: bool = True
    what: str = "message"


@dataclass(frozen=True, slots=True)
class TonWallet:
    """A WalletV4R2 (workchain 0, subwallet :data:`WALLET_ID`) and its key; builds and signs
    the external messages that make it send an :class:`OutgoingMessage`.  Pure."""

    public_key: bytes
    secret_key: bytes = field(repr=False)
    wallet_id: int = WALLET_ID

    @classmethod
    def from_mnemonic(cls, words: Sequence[str]) -> TonWallet:
        public, secret = mnemonic_to_private_key(list(words))
        return cls(public_key=bytes(public), secret_key=bytes(secret))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TonWallet:
        return cls.from_mnemonic(load_mnemonic(path))

    def data(self) -> Cell:
        cell: Cell = WalletV4.create_data_cell(self.public_key, self.wallet_id, 0)
        return cell

    def state_init(self) -> Cell:
        return messages.state_init(_v4r2_code(), self.data())

    @property
    def address(self) -> str:
        return messages.contract_address(_v4r2_code(), self.data())

    def internal_message(self, msg: OutgoingMessage) -> Any:
        """pytoniq's ``WalletMessage`` (send mode + the internal message) for ``msg``."""
        init = (
            None if msg.state_init is None else StateInit.deserialize(parse(msg.state_init))
        )
        return Wallet.create_wallet_internal_message(
            destination=Address(msg.destination),
            send_mode=SEND_MODE,
            value=msg.value,
            body=msg.body,
            state_init=init,
            bounce=msg.bounce,
        )

    def transfer_body(self, msg: OutgoingMessage, *, seqno: int, valid_until: int) -> Cell:
        """The signed body of the external message: signature + the v4 signing message."""
        cell: Cell = WalletV4.raw_create_transfer_msg(
            private_key=self.secret_key,
            seqno=seqno,
            wallet_id=self.wallet_id,
            messages=[self.internal_message(msg)],
            valid_until=valid_until,
        )
        return cell

    def external_message(
        self, msg: OutgoingMessage, *, seqno: int, valid_until: int, deploy: bool
    ) -> Cell:
        """The whole external message to the wallet (with the wallet's StateInit when
        ``deploy``, i.e. the wallet is not active yet); send its BOC to a liteserver."""
        init = StateInit.deserialize(parse(self.state_init())) if deploy else None
        ext = Contract.create_external_msg(
            dest=Address(self.address),
            state_init=init,
            body=self.transfer_body(msg, seqno=seqno, valid_until=valid_until),
        )
        cell: Cell = ext.serialize()
        return cell
