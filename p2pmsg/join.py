"""Where a node finds its first peers, and how it remembers them.

Seeds come from many sources so that no single blocked server can keep a
node out (SCENARIOS S2): bootstrap invites from the config, the peers cached
in the database from the last run, and every contact whose key and endpoints
we know. The DHT pings them all with staggered starts and is joined on the
first answer. The cache holds keys and endpoints only (no signed records),
so it still works after the peers' records have expired, e.g. after two
weeks offline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from p2pmsg.dht.peer import Peer, prefix_of_endpoint
from p2pmsg.endpoint import Endpoint, Invite
from p2pmsg.errors import BadEndpoint, BadInvite
from p2pmsg.keys import node_id_of
from p2pmsg.store import Contact

CACHE_KEY = "dht_peers"
MAX_CACHED = 200


def _peer(public_key: bytes, endpoints: Sequence[str]) -> Peer | None:
    for text in endpoints:
        try:
            prefix = prefix_of_endpoint(Endpoint.parse(text))
        except BadEndpoint:
            continue
        try:
            return Peer(node_id_of(public_key), public_key, tuple(endpoints), prefix)
        except ValueError:
            return None
    return None


def seeds_from_invites(texts: Iterable[str]) -> list[Peer]:
    """Peers from bootstrap invite links; malformed ones are skipped."""
    seeds = []
    for text in texts:
        try:
            invite = Invite.parse(text)
        except BadInvite:
            continue
        peer = _peer(invite.identity.key, [str(e) for e in invite.endpoints])
        if peer is not None:
            seeds.append(peer)
    return seeds


def seeds_from_contacts(contacts: Iterable[Contact]) -> list[Peer]:
    seeds = []
    for contact in contacts:
        if contact.public_key is not None:
            peer = _peer(contact.public_key, contact.endpoints)
            if peer is not None:
                seeds.append(peer)
    return seeds


def encode_cache(peers: Iterable[Peer]) -> str:
    """The routing table's peers as JSON for the database (at most MAX_CACHED)."""
    rows = [{"key": p.public_key.hex(), "endpoints": list(p.endpoints)} for p in peers]
    return json.dumps(rows[:MAX_CACHED])


def seeds_from_cache(text: str | None) -> list[Peer]:
    """Inverse of :func:`encode_cache`; a damaged cache yields what it can."""
    try:
        rows = json.loads(text) if text else []
    except (ValueError, RecursionError):
        return []
    seeds = []
    for row in rows[:MAX_CACHED] if isinstance(rows, list) else []:
        try:
            key = bytes.fromhex(row["key"])
            endpoints = [str(e) for e in row["endpoints"]]
        except (TypeError, KeyError, ValueError):
            continue
        peer = _peer(key, endpoints)
        if peer is not None:
            seeds.append(peer)
    return seeds


def unique(peers: Iterable[Peer], exclude: bytes) -> list[Peer]:
    """First occurrence of each node id, without ``exclude`` (our own id)."""
    seen = {exclude}
    out = []
    for peer in peers:
        if peer.node_id not in seen:
            seen.add(peer.node_id)
            out.append(peer)
    return out
