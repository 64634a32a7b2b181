"""Sans-IO wire protocol: framing, the message set, and the per-connection state machine.

Nothing here imports asyncio or touches a socket; ``cocoon.transport`` drives it.
"""

from cocoon.wire.connection import DEFAULT_WINDOW, Connection, State
from cocoon.wire.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from cocoon.wire.messages import (
    MAX_REQUEST_BODY,
    PROTOCOL_VERSION,
    Announce,
    Cancel,
    Catalog,
    CatalogEntry,
    Chunk,
    Credit,
    End,
    Error,
    Head,
    Hello,
    Message,
    Payment,
    Ping,
    Pong,
    Request,
    Roster,
    Statement,
    WorkerInfo,
    decode,
    encode,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DEFAULT_WINDOW",
    "MAX_REQUEST_BODY",
    "PROTOCOL_VERSION",
    "Announce",
    "Cancel",
    "Catalog",
    "CatalogEntry",
    "Chunk",
    "Connection",
    "Credit",
    "End",
    "Error",
    "FrameDecoder",
    "Head",
    "Hello",
    "Message",
    "Payment",
    "Ping",
    "Pong",
    "Request",
    "Roster",
    "State",
    "Statement",
    "WorkerInfo",
    "decode",
    "encode",
    "encode_frame",
]
