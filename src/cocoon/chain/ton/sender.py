"""Sending from the ``ton`` backend's wallet: :class:`MessageSender` (the seam), and
:class:`LiteSender`, which signs an external message, sends it through a liteserver and waits,
bounded, for the wallet's and the destination's transactions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, runtime_checkable

from pytoniq_core.boc.cell import Cell
from pytoniq_core.tlb.transaction import MessageAny

from cocoon.chain import messages
from cocoon.chain.base import TxResult
from cocoon.chain.errors import ChainError, ChainTimeout
from cocoon.chain.ton._cells import parse, raw
from cocoon.chain.ton.lite import CALL_TIMEOUT, LiteApi, SeenTx, bounded
from cocoon.chain.ton.wallet import OutgoingMessage, TonWallet

__all__ = ["DEFAULT_TIMEOUT", "MESSAGE_TTL", "LiteSender", "MessageSender"]

DEFAULT_TIMEOUT = 120.0
"""Seconds :class:`LiteSender` waits for a message's transactions."""
MESSAGE_TTL = 120
"""Seconds an external message stays valid (the wallet's ``valid_until``)."""

T = TypeVar("T")


@runtime_checkable
class MessageSender(Protocol):
    """Sends one internal message from the backend's wallet; returns the trace once the
    destination's transaction is known (a failed one too: the caller maps it to an error)."""

    async def send(self, message: OutgoingMessage) -> TxResult: ...


class LiteSender:
    """:class:`MessageSender`: signs an external message for the wallet, sends it through a
    liteserver, then waits for the wallet's transaction and the destination's one."""

    def __init__(
        self,
        lite: LiteApi,
        wallet: TonWallet,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        poll_interval: float = 2.0,
        call_timeout: float = CALL_TIMEOUT,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.lite = lite
        self.wallet = wallet
        self.address = wallet.address
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.call_timeout = call_timeout
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = asyncio.Lock()

    async def _call(self, aw: Awaitable[T], what: str) -> T:
        return await bounded(aw, self.call_timeout, what)

    async def send(self, message: OutgoingMessage) -> TxResult:
        async with self._lock:  # one seqno at a time
            return await self._send(message)

    async def _send(self, message: OutgoingMessage) -> TxResult:
        dest = raw(message.destination)
        me = await self._call(self.lite.account(self.address), "wallet state")
        if me.status == "frozen":
            raise ChainError(f"wallet {self.address} is frozen")
        if me.balance < message.value:
            raise ChainError(
                f"wallet {self.address} holds {me.balance} nanoTON, cannot send "
                f"{message.value} ({message.what}); fund it first"
            )
        deploy = me.status != "active"
        seqno = 0
        if not deploy:
            stack = await self._call(
                self.lite.run_get_method(self.address, "seqno", []), "wallet seqno"
            )
            seqno = int(stack[0])
        before = await self._call(self.lite.account(dest), "destination state")
        ext = self.wallet.external_message(
            message, seqno=seqno, valid_until=int(self._clock()) + MESSAGE_TTL, deploy=deploy
        )
        ext_body_hash = _external_body_hash(ext)
        await self._call(self.lite.send_boc(messages.boc(ext)), "send external message")

        deadline = self._monotonic() + self.timeout
        wallet_tx = await self._wait(
            self.address, me.last_lt, deadline, message,
            lambda t: t.in_external and t.in_body_hash == ext_body_hash,
            f"the wallet's transaction (seqno {seqno})",
        )
        sent = [lt for (to, lt) in wallet_tx.out_created if to == dest]
        if not wallet_tx.success or not sent:
            raise ChainError(
                f"{message.what}: wallet {self.address} did not send the message to {dest} "
                f"(exit code {wallet_tx.info.exit_code}; balance too low?)"
            )
        created_lt = sent[0]
        dest_tx = await self._wait(
            dest, before.last_lt, deadline, message,
            lambda t: t.in_src == self.address and t.in_created_lt == created_lt,
            f"the transaction of {dest}",
        )
        return TxResult(
            to=dest,
            exit_code=dest_tx.info.exit_code,
            success=dest_tx.success,
            transactions=(wallet_tx.info, dest_tx.info),
        )

    async def _wait(
        self,
        address: str,
        after_lt: int,
        deadline: float,
        message: OutgoingMessage,
        match: Callable[[SeenTx], bool],
        what: str,
    ) -> SeenTx:
        while True:
            txs = await self._call(
                self.lite.transactions(address, after_lt=after_lt), f"transactions of {address}"
            )
            for t in txs:
                if match(t):
                    return t
            if self._monotonic() >= deadline:
                raise ChainTimeout(
                    f"{message.what} to {raw(message.destination)}: {what} did not appear "
                    f"within {self.timeout:g} s; it may still be applied -- check the "
                    "destination before sending again"
                )
            await self._sleep(self.poll_interval)


def _external_body_hash(ext: Cell) -> bytes:
    body: Cell = MessageAny.deserialize(parse(ext)).body
    return bytes(body.hash)
