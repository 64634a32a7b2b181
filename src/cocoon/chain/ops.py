"""The contract operations of :class:`cocoon.chain.base.Chain`, written once for every backend.

Every backend sends the same cells for the same operation -- each body and each initial data
cell comes from :mod:`cocoon.chain.messages` -- so what the embedded emulator executes is
exactly what a liteserver backend sends.  Backends differ only in how a cell reaches the chain
and how a get-method runs: :class:`ContractOps` implements the channel, root registry and
proxy stake operations over four primitives each backend supplies (``_send_cell``,
``_deploy``, ``_ints`` and ``get``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Any

from pytoniq_core.boc.cell import Cell

from cocoon.chain import messages as m
from cocoon.chain.base import (
    DEFAULT_MSG_VALUE,
    LISTING_VALUE,
    TOPUP_FEE,
    ChannelState,
    ChannelStatus,
    ProxyState,
    ProxyStatus,
    TxResult,
)
from cocoon.chain.errors import ChainError, rejection_for
from cocoon.chain.specs import ChannelSpec, ProxyInfo, ProxyStakeSpec, RegistryParams
from cocoon.chain.vouchers import ChainVoucher

__all__ = ["ContractOps"]


def _hash_int(h: bytes) -> int:
    if len(h) != 32:
        raise ValueError(f"a hash is 32 bytes, got {len(h)}")
    return int.from_bytes(h, "big")


def _forwarded(res: TxResult, proxy: str, what: str) -> TxResult:
    """Raise the registry's refusal of what the stake at ``proxy`` forwarded to it, when the
    trace holds the registry's transaction (the embedded chain's does; a liteserver backend
    reports the first transaction only, and its callers read the registry to confirm)."""
    for out in res.sent_by(proxy):
        for tx in res.on(out.to):
            if tx.exit_code not in (0, None) or tx.aborted:
                cls = rejection_for(tx.exit_code)
                raise cls(f"{what} refused by the registry {out.to}", exit_code=tx.exit_code,
                          address=out.to, result=res)
    return res


class ContractOps(abc.ABC):
    """The contract operations of :class:`cocoon.chain.base.Chain` (documented there) over a
    backend's transport primitives.  A rejection raises the
    :class:`cocoon.chain.errors.ContractRejected` subclass for its exit code, with the
    operation's label (``what``) in the message."""

    # ---- primitives: one transport per backend ------------------------------------------

    @abc.abstractmethod
    async def _send_cell(
        self, sender: str, to: str, body: Cell, *, what: str, value: int = DEFAULT_MSG_VALUE
    ) -> TxResult:
        """Send ``body`` with ``value`` from wallet ``sender`` to ``to`` (bounceable)."""

    @abc.abstractmethod
    async def _deploy(
        self, sender: str, contract: str, data: Cell, value: int, body: Cell | None
    ) -> TxResult:
        """Deploy ``contract`` with ``data`` (StateInit) by a message of ``value`` carrying
        ``body`` (None: empty body), labelled ``deploy <contract>``; ``result.to`` is the new
        account's address."""

    @abc.abstractmethod
    async def _ints(self, address: str, method: str, *args: int) -> list[int]:
        """Run a get-method with int arguments; its stack, which must hold only ints."""

    @abc.abstractmethod
    async def get(
        self, address: str, method: str, args: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Run a get-method; the stack as JSON items (``{"type": "int", "value": "..."}``; a
        slice holding an address also has ``"address"``)."""

    async def _deploy_crediting(
        self, sender: str, contract: str, data: Cell, amount: int, credit: Callable[[int], Cell]
    ) -> TxResult:
        """Deploy with ``credit(amount)`` (a top-up / add-stake body) carrying
        ``amount + TOPUP_FEE``; for ``amount <= 0`` a plain deploy (empty body, 0.05 TON)."""
        if amount > 0:
            return await self._deploy(sender, contract, data, amount + TOPUP_FEE, credit(amount))
        return await self._deploy(sender, contract, data, DEFAULT_MSG_VALUE, None)

    # ---- channels -----------------------------------------------------------------------

    async def deploy_channel(self, spec: ChannelSpec, *, sender: str, deposit: int) -> TxResult:
        contract = m.CHANNEL_CONTRACTS[spec.kind]
        return await self._deploy_crediting(
            sender, contract, m.channel_data(spec), deposit, m.topup_body
        )

    async def deposit(
        self, channel: str, amount: int, *, sender: str, query_id: int = 0
    ) -> TxResult:
        body = m.topup_body(amount, query_id=query_id)
        return await self._send_cell(sender, channel, body, value=amount + TOPUP_FEE,
                                     what="top-up")

    async def submit_voucher(self, channel: str, voucher: ChainVoucher, *, sender: str) -> TxResult:
        return await self._send_cell(sender, channel, voucher.body(), what="voucher")

    async def request_close(self, channel: str, *, sender: str, query_id: int = 0) -> TxResult:
        body = m.request_close_body(query_id=query_id)
        return await self._send_cell(sender, channel, body, what="request close")

    async def close(self, channel: str, *, sender: str, query_id: int = 0) -> TxResult:
        body = m.finalize_close_body(query_id=query_id)
        return await self._send_cell(sender, channel, body, what="finalize close")

    async def payee_close(self, channel: str, *, sender: str, query_id: int = 0) -> TxResult:
        body = m.payee_close_body(query_id=query_id)
        return await self._send_cell(sender, channel, body, what="payee close")

    async def withdraw(self, channel: str, *, sender: str, query_id: int = 0) -> TxResult:
        body = m.withdraw_body(query_id=query_id)
        return await self._send_cell(sender, channel, body, what="withdraw")

    async def channel_state(self, channel: str) -> ChannelState:
        status, balance, charged, last_seqno, close_at = await self._ints(
            channel, "get_channel_state"
        )
        return ChannelState(
            status=ChannelStatus(status),
            balance=balance,
            charged=charged,
            last_seqno=last_seqno,
            close_at=close_at,
        )

    # ---- root registry ------------------------------------------------------------------

    async def deploy_registry(
        self,
        owner: str,
        params: RegistryParams,
        image_hashes: Iterable[bytes] = (),
        model_hashes: Iterable[bytes] = (),
        *,
        sender: str,
    ) -> TxResult:
        data = m.registry_data(owner, params, image_hashes, model_hashes)
        return await self._deploy(sender, m.REGISTRY_CONTRACT, data, DEFAULT_MSG_VALUE, None)

    async def registry_update(self, registry: str, body: Cell, *, sender: str) -> TxResult:
        return await self._send_cell(sender, registry, body, what="registry update")

    async def registry_params(self, registry: str) -> RegistryParams:
        return RegistryParams(*await self._ints(registry, "get_params"))

    async def registry_versions(self, registry: str) -> tuple[int, int]:
        version, params_version = await self._ints(registry, "get_versions")
        return version, params_version

    async def registry_owner(self, registry: str) -> str:
        (item,) = await self.get(registry, "get_owner")
        if "address" not in item:
            raise ChainError(f"get_owner on {registry}: expected an address, got {item}")
        return str(item["address"])

    async def image_hash_allowed(self, registry: str, h: bytes) -> bool:
        (version,) = await self._ints(registry, "image_hash_version", _hash_int(h))
        return version != 0

    async def model_hash_allowed(self, registry: str, h: bytes) -> bool:
        (version,) = await self._ints(registry, "model_hash_version", _hash_int(h))
        return version != 0

    # ---- proxy stake --------------------------------------------------------------------

    async def deploy_proxy_stake(
        self, spec: ProxyStakeSpec, *, sender: str, stake: int
    ) -> TxResult:
        return await self._deploy_crediting(
            sender, m.PROXY_STAKE_CONTRACT, m.proxy_stake_data(spec), stake, m.add_stake_body
        )

    async def add_stake(
        self, proxy: str, amount: int, *, sender: str, query_id: int = 0
    ) -> TxResult:
        body = m.add_stake_body(amount, query_id=query_id)
        return await self._send_cell(sender, proxy, body, value=amount + TOPUP_FEE,
                                     what="add stake")

    async def commit_state(self, proxy: str, body: Cell, *, sender: str) -> TxResult:
        return await self._send_cell(sender, proxy, body, what="state commit")

    async def request_unstake(self, proxy: str, *, sender: str, query_id: int = 0) -> TxResult:
        body = m.request_unstake_body(query_id=query_id)
        return await self._send_cell(sender, proxy, body, what="request unstake")

    async def unstake(self, proxy: str, *, sender: str, query_id: int = 0) -> TxResult:
        body = m.unstake_body(query_id=query_id)
        return await self._send_cell(sender, proxy, body, what="unstake")

    async def register_proxy(self, proxy: str, info: ProxyInfo, *, sender: str) -> TxResult:
        res = await self._send_cell(sender, proxy, m.register_body(info), value=LISTING_VALUE,
                                    what="register")
        return _forwarded(res, proxy, "listing")

    async def deregister_proxy(self, proxy: str, *, sender: str) -> TxResult:
        res = await self._send_cell(sender, proxy, m.deregister_body(), value=LISTING_VALUE,
                                    what="deregister")
        return _forwarded(res, proxy, "unlisting")

    async def proxy_state(self, proxy: str) -> ProxyState:
        state, stake, unlock_at, seqno, commit_hash, committed_at = await self._ints(
            proxy, "get_proxy_state"
        )
        return ProxyState(
            state=ProxyStatus(state),
            stake=stake,
            unlock_at=unlock_at,
            commit_seqno=seqno,
            commit_hash=commit_hash.to_bytes(32, "big"),
            committed_at=committed_at,
        )
