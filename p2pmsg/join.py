"""Where a node finds its first peers, how it remembers them, and staying joined.

Seeds come from many sources so that no single blocked server can keep a
node out (SCENARIOS S2): bootstrap invites from the config and from the
signed bootstrap lists we hold (:mod:`p2pmsg.bootstrap`), the peers cached
in the database from the last run, and every contact whose key and endpoints
we know. The DHT pings them all with staggered starts and is joined on the
first answer. The cache holds keys and endpoints only (no signed records),
so it still works after the peers' records have expired, e.g. after two
weeks offline. With mDNS on, the node also advertises its signed peer record
on one chosen LAN interface and pings every node it sees there; those that
answer are its LAN peers (:class:`LanPeers`), to whom messages go straight
over the LAN (:mod:`p2pmsg.delivery.sender`).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import trio

from p2pmsg.abc import Discovery
from p2pmsg.bootstrap import BootstrapLists
from p2pmsg.dht import records
from p2pmsg.dht.peer import Peer, prefix_of_endpoint
from p2pmsg.dht.service import Dht
from p2pmsg.endpoint import Endpoint, Invite
from p2pmsg.errors import BadEndpoint, BadInvite
from p2pmsg.home import Config
from p2pmsg.keys import node_id_of
from p2pmsg.store import Contact, Store

log = logging.getLogger(__name__)

CACHE_KEY = "dht_peers"
RETRY_FIRST = 1.0
"""Seconds before the first retry of a failed join (then doubling)."""
RETRY_MOST = 30.0
"""The longest wait between join attempts while the routing table is empty."""
MAX_CACHED = 200
MAX_LAN_PEERS = 256


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


@dataclass(frozen=True)
class LanPeer:
    peer: Peer
    first_seen: float
    """trio time it first answered on the LAN."""
    last_seen: float


class LanPeers:
    """The nodes seen on our LAN that answered a ping, newest last.

    Bounded (the least recently seen go first) and forgetful: an entry lasts
    ``ttl`` seconds after its last sighting, and :meth:`forget` drops one that
    could not be reached (it left the LAN); it comes back when seen again.
    """

    def __init__(self, ttl: float, capacity: int = MAX_LAN_PEERS) -> None:
        self.ttl, self.capacity = ttl, capacity
        self._peers: OrderedDict[bytes, LanPeer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._peers)

    def seen(self, peer: Peer) -> None:
        now = trio.current_time()
        old = self._peers.pop(peer.node_id, None)
        self._peers[peer.node_id] = LanPeer(peer, old.first_seen if old else now, now)
        while len(self._peers) > self.capacity:
            self._peers.popitem(last=False)

    def get(self, node_id: bytes) -> Peer | None:
        """The peer with ``node_id`` if it is on our LAN, as far as we know."""
        entry = self._peers.get(node_id)
        if entry is None or trio.current_time() - entry.last_seen > self.ttl:
            return None
        return entry.peer

    def forget(self, node_id: bytes) -> None:
        self._peers.pop(node_id, None)

    def entries(self) -> list[LanPeer]:
        return list(self._peers.values())


class Joiner:
    """Keeps a node's DHT joined; ``joined`` is set on the first success."""

    def __init__(
        self,
        dht: Dht,
        store: Store,
        joined: trio.Event,
        config: Config,
        *,
        on_cache: Callable[[], Awaitable[None]] | None = None,
        bootstrap: BootstrapLists | None = None,
    ) -> None:
        self.dht = dht
        self.bootstrap = bootstrap
        self.store = store
        self.joined = joined
        self.config = config
        self.on_cache = on_cache
        """Also run each time the routing table is cached (the node saves its path scores)."""
        self.lan_peers = LanPeers(ttl=dht.options.record_ttl)
        self.on_lan_peer: Callable[[Peer], None] | None = None
        """Called with each peer newly on our LAN (it must not block)."""

    async def seeds(self) -> list[Peer]:
        cached = seeds_from_cache(await self.store.get_meta(CACHE_KEY))
        contacts = seeds_from_contacts(await self.store.list_contacts())
        bridges = [str(b) for b in self.config.use_bridges]
        listed = await self.bootstrap.invites() if self.bootstrap is not None else []
        invites = seeds_from_invites([*bridges, *self.config.bootstrap, *listed])
        return unique(invites + cached + contacts, exclude=self.dht.identity.node_id)

    async def stay_joined(self, cache_every: float) -> None:
        """Join from every seed source; then keep our record stored, the
        routing table cached and enough peers' clocks read. While the table is
        empty the join is retried after :data:`RETRY_FIRST` seconds, doubling
        up to :data:`RETRY_MOST`, so a node started while its seeds were down
        joins soon after they come up."""
        retry = RETRY_FIRST
        while True:
            if not len(self.dht.table):
                seeds = await self.seeds()
                if seeds and await self.dht.join(seeds):
                    log.info("joined the DHT")
                    self.joined.set()
                    await self.dht.put_own()
            if len(self.dht.table):
                # A seed node nobody lists joins when the first peer reaches it.
                self.joined.set()
                await self.dht.read_clocks()
                cache = encode_cache(self.dht.table.peers())
                await self.store.set_meta(CACHE_KEY, cache)
                if self.on_cache is not None:
                    await self.on_cache()
            if len(self.dht.table):
                retry = RETRY_FIRST
                await trio.sleep(cache_every)
            else:
                await trio.sleep(retry)
                retry = min(2 * retry, RETRY_MOST)

    async def lan(
        self, discovery: Callable[[], Discovery], *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Advertise our peer record on the LAN and ping every node seen there.

        ``discovery`` makes a fresh discovery (mDNS on one interface) for each
        advertisement, renewed every half record lifetime with our newest
        record, so it never carries an expired one.
        """
        send, receive = trio.open_memory_channel[bytes](64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._on_sightings, receive)
            started = False
            while True:
                record = self.dht.own_record
                assert record is not None
                with trio.move_on_after(self.dht.options.record_ttl / 2):
                    async with trio.open_nursery() as advert:
                        await advert.start(discovery().run, records.encode(record), send)
                        if not started:
                            task_status.started()
                            started = True
                        await trio.sleep_forever()

    async def _on_sightings(self, sightings: trio.MemoryReceiveChannel[bytes]) -> None:
        async for data in sightings:
            peer = self.dht.consider(data)
            if peer is not None and await self.dht.ping(peer):
                log.info("found a peer on the LAN")
                new = self.lan_peers.get(peer.node_id) is None
                self.lan_peers.seen(peer)
                if new and self.on_lan_peer is not None:
                    self.on_lan_peer(peer)
                self.joined.set()
