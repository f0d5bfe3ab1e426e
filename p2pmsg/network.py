"""Which network we are on: the label that path scores are kept under.

What works at home is not what works on a phone's mobile network or at a
university behind a stricter firewall, so the dialer scores paths per
network (:class:`p2pmsg.pathscore.PathScores`) and remembers the last working
one for each. The label is a short hash of the local subnet the kernel
would send from towards the internet: the source address of a UDP socket
"connected" to a documentation address (no packet is sent; the kernel only
picks a route), cut to its /24 (IPv4) or /64 (IPv6). Moving to another
network changes it; a new lease on the same network does not. Without a
route it is :data:`OFFLINE`. The address itself is never stored or shown.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket

OFFLINE = "offline"
_PROBES = ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1"))


def label_of(address: str) -> str:
    """The label of the network a local ``address`` is on. Raises ValueError."""
    ip = ipaddress.ip_address(address)
    prefix = 24 if ip.version == 4 else 64
    subnet = ipaddress.ip_network((ip, prefix), strict=False)
    return "net-" + hashlib.blake2b(str(subnet).encode(), digest_size=6).hexdigest()


def local_network_label() -> str:
    """The label of the network the default route leads to; :data:`OFFLINE`
    when there is none. Cheap and non-blocking: call it on the event loop."""
    for family, probe in _PROBES:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                address = sock.getsockname()[0]
        except OSError:
            continue
        return label_of(address.split("%")[0])
    return OFFLINE
