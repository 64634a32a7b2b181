"""The ``ton`` backend itself: :class:`TonChain`, the :class:`~cocoon.chain.base.Chain`
operations of :class:`~cocoon.chain.ops.ContractOps` over one wallet
(:class:`~cocoon.chain.ton.wallet.TonWallet`), a :class:`MessageSender` and a
:class:`GetMethodReader` (see :mod:`cocoon.chain.ton` for pointing it at testnet)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytoniq_core.boc.cell import Cell

from cocoon.chain import messages
from cocoon.chain.base import DEFAULT_MSG_VALUE, Chain, TxResult
from cocoon.chain.config import ChainConfig
from cocoon.chain.errors import ChainError, rejection_for
from cocoon.chain.ops import ContractOps
from cocoon.chain.ton._cells import empty_cell, raw
from cocoon.chain.ton.lite import (
    CALL_TIMEOUT,
    GetMethodReader,
    LiteApi,
    LiteReader,
    PytoniqLite,
    bounded,
    load_network_config,
)
from cocoon.chain.ton.sender import DEFAULT_TIMEOUT, LiteSender, MessageSender
from cocoon.chain.ton.stack import stack_arg, stack_int, stack_json
from cocoon.chain.ton.wallet import OutgoingMessage, TonWallet

__all__ = ["TonChain"]

_WATCH_POLL_S = 2.0


class TonChain(ContractOps):
    """A :class:`cocoon.chain.base.Chain` on TON testnet/mainnet (see :mod:`cocoon.chain.ton`).

    ``sender`` names in the Chain calls are not wallets here: the backend has one wallet
    (``address``); a ``sender`` given as an address must be that wallet's."""

    def __init__(
        self,
        address: str,
        sender: MessageSender,
        reader: GetMethodReader,
        *,
        lite: LiteApi | None = None,
        contracts_dir: Path | None = None,
        call_timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.address = raw(address)
        self.sender = sender
        self.reader = reader
        self.lite = lite
        self.contracts_dir = contracts_dir
        self.call_timeout = call_timeout

    # ---- construction --------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        mnemonic_file: str | os.PathLike[str],
        network_config: str = "testnet",
        *,
        trust_level: int = 2,
        wait_s: float = DEFAULT_TIMEOUT,
        contracts_dir: Path | None = None,
    ) -> TonChain:
        """Load the wallet (before any network access, so key-file errors come first), the
        network config, and start a liteserver balancer."""
        wallet = TonWallet.from_file(mnemonic_file)
        config = await load_network_config(network_config)
        lite = await PytoniqLite.start(config, trust_level=trust_level)
        return cls(
            wallet.address,
            LiteSender(lite, wallet, timeout=wait_s),
            LiteReader(lite),
            lite=lite,
            contracts_dir=contracts_dir,
        )

    @classmethod
    async def from_config(cls, config: ChainConfig) -> TonChain:
        """From a node's ``[chain]`` section (``mnemonic_file``, ``network_config``)."""
        return await cls.connect(config.mnemonic_file, config.network_config or "testnet")

    async def __aenter__(self) -> TonChain:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.lite is not None:
            lite, self.lite = self.lite, None
            await lite.aclose()

    # ---- plumbing ------------------------------------------------------------------------

    def _check_sender(self, sender: str) -> None:
        if ":" in sender and raw(sender) != self.address:
            raise ChainError(
                f"ton chain: sender {sender} is not this backend's wallet {self.address}"
            )

    async def _send(self, sender: str, message: OutgoingMessage) -> TxResult:
        self._check_sender(sender)
        res = await self.sender.send(message)
        if not res.success:
            cls = rejection_for(res.exit_code)
            raise cls(
                f"{message.what} rejected by {res.to}",
                exit_code=res.exit_code, address=res.to, result=res,
            )
        return res

    def _lite(self) -> LiteApi:
        if self.lite is None:
            raise ChainError("ton chain: no liteserver connection (closed, or none given)")
        return self.lite

    async def get(
        self, address: str, method: str, args: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Run a get-method with :meth:`EmbeddedChain.get`'s JSON stack items in and out."""
        stack = await self.reader.run_get_method(
            raw(address), method, [stack_arg(a) for a in args or []]
        )
        return [stack_json(x) for x in stack]

    # ---- Chain: the wallet, and the primitives of ContractOps ----------------------------

    async def wallet(self, name: str) -> str:
        """This backend's one wallet, whatever ``name``."""
        return self.address

    def deploy_message(
        self, contract: str, data: Cell, value: int, body: Cell | None, *, what: str = "deploy"
    ) -> OutgoingMessage:
        """The deploy message of ``contracts/build/<contract>.json`` with initial ``data``:
        StateInit + ``body`` (None: empty), non-bounceable, to the StateInit's address."""
        code = messages.load_code(contract, self.contracts_dir)
        return OutgoingMessage(
            destination=messages.contract_address(code, data),
            value=value,
            body=empty_cell() if body is None else body,
            state_init=messages.state_init(code, data),
            bounce=False,
            what=what,
        )

    async def _deploy(
        self, sender: str, contract: str, data: Cell, value: int, body: Cell | None
    ) -> TxResult:
        msg = self.deploy_message(contract, data, value, body, what=f"deploy {contract}")
        return await self._send(sender, msg)

    async def _send_cell(
        self, sender: str, to: str, body: Cell, *, what: str, value: int = DEFAULT_MSG_VALUE
    ) -> TxResult:
        return await self._send(sender, OutgoingMessage(raw(to), value, body, what=what))

    async def _ints(self, address: str, method: str, *args: int) -> list[int]:
        stack = await self.reader.run_get_method(raw(address), method, list(args))
        return [stack_int(x, f"{method} on {address}") for x in stack]

    # accounts and time

    async def balance(self, address: str) -> int:
        acc = await bounded(
            self._lite().account(raw(address)), self.call_timeout, f"account {address}"
        )
        return acc.balance

    async def account(self, address: str) -> dict[str, Any]:
        """The account's state, balance and (active) code and data as base64 BOCs: the same
        shape as :meth:`EmbeddedChain.account` (what the registry reader parses)."""
        acc = await bounded(
            self._lite().account(raw(address)), self.call_timeout, f"account {address}"
        )
        out: dict[str, Any] = {"state": acc.status, "balance": str(acc.balance)}
        if acc.code is not None:
            out["code"] = base64.b64encode(acc.code).decode()
        if acc.data is not None:
            out["data"] = base64.b64encode(acc.data).decode()
        return out

    async def now(self) -> int:
        return await bounded(self._lite().time(), self.call_timeout, "liteserver time")

    async def wait_for_change(self, seen: int, wait_s: float) -> int:
        """A real chain moves with every block: the mark is the liteserver's time, polled
        every ``_WATCH_POLL_S`` (about a block), so a watcher re-reads at block pace."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            mark = await self.now()
            left = deadline - loop.time()
            if mark != seen or left <= 0:
                return mark
            await asyncio.sleep(min(_WATCH_POLL_S, left))

    async def advance_time(self, seconds: int) -> int:
        raise ChainError(
            "ton chain: a real chain's clock cannot be moved (advance_time is for the embedded "
            "chain); wait for the time to pass"
        )


if TYPE_CHECKING:

    def _conforms(chain: TonChain) -> Chain:  # mypy: TonChain is a Chain
        return chain
