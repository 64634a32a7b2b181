"""Everything that touches sockets: byte-stream makers and the Peer that drives a Connection."""

from cocoon.transport.peer import Handler, OutgoingStream, Peer, StreamEvent
from cocoon.transport.streams import Connector, Listener, TcpConnector, TcpListener
from cocoon.transport.watchdog import Watchdog

__all__ = [
    "Connector",
    "Handler",
    "Listener",
    "OutgoingStream",
    "Peer",
    "StreamEvent",
    "TcpConnector",
    "TcpListener",
    "Watchdog",
]
