"""The asyncio side of a TLS connection: the :class:`asyncio.Transport` a StreamWriter writes
to. Plaintext goes to the TLS session (:class:`TlsSession`), which encrypts it into the TCP
transport; flow control and buffer sizes are the TCP transport's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["TlsSession", "TlsTransport"]


class TlsSession(Protocol):
    """What the transport needs from the TLS protocol under it."""

    transport: asyncio.Transport | None  # the TCP transport
    closing: bool

    def write_plain(self, data: bytes | bytearray | memoryview) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class TlsTransport(asyncio.Transport):
    """What the StreamWriter writes to: plaintext in, TLS records out to TCP."""

    def __init__(self, proto: TlsSession, extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._info = extra
        self._proto = proto
        self._protocol: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._info:
            return self._info[name]
        raw = self._proto.transport
        return raw.get_extra_info(name, default) if raw is not None else default

    def _raw(self) -> asyncio.Transport:
        assert self._proto.transport is not None
        return self._proto.transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._proto.write_plain(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._proto.write_plain(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS streams cannot half-close")

    def is_closing(self) -> bool:
        return self._proto.closing or self._raw().is_closing()

    def close(self) -> None:
        self._proto.close()

    def abort(self) -> None:
        self._proto.abort()

    def get_write_buffer_size(self) -> int:
        return self._raw().get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw().get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw().set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._raw().pause_reading()

    def resume_reading(self) -> None:
        self._raw().resume_reading()

    def is_reading(self) -> bool:
        return self._raw().is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol
