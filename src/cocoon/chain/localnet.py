"""Deploy a whole local network's contracts on the embedded chain (what ``cocoon up`` does).

Wallets (sandbox treasuries, named): ``owner`` (registry owner), ``proxy`` (and ``proxy-K``
for the K-th proxy of a network of several), ``client``, ``worker-N``. Deployed, in order:

1. the root registry: the network's prices and multipliers (from the proxy's billing
   config), close delays and stakes, the allowed image hashes (and model hashes, if given);
2. the proxy's stake contract (its voucher key signs state commits), staked at the minimum
   and pointed at the registry (the proxy lists itself there when it starts);
3. the demo client's payment channel (funder: client wallet, payee: proxy wallet, signer:
   the client's voucher key), deposited with the demo funds;
4. one payout channel per worker (funder: proxy wallet, payee: that worker's wallet,
   signer: the proxy's voucher key), with a float the proxy keeps topped up;
5. with several proxies, 2 to 4 again for each further proxy: its stake, the client's
   channel to it (same deposit) and each worker's payout channel from it.

Every amount is nanoTON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.chain.base import Chain
from cocoon.chain.specs import ChannelSpec, ProxyStakeSpec, RegistryParams
from cocoon.chain.vouchers import public_key
from cocoon.ledger.config import BillingConfig

__all__ = ["LocalDeployment", "NetworkParams", "ProxyDeployment", "deploy_local_network"]

TON = 10**9


@dataclass(frozen=True, slots=True)
class NetworkParams:
    client_close_delay: int = 60  # seconds between a client's close request and its refund
    proxy_close_delay: int = 120
    min_proxy_stake: int = 10 * TON
    min_client_stake: int = 0
    worker_close_delay: int = 60
    worker_float: int = 1 * TON  # each worker channel's initial funding

    def registry_params(self, billing: BillingConfig) -> RegistryParams:
        return RegistryParams(
            price_per_token=billing.price_per_token, worker_fee=billing.worker_fee_per_token,
            prompt_mult=billing.prompt_mult, cached_mult=billing.cached_mult,
            completion_mult=billing.completion_mult, reasoning_mult=billing.reasoning_mult,
            proxy_close_delay=self.proxy_close_delay,
            client_close_delay=self.client_close_delay, min_proxy_stake=self.min_proxy_stake,
            min_client_stake=self.min_client_stake, training_mult=billing.training_mult)


@dataclass(frozen=True, slots=True)
class ProxyDeployment:
    """What a further proxy of the network has on chain."""

    wallet: str
    stake: str
    client_channel: str  # the client's channel to it
    worker_channels: tuple[str, ...]  # its payout channel to each worker, in worker order


@dataclass(frozen=True, slots=True)
class LocalDeployment:
    registry: str
    proxy_wallet: str
    proxy_stake: str
    client_wallet: str
    client_channel: str
    worker_wallets: tuple[str, ...] = field(default=())
    worker_channels: tuple[str, ...] = field(default=())
    more_proxies: tuple[ProxyDeployment, ...] = field(default=())  # proxies 2, 3, ...

    @property
    def proxies(self) -> int:
        return 1 + len(self.more_proxies)

    def client_channels(self) -> tuple[str, ...]:
        return (self.client_channel, *(p.client_channel for p in self.more_proxies))

    def channels_of_worker(self, i: int) -> tuple[str, ...]:
        """Worker ``i``'s payout channels (1-based), one per proxy."""
        return (self.worker_channels[i - 1],
                *(p.worker_channels[i - 1] for p in self.more_proxies))

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LocalDeployment:
        """From :func:`dataclasses.asdict` output read back from JSON (lists to tuples)."""
        more = tuple(ProxyDeployment(p["wallet"], p["stake"], p["client_channel"],
                                     tuple(p["worker_channels"]))
                     for p in raw.get("more_proxies", ()))
        fields_: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                   for k, v in raw.items() if k != "more_proxies"}
        return cls(**fields_, more_proxies=more)


async def deploy_local_network(
    chain: Chain,
    *,
    billing: BillingConfig,
    proxy_key: Ed25519PrivateKey | bytes,
    client_key: Ed25519PrivateKey | bytes,
    workers: int,
    client_funds: int,
    image_hashes: Sequence[bytes] = (),
    model_hashes: Sequence[bytes] = (),
    params: NetworkParams | None = None,
    more_proxy_keys: Sequence[Ed25519PrivateKey | bytes] = (),
) -> LocalDeployment:
    """Deploy registry, proxy stake, the client's channel and each worker's channel; and as
    much again for each further proxy (``more_proxy_keys``: their voucher keys)."""
    p = params or NetworkParams()
    owner = await chain.wallet("owner")
    client = await chain.wallet("client")
    registry = (await chain.deploy_registry(
        owner, p.registry_params(billing), image_hashes, model_hashes, sender="owner")).to
    wallets = [await chain.wallet(f"worker-{i}") for i in range(1, workers + 1)]
    deployed = []
    for k, key in enumerate((proxy_key, *more_proxy_keys), start=1):
        name = "proxy" if k == 1 else f"proxy-{k}"
        proxy, proxy_pub = await chain.wallet(name), public_key(key)
        stake = (await chain.deploy_proxy_stake(
            ProxyStakeSpec(owner=proxy, proxy_pubkey=proxy_pub, min_stake=p.min_proxy_stake,
                           unstake_delay=p.proxy_close_delay, registry=registry),
            sender=name, stake=p.min_proxy_stake)).to
        client_channel = (await chain.deploy_channel(
            ChannelSpec(kind="client", funder=client, payee=proxy,
                        signer_pubkey=public_key(client_key), payee_pubkey=proxy_pub,
                        close_delay=p.client_close_delay, channel_id=k),
            sender="client", deposit=client_funds)).to
        channels = []
        for i, wallet in enumerate(wallets, start=1):
            channels.append((await chain.deploy_channel(
                ChannelSpec(kind="worker", funder=proxy, payee=wallet, signer_pubkey=proxy_pub,
                            payee_pubkey=bytes(32), close_delay=p.worker_close_delay,
                            channel_id=i),
                sender=name, deposit=p.worker_float)).to)
        deployed.append(ProxyDeployment(proxy, stake, client_channel, tuple(channels)))
    first = deployed[0]
    return LocalDeployment(registry, first.wallet, first.stake, client, first.client_channel,
                           tuple(wallets), first.worker_channels, tuple(deployed[1:]))
