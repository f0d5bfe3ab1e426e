"""Pluggable transports: they move opaque bytes and know nothing else.

Only the edges (``cli.py``, tests, the scenario runner's caller) import this
package and pick which transports a node uses.
"""

from transports.obfs import ObfsLink, ObfsTransport
from transports.pt import PtTransport
from transports.sim import SimTransport
from transports.tcp import TcpLink, TcpTransport
from transports.tls import TlsLink, TlsTransport
from transports.wrappers import PaddingLink, PaddingTransport, TimeoutLink, TimeoutTransport
from transports.ws import WsLink, WsTransport

__all__ = [
    "ObfsLink",
    "ObfsTransport",
    "PaddingLink",
    "PaddingTransport",
    "PtTransport",
    "SimTransport",
    "TcpLink",
    "TcpTransport",
    "TimeoutLink",
    "TimeoutTransport",
    "TlsLink",
    "TlsTransport",
    "WsLink",
    "WsTransport",
]
