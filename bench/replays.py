"""S17 at scale: duplicated, reordered and replayed onion packets over 10^6 messages.

S17 asks, over 10^6 messages, for 0 duplicate deliveries, 0 replayed layers
accepted and a replay cache within its cap. The lab carries thousands of
messages, so this runs the product's relay code at component level, in one
process, on simulated time (passed in, never slept):
``python3 -m bench.replays --messages 1000000``.

Real, unmodified:

* every node (``--relays`` relays and ``--users`` users) is a
  :class:`p2pmsg.relay.Relay` with the default :class:`RelayOptions`
  (200,000 tags per epoch, 3 epochs; 20,000 delivered tags per day, 25
  days), its :class:`OnionKeys` (keys of epochs e-1, e, e+1, kept in the
  store's secrets) and its own SQLite file opened with :meth:`Store.open`;
* packets go through ``Relay._process``, the step :meth:`Relay.run` takes
  with each batch of up to 64 queued packets: ``sphinx.peel`` with each
  epoch key, then the identity key; the replay tags; the group commit of the
  new tags; the observers; then ``links.send`` to the next hop or the
  ``on_deliver`` callback. The bench is that worker's queue;
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
  happens on *every* hop (the sender's first hop too): ``--duplicate`` of the
  packets arrive twice; the link holds a window of ``--reorder`` packets and,
  when one more arrives, lets a random one of them through (none waits more
  than :data:`HOLD` seconds); the latest :data:`KEPT_PER_HOP` packets per
  (sender, next hop) are sent again right after that hop restarts (every
  node restarts on average every ``--restart-hours``); a ``--record`` share
  of all transmissions is recorded and sent again to the same hop up to
  ``--late-hours`` (570) later;
* routes: 3 distinct relays drawn uniformly (every relay is on a network of
  its own and never fails, so scores and diversity rules change nothing);
* the store's offload is the project's :func:`run_inline` instead of a
  worker thread, and the files are on ``--db-dir`` (``/dev/shm`` when there
  is one): disk durability is not what is measured, and 10^5 fsyncs would
  dominate the run;
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

import argparse
import heapq
import math
import os
import random
import sys
import tempfile
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, cast

import trio
import trio.testing

from bench._common import environment, table
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

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)  # the model's choices, reproducible
        self.now = T0
        n = args.relays + args.users
        self.nodes = [SimNode(self, i, root / f"node{i}.sqlite") for i in range(n)]
        self.relays, self.users = self.nodes[: args.relays], self.nodes[args.relays :]
        self.by_id = {node.identity.node_id: node for node in self.nodes}
        self.kept: list[dict[int, deque[tuple[float, bytes]]]] = [{} for _ in self.nodes]
        self.late: list[tuple[float, int, int, bytes]] = []  # (when, seq, hop, packet)
        self.deliveries = array("H", bytes(2 * args.messages))
        self.dest = array("H", bytes(2 * args.messages))
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
        if self.rng.random() < self.args.record:
            when = self.now + self.rng.uniform(0, self.args.late_hours * 3600)
            heapq.heappush(self.late, (when, self.count["recorded"], hop.index, packet))
            self.count["recorded"] += 1
        if self.rng.random() < self.args.duplicate:
            self.count["duplicates"] += 1
            hop.arrive(packet, self.rng, self.args.reorder)
        hop.arrive(packet, self.rng, self.args.reorder)

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
        node.next_restart = self.now + self.rng.expovariate(1 / (self.args.restart_hours * 3600))
        self.count["restarts"] += 1
        oldest = self.now - self.args.late_hours * 3600  # S17 replays up to 570 h
        for kept in self.kept[node.index].values():  # [hop][sender]: the latest packets
            for sent, packet in kept:
                if sent >= oldest:
                    self.count["after_restart"] += 1
                    node.arrive(packet, self.rng, self.args.reorder)

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
            self.nodes[hop].arrive(packet, self.rng, self.args.reorder)
        for node in self.nodes:
            node.release_held(self.now - HOLD)

    async def drain(self) -> None:
        """Every queued packet through its relay, and what they forward, until all is quiet."""
        while busy := [node for node in self.nodes if node.queue]:
            for node in busy:
                await node.process()
            await trio.testing.wait_all_tasks_blocked()  # the forwards _process spawned

    async def run(self, progress: Callable[[int, float], None]) -> None:
        args, span = self.args, self.args.days * 86_400
        for node in self.nodes:
            await node.start(self.now)
            node.next_upkeep = self.now + self.rng.uniform(0, KEY_CHECK)
            node.next_restart = self.now + self.rng.expovariate(1 / (args.restart_hours * 3600))
        sent, t = 0, T0
        while sent < args.messages or self.late:
            t += TICK
            while sent < args.messages and T0 + sent * span / args.messages <= t:
                self.send_message(sent, T0 + sent * span / args.messages)
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


# -- the report --------------------------------------------------------------------


def _n(value: int) -> str:
    return f"{value:,}"


def _ages(ages: dict[str, list[float]]) -> list[list[str]]:
    """The time between a layer's first acceptance and its second, by node kind."""
    return [
        [f"  {kind}: {min(a) / 3600:,.1f} to {max(a) / 3600:,.1f} h after the first", "", ""]
        for kind, a in sorted(ages.items())
    ]


