"""Connections to several proxies, for the roles that dial them (worker and client).

A node keeps one :class:`ProxyLink` per proxy it uses, each kept up by
:func:`~cocoon.nodes.common.dial_forever` (backoff with jitter; a proxy whose attestation
fails the node's policy is refused at the handshake and tried again later). The proxies are
those the node's config names and, with ``chain.registry`` set, those listed there: every
``_POLL_S`` the registry's last read (:class:`~cocoon.chain.registry.RegistryAllowLists`,
re-read every ``chain.registry_refresh_s``) is compared with the links, and the node's own
policy decides what to open and what to let go (:meth:`ProxyLinks.serve`'s ``sync``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cocoon.chain.config import ChainConfig
from cocoon.chain.connect import channel_parties, open_chain
from cocoon.chain.registry import ProxyListing, RegistryAllowLists
from cocoon.chain.specs import ChannelSpec
from cocoon.nodes.channels import describe_evidence
from cocoon.nodes.common import dial_forever
from cocoon.transport import Connector, Handler, Peer
from cocoon.wire import Connection

__all__ = ["ProxyLink", "ProxyLinks", "keys_of_channels"]

log = logging.getLogger(__name__)

_POLL_S = 1.0  # how often the registry's last read is compared with the links


async def keys_of_channels(config: ChainConfig, channels: Iterable[str],
                           key: Callable[[ChannelSpec], bytes]) -> dict[bytes, str]:
    """Which proxy each of a node's channels is with: ``key(parties)`` (the payee's key of a
    client channel, the signer's of a worker channel) -> channel, read on chain once."""
    chain = await open_chain(config)
    try:
        return {key(await channel_parties(chain, ch)): ch for ch in channels}
    finally:
        await chain.aclose()


@dataclass(eq=False)
class ProxyLink:
    """One proxy a node uses: where it is, how it was found, its connection."""

    address: str
    source: str  # "config" or "registry"
    proxy_pubkey: bytes = b""  # its voucher key: from its listing, else learned from it
    state: str = "starting"
    peer: Peer | None = None
    attestation: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.peer is not None and not self.peer.closed

    def snapshot(self) -> dict[str, Any]:
        return {"address": self.address, "source": self.source, "state": self.state,
                "attestation": self.attestation}


L = TypeVar("L", bound=ProxyLink)


class ProxyLinks(Generic[L]):
    """A node's links, by address. ``make`` builds a link; ``on_connect(link, peer)`` runs
    on each new connection (after the handshake; ``link.peer`` and ``link.attestation`` are
    set); ``on_down(link)`` when one is lost (``link.peer`` is cleared after it)."""

    def __init__(self, connector: Connector, connection: Callable[[], Connection],
                 handler: Handler, make: Callable[[str, str, bytes], L],
                 on_connect: Callable[[L, Peer], Awaitable[None]],
                 on_down: Callable[[L], None] = lambda link: None) -> None:
        self._connector, self._connection, self._handler = connector, connection, handler
        self._make, self._on_connect, self._on_down = make, on_connect, on_down
        self.by_address: dict[str, L] = {}
        self.by_peer: dict[Peer, L] = {}
        self._dials: asyncio.TaskGroup | None = None

    def __iter__(self) -> Iterator[L]:
        """The links, in the order they were opened (a copy: safe to close while going)."""
        return iter(list(self.by_address.values()))

    def __len__(self) -> int:
        return len(self.by_address)

    def __getitem__(self, i: int) -> L:
        return list(self.by_address.values())[i]

    @property
    def state(self) -> str:
        """"connected" when some proxy is, else the first one's state."""
        states = [link.state for link in self.by_address.values()]
        return "connected" if "connected" in states else (states[0] if states else "starting")

    def of(self, peer: Peer) -> L | None:
        """The link of a connection that is up (None for one that just ended)."""
        return self.by_peer.get(peer)

    def open(self, address: str, source: str, proxy_pubkey: bytes = b"") -> L:
        assert self._dials is not None, "open() runs inside serve()"
        link = self.by_address[address] = self._make(address, source, proxy_pubkey)

        async def connected(peer: Peer) -> None:
            link.peer = peer
            self.by_peer[peer] = link
            link.attestation = describe_evidence(peer.extra("verified_evidence"))
            await self._on_connect(link, peer)

        link.task = self._dials.create_task(dial_forever(
            self._connector, address, self._connection, connected, self._handler,
            lambda state: self._set_state(link, state)))
        log.info("using the proxy %s (%s)", address, source)
        return link

    def close(self, link: L, why: str) -> None:
        """Stop dialling ``link``'s proxy and forget it."""
        if link.task is not None:
            link.task.cancel()
        self.by_address.pop(link.address, None)
        self._set_state(link, why)

    def _set_state(self, link: L, state: str) -> None:
        link.state = state
        if state != "connected" and link.peer is not None:
            self.by_peer.pop(link.peer, None)
            self._on_down(link)
            link.peer = None

    async def serve(self, static: tuple[str, ...], lists: RegistryAllowLists | None,
                    endpoint: Callable[[ProxyListing], str],
                    sync: Callable[[dict[str, bytes]], None],
                    again: Callable[[], bool] = lambda: False) -> None:
        """Keep a link to each proxy of ``static``, and, with ``lists``, hand ``sync`` the
        proxies listed (``endpoint`` of each -> its voucher key; the static ones left out)
        whenever the registry's version moves, or ``again()`` asks. Runs until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._dials = tg
            for address in static:
                self.open(address, "config")
            if lists is None:
                return  # the dial tasks run until cancelled
            seen = -1
            while True:
                state = lists.state
                if state is not None and (state.version != seen or again()):
                    seen = state.version
                    sync({endpoint(p): p.pubkey for p in state.live_proxies()
                          if endpoint(p) not in static})
                await asyncio.sleep(_POLL_S)
