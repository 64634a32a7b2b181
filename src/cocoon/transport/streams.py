"""How byte streams are made: one-method interfaces that TLS (RA-TLS) will implement too."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from cocoon.errors import TransportError

__all__ = ["Connector", "Listener", "TcpConnector", "TcpListener"]

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
OnConnect = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Connector(Protocol):
    """Dials a peer and returns a ready byte stream (for TLS: after the handshake)."""

    async def connect(self, host: str, port: int) -> StreamPair: ...


class Listener(Protocol):
    """Accepts peers, calling ``on_connect`` with each ready byte stream."""

    async def listen(self, host: str, port: int, on_connect: OnConnect) -> asyncio.Server: ...


class TcpConnector:
    """Plain TCP, for the ``none`` attestation policy and for tests."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._timeout = timeout

    async def connect(self, host: str, port: int) -> StreamPair:
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.open_connection(host, port, limit=1 << 20)
        except TimeoutError:
            raise TransportError(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            reason = exc.strerror or exc
            raise TransportError(f"cannot connect to {host}:{port}: {reason}") from None


class TcpListener:
    async def listen(self, host: str, port: int, on_connect: OnConnect) -> asyncio.Server:
        try:
            return await asyncio.start_server(on_connect, host, port, limit=1 << 20)
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
