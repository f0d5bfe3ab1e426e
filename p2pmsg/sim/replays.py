"""S17 at scale: duplicated, reordered and replayed onion packets over 10^6 messages.

S17 asks, over 10^6 messages, for 0 duplicate deliveries, 0 replayed layers
accepted and replay caches within their caps. A scenario run carries
thousands of messages, so this runs the product's relay code at component
level, in one process, on simulated time (passed in, never slept). The lab
runs it after each seed of a scenario with ``traffic.volume`` (S17);
``bench/replays.py`` runs it alone, with every knob of :class:`Params`.

Real, unmodified:

* every node (``relays`` relays and ``users`` users) is a
  :class:`p2pmsg.relay.Relay` with the default :class:`RelayOptions`
  (200,000 tags per epoch, 3 epochs; 20,000 delivered tags per day, 25
  days), its :class:`OnionKeys` (keys of epochs e-1, e, e+1, kept in the
  store's secrets) and its own SQLite file opened with :meth:`Store.open`;
* packets go through ``Relay._process``, the step :meth:`Relay.run` takes
  with each batch of up to 64 queued packets: ``sphinx.peel_with`` over
  :meth:`Relay.key_order` (this epoch's key, the identity key, the
  others); the replay tags; the group commit of the new tags; the
  observers; then ``links.send`` to the next hop or the ``on_deliver``
  callback. The model is that worker's queue;
* key upkeep as :class:`OnionService` does it every ``key_check`` (600 s):
  ``keys.refresh`` and, when the keys changed, ``relay.forget_before``;
* a restart as :meth:`OnionService.start` does it: the store is closed and
  opened again, new keys object and relay, ``load_replay_tags`` from SQLite;
* packets are made with ``sphinx.create_packet`` over 3 relays (the key of
  the sending moment's epoch from each relay's published keys) and the
  destination's identity key, as :class:`OnionPath` does.

Modelled:

* the network: a relay's ``PacketSender`` hands the packet to the next
  node's inbound link, where the S17 tampering of :mod:`p2pmsg.sim.tamper`
  happens on *every* hop (the sender's first hop too): ``duplicate`` of the
  packets arrive twice; the link holds a window of ``reorder`` packets and,
  when one more arrives, lets a random one of them through (none waits more
  than :data:`HOLD` seconds); the latest :data:`KEPT_PER_HOP` packets per
  (sender, next hop) are sent again right after that hop restarts (every
  node restarts on average every ``restart_hours``); a ``record`` share of
  all transmissions is recorded and sent again to the same hop up to
  ``late_hours`` (570) later;
* routes: 3 distinct relays drawn uniformly (every relay is on a network of
  its own and never fails, so scores and diversity rules change nothing);
* the store's offload is the project's :func:`run_inline` instead of a
  worker thread, and the files are in a temporary directory (under
  ``/dev/shm`` when there is one): disk durability is not what is measured,
  and 10^5 fsyncs would dominate the run;
* nothing above the Sphinx layer: the destination's relay hands the payload
  (the message number) to a counter instead of ``Receiver.deliver``: no e2e
  session, no inbox, no ack, no SURB, no mailbox. The destination refuses a
  second copy by replay tag (``Relay.delivered``, tags kept by day of
  arrival for 25 days); the inbox's (sender, id) key behind it is not run.

A layer is accepted twice when a node's observer sees the same ``alpha``
(the header's group element, which fixes the layer's shared secret and
replay tag) twice, across the node's restarts, as the lab counts it.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import tempfile
from array import array
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import trio
import trio.testing

from p2pmsg.delivery import onion_frames
from p2pmsg.dht.peer import Peer
from p2pmsg.dht.service import Dht
from p2pmsg.keys import Identity
from p2pmsg.onion import sphinx
from p2pmsg.onion_service import OnionServiceOptions
from p2pmsg.relay import (
    ONION_EPOCH,
    OnionKeys,
    PacketSender,
    Relay,
    RelayOptions,
    Resolver,
    epoch_of,
)
from p2pmsg.sim.scenario import Scenario
from p2pmsg.sim.tamper import KEPT_PER_HOP
from p2pmsg.store import Store, run_inline

T0 = 1_790_012_345.0
"""Simulated start (unix seconds), not on an epoch boundary."""
TICK = 60.0
"""Simulated seconds between two rounds of the bench's loop."""
HOLD = 600.0
"""The longest a link's reorder window holds a packet back."""
KEY_CHECK = OnionServiceOptions().key_check
OPTIONS = RelayOptions()
HOPS = 3
REASONS = ("full", "stale", "unpeelable")


