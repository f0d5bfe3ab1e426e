"""Relaying onion packets: epoch keys, peeling, replay refusal, forwarding, mailboxes.

Theory of operation
-------------------
Every node peels the Sphinx packets that reach it (:mod:`p2pmsg.onion.sphinx`).
A relay's layer is keyed with its onion key of the packet's key epoch (one
X25519 key per :data:`ONION_EPOCH`; the previous, current and next epoch's
public keys are in its peer record, so senders whose clocks are a day off
either way still find one; the previous epoch's secret is kept for them and
for packets in flight across the boundary, older ones are deleted: forward
secrecy per epoch). A destination's layer is keyed with its identity's X25519 key, which
does not rotate, so a packet waiting days in a mailbox still opens. Nothing
on the wire says which key a packet is for: the header MAC verifies under
one only, and each key tried before it costs an X25519. So a packet tries
the current epoch's key, then the identity key, then the previous and next
epochs' (:meth:`Relay.key_order`): a relay layer of this epoch costs no
wasted X25519, a destination layer one, whatever packets came before.

Packets are handled in batches by one worker (:meth:`Relay.run`): peel each,
refuse the replay tags already seen in that epoch, *commit* the new tags to
SQLite in one transaction (group commit: one fsync per batch, not per
packet), and only then forward; so a packet replayed after a crash and
restart is refused too (SCENARIOS S8, S17). Layers opened with our identity
key (we are the destination) are refused when replayed as well, or even our
ack would tell a replayer who the packet was for: that key never rotates, so
their tags are kept by the day they arrived, for 25 days: longer than the
latest replays seen (570 h) and than a deposit's lifetime
(:attr:`Relay.delivered`). The inbound queue is bounded: when it
is full the packet is dropped and counted.

Forwarding reuses secure links per next hop (:mod:`p2pmsg.packet_links`). When the
last relay (command ``EXIT``) cannot reach the destination, it deposits the
still-wrapped packet in the destination's DHT mailbox instead; the mailbox
holders see a packet for a node id, never the sender, never plaintext.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import trio

from p2pmsg.delivery import onion_frames
from p2pmsg.dht.peer import Peer
from p2pmsg.dht.service import Dht
from p2pmsg.dialer import DIAL_ERRORS
from p2pmsg.errors import StoreError
from p2pmsg.keys import Identity
from p2pmsg.onion import sphinx
from p2pmsg.onion.replay import ReplayTags
from p2pmsg.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
ONION_EPOCH = 86_400.0
_KEY_SLOT = "onion:{}"


def epoch_of(now: float) -> int:
    return int(now // ONION_EPOCH)


class OnionKeys:
    """The relay's onion secret keys by epoch, kept in the store's secrets."""

    def __init__(self, store: Store, rng: Callable[[int], bytes]) -> None:
        self._store = store
        self._rng = rng
        self._keys: dict[int, bytes] = {}

    async def refresh(self, now: float) -> bool:
        """Hold keys for epochs e-1, e and e+1 (made when missing); delete older ones.

        True when the published set changed (the peer record must be re-signed).
        """
        current = epoch_of(now)
        changed = False
        for epoch in (current - 1, current, current + 1):
            if epoch not in self._keys:
                stored = await self._store.get_secret(_KEY_SLOT.format(epoch))
                if stored is None:
                    stored = self._rng(32)
                    await self._store.set_secret(_KEY_SLOT.format(epoch), stored)
                self._keys[epoch] = stored
                changed = True
        for epoch in [e for e in self._keys if e < current - 1]:
            del self._keys[epoch]
            await self._store.delete_secret(_KEY_SLOT.format(epoch))
        if changed:  # a new epoch, or our first look since a start: sweep a week back
            for stale in range(current - 8, current - 1):
                await self._store.delete_secret(_KEY_SLOT.format(stale))
        return changed

    def published(self) -> tuple[tuple[int, bytes], ...]:
        """(epoch, public key) for the previous (when held), current and next
        epochs, for the peer record: a sender whose clock is up to one epoch
        behind ours or ahead of it finds a key for its own epoch (S20)."""
        return tuple((e, sphinx.public_key(self._keys[e])) for e in sorted(self._keys))

    def likeliest_first(self, now: float) -> list[tuple[int, bytes]]:
        """The current epoch's key first, then the previous, then the next:
        most packets carry the current epoch, so most peels cost one X25519."""
        current = epoch_of(now)
        return sorted(self._keys.items(), key=lambda item: (item[0] != current, item[0] > current))


class Resolver:
    """Where a node is: our routing table, a recent lookup, or a new one.

    Relays resolve next hops and recipients resolve the first relay of a
    reply block; both are rarely in our own table, so lookups are cached
    (bounded, ``ttl`` seconds)."""

    def __init__(self, dht: Dht, *, capacity: int = 1024, ttl: float = 600.0) -> None:
        self.dht = dht
        self.capacity = capacity
        self.ttl = ttl
        self._found: OrderedDict[bytes, tuple[Peer, float]] = OrderedDict()

    async def resolve(self, node_id: bytes) -> Peer | None:
        known = self.dht.table.get(node_id)
        if known is not None:
            return known
        now = trio.current_time()
        cached = self._found.get(node_id)
        if cached is not None and now - cached[1] < self.ttl:
            return cached[0]
        return await self._look_up(node_id)

    async def send(self, links: PacketSender, node_id: bytes, data: bytes) -> None:
        """Send ``data`` to node ``node_id``; when the address we knew fails,
        to the one its newest record in the DHT gives, if that differs (a node
        that moved to a new address). Raises ``LookupError`` when it cannot
        be found, or the dial error."""
        peer = await self.resolve(node_id)
        if peer is None:
            raise LookupError("next hop not found")
        try:
            await links.send(peer, data)
        except DIAL_ERRORS:
            moved = await self._look_up(node_id)
            if moved is None or moved.endpoints == peer.endpoints:
                raise
            await links.send(moved, data)

    async def _look_up(self, node_id: bytes) -> Peer | None:
        found = await self.dht.find_peer(node_id)
        if found is not None:
            self._found[node_id] = (found, trio.current_time())
            self._found.move_to_end(node_id)
            while len(self._found) > self.capacity:
                self._found.popitem(last=False)
        return found


@dataclass
class RelayStats:
    relayed: int = 0
    exited: int = 0
    deposited: int = 0
    forward_failed: int = 0
    replays: int = 0
    bad_packets: int = 0
    tagged: int = 0
    queue_full: int = 0
    delivered_here: int = 0
    not_saved: int = 0
    """Packets dropped because their replay tags could not be saved (disk full)."""


@dataclass(frozen=True)
class RelayOptions:
    queue: int = 1024
    batch: int = 64
    parallel_work: int = 64
    replay_capacity: int = 200_000
    deposit_ttl: int = 14 * 86_400
    delivered_capacity: int = 20_000
    """Replay tags of layers opened as the destination, per day of arrival."""
    delivered_days: int = 25
    """Days those are kept: longer than the latest replays seen (570 h, the
    GFW's; SCENARIOS S17) and than a deposit's lifetime (14 days)."""


Deliverer = Callable[[sphinx.Deliver], Awaitable[None]]


class PacketSender(Protocol):
    """Where forwarded packets go: :class:`~p2pmsg.packet_links.PacketLinks`
    (or, in the lab, a relay that tampers with them: :mod:`p2pmsg.sim.tamper`)."""

    async def send(self, peer: Peer, data: bytes) -> None: ...


class Relay:
    """Peels, dedups and forwards packets; hands ours to ``on_deliver``."""

    def __init__(  # noqa: PLR0917 - the node's parts, in the order it builds them
        self,
        identity: Identity,
        store: Store,
        keys: OnionKeys,
        links: PacketSender,
        dht: Dht,
        resolver: Resolver,
        on_deliver: Deliverer,
        *,
        options: RelayOptions,
        wall_clock: Callable[[], float],
    ) -> None:
        self.identity = identity
        self.store = store
        self.keys = keys
        self.links = links
        self.dht = dht
        self.resolver = resolver
        self.options = options
        self.stats = RelayStats()
        self.replay = ReplayTags(options.replay_capacity, max_epochs=3)
        self.delivered = ReplayTags(options.delivered_capacity, options.delivered_days)
        self.observers: list[Callable[[bytes], None]] = []
        """Called with each packet whose layer we accepted (the lab counts
        layers accepted twice, S17)."""
        self._on_deliver = on_deliver
        self._wall_clock = wall_clock
        self._send, self._receive = trio.open_memory_channel[bytes](options.queue)
        self._work = trio.CapacityLimiter(options.parallel_work)

    def submit(self, packet: bytes) -> bool:
        """Queue a packet from the wire or a mailbox; False (counted) when full."""
        try:
            self._send.send_nowait(packet)
        except trio.WouldBlock:
            self.stats.queue_full += 1
            return False
        return True

    async def load_replay_tags(self, now: float) -> None:
        """Restore the persisted tags of the epochs whose keys we still hold,
        and of the layers delivered here in the days we remember."""
        current = epoch_of(now)
        await self.forget_before(now)
        for epoch in (current - 1, current, current + 1):
            for tag in await self.store.replay_tags(epoch, self.options.replay_capacity):
                self.replay.seen_or_add(epoch, tag)
        for day in range(current - self.options.delivered_days + 1, current + 1):
            for tag in await self.store.replay_tags(
                day, self.options.delivered_capacity, "delivered_tags"
            ):
                self.delivered.seen_or_add(day, tag)

    async def forget_before(self, now: float) -> None:
        """Forget the tags of retired onion keys, and of deliveries too old to remember."""
        current = epoch_of(now)
        self.replay.drop_epochs_before(current - 1)
        await self.store.drop_replay_tags_before(current - 1)
        oldest = current - self.options.delivered_days + 1
        self.delivered.drop_epochs_before(oldest)
        await self.store.drop_replay_tags_before(oldest, "delivered_tags")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                batch = [await self._receive.receive()]
                while len(batch) < self.options.batch:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._process(batch, nursery)

    async def _process(self, batch: list[bytes], nursery: trio.Nursery) -> None:
        fresh: dict[int, list[bytes]] = {}
        forwards: list[sphinx.Forward] = []
        mine: list[sphinx.Deliver] = []
        delivered: list[bytes] = []
        accepted: list[bytes] = []
        # our clock may step back: a day already remembered is never stale
        now = self._wall_clock()
        today = max([epoch_of(now), *self.delivered.epochs])
        keys = self.key_order(now)
        for packet in batch:
            peeled = self._peel(packet, keys)
            if peeled is None:
                continue
            epoch, result = peeled
            if isinstance(result.result, sphinx.Deliver):
                if self.delivered.seen_anywhere_or_add(today, result.replay_tag):
                    self.stats.replays += 1  # replayed to us: even our ack would show it
                    continue
                delivered.append(result.replay_tag)
                mine.append(result.result)
            elif self.replay.seen_or_add(epoch, result.replay_tag):
                self.stats.replays += 1
                continue
            else:
                fresh.setdefault(epoch, []).append(result.replay_tag)
                forwards.append(result.result)
            accepted.append(packet)
        if not await self._save_tags(fresh, (today, delivered), len(accepted)):
            return
        for packet in accepted:
            for observe in self.observers:
                observe(packet)
        for forward in forwards:
            await self._spawn(nursery, self._forward, forward)
        for deliver in mine:
            self.stats.delivered_here += 1
            await self._spawn(nursery, self._on_deliver, deliver)

    async def _save_tags(
        self, fresh: dict[int, list[bytes]], delivered: tuple[int, list[bytes]], packets: int
    ) -> bool:
        """Commit a batch's new tags (one transaction per epoch); False when they
        could not be saved: the batch is dropped (fail closed), and its senders
        try again by new routes."""
        try:
            for epoch, tags in fresh.items():
                await self.store.add_replay_tags(epoch, tags)
            if delivered[1]:
                await self.store.add_replay_tags(*delivered, "delivered_tags")
        except StoreError as exc:
            log.warning(
                "dropped %d onion packets: their tags could not be saved (%s)", packets, exc
            )
            self.stats.not_saved += packets
            return False
        return True

    async def _spawn(
        self, nursery: trio.Nursery, fn: Callable[[T], Awaitable[None]], item: T
    ) -> None:
        """Run ``work`` in the background once a slot is free (back-pressure:
        the worker waits, the bounded queue fills, new packets are dropped)."""
        token = object()
        await self._work.acquire_on_behalf_of(token)

        async def run() -> None:
            try:
                await fn(item)
            finally:
                self._work.release_on_behalf_of(token)

        nursery.start_soon(run)

    def key_order(self, now: float) -> list[tuple[int | None, bytes]]:
        """(epoch, secret key) in the order packets try them: the current
        epoch's onion key (most packets are relay layers of this epoch), our
        identity key (epoch None), then the previous and next epochs' onion
        keys (packets across a boundary, senders' clocks a day off). A fixed
        order: how long a packet takes says nothing of the packets before it."""
        onion: list[tuple[int | None, bytes]] = [*self.keys.likeliest_first(now)]
        return [*onion[:1], (None, self.identity.x25519_private), *onion[1:]]

    def _peel(
        self, packet: bytes, keys: list[tuple[int | None, bytes]]
    ) -> tuple[int, sphinx.Peeled] | None:
        """(epoch, layer) of the key in ``keys`` that opens ``packet`` (-1 for
        our identity key), or None (counted): relay layers must use onion
        keys, our own the identity key."""
        try:
            index, peeled = sphinx.peel_with([key for _, key in keys], packet)
        except sphinx.InvalidPacket as exc:
            log.debug("refused an onion packet: %s", exc)
            if exc.reason is sphinx.InvalidReason.TAGGED_PAYLOAD:
                self.stats.tagged += 1  # a relay on the way altered the payload
            else:
                self.stats.bad_packets += 1
            return None
        epoch = keys[index][0]
        if (epoch is None) != isinstance(peeled.result, sphinx.Deliver):
            self.stats.bad_packets += 1  # a DELIVER under an onion key, or a hop under the identity
            return None
        return -1 if epoch is None else epoch, peeled

    async def _forward(self, forward: sphinx.Forward) -> None:
        try:
            message = onion_frames.encode_packet_message(forward.packet)
            await self.resolver.send(self.links, forward.next_hop, message)
        except (*DIAL_ERRORS, LookupError) as exc:
            log.debug("could not forward an onion packet: %r", exc)
            if forward.command is sphinx.Command.EXIT:
                await self._deposit(forward)
            else:
                self.stats.forward_failed += 1
        else:
            self.stats.relayed += 1
            if forward.command is sphinx.Command.EXIT:
                self.stats.exited += 1

    async def _deposit(self, forward: sphinx.Forward) -> None:
        held = await self.dht.deposit(
            forward.next_hop, forward.packet, ttl=self.options.deposit_ttl
        )
        if held:
            self.stats.deposited += 1
        else:
            self.stats.forward_failed += 1
