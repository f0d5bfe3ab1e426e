"""What the DHT knows about another node: ids, distance and network prefixes.

A :class:`Peer` is a node id with the Ed25519 key it must hash from (a peer
whose id does not match its key is refused at construction), the endpoints
it can be reached at, and the network *prefix* that diversity limits count
(an IPv4 /16, an IPv6 /32, or for a named host its name). The prefix is
computed by whoever verified the peer's address, normally from the endpoint
we dialled and saw authenticate, never from what another peer claimed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import BadEndpoint
from p2pmsg.keys import KEY_BYTES, NODE_ID_BYTES, node_id_of

ID_BYTES = NODE_ID_BYTES
ID_BITS = ID_BYTES * 8


def distance(a: bytes, b: bytes) -> int:
    """The XOR metric between two ids."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def prefix_of_host(host: str) -> str:
    """``v4:a.b`` (/16), ``v6:xxxx:xxxx`` (/32), or ``host:NAME`` for a name."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"host:{host.lower()}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        a, b, _, _ = ip.packed
        return f"v4:{a}.{b}"
    net = ipaddress.IPv6Network((ip, 32), strict=False)
    return f"v6:{net.network_address.exploded[:9]}"


def prefix_of_endpoint(endpoint: Endpoint) -> str:
    """The diversity prefix of an endpoint's host (its whole address if it has no port).

    Loopback is exempt: every loopback address and port is a prefix of its
    own, so that many nodes on one machine (tests, labs) can know each other.
    A censor's Sybils cannot live on our loopback.
    """
    try:
        host, port = endpoint.host_port(default_port=0)
    except BadEndpoint:
        return prefix_of_host(endpoint.address)
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return f"lo:{endpoint.transport}:{host}:{port}"
    except ValueError:
        pass
    return prefix_of_host(host)


@dataclass(frozen=True)
class Peer:
    """A node the DHT may talk to."""

    node_id: bytes
    public_key: bytes
    endpoints: tuple[str, ...]
    prefix: str

    def __post_init__(self) -> None:
        if len(self.public_key) != KEY_BYTES or node_id_of(self.public_key) != self.node_id:
            raise ValueError("the node id does not match the public key")

    def __repr__(self) -> str:
        return f"Peer({self.node_id.hex()[:16]}…, prefix={self.prefix!r})"
