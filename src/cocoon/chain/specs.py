"""The values that fix a contract's initial data, hence its address: a payment channel's
parties (:class:`ChannelSpec`), a proxy stake's owner and terms (:class:`ProxyStakeSpec`), and
the root registry's params (:class:`RegistryParams`).

Plain frozen values: :mod:`cocoon.chain.messages` encodes them into cells, the
:class:`~cocoon.chain.base.Chain` interface takes them, and a channel read back from the chain
(:func:`cocoon.chain.connect.channel_parties`) is a :class:`ChannelSpec` again.
"""

from __future__ import annotations

from dataclasses import dataclass

from cocoon.chain.vouchers import ChannelKind

__all__ = ["NO_REGISTRY", "ChannelSpec", "ProxyInfo", "ProxyStakeSpec", "RegistryParams"]

NO_REGISTRY = "0:" + "0" * 64
"""The registry address of a stake that lists nowhere (a listing sent there bounces)."""


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """Everything that fixes a channel's initial data, hence its address; also what
    ``get_channel_parties()`` and ``get_voucher_op()`` of a deployed channel answer."""

    kind: ChannelKind
    funder: str
    payee: str
    signer_pubkey: bytes
    payee_pubkey: bytes
    close_delay: int
    channel_id: int


@dataclass(frozen=True, slots=True)
class ProxyStakeSpec:
    """Everything that fixes a proxy stake contract's initial data, hence its address."""

    owner: str
    proxy_pubkey: bytes
    min_stake: int
    unstake_delay: int
    registry: str = NO_REGISTRY  # the root registry the stake lists its proxy in


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What a proxy's registry listing says besides its keys: where clients and workers reach
    it (``host:port``) and the models it routes (empty: whatever its workers serve)."""

    client_endpoint: str
    worker_endpoint: str
    models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RegistryParams:
    """The registry's ``Params`` cell, field for field (nanoTON amounts, seconds, multipliers)."""

    price_per_token: int
    worker_fee: int
    prompt_mult: int
    cached_mult: int
    completion_mult: int
    reasoning_mult: int
    proxy_close_delay: int
    client_close_delay: int
    min_proxy_stake: int
    min_client_stake: int
    training_mult: int = 30000
    """Fine-tuning: the multiplier of each trained token (10000 = 1.0x)."""

    def as_tuple(self) -> tuple[int, ...]:
        """In ``get_params()`` order."""
        return (
            self.price_per_token,
            self.worker_fee,
            self.prompt_mult,
            self.cached_mult,
            self.completion_mult,
            self.reasoning_mult,
            self.proxy_close_delay,
            self.client_close_delay,
            self.min_proxy_stake,
            self.min_client_stake,
            self.training_mult,
        )
