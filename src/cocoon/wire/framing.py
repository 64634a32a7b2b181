"""Length-prefixed framing: ``u32 big-endian payload length || payload``.

A frame announcing more than ``max_frame`` bytes (or zero bytes) is a protocol error the
moment its 4-byte header is seen, so a peer can never make us buffer more than
``max_frame + 3`` bytes of one frame.
"""

from __future__ import annotations

import struct
from typing import Final

from cocoon.errors import FrameTooLarge, ProtocolError

__all__ = ["DEFAULT_MAX_FRAME", "HEADER_SIZE", "FrameDecoder", "encode_frame"]

HEADER_SIZE: Final = 4
DEFAULT_MAX_FRAME: Final = 16 * 1024 * 1024
"""16 MiB: a request that carries a fine-tuned model's LoRA adapter (a 135M model's is
6.5 MB as base64) or a fine-tuning job's dataset travels in one frame."""
_HEADER = struct.Struct(">I")


def encode_frame(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Prefix ``payload`` with its length; refuse what the peer would reject."""
    n = len(payload)
    if n == 0:
        raise ProtocolError("empty frame")
    if n > max_frame:
        raise FrameTooLarge(f"frame of {n} bytes exceeds the limit of {max_frame}")
    return _HEADER.pack(n) + payload


class FrameDecoder:
    """Bytes in, complete frame payloads out. Feed any split of the stream."""

    __slots__ = ("_buf", "_max_frame", "_need")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max_frame = max_frame
        self._need = 0  # payload length of the frame being collected, 0 = reading header

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every frame payload they complete, in order."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while True:
            if self._need == 0:
                if end - pos < HEADER_SIZE:
                    break
                (n,) = _HEADER.unpack_from(buf, pos)
                if n == 0:
                    raise ProtocolError("empty frame")
                if n > self._max_frame:
                    raise FrameTooLarge(
                        f"peer announced a {n}-byte frame; the limit is {self._max_frame}"
                    )
                self._need = n
                pos += HEADER_SIZE
            if end - pos < self._need:
                break
            out.append(bytes(buf[pos : pos + self._need]))
            pos += self._need
            self._need = 0
        if pos:
            del buf[:pos]
        return out
