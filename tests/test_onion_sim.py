"""The issue's simulator test: many nodes, churn, onion delivery, no loss, no duplicates.

Every node is a full node and a relay on one simulated network under the
autojump clock. A seeded RNG picks contact pairs, who sends what to whom and
when, and the churn: at any time about a fifth of the nodes are offline,
and every few simulated minutes some of them come back while others go down.
A message is sent only from a node that is online, to a contact that may be
online or not (its packets then wait in the contact's DHT mailbox). After
the churn everyone comes back; every message must then reach its recipient's
inbox exactly once, be acked to its sender, and no node's ``messages()``
channel may ever show one twice, across all of that node's restarts.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from simworld import SimWorld
from trio.testing import MockClock

from p2pmsg.dht.service import DhtOptions
from p2pmsg.node import Node, NodeOptions
from p2pmsg.onion_service import OnionServiceOptions
from p2pmsg.store import Database, OutboxState

SEEDS = 3
LONG_EVERY = 20
"""Every 20th message is 10 KB: six fragments, each over its own route."""
OPTIONS = NodeOptions(
    # Test speed, measured: DHT lookups dominate the run. A node fetches its
    # mailbox right after joining; the periodic poll only catches deposits
    # that raced with that fetch, so it can be rare. A smaller k makes each
    # lookup cheaper; a larger, longer-lived link pool saves handshakes.
    onion=OnionServiceOptions(mailbox_poll=1800.0),
    dht=DhtOptions(k=8, mailbox_k=5, max_links=128, link_idle=600.0),
    link_idle=900.0,  # above the pool's link_idle, so pooled links are not stale
)


@dataclass(frozen=True)
class Size:
    nodes: int
    messages: int
    contacts_per_node: int
    churn_every: float
    churn_swap: int
    churn_rounds: int


# QUICK is what CI runs, 1.5-2.5 min. FULL is issue 4's size, about 12-16 min
# on one core (the DHT lookups of relays, acks and mailboxes dominate); it
# held a CI core for half the run once the 20-scenario matrix joined, so it is
# one command away instead:
#     P2PMSG_SIM_FULL=1 python3 -m pytest tests/test_onion_sim.py
QUICK = Size(
    nodes=60, messages=300, contacts_per_node=3, churn_every=180.0, churn_swap=4, churn_rounds=10
)
FULL = Size(
    nodes=200, messages=1000, contacts_per_node=3, churn_every=180.0, churn_swap=10, churn_rounds=10
)


@contextmanager
def world_root(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs when there is one: every node's SQLite commits with
    fsync, and a few hundred nodes' fsyncs on a disk would dominate the run."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    root = Path(tempfile.mkdtemp(prefix="p2pmsg-onion-sim-", dir=shm))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Member:
    """One node of the world and what its application saw, over all its runs."""

    name: str
    node: Node | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)
    seen: set[tuple[bytes, bytes]] = field(default_factory=set)
    shown_twice: list[tuple[bytes, bytes]] = field(default_factory=list)
    runs: int = 0
    deposited: int = 0

    async def live(
        self, world: SimWorld, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        self.stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with (
                    world.node(self.name, options=OPTIONS) as node,
                    trio.open_nursery() as inner,
                ):
                    inner.start_soon(self._collect, node)
                    self.node = node
                    self.runs += 1
                    task_status.started(scope)
                    await trio.sleep_forever()
        finally:
            if self.node is not None:
                self.deposited += self.node.onion.relay.stats.deposited
            self.node = None
            self.stopped.set()

    async def _collect(self, node: Node) -> None:
        async for got in node.messages():
            key = (got.peer, got.id)
            if key in self.seen:
                self.shown_twice.append(key)
            self.seen.add(key)


class World:
    """The members, started and stopped in one nursery."""

    def __init__(self, sim: SimWorld, names: list[str], nursery: trio.Nursery) -> None:
        self.sim = sim
        self.members = {name: Member(name) for name in names}
        self.nursery = nursery

    def online(self) -> list[str]:
        return [m.name for m in self.members.values() if m.node is not None]

    def offline(self) -> list[str]:
        return [m.name for m in self.members.values() if m.node is None]

    async def start(self, name: str, *, wait_joined: bool = True) -> Node:
        member = self.members[name]
        member.scope = await self.nursery.start(member.live, self.sim)
        assert member.node is not None
        if wait_joined:
            with trio.fail_after(300):
                await member.node.joined.wait()
        return member.node

    async def stop(self, name: str) -> None:
        member = self.members[name]
        assert member.scope is not None
        member.scope.cancel()
        await member.stopped.wait()


def befriend_all(
    sim: SimWorld, rng: random.Random, names: list[str], per_node: int
) -> list[tuple[str, str]]:
    """Random contact pairs, about ``per_node`` per node, added both ways to the
    homes (created first, with the bootstrap list) before any node runs."""
    pairs: set[tuple[str, str]] = set()
    while len(pairs) < len(names) * per_node // 2:
        a, b = rng.sample(names, 2)
        pairs.add((min(a, b), max(a, b)))
    contacts: dict[str, list[str]] = {}
    for a, b in sorted(pairs):
        contacts.setdefault(a, []).append(b)
        contacts.setdefault(b, []).append(a)
    for me, others in contacts.items():
        with Database.open(sim.home(me).db_file) as db:
            for other in others:
                db.add_contact(sim.contact_of(other))
    return sorted(pairs)


@dataclass(frozen=True)
class Sent:
    sender: str
    recipient: str
    id: bytes


async def churn_and_send(
    world: World, rng: random.Random, size: Size, pairs: list[tuple[str, str]], seeds: set[str]
) -> list[Sent]:
    """``size.churn_rounds`` rounds: each sends its share of the messages at
    random moments, then swaps ``churn_swap`` online nodes for offline ones."""
    sent: list[Sent] = []
    per_round = [size.messages // size.churn_rounds] * size.churn_rounds
    per_round[-1] += size.messages - sum(per_round)
    for count in per_round:
        moments = sorted(rng.uniform(0, size.churn_every) for _ in range(count))
        start = trio.current_time()
        for moment in moments:
            await trio.sleep_until(start + moment)
            while True:
                a, b = rng.choice(pairs)
                sender, recipient = (a, b) if rng.random() < 0.5 else (b, a)
                node = world.members[sender].node
                if node is not None:
                    break
            text = f"{sender} to {recipient} #{len(sent)}"
            if len(sent) % LONG_EVERY == 0:  # some span several packets (fragments)
                text += " " + "long" * 2500
            message_id = await node.send(recipient, text)
            sent.append(Sent(sender, recipient, message_id))
        await trio.sleep_until(start + size.churn_every)
        going = rng.sample(sorted(set(world.online()) - seeds), size.churn_swap)
        coming = rng.sample(sorted(world.offline()), size.churn_swap)
        for name in going:
            await world.stop(name)
        for name in coming:
            await world.start(name, wait_joined=False)
    return sent


async def undelivered(world: World) -> int:
    total = 0
    for member in world.members.values():
        assert member.node is not None
        total += await member.node.store.count_queued()
    return total


async def wait_all_delivered(world: World, *, timeout: float) -> None:
    """Poll the outboxes in simulated time (they signal nothing we could await
    across restarts); the autojump clock makes each simulated minute free."""
    with trio.fail_after(timeout):
        while await undelivered(world):  # noqa: ASYNC110 - see the docstring
            await trio.sleep(60.0)


async def check_exactly_once(world: World, sent: list[Sent]) -> None:
    expected: dict[str, set[tuple[bytes, bytes]]] = {name: set() for name in world.members}
    by_sender: dict[str, set[bytes]] = {name: set() for name in world.members}
    for message in sent:
        sender_node = world.members[message.sender].node
        assert sender_node is not None
        expected[message.recipient].add((sender_node.identity.node_id, message.id))
        by_sender[message.sender].add(message.id)
    for name, member in world.members.items():
        node = member.node
        assert node is not None
        inbox = [(m.peer, m.id) for m in await node.store.list_inbox(limit=1000)]
        assert len(inbox) == len(set(inbox)), name
        assert set(inbox) == expected[name], name
        assert member.shown_twice == [], name
        assert member.seen <= expected[name], name
        outbox = await node.store.list_outbox(limit=1000)
        assert {m.id for m in outbox} == by_sender[name], name
        assert all(m.state is OutboxState.DELIVERED for m in outbox), name


async def run_world(tmp_path: Path, size: Size, seed: int) -> None:
    rng = random.Random(seed)
    names = [f"n{i:03d}" for i in range(size.nodes)]
    seeds = set(names[:SEEDS])
    with world_root(tmp_path) as root:
        sim = SimWorld(root)
        boot: list[str] = []
        for name in names:  # a seed bootstraps from the seeds before it
            sim.home(name, bootstrap=boot)
            if len(boot) < SEEDS:
                boot.append(sim.invite(name))
        pairs = befriend_all(sim, rng, names, size.contacts_per_node)
        async with trio.open_nursery() as nursery:
            world = World(sim, names, nursery)
            for i, name in enumerate(names):
                await world.start(name, wait_joined=i > 0)  # the first seed has nobody to join
            for name in names:  # everyone's prekeys are out before anyone goes away
                node = world.members[name].node
                assert node is not None
                with trio.fail_after(600):
                    await node.onion.prekeys_published.wait()
            offline = rng.sample(names[SEEDS:], size.nodes // 5)
            for name in offline:
                await world.stop(name)
            sent = await churn_and_send(world, rng, size, pairs, seeds)
            for name in world.offline():
                await world.start(name, wait_joined=False)
            await wait_all_delivered(world, timeout=12 * 3600.0)
            await check_exactly_once(world, sent)
            assert len(sent) == size.messages
            long_ones = 0
            for member in world.members.values():
                assert member.node is not None
                inbox = await member.node.store.list_inbox(limit=1000)
                long_ones += sum(len(m.body) > 10_000 for m in inbox)
            assert long_ones == -(-size.messages // LONG_EVERY)
            members = world.members.values()
            assert sum(m.runs for m in members) >= size.nodes + size.churn_rounds * size.churn_swap
            deposited = sum(
                m.deposited + (m.node.onion.relay.stats.deposited if m.node else 0) for m in members
            )
            assert deposited > 0  # some packets waited in mailboxes
            nursery.cancel_scope.cancel()


SIZES = (
    [pytest.param(FULL, id="full", marks=pytest.mark.timeout(3600))]
    if os.environ.get("P2PMSG_SIM_FULL")
    # about 4 minutes of a core alone, so past the suite's 300 s beside other tests
    else [pytest.param(QUICK, id="quick", marks=pytest.mark.timeout(900))]
)


@pytest.mark.parametrize("size", SIZES)
async def test_churn_every_message_delivered_once(
    tmp_path: Path, autojump_clock: MockClock, size: Size
) -> None:
    await run_world(tmp_path, size, seed=2024)