@dataclass(frozen=True)
class Params:
    """One run of the model; the defaults are S17's."""

    messages: int = 20_000
    relays: int = 30
    users: int = 10
    days: float = 10.0
    """The days the messages are spread over (late replays come after)."""
    duplicate: float = 0.05
    reorder: int = 64
    """Packets a link's reorder window holds."""
    record: float = 0.01
    """The share of all transmissions recorded and sent again later."""
    late_hours: float = 570.0
    restart_hours: float = 24.0
    """Mean uptime of a node."""
    seed: int = 1

    @classmethod
    def of(cls, scenario: Scenario, seed: int) -> Params:
        """The model of ``scenario.traffic.volume``: as many relays as the
        scenario has users (30 at most, at least 4), a third as many users."""
        relays = max(HOPS + 1, min(30, scenario.topology.users))
        return cls(
            messages=scenario.traffic.volume,
            relays=relays,
            users=max(2, relays // 3),
            duplicate=scenario.topology.duplicate,
            seed=seed,
        )

    def check(self) -> None:
        """Raises ``ValueError`` for a model that cannot run."""
        if self.messages < 1 or self.relays < HOPS or self.users < 2 or self.reorder < 1:
            raise ValueError(f"messages >= 1, relays >= {HOPS}, users >= 2, reorder >= 1")
        if not self.days > 0 or self.restart_hours <= 0 or self.late_hours < 0:
            raise ValueError("days and restart_hours must be positive, late_hours not negative")


def layer_of(packet: bytes) -> int:
    return int.from_bytes(packet[:16], "big")  # alpha: one per layer


class Links:
    """A node's ``PacketSender``: the packet goes onto the next hop's link."""

    def __init__(self, net: Network, origin: SimNode) -> None:
        self.net, self.origin = net, origin

    async def send(self, peer: Peer, data: bytes) -> None:
        packet = onion_frames.decode_packet_message(data)
        self.net.transmit(self.origin, self.net.by_id[peer.node_id], packet)


class Directory:
    """The relays' ``Resolver``: every node is known."""

    def __init__(self, net: Network) -> None:
        self.net = net

    async def resolve(self, node_id: bytes) -> Peer | None:
        node = self.net.by_id.get(node_id)
        return None if node is None else node.peer

    async def send(self, links: PacketSender, node_id: bytes, data: bytes) -> None:
        peer = await self.resolve(node_id)
        if peer is None:
            raise LookupError("next hop not found")
        await links.send(peer, data)


class NoDht:
    async def deposit(self, owner_node_id: bytes, blob: bytes, *, ttl: int) -> int:
        raise AssertionError("no forward fails here, so nothing is deposited")


class SimNode:
    """One node: identity and store file for good, a Relay per run between restarts."""

    store: Store
    keys: OnionKeys
    relay: Relay

    def __init__(self, net: Network, index: int, path: Path) -> None:
        self.net, self.index, self.path = net, index, path
        self.identity = Identity.generate()
        self.peer = Peer(self.identity.node_id, self.identity.public.key, (), f"sim:{index}")
        self.link: list[tuple[float, bytes]] = []  # the inbound link's reorder window
        self.queue: deque[bytes] = deque()  # through the link, for the relay worker
        self.accepted: dict[int, float] = {}  # layer -> when first accepted, across restarts
        self.batch_accepted: list[int] = []
        self.published: dict[int, bytes] = {}
        self.totals: Counter[str] = Counter()
        self.base: Counter[str] = Counter()
        self.peak = {"replay": 0, "replay_epoch": 0, "delivered": 0, "delivered_day": 0}
        self.next_upkeep = self.next_restart = 0.0

    async def start(self, now: float) -> None:
        self.store = await Store.open(self.path, offload=run_inline)
        self.keys = OnionKeys(self.store, os.urandom)
        await self.keys.refresh(now)
        self.relay = Relay(
            self.identity, self.store, self.keys, Links(self.net, self), cast(Dht, NoDht()),
            cast(Resolver, Directory(self.net)), self.net.deliverer(self),
            options=OPTIONS, wall_clock=self.net.clock,
        )  # fmt: skip
        self.relay.observers.append(self._accepted)
        await self.relay.load_replay_tags(now)
        self.published = dict(self.keys.published())
        self.base = self.counters()
        self.next_upkeep = now + KEY_CHECK  # the upkeep task's first wait

    async def stop(self) -> None:
        self._sample_epochs()
        self.totals += self.counters() - self.base
        await self.store.close()

    async def upkeep(self, now: float) -> None:
        """What ``OnionService._key_upkeep`` does every ``key_check`` seconds.

        Only the first check after an epoch boundary changes anything, so the
        bench skips the others: the next is the first ``key_check`` step past
        the next boundary (the checks in between would find the same keys)."""
        if await self.keys.refresh(now):
            self.published = dict(self.keys.published())
            self._sample_epochs()
            await self.relay.forget_before(now)
        boundary = (epoch_of(now) + 1) * ONION_EPOCH
        self.next_upkeep = now + math.ceil((boundary - now) / KEY_CHECK) * KEY_CHECK

    def counters(self) -> Counter[str]:
        r = self.relay
        return Counter(
            replay=r.replay.replays + r.delivered.replays,
            stale=r.replay.refused_stale + r.delivered.refused_stale,
            full=r.replay.refused_full + r.delivered.refused_full,
            unpeelable=r.stats.bad_packets + r.stats.tagged,
        )

    def _accepted(self, packet: bytes) -> None:
        layer = layer_of(packet)
        first = self.accepted.get(layer)
        if first is None:
            self.accepted[layer] = self.net.now
        else:
            self.net.accepted_twice(self, self.net.now - first)
        self.batch_accepted.append(layer)

    def _sample_epochs(self) -> None:
        r, peak = self.relay, self.peak
        for e in r.replay.epochs:
            peak["replay_epoch"] = max(peak["replay_epoch"], len(r.replay.tags(e)))
        for d in r.delivered.epochs:
            peak["delivered_day"] = max(peak["delivered_day"], len(r.delivered.tags(d)))

    async def process(self) -> None:
        """One batch through ``Relay._process``; honest refusals by the relay's counters."""
        batch = [self.queue.popleft() for _ in range(min(OPTIONS.batch, len(self.queue)))]
        fresh = {layer for p in batch if (layer := layer_of(p)) not in self.accepted}
        before = self.counters()
        self.batch_accepted.clear()
        await self.relay._process(batch, self.net.nursery)  # Relay.run's step
        self.net.count["peeled"] += len(batch)
        self.net.count["accepted"] += len(self.batch_accepted)
        refused = len(fresh - set(self.batch_accepted))
        if refused:
            self.net.refused_honest(refused, self.counters() - before)
        self.peak["replay"] = max(self.peak["replay"], len(self.relay.replay))
        self.peak["delivered"] = max(self.peak["delivered"], len(self.relay.delivered))

    def arrive(self, packet: bytes, rng: random.Random, window: int) -> None:
        self.link.append((self.net.now, packet))
        if len(self.link) > window:
            self.queue.append(self.link.pop(rng.randrange(len(self.link)))[1])

    def release_held(self, before: float) -> None:
        while self.link and self.link[0][0] <= before:
            self.queue.append(self.link.pop(0)[1])


class Network:
    """The nodes, their links, the tampering and the counts."""

    nursery: trio.Nursery

    def __init__(self, params: Params, root: Path) -> None:
        self.params = params
        self.rng = random.Random(params.seed)  # noqa: S311 - the model's choices, reproducible
        self.now = T0
        n = params.relays + params.users
        self.nodes = [SimNode(self, i, root / f"node{i}.sqlite") for i in range(n)]
        self.relays, self.users = self.nodes[: params.relays], self.nodes[params.relays :]
        self.by_id = {node.identity.node_id: node for node in self.nodes}
        self.kept: list[dict[int, deque[tuple[float, bytes]]]] = [{} for _ in self.nodes]
        self.late: list[tuple[float, int, int, bytes]] = []  # (when, seq, hop, packet)
        self.deliveries = array("H", bytes(2 * params.messages))
        self.dest = array("H", bytes(2 * params.messages))
        self.count: Counter[str] = Counter()
        self.ages: dict[str, list[float]] = {}  # since the first acceptance, by node kind

    def clock(self) -> float:
        return self.now

    def deliverer(self, node: SimNode) -> Callable[[sphinx.Deliver], Coroutine[Any, Any, None]]:
        async def deliver(packet: sphinx.Deliver) -> None:
            message = int.from_bytes(packet.message[:8], "big")
            if self.dest[message] != node.index:
                self.count["misdelivered"] += 1
            self.deliveries[message] = min(self.deliveries[message] + 1, 0xFFFF)

        return deliver

    def transmit(self, origin: SimNode, hop: SimNode, packet: bytes) -> None:
        """A packet sent on: kept, maybe recorded, maybe duplicated, into the window."""
        kept = self.kept[hop.index].setdefault(origin.index, deque(maxlen=KEPT_PER_HOP))
        kept.append((self.now, packet))
        if self.rng.random() < self.params.record:
            when = self.now + self.rng.uniform(0, self.params.late_hours * 3600)
            heapq.heappush(self.late, (when, self.count["recorded"], hop.index, packet))
            self.count["recorded"] += 1
        if self.rng.random() < self.params.duplicate:
            self.count["duplicates"] += 1
            hop.arrive(packet, self.rng, self.params.reorder)
        hop.arrive(packet, self.rng, self.params.reorder)

    def send_message(self, i: int, at: float) -> None:
        self.now = at
        sender, dest = self.rng.sample(self.users, 2)
        route = self.rng.sample(self.relays, HOPS)
        epoch = epoch_of(at)
        hops = [sphinx.Hop(r.identity.node_id, r.published[epoch]) for r in route]
        hops.append(sphinx.Hop(dest.identity.node_id, dest.identity.public.x25519))
        first, packet = sphinx.create_packet(hops, i.to_bytes(8, "big"), os.urandom)
        self.dest[i] = dest.index
        self.transmit(sender, self.by_id[first], packet)

    def accepted_twice(self, node: SimNode, age: float) -> None:
        kind = "relay" if node in self.relays else "user"
        self.count[f"twice_{kind}"] += 1
        self.ages.setdefault(kind, []).append(age)

    def refused_honest(self, refused: int, delta: Counter[str]) -> None:
        """Name the reasons of a batch's refused first copies (from its counters)."""
        for reason in REASONS:
            take = min(refused, delta[reason])
            self.count[f"honest_{reason}"] += take
            refused -= take
        self.count["honest_other"] += refused

    async def restart(self, node: SimNode) -> None:
        await node.stop()
        await node.start(self.now)
        node.next_restart = self.now + self.rng.expovariate(1 / (self.params.restart_hours * 3600))
        self.count["restarts"] += 1
        oldest = self.now - self.params.late_hours * 3600  # S17 replays up to 570 h
        for kept in self.kept[node.index].values():  # [hop][sender]: the latest packets
            for sent, packet in kept:
                if sent >= oldest:
                    self.count["after_restart"] += 1
                    node.arrive(packet, self.rng, self.params.reorder)

    async def tick(self) -> None:
        """Restarts, key upkeep and late replays that are due, then held packets."""
        for node in self.nodes:
            if node.next_restart <= self.now:
                await self.restart(node)
            if node.next_upkeep <= self.now:
                await node.upkeep(self.now)
        while self.late and self.late[0][0] <= self.now:
            _, _, hop, packet = heapq.heappop(self.late)
            self.count["late"] += 1
            self.nodes[hop].arrive(packet, self.rng, self.params.reorder)
        for node in self.nodes:
            node.release_held(self.now - HOLD)

    async def drain(self) -> None:
        """Every queued packet through its relay, and what they forward, until all is quiet."""
        while busy := [node for node in self.nodes if node.queue]:
            for node in busy:
                await node.process()
            await trio.testing.wait_all_tasks_blocked()  # the forwards _process spawned

    async def run(self, progress: Callable[[int, float], None]) -> None:
        params, span = self.params, self.params.days * 86_400
        for node in self.nodes:
            await node.start(self.now)
            node.next_upkeep = self.now + self.rng.uniform(0, KEY_CHECK)
            node.next_restart = self.now + self.rng.expovariate(1 / (params.restart_hours * 3600))
        sent, t = 0, T0
        while sent < params.messages or self.late:
            t += TICK
            while sent < params.messages and T0 + sent * span / params.messages <= t:
                self.send_message(sent, T0 + sent * span / params.messages)
                sent += 1
            self.now = t
            await self.tick()
            await self.drain()
            progress(sent, t)
        while any(node.link for node in self.nodes):  # the windows' last packets
            self.now += HOLD
            for node in self.nodes:
                node.release_held(self.now)
            await self.drain()
        for node in self.nodes:
            await node.stop()


@dataclass(frozen=True)
class Figures:
    """What S17 holds a run to (the last four must be 0), and what it carried."""

    messages: int
    lost: int
    injected: int
    """Copies the tampering sent: duplicates, after restarts, late replays."""
    accepted_twice: int
    duplicated: int
    """Deliveries beyond the first of a message (``on_deliver`` twice)."""
    misdelivered: int
    over_cap: int
    """Replay caches (of the four kinds) whose peak passed their cap."""

    @property
    def failed(self) -> bool:
        return bool(self.accepted_twice or self.duplicated or self.misdelivered or self.over_cap)


def peaks(net: Network) -> tuple[tuple[int, int], ...]:
    """(peak, cap) of a relay's replay tags, in all and in one epoch, and of
    a user's delivered tags, in all and in one day."""

    def peak(nodes: list[SimNode], key: str) -> int:
        return max(n.peak[key] for n in nodes)

    return (
        (peak(net.relays, "replay"), OPTIONS.replay_capacity * 3),
        (peak(net.relays, "replay_epoch"), OPTIONS.replay_capacity),
        (peak(net.users, "delivered"), OPTIONS.delivered_capacity * OPTIONS.delivered_days),
        (peak(net.users, "delivered_day"), OPTIONS.delivered_capacity),
    )


def figures(net: Network) -> Figures:
    c = net.count
    return Figures(
        messages=net.params.messages,
        lost=net.deliveries.count(0),
        injected=c["duplicates"] + c["after_restart"] + c["late"],
        accepted_twice=c["twice_relay"] + c["twice_user"],
        duplicated=sum(d - 1 for d in net.deliveries if d > 1),
        misdelivered=c["misdelivered"],
        over_cap=sum(p > cap for p, cap in peaks(net)),
    )


SCRATCH = Path("/dev/shm")  # noqa: S108 - a RAM disk, under a private temporary directory
"""Where the nodes' SQLite files go when it exists."""


async def run(
    params: Params, root: Path, progress: Callable[[int, float], None] | None = None
) -> Network:
    """The model, its SQLite files in ``root``, run to its end in the current
    trio run, alone in it (the relays' forwards are awaited with
    ``wait_all_tasks_blocked``). Raises ``ValueError`` for :meth:`Params.check`."""
    params.check()
    net = Network(params, root)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await net.run(progress or (lambda sent, t: None))
    return net


def scratch_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A private temporary directory, on :data:`SCRATCH` when there is one."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=SCRATCH if SCRATCH.is_dir() else None)


def measure(params: Params) -> Figures:
    """:func:`run` in a trio run of its own; its :class:`Figures`."""
    with scratch_dir("p2pmsg-replays-") as tmp:
        return figures(trio.run(run, params, Path(tmp)))
