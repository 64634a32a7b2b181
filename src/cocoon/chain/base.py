"""The chain interface the proxy, client and worker use.

One small :class:`Chain` protocol; backends: :mod:`cocoon.chain.embedded` (default, an
in-process local chain running the compiled contracts in the TVM emulator).  Amounts are
nanoTON ints, addresses raw strings ``"0:<hex>"``.  A *wallet* is a name the backend can send
from (embedded: a funded sandbox treasury); :meth:`Chain.wallet` gives its address.

Message bodies and initial data are built by :mod:`cocoon.chain.messages` (the one encoder of
the contracts' layouts); every backend sends exactly those cells.

Every mutating call returns a :class:`TxResult` on success and raises a
:class:`cocoon.chain.errors.ContractRejected` subclass (a ``PaymentError``) carrying the exit
code when the contract rejects the message.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pytoniq_core.boc.cell import Cell

from cocoon.chain.specs import ChannelSpec, ProxyInfo, ProxyStakeSpec, RegistryParams
from cocoon.chain.vouchers import ChainVoucher

__all__ = [
    "DEFAULT_MSG_VALUE",
    "LISTING_VALUE",
    "TOPUP_FEE",
    "Chain",
    "ChannelSpec",
    "ChannelState",
    "ChannelStatus",
    "OutMessage",
    "ProxyInfo",
    "ProxyStakeSpec",
    "ProxyState",
    "ProxyStatus",
    "RegistryParams",
    "TxInfo",
    "TxResult",
]

TOPUP_FEE = 10_000_000
"""Value a top-up (or add-stake) must carry above its amount (0.01 TON); it stays in the
contract's reserve."""
DEFAULT_MSG_VALUE = 50_000_000
"""Value attached to control messages (vouchers, close, withdraw): 0.05 TON."""
LISTING_VALUE = 100_000_000
"""Value attached to a registration or deregistration (0.1 TON): the stake forwards it to
the registry, which keeps what gas leaves (its storage reserve)."""


class ChannelStatus(enum.IntEnum):
    OPEN = 0
    CLOSING = 1
    CLOSED = 2


@dataclass(frozen=True, slots=True)
class ChannelState:
    """``get_channel_state()`` of a channel contract."""

    status: ChannelStatus
    balance: int
    charged: int
    last_seqno: int
    close_at: int


class ProxyStatus(enum.IntEnum):
    ACTIVE = 0
    UNSTAKING = 1
    CLOSED = 2


@dataclass(frozen=True, slots=True)
class ProxyState:
    """``get_proxy_state()`` of a proxy stake contract; ``commit_hash`` is 32 bytes."""

    state: ProxyStatus
    stake: int
    unlock_at: int
    commit_seqno: int
    commit_hash: bytes
    committed_at: int


@dataclass(frozen=True, slots=True)
class OutMessage:
    to: str
    value: int
    fwd_fee: int
    op: int | None


@dataclass(frozen=True, slots=True)
class TxInfo:
    """One transaction of a message's trace."""

    address: str
    exit_code: int | None
    aborted: bool | None
    total_fees: int
    in_value: int
    out_messages: tuple[OutMessage, ...]


@dataclass(frozen=True, slots=True)
class TxResult:
    """The trace of one sent message; ``exit_code`` is that of the destination's transaction."""

    to: str
    exit_code: int | None
    success: bool
    transactions: tuple[TxInfo, ...]

    def on(self, address: str) -> tuple[TxInfo, ...]:
        return tuple(t for t in self.transactions if t.address == address)

    def sent_by(self, address: str) -> tuple[OutMessage, ...]:
        """Internal messages sent by ``address`` in this trace."""
        return tuple(m for t in self.on(address) for m in t.out_messages)

    def balance_delta(self, address: str) -> int:
        """Exact change of ``address``'s balance in this trace (nanoTON): incoming values minus
        fees minus what it sent (value + forward fee of each outgoing message)."""
        return sum(
            t.in_value - t.total_fees - sum(m.value + m.fwd_fee for m in t.out_messages)
            for t in self.on(address)
        )


