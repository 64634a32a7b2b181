"""How nodes and CLI commands reach the chain named by their ``[chain]`` config.

:func:`open_chain` gives a connected backend; :class:`NodeChain` bundles it with the node's
wallet address and the few contract reads every role needs (a channel's parties, to check
that a channel is what its holder claims).
"""

from __future__ import annotations

from typing import Any, cast

from cocoon.chain.base import Chain, ChannelState
from cocoon.chain.config import ChainConfig
from cocoon.chain.embedded import EmbeddedChain
from cocoon.chain.errors import ChainError
from cocoon.chain.metered import MeteredChain
from cocoon.chain.specs import ChannelSpec
from cocoon.chain.token import read_token
from cocoon.chain.vouchers import OP_CLIENT_CHARGE, OP_WORKER_PAYOUT, ChannelKind
from cocoon.errors import ConfigError

__all__ = ["NodeChain", "channel_parties", "open_chain"]


def _int(item: dict[str, Any]) -> int:
    if item.get("type") != "int":
        raise ChainError(f"expected an int on the stack, got {item.get('type')}")
    return int(item["value"])


def _addr(item: dict[str, Any]) -> str:
    a = item.get("address")
    if not isinstance(a, str):
        raise ChainError(f"expected an address on the stack, got {item.get('type')}")
    return a


async def channel_parties(chain: Any, channel: str) -> ChannelSpec:
    """Who funds, who is paid and whose key signs the vouchers of ``channel``
    (``get_channel_parties()`` and ``get_voucher_op()``); ChainError if it is not a channel
    contract."""
    op = _int((await chain.get(channel, "get_voucher_op"))[0])
    kinds: dict[int, ChannelKind] = {OP_CLIENT_CHARGE: "client", OP_WORKER_PAYOUT: "worker"}
    if op not in kinds:
        raise ChainError(f"{channel} is not a cocoon payment channel (voucher op {op:#x})")
    s = await chain.get(channel, "get_channel_parties")
    return ChannelSpec(
        kind=kinds[op],
        funder=_addr(s[0]),
        payee=_addr(s[1]),
        signer_pubkey=_int(s[2]).to_bytes(32, "big"),
        payee_pubkey=_int(s[3]).to_bytes(32, "big"),
        close_delay=_int(s[4]),
        channel_id=_int(s[5]),
    )


async def open_chain(config: ChainConfig) -> Chain:
    """The backend ``config`` names, connected; ConfigError when there is none."""
    chain: Chain
    if config.backend == "embedded":
        token = read_token(config.token_file) if config.token_file else ""
        chain = await EmbeddedChain.connect(config.url, token=token)
    elif config.backend == "ton":
        from cocoon.chain.ton import TonChain  # lazy: pytoniq + aiohttp, ~200 ms

        chain = await TonChain.from_config(config)
    else:
        raise ConfigError("no chain configured (chain.backend = \"none\")")
    return cast(Chain, MeteredChain(chain))  # its calls counted and timed (/metrics)


class NodeChain:
    """A node's view of the chain: the backend, its own wallet address, its own contract."""

    def __init__(self, config: ChainConfig, chain: Chain, wallet: str) -> None:
        self.config = config
        self.chain = chain
        self.wallet_name = config.wallet
        self.wallet = wallet

    @classmethod
    async def open(cls, config: ChainConfig) -> NodeChain:
        chain = await open_chain(config)
        try:
            wallet = await chain.wallet(config.wallet or "default")
        except BaseException:
            await chain.aclose()
            raise
        return cls(config, chain, wallet)

    @property
    def sender(self) -> str:
        """What the backend's mutating calls take as ``sender``."""
        return self.config.wallet or "default"

    async def parties(self, channel: str) -> ChannelSpec:
        return await channel_parties(self.chain, channel)

    async def state(self, channel: str) -> ChannelState:
        return await self.chain.channel_state(channel)

    async def aclose(self) -> None:
        await self.chain.aclose()
