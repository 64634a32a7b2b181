"""The ``[chain]`` table: where a node finds the TON chain and its own contracts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cocoon.errors import ConfigError
from cocoon.validation import require_positive

__all__ = ["ChainConfig"]


@dataclass(frozen=True, slots=True)
class ChainConfig:
    """Where a node finds the TON chain and its own contracts (section ``[chain]``).

    ``backend = "none"``: no chain (balances are ledger entries only). ``embedded``: the local
    chain served by ``cocoon chain run`` at ``url`` (what ``cocoon up`` starts), with the RPC
    token in ``token_file``; ``wallet`` names the sandbox wallet this node sends from. ``ton``:
    testnet/mainnet through liteservers, the wallet from ``mnemonic_file`` (0600)."""

    backend: Literal["none", "embedded", "ton"] = "none"
    url: str = ""  # embedded: the chain service, e.g. http://127.0.0.1:11200
    wallet: str = ""  # embedded: the named wallet this node sends from
    token_file: str = ""  # embedded: the chain service's RPC token (0600, `--token-file`)
    mnemonic_file: str = ""  # ton: 24 words, 0600
    network_config: str = ""  # ton: liteserver global config JSON ("": pytoniq's testnet one)
    registry: str = ""  # root registry address ("0:<hex>"): prices and allow-lists
    contract: str = ""  # proxy: its stake contract; client/worker: its payment channel
    key_file: str = ""  # client: Ed25519 key that signs its charge vouchers (0600)
    voucher_file: str = ""  # worker: where it keeps its newest payout voucher (withdraw offline)
    registry_refresh_s: float = 30.0  # how often allow-lists are re-read from the registry

    def __post_init__(self) -> None:
        if self.backend == "embedded" and not self.url:
            raise ConfigError("chain.url is required with chain.backend = \"embedded\" "
                              "(the address `cocoon chain run` prints)")
        if self.backend == "ton" and not self.mnemonic_file:
            raise ConfigError("chain.mnemonic_file is required with chain.backend = \"ton\"")
        require_positive(self.registry_refresh_s, "chain.registry_refresh_s")

    @property
    def enabled(self) -> bool:
        return self.backend != "none"
