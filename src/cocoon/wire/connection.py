"""One peer connection as a pure state machine: bytes in, messages out, bytes to send.

Owns three concerns, all without I/O:

* **Handshake.** Each side sends ``Hello`` first; the first message received must be a
  ``Hello`` with our protocol version. The transitions are the table ``_HANDSHAKE``.
* **Multiplexing.** Streams are keyed by the requester's ``req_id``. Chunk/End/Error travel
  responder -> requester, Cancel/Credit requester -> responder, so an id never needs a
  direction tag. A stream opened by us is *outgoing*; one opened by the peer is *incoming*.
* **Flow control.** Per stream, the responder may have at most ``window`` chunks
  unacknowledged (``window`` from the requester's Hello). The requester calls
  :meth:`Connection.consumed` once it has passed chunks on; credit goes back in batches of
  half a window. A peer that overruns its credit is a protocol error, so a slow reader can
  hold at most ``window`` chunks per stream, and ``max_streams`` streams per connection.

A cancelled outgoing stream stays known until the responder ends it (it must answer every
Cancel with End or Error), so chunks already in flight are dropped quietly, not errors. That
final End or Error is still delivered: it reports the tokens generated before the stop, which
the requester may have to bill.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from cocoon.errors import FlowControlError, ProtocolError
from cocoon.wire.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from cocoon.wire.messages import (
    PROTOCOL_VERSION,
    Cancel,
    Chunk,
    Credit,
    End,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    Request,
    Route,
    Sealed,
    decode,
    encode,
)

__all__ = ["DEFAULT_WINDOW", "Connection", "State"]

DEFAULT_WINDOW: Final = 64
DEFAULT_MAX_STREAMS: Final = 4096


class State(enum.Enum):
    IDLE = "idle"  # nothing sent or received
    HELLO_SENT = "hello_sent"
    HELLO_RECEIVED = "hello_received"
    OPEN = "open"
    CLOSED = "closed"


# (state, event) -> next state; events: "send_hello", "recv_hello"
_HANDSHAKE: Final[dict[tuple[State, str], State]] = {
    (State.IDLE, "send_hello"): State.HELLO_SENT,
    (State.IDLE, "recv_hello"): State.HELLO_RECEIVED,
    (State.HELLO_SENT, "recv_hello"): State.OPEN,
    (State.HELLO_RECEIVED, "send_hello"): State.OPEN,
}


@dataclass(slots=True)
class _Outgoing:
    """A stream we requested: we receive its chunks."""

    allowed: int  # chunks the peer may still send before more credit
    ungranted: int = 0  # consumed chunks not yet returned as credit
    cancelled: bool = False


@dataclass(slots=True)
class _Incoming:
    """A stream the peer requested: we send its chunks."""

    credit: int


class Connection:
    """Sans-IO protocol state for one connection. Not thread-safe; one owner drives it."""

    def __init__(
        self,
        *,
        role: str,
        node_id: str,
        max_frame: int = DEFAULT_MAX_FRAME,
        window: int = DEFAULT_WINDOW,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        if window < 2:
            raise ValueError("window must be at least 2")
        self.role = role
        self.node_id = node_id
        self.binding = b""  # set by the transport before initiate(), see Hello.binding
        self.state = State.IDLE
        self.peer: Hello | None = None
        self._max_frame = max_frame
        self._window = window
        self._max_streams = max_streams
        self._decoder = FrameDecoder(max_frame)
        self._out = bytearray()
        self._outgoing: dict[int, _Outgoing] = {}
        self._incoming: dict[int, _Incoming] = {}
        self._peer_max_frame = max_frame

    # --- handshake --------------------------------------------------------------------

    def _transition(self, event: str) -> None:
        nxt = _HANDSHAKE.get((self.state, event))
        if nxt is None:
            raise ProtocolError(f"{event} not allowed in state {self.state.value}")
        self.state = nxt

    def initiate(self) -> None:
        """Queue our Hello. Call once, right after the transport connects."""
        self._transition("send_hello")
        hello = Hello(PROTOCOL_VERSION, self.role, self.node_id, self._max_frame, self._window,
                      self.binding)
        self._out += encode_frame(encode(hello), self._max_frame)

    @property
    def is_open(self) -> bool:
        return self.state is State.OPEN

    # --- receiving --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Message]:
        """Feed received bytes; return the messages the application must handle.

        Ping is answered here (its Pong is queued) and still returned, so the owner can
        reset liveness timers. Credit is applied here and still returned, so a sender
        waiting for credit can be woken. Chunks of cancelled streams are dropped.
        """
        if self.state is State.CLOSED:
            raise ProtocolError("connection is closed")
        events: list[Message] = []
        try:
            for payload in self._decoder.feed(data):
                msg = decode(payload)
                if self._accept(msg):
                    events.append(msg)
        except ProtocolError:
            self.state = State.CLOSED
            raise
        return events

    def _accept(self, msg: Message) -> bool:
        if type(msg) is Chunk:  # hot path first
            out = self._outgoing.get(msg.req_id)
            if out is None:
                raise ProtocolError(f"chunk for unknown stream {msg.req_id}")
            if out.allowed <= 0:
                raise FlowControlError(f"peer overran its credit on stream {msg.req_id}")
            out.allowed -= 1
            return not out.cancelled
        if type(msg) is Hello:
            self._transition("recv_hello")
            if msg.version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"peer speaks protocol version {msg.version}; we speak {PROTOCOL_VERSION}"
                )
            if msg.window < 2 or msg.max_frame < 1024:
                raise ProtocolError("peer hello has a window < 2 or max_frame < 1024")
            self.peer = msg
            self._peer_max_frame = min(self._max_frame, msg.max_frame)
            return True
        if self.state is not State.OPEN:
            raise ProtocolError(f"{type(msg).__name__} before the handshake")
        if isinstance(msg, End | Error):
            if self._outgoing.pop(msg.req_id, None) is None:
                raise ProtocolError(f"{type(msg).__name__} for unknown stream {msg.req_id}")
            return True  # even when cancelled: it carries the usage to bill
        if isinstance(msg, Request):
            if msg.req_id in self._incoming:
                raise ProtocolError(f"stream {msg.req_id} is already open")
            if len(self._incoming) >= self._max_streams:
                raise ProtocolError(f"peer opened more than {self._max_streams} streams")
            assert self.peer is not None  # OPEN implies a peer Hello
            self._incoming[msg.req_id] = _Incoming(credit=self.peer.window)
            return True
        if isinstance(msg, Credit):
            inc = self._incoming.get(msg.req_id)
            if inc is not None:  # credit for a stream we already ended is harmless
                # The requester's window (its Hello) bounds any one grant, not ours.
                assert self.peer is not None  # OPEN implies a peer Hello
                if msg.n <= 0 or msg.n > self.peer.window:
                    raise FlowControlError(f"invalid credit {msg.n}")
                inc.credit += msg.n
            return True
        if isinstance(msg, Cancel | Sealed):
            # The stream may have ended already (End crossed the Cancel): not an error.
            return msg.req_id in self._incoming
        if isinstance(msg, Route):
            out = self._outgoing.get(msg.req_id)
            if out is None:
                raise ProtocolError(f"Route for unknown stream {msg.req_id}")
            return not out.cancelled
        if isinstance(msg, Ping):
            self._queue(Pong(msg.nonce))
            return True
        return True  # Pong, Head, Announce, Catalog: nothing to track here

    # --- sending ----------------------------------------------------------------------

    def _queue(self, msg: Message) -> None:
        self._out += encode_frame(encode(msg), self._peer_max_frame)

    def send(self, msg: Message) -> None:
        """Queue a message; enforces handshake state, stream state and flow control."""
        if self.state is not State.OPEN:
            raise ProtocolError(f"cannot send {type(msg).__name__} in state {self.state.value}")
        if type(msg) is Chunk:
            inc = self._incoming.get(msg.req_id)
            if inc is None:
                raise ProtocolError(f"no open incoming stream {msg.req_id}")
            if inc.credit <= 0:
                raise FlowControlError(f"no credit on stream {msg.req_id}")
            inc.credit -= 1
        elif isinstance(msg, Request):
            if msg.req_id in self._outgoing:
                raise ProtocolError(f"stream {msg.req_id} is already open")
            # Encode first: a request too large for the peer's frames (FrameTooLarge) must
            # leave no half-open stream behind.
            data = encode_frame(encode(msg), self._peer_max_frame)
            self._outgoing[msg.req_id] = _Outgoing(allowed=self._window)
            self._out += data
            return
        elif isinstance(msg, End | Error):
            if self._incoming.pop(msg.req_id, None) is None:
                raise ProtocolError(f"no open incoming stream {msg.req_id}")
        elif isinstance(msg, Cancel | Sealed):
            out = self._outgoing.get(msg.req_id)
            if out is None or out.cancelled:
                return  # already finished or cancelled: nothing to say
            if type(msg) is Cancel:
                out.cancelled = True
        elif isinstance(msg, Route):
            if msg.req_id not in self._incoming:
                raise ProtocolError(f"no open incoming stream {msg.req_id}")
        elif isinstance(msg, Hello | Credit):
            raise ProtocolError(f"{type(msg).__name__} is sent by the connection itself")
        self._queue(msg)

    def credit(self, req_id: int) -> int:
        """Chunks we may still send on incoming stream ``req_id`` (0 if it is not open)."""
        inc = self._incoming.get(req_id)
        return inc.credit if inc is not None else 0

    def has_incoming(self, req_id: int) -> bool:
        return req_id in self._incoming

    def has_outgoing(self, req_id: int) -> bool:
        return req_id in self._outgoing

    def consumed(self, req_id: int, n: int = 1) -> None:
        """We have passed on ``n`` chunks of outgoing stream ``req_id``; maybe grant credit."""
        out = self._outgoing.get(req_id)
        if out is None or out.cancelled:
            return
        out.ungranted += n
        if out.ungranted >= self._window // 2:
            grant, out.ungranted = out.ungranted, 0
            out.allowed += grant
            self._queue(Credit(req_id, grant))

    def data_to_send(self) -> bytes:
        """Take every byte queued for the transport."""
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    def close(self) -> tuple[list[int], list[int]]:
        """Mark closed; return (outgoing, incoming) stream ids that were still open."""
        self.state = State.CLOSED
        out, inc = list(self._outgoing), list(self._incoming)
        self._outgoing.clear()
        self._incoming.clear()
        return out, inc

    @property
    def open_streams(self) -> int:
        return len(self._outgoing) + len(self._incoming)
