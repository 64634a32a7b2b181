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
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytoniq_core.boc.cell import Cell

from cocoon.attestation.policy import AllowLists
from cocoon.chain.errors import ChainError
from cocoon.chain.specs import RegistryParams

__all__ = ["RegistryAllowLists", "RegistryState", "parse_registry", "read_registry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegistryState:
    owner: str
    version: int
    params_version: int
    params: RegistryParams
    image_hashes: frozenset[bytes]
    model_hashes: frozenset[bytes]

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
            min_proxy_stake=p.load_coins(), min_client_stake=p.load_coins())
        images = s.load_dict(256)
        models = s.load_dict(256)
    except Exception as exc:  # pytoniq-core raises assorted errors on a foreign layout
        raise ChainError(f"not a root registry's data: {type(exc).__name__}: {exc}") from None
    return RegistryState(owner.to_str(is_user_friendly=False), version, params_version, params,
                         _keys(images), _keys(models))


async def read_registry(chain: Any, registry: str) -> RegistryState:
    """Read the registry at ``registry`` through a backend's ``account`` read."""
    account = await chain.account(registry)
    if account.get("state") != "active" or not account.get("data"):
        raise ChainError(f"no active root registry at {registry} (state "
                         f"{account.get('state')})")
    return parse_registry(base64.b64decode(account["data"]))


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
