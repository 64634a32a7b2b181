"""The root registry as nodes read it: network parameters and the attestation allow-lists.

:func:`parse_registry` reads the registry contract's data cell (RegistryStorage in
``contracts/README.md``), so the whole allow-lists come in one read, as a liteserver's
account state would give them. :class:`RegistryAllowLists` is the attestation policy's
:class:`~cocoon.attestation.policy.AllowListSource` backed by it, re-read every
``chain.registry_refresh_s`` and adopted only when the registry's version moved; whoever
prices by the registry (the proxy) is told of its parameters at the first read and whenever
their version moves (``on_params``).

Semantics: image hashes are required (an empty list allows no image: fail closed until the
registry is read); model hashes are optional (an empty list allows any model).

Proxy listings (:class:`ProxyListing`) are read from the same cell. A listing records the
stake at the time it was made; :meth:`RegistryState.live_proxies` keeps those still at the
network's current minimum (the owner may raise it after a proxy listed), and skips listings
whose info cannot be read (reported in ``ProxyListing.problem``, never trusted).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytoniq_core.boc.address import Address
from pytoniq_core.boc.cell import Cell

from cocoon.attestation.policy import AllowLists
from cocoon.chain.errors import ChainError
from cocoon.chain.messages import parse_proxy_info
from cocoon.chain.specs import ProxyInfo, RegistryParams

__all__ = ["ProxyListing", "RegistryAllowLists", "RegistryState", "ensure_listed",
           "parse_registry", "raw_address", "read_registry"]


def raw_address(text: str) -> str:
    """``0:<hex>`` for any address form pytoniq parses; ChainError otherwise."""
    try:
        raw: str = Address(text).to_str(is_user_friendly=False)  # type: ignore[no-untyped-call]
    except Exception:  # pytoniq-core raises assorted errors on a malformed address
        raise ChainError(f"not a TON address: {text!r}") from None
    return raw


@dataclass(frozen=True, slots=True)
class ProxyListing:
    """One proxy the registry lists: its stake contract (the key), its wallet (``owner``, the
    payee of its clients' channels), its voucher key, the stake when listed, the registry
    version of the listing, and its info (None when unreadable, ``problem`` says why)."""

    stake_contract: str
    owner: str
    pubkey: bytes
    stake: int
    version: int
    info: ProxyInfo | None
    problem: str = ""

    def as_json(self) -> dict[str, Any]:
        info = self.info
        return {"stake_contract": self.stake_contract, "owner": self.owner,
                "pubkey": self.pubkey.hex(), "stake_nanoton": self.stake,
                "version": self.version,
                "client_endpoint": info.client_endpoint if info else None,
                "worker_endpoint": info.worker_endpoint if info else None,
                "models": list(info.models) if info else None,
                **({"problem": self.problem} if self.problem else {})}

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegistryState:
    owner: str
    version: int
    params_version: int
    params: RegistryParams
    image_hashes: frozenset[bytes]
    model_hashes: frozenset[bytes]
    proxies: tuple[ProxyListing, ...] = ()

    def live_proxies(self) -> tuple[ProxyListing, ...]:
        """Listings a node may use: readable, and staked at least the current minimum."""
        return tuple(p for p in self.proxies
                     if p.info is not None and p.stake >= self.params.min_proxy_stake)

    def allow_lists(self) -> AllowLists:
        return AllowLists(image_hashes=self.image_hashes,
                          model_hashes=self.model_hashes or None, version=self.version)


def _keys(d: Any) -> frozenset[bytes]:
    if not d:
        return frozenset()
    return frozenset(int(k).to_bytes(32, "big") for k in d)


def parse_registry(data_boc: bytes) -> RegistryState:
    """RegistryStorage from the registry's data cell; ChainError if it is not one."""
    try:
        s = Cell.one_from_boc(data_boc).begin_parse()  # type: ignore[no-untyped-call]
        owner = s.load_address()
        version = s.load_uint(32)
        params_version = s.load_uint(32)
        p = s.load_ref().begin_parse()
        params = RegistryParams(
            price_per_token=p.load_coins(), worker_fee=p.load_coins(),
            prompt_mult=p.load_uint(32), cached_mult=p.load_uint(32),
            completion_mult=p.load_uint(32), reasoning_mult=p.load_uint(32),
            proxy_close_delay=p.load_uint(32), client_close_delay=p.load_uint(32),
            min_proxy_stake=p.load_coins(), min_client_stake=p.load_coins(),
            training_mult=p.load_uint(32))
        images = s.load_dict(256)
        models = s.load_dict(256)
        book = s.load_ref().begin_parse()
        book.load_ref()  # the stake code the registry checks listings against
        entries = book.load_dict(256)
        proxies = tuple(sorted((_listing(int(k), v) for k, v in (entries or {}).items()),
                               key=lambda p: p.stake_contract))
    except Exception as exc:  # pytoniq-core raises assorted errors on a foreign layout
        raise ChainError(f"not a root registry's data: {type(exc).__name__}: {exc}") from None
    return RegistryState(owner.to_str(is_user_friendly=False), version, params_version, params,
                         _keys(images), _keys(models), proxies)


def _listing(key: int, value: Any) -> ProxyListing:
    """A ProxyEntry (the dict value holds it as a ref): owner pubkey stake version ^info."""
    e = value.load_ref().begin_parse()
    owner = e.load_address().to_str(is_user_friendly=False)
    pubkey = e.load_uint(256).to_bytes(32, "big")
    stake = e.load_coins()
    version = e.load_uint(32)
    info_cell = e.load_ref()
    info: ProxyInfo | None = None
    problem = ""
    try:
        info = parse_proxy_info(info_cell)
    except ValueError as exc:
        problem = f"unreadable info: {exc}"
    return ProxyListing(f"0:{key:064x}", owner, pubkey, stake, version, info, problem)


async def read_registry(chain: Any, registry: str) -> RegistryState:
    """Read the registry at ``registry`` through a backend's ``account`` read."""
    account = await chain.account(registry)
    if account.get("state") != "active" or not account.get("data"):
        raise ChainError(f"no active root registry at {registry} (state "
                         f"{account.get('state')})")
    return parse_registry(base64.b64decode(account["data"]))


async def ensure_listed(chain: Any, registry: str, stake: str, info: ProxyInfo, *,
                        sender: str, confirm_s: float = 30.0) -> tuple[ProxyListing, bool]:
    """List the proxy of the stake contract ``stake`` in ``registry`` with ``info`` unless it
    already is, exactly so: (its listing, whether a registration was sent). A refusal raises
    the ContractRejected subclass for its exit code (StakeTooLow: below the network's
    minimum); a listing that does not show within ``confirm_s`` (a liteserver backend applies
    it a few blocks later) raises ChainError."""
    stake = raw_address(stake)

    def mine(state: RegistryState) -> ProxyListing | None:
        return next((p for p in state.live_proxies() if p.stake_contract == stake), None)

    found = mine(await read_registry(chain, registry))
    if found is not None and found.info == info:
        return found, False
    await chain.register_proxy(stake, info, sender=sender)
    deadline = asyncio.get_running_loop().time() + confirm_s
    while True:
        found = mine(await read_registry(chain, registry))
        if found is not None and found.info == info:
            return found, True
        if asyncio.get_running_loop().time() >= deadline:
            raise ChainError(f"the registry {registry} does not show the listing of {stake} "
                             f"{confirm_s:.0f} s after it was sent: `cocoon registry show "
                             f"{registry}` tells whether it arrived")
        await asyncio.sleep(1.0)


class RegistryAllowLists:
    """Allow-lists from the root registry (an ``AllowListSource``). Until the first read
    succeeds no image is allowed."""

    def __init__(self, registry: str) -> None:
        self.registry = registry
        self.state: RegistryState | None = None
        self._lists = AllowLists(image_hashes=frozenset())
        self.failures = 0
        # told the registry's parameters at the first read and when their version moves
        self.on_params: Callable[[RegistryState], None] | None = None

    def allow_lists(self) -> AllowLists:
        return self._lists

    async def refresh(self, chain: Any) -> RegistryState:
        state = await read_registry(chain, self.registry)
        if self.state is None or state.version != self.state.version:
            log.info("registry %s version %d: %d image hash(es), %d model hash(es)",
                     self.registry, state.version, len(state.image_hashes),
                     len(state.model_hashes))
        previous, self.state = self.state, state
        self._lists = state.allow_lists()
        if self.on_params is not None and (
                previous is None or state.params_version != previous.params_version):
            self.on_params(state)
        return state

    async def refresh_forever(self, chain: Any, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh(chain)
            except (ChainError, OSError) as exc:
                self.failures += 1
                log.warning("re-reading the registry failed (keeping version %s): %s",
                            self.state.version if self.state else "none", exc)
