"""Pluggable transports: they move opaque bytes and know nothing else.

Only the edges (``cli.py``, tests, the scenario runner's caller) import this
package and pick which transports a node uses.
"""

from transports.pt import PtTransport
from transports.sim import SimTransport
from transports.tcp import TcpLink, TcpTransport
from transports.tls import TlsLink, TlsTransport
from transports.ws import WsLink, WsTransport

__all__ = [
    "PtTransport",
    "SimTransport",
    "TcpLink",
    "TcpTransport",
    "TlsLink",
    "TlsTransport",
    "WsLink",
    "WsTransport",
]