def report(net: Network, args: argparse.Namespace, seconds: float) -> tuple[str, bool]:
    c, totals = net.count, sum((n.totals for n in net.nodes), Counter[str]())
    dup = sum(d - 1 for d in net.deliveries if d > 1)
    lost = net.deliveries.count(0)
    injected = c["duplicates"] + c["after_restart"] + c["late"]
    restarts = _n(c["restarts"])

    def peak(nodes: list[SimNode], key: str) -> int:
        return max(n.peak[key] for n in nodes)

    cap, epoch_cap = OPTIONS.replay_capacity * 3, OPTIONS.replay_capacity
    day_cap = OPTIONS.delivered_capacity
    d_cap = day_cap * OPTIONS.delivered_days
    peaks = (
        peak(net.relays, "replay"), peak(net.relays, "replay_epoch"),
        peak(net.users, "delivered"), peak(net.users, "delivered_day"),
    )  # fmt: skip
    over = sum(p > k for p, k in zip(peaks, (cap, epoch_cap, d_cap, day_cap), strict=True))
    rows = [
        ["messages sent", _n(args.messages), ""],
        ["messages delivered at least once", _n(args.messages - lost), ""],
        ["messages never delivered", _n(lost), ""],
        ["packets handed to a relay (peeled)", _n(c["peeled"]), ""],
        ["layers accepted", _n(c["accepted"]), ""],
        ["packets refused", _n(c["peeled"] - c["accepted"]), ""],
        ["copies injected", _n(injected), ""],
        [f"  forwarded twice ({args.duplicate:.0%} of each hop)", _n(c["duplicates"]), ""],
        [f"  sent again after a restart ({restarts} restarts)", _n(c["after_restart"]), ""],
        [f"  recorded, sent again <= {args.late_hours:g} h later", _n(c["late"]), ""],
        ["layers accepted twice", _n(c["twice_relay"] + c["twice_user"]), "0"],
        ["  at a relay (onion-key layer)", _n(c["twice_relay"]), "0"],
        ["  at the destination (identity-key layer)", _n(c["twice_user"]), "0"],
        *_ages(net.ages),
        ["deliveries duplicated (on_deliver twice)", _n(dup), "0"],
        ["deliveries to the wrong node", _n(c["misdelivered"]), "0"],
        ["honest packets refused: cache full", _n(c["honest_full"]), ""],
        ["honest packets refused: stale epoch", _n(c["honest_stale"]), ""],
        ["honest packets refused: no key opens it", _n(c["honest_unpeelable"]), ""],
        ["honest packets refused: other", _n(c["honest_other"]), ""],
        ["refusals: replay tag seen", _n(totals["replay"]), ""],
        ["refusals: tag of a stale epoch", _n(totals["stale"]), ""],
        ["refusals: tag cache full", _n(totals["full"]), ""],
        ["refusals: no key opens it (retired epoch)", _n(totals["unpeelable"]), ""],
        ["peak replay tags of a relay", _n(peaks[0]), f"<= {_n(cap)}"],
        ["peak replay tags of a relay, one epoch", _n(peaks[1]), f"<= {_n(epoch_cap)}"],
        ["peak delivered tags of a user", _n(peaks[2]), f"<= {_n(d_cap)}"],
        ["peak delivered tags of a user, one day", _n(peaks[3]), f"<= {_n(day_cap)}"],
        ["wall seconds", f"{seconds:,.0f}", ""],
    ]
    lines = [
        f"p2pmsg S17 replays: {_n(args.messages)} messages over {args.days:g} simulated days"
        f" (then {args.late_hours:g} h of late replays), {args.relays} relays, {args.users}"
        f" users, routes of {HOPS} relays, seed {args.seed}",
        environment(),
        "",
        table(("figure", "count", "must be"), rows),
        "",
        f"{args.messages / seconds:,.0f} messages per wall second; {c['peeled'] / seconds:,.0f}"
        " packets through Relay._process per wall second",
    ]
    failed = bool(c["twice_relay"] or c["twice_user"] or dup or c["misdelivered"] or over)
    lines.append("S17: FAILED" if failed else "S17: passed (0 accepted twice, 0 duplicated, caps)")
    return "\n".join(lines), failed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000, help="messages sent (default 20000)")
    p.add_argument("--relays", type=int, default=30, help="relays (default 30)")
    p.add_argument("--users", type=int, default=10, help="senders/recipients (default 10)")
    p.add_argument("--days", type=float, default=10.0, help="days the messages span (10)")
    p.add_argument("--duplicate", type=float, default=0.05, help="share sent twice (0.05)")
    p.add_argument("--reorder", type=int, default=64, help="reorder window, packets (64)")
    p.add_argument("--record", type=float, default=0.01, help="share replayed late (0.01)")
    p.add_argument("--late-hours", type=float, default=570.0, help="latest late replay (570)")
    p.add_argument("--restart-hours", type=float, default=24.0, help="mean uptime (24)")
    p.add_argument("--seed", type=int, default=1, help="the model's random choices (1)")
    shm = Path("/dev/shm")
    p.add_argument("--db-dir", default=str(shm) if shm.is_dir() else None, help="SQLite dir")
    args = p.parse_args(argv)
    if args.messages < 1 or args.relays < HOPS or args.users < 2 or args.reorder < 1:
        p.error(f"--messages >= 1, --relays >= {HOPS}, --users >= 2, --reorder >= 1")
    if not args.days > 0 or args.restart_hours <= 0 or args.late_hours < 0:
        p.error("--days and --restart-hours must be positive, --late-hours not negative")
    return args


async def run(args: argparse.Namespace) -> tuple[Network, float]:
    start = time.perf_counter()
    step = max(1, args.messages // 20)
    shown = [0, 0.0]  # messages and day of the last line

    def progress(sent: int, t: float) -> None:
        day = (t - T0) / 86_400
        if sent >= shown[0] + step or (sent == args.messages and day >= shown[1] + 2):
            shown[:] = [sent, day]
            wall = time.perf_counter() - start
            left = f"about {wall * (args.messages / sent - 1):,.0f} s to the last message"
            print(
                f"  {sent:,} sent, day {day:.1f}, {wall:,.0f} s, "
                + (left if sent < args.messages else "late replays only"),
                file=sys.stderr,
                flush=True,
            )

    with tempfile.TemporaryDirectory(prefix="p2pmsg-bench-replays-", dir=args.db_dir) as tmp:
        net = Network(args, Path(tmp))
        async with trio.open_nursery() as nursery:
            net.nursery = nursery
            await net.run(progress)
    return net, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    net, seconds = trio.run(run, args)
    text, failed = report(net, args, seconds)
    print(text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