@runtime_checkable
class Chain(Protocol):
    """Payment-channel operations on TON (real or emulated)."""

    async def wallet(self, name: str) -> str:
        """Address of the named wallet this backend sends from."""
        ...

    async def deploy_channel(self, spec: ChannelSpec, *, sender: str, deposit: int) -> TxResult:
        """Deploy the channel (StateInit + a top-up of ``deposit``); ``result.to`` is the
        channel's address."""
        ...

    async def deposit(self, channel: str, amount: int, *, sender: str) -> TxResult:
        """Top up ``amount`` (sends ``amount + TOPUP_FEE``)."""
        ...

    async def submit_voucher(self, channel: str, voucher: ChainVoucher, *, sender: str) -> TxResult:
        """Redeem a signed voucher: pays ``cumulative - charged`` to the payee."""
        ...

    async def request_close(self, channel: str, *, sender: str) -> TxResult:
        """Funder: open -> closing, closeAt = now + closeDelay."""
        ...

    async def close(self, channel: str, *, sender: str) -> TxResult:
        """Funder: finalize the close once ``now >= closeAt``."""
        ...

    async def withdraw(self, channel: str, *, sender: str) -> TxResult:
        """Funder, after close: the whole account balance goes back to the funder."""
        ...

    async def channel_state(self, channel: str) -> ChannelState: ...

    # ---- root registry ----

    async def deploy_registry(
        self,
        owner: str,
        params: RegistryParams,
        image_hashes: Iterable[bytes] = (),
        model_hashes: Iterable[bytes] = (),
        *,
        sender: str,
    ) -> TxResult:
        """Deploy a registry owned by address ``owner`` (initial hashes are allowed at once);
        ``result.to`` is its address."""
        ...

    async def registry_update(self, registry: str, body: Cell, *, sender: str) -> TxResult:
        """Send an owner op built by :mod:`cocoon.chain.messages` (``update_params_body``,
        ``add_image_hash_body``, ..., ``change_owner_body``)."""
        ...

    async def registry_params(self, registry: str) -> RegistryParams: ...

    async def registry_versions(self, registry: str) -> tuple[int, int]:
        """``(version, params_version)``."""
        ...

    async def registry_owner(self, registry: str) -> str: ...

    async def image_hash_allowed(self, registry: str, h: bytes) -> bool: ...

    async def model_hash_allowed(self, registry: str, h: bytes) -> bool: ...

    # ---- proxy stake ----

    async def deploy_proxy_stake(
        self, spec: ProxyStakeSpec, *, sender: str, stake: int
    ) -> TxResult:
        """Deploy the stake contract with an initial ``stake`` (sends ``stake + TOPUP_FEE``;
        0: a plain deploy); ``result.to`` is its address."""
        ...

    async def add_stake(self, proxy: str, amount: int, *, sender: str) -> TxResult:
        """Add ``amount`` to the stake (sends ``amount + TOPUP_FEE``)."""
        ...

    async def commit_state(self, proxy: str, body: Cell, *, sender: str) -> TxResult:
        """Submit a signed state commit (:func:`cocoon.chain.messages.sign_commit`)."""
        ...

    async def request_unstake(self, proxy: str, *, sender: str) -> TxResult:
        """Owner: active -> unstaking, unlockAt = now + unstakeDelay."""
        ...

    async def unstake(self, proxy: str, *, sender: str) -> TxResult:
        """Owner, once ``now >= unlockAt``: closed, the whole balance goes to the owner."""
        ...

    async def register_proxy(self, proxy: str, info: ProxyInfo, *, sender: str) -> TxResult:
        """Owner: list the proxy in the stake's registry with ``info`` (through the stake,
        which must be active and hold its minimum; the registry checks the network's
        minimum). A refusal by the registry raises like one by the stake, where the backend
        sees the registry's transaction."""
        ...

    async def deregister_proxy(self, proxy: str, *, sender: str) -> TxResult:
        """Owner: remove the proxy's listing (the stake stays; unstaking removes it too)."""
        ...

    async def proxy_state(self, proxy: str) -> ProxyState: ...

    async def balance(self, address: str) -> int:
        """Account balance in nanoTON (0 for an unknown account)."""
        ...

    async def now(self) -> int:
        """The chain's current unixtime."""
        ...

    async def advance_time(self, seconds: int) -> int:
        """Tests only: move the chain clock forward; returns the new time."""
        ...

    async def wait_for_change(self, seen: int, wait_s: float) -> int:
        """Wait until the chain has moved since the mark ``seen`` (a transaction applied;
        an earlier return of this method gives the mark), at most ``wait_s`` seconds;
        returns the current mark. A mark the backend never gave (``-1``) returns at once.
        Marks are only compared for equality: a restarted chain may start over."""
        ...

    async def aclose(self) -> None: ...
