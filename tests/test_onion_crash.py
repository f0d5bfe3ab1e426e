"""Crash safety of onion delivery: nodes die at random moments, nothing is lost or doubled.

Theory of operation
-------------------
Full nodes (8 relays, alice, bob) run on the simulated network under trio's
autojump clock; every packet takes a few simulated milliseconds, so one
message's life (route choice, three relays, a deposit or a delivery, the ack
back through a reply block) is spread over simulated time instead of
happening all at the same instant.

A node "process" (:class:`Process`) is one ``Node.open`` block inside its own
cancel scope. Killing it cancels that scope: every task of the node stops
at its next checkpoint, and the store keeps exactly what it committed (each
write is its own SQLite transaction and runs inline, so cancellation never
splits one), as after ``kill -9``. The dead node's sockets close, as the
kernel closes a dead process's sockets. Restarting opens the same home again.

One run makes :data:`KILLS` kills, each an iteration of the property. An
iteration picks, from a seeded RNG, the victim (alice the sender, a relay on
the route of the message just sent, any relay, or bob the recipient), how it
dies (at a random simulated time after the send, or right after its N-th
store call from then on, which hits the moments between two commits
precisely) and how long it stays down; alice sends one message before the
kill and one while the victim is down (or right after her own restart).
Messages are still in flight when the next iteration starts, so kills also
land in the middle of retries, mailbox fetches and acks of earlier ones.

In the end every node runs again; the test waits (in simulated time) until
alice's outbox is all delivered, then checks that bob's inbox holds every
message exactly once with its text, that no incarnation of bob's
``messages()`` channel yielded an id twice, and that no incarnation of
alice's ``deliveries()`` reported an id twice.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, TypeVarTuple

import trio
from simworld import SimWorld, sim_wall_clock
from trio.testing import MockClock

from p2pmsg.endpoint import Endpoint
from p2pmsg.home import Config, Home
from p2pmsg.keys import Identity
from p2pmsg.node import Node
from p2pmsg.sim.net import Deliver, Packet, Verdict
from p2pmsg.store import Database, OutboxState
from transports.sim import SimTransport

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

RELAYS = [f"relay{i}" for i in range(8)]
KILLS = 52
KILL_WINDOW = 20.0
"""Seconds after a send within which a timed kill lands (a message's life is shorter)."""
MAX_STORE_CALLS = 40
"""A store-call kill lands right after one of the victim's next this many store calls."""
MAX_DOWNTIME = 120.0
SETTLE = 6 * 3600.0
"""Simulated time allowed for the last messages after the last restart."""
VICTIMS = ("alice", "route relay", "any relay", "bob")


def latency(seed: int) -> Callable[[Packet], Verdict]:
    """Every packet takes 1-20 ms, from a seeded RNG."""
    rng = random.Random(seed)

    def policy(packet: Packet) -> Verdict:
        del packet
        return Deliver(delay=rng.uniform(0.001, 0.02))

    return policy


@dataclass
class Process:
    """One node's life: started, killed (cancelled) and started again with its home."""

    world: SimWorld
    name: str
    rng: random.Random
    on_message: Callable[[bytes], None] = lambda _id: None
    on_delivered: Callable[[bytes], None] = lambda _id: None
    node: Node | None = None
    incarnations: list[Node] = field(default_factory=list)
    _scope: trio.CancelScope | None = None
    _stopped: trio.Event = field(default_factory=trio.Event)
    _calls_left: int | None = None

    async def _offload(self, fn: Callable[[*Ts], T], /, *args: *Ts) -> T:
        """Run a store call inline (as ``run_inline``), then die if it was the chosen one."""
        result = fn(*args)
        if self._calls_left is not None:
            self._calls_left -= 1
            if self._calls_left <= 0:
                self._calls_left = None
                self._die()
        return result

    def _die(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        self._stopped = trio.Event()
        home = self.world.homes[self.name]
        try:
            with trio.CancelScope() as self._scope:
                async with (
                    Node.open(
                        home.path,
                        [SimTransport(self.world.net, self.name)],
                        offload=self._offload,
                        wall_clock=sim_wall_clock,
                        rng=self.rng.randbytes,
                    ) as node,
                    trio.open_nursery() as nursery,
                ):
                    self.node = node
                    self.incarnations.append(node)
                    nursery.start_soon(self._app, node)
                    task_status.started(node)
                    await trio.sleep_forever()
        finally:
            self.node = None
            self._calls_left = None
            self._stopped.set()

    async def _app(self, node: Node) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain, node.messages(), lambda m: self.on_message(m.id))
            nursery.start_soon(self._drain, node.deliveries(), self.on_delivered)

    @staticmethod
    async def _drain(channel: trio.MemoryReceiveChannel[T], report: Callable[[T], None]) -> None:
        async for item in channel:
            report(item)

    @property
    def alive(self) -> bool:
        return self.node is not None

    async def kill_now(self) -> None:
        self._calls_left = None
        self._die()
        await self._stopped.wait()

    async def kill_after_store_calls(self, calls: int, fallback: float) -> str:
        """Die right after the ``calls``-th store call from now, or at ``fallback``
        seconds from now if it makes fewer calls by then."""
        self._calls_left = calls
        with trio.move_on_after(fallback):
            await self._stopped.wait()
            return f"after store call {calls}"
        await self.kill_now()
        return f"at {fallback:.3f}s (fewer than {calls} store calls)"


def make_home(world: SimWorld, name: str, seed: int, boot: list[str]) -> Home:
    """A home with an identity from ``seed`` (``SimWorld.home`` draws fresh keys)."""
    home = Home(world.root / name)
    rng = random.Random(f"{seed}/{name}/identity")
    listen = (Endpoint.parse(f"sim:{name}"),)
    home.init(Config(listen=listen, bootstrap=tuple(boot)), Identity.generate(rng.randbytes))
    world.homes[name] = home
    return home


async def wait_for(condition: Callable[[], bool], what: str, *, timeout: float) -> None:
    """Wait, in simulated time, for state on other nodes that signals nothing."""
    with trio.move_on_after(timeout):
        while not condition():  # noqa: ASYNC110 - nothing to wait on across nodes
            await trio.sleep(0.5)
        return
    raise AssertionError(f"gave up waiting for {what}")


class Crashes:
    """The world, its processes, the messages sent and what the apps saw."""

    def __init__(self, world: SimWorld, seed: int) -> None:
        self.world = world
        self.rng = random.Random(seed)
        world.net.policy = latency(seed)
        make_home(world, RELAYS[0], seed, [])
        boot = [world.invite(RELAYS[0])]
        for name in [*RELAYS[1:], "alice", "bob"]:
            make_home(world, name, seed, boot)
        for me, other in (("alice", "bob"), ("bob", "alice")):
            with Database.open(world.homes[me].db_file) as db:
                db.add_contact(world.contact_of(other))
        self.yielded: list[bytes] = []
        self.reported: list[bytes] = []
        self.procs = {
            name: Process(world, name, random.Random(f"{seed}/{name}/rng"))
            for name in [*RELAYS, "alice", "bob"]
        }
        self.procs["bob"].on_message = self.yielded.append
        self.procs["alice"].on_delivered = self.reported.append
        self.relay_of = {world.homes[n].load_identity().node_id: n for n in RELAYS}
        self.sent: dict[bytes, str] = {}
        self.events: list[str] = []

    @property
    def alice(self) -> Node:
        node = self.procs["alice"].node
        assert node is not None
        return node

    @property
    def bob(self) -> Node:
        node = self.procs["bob"].node
        assert node is not None
        return node

    async def start_all(self, nursery: trio.Nursery) -> None:
        for name, proc in self.procs.items():
            node = await nursery.start(proc.run)
            if name != RELAYS[0]:
                with trio.fail_after(120):
                    await node.joined.wait()
        await wait_for(self.bob.onion.prekeys_published.is_set, "bob's prekeys", timeout=600)

    async def send(self, text: str) -> bytes:
        message_id = await self.alice.send("bob", text)
        self.sent[message_id] = text
        return message_id

    async def route_relay(self, message_id: bytes) -> str | None:
        """A relay on a route of ``message_id`` (from alice's SURB record), if any."""
        with trio.move_on_after(KILL_WINDOW):
            while True:
                routes = await self.alice.store.surb_routes(message_id)
                relays = sorted({r for route in routes for r in route})
                if relays:
                    return self.relay_of[self.rng.choice(relays)]
                await trio.sleep(0.01)
        return None

    async def iteration(self, index: int, nursery: trio.Nursery) -> None:
        kind = self.rng.choice(VICTIMS)
        start = trio.current_time()
        first = await self.send(f"{index}: before the kill")
        if kind == "route relay":
            victim = await self.route_relay(first) or self.rng.choice(RELAYS)
        elif kind == "any relay":
            victim = self.rng.choice(RELAYS)
        else:
            victim = kind
        proc = self.procs[victim]
        if self.rng.random() < 0.5:
            calls = self.rng.randint(1, MAX_STORE_CALLS)
            how = await proc.kill_after_store_calls(calls, fallback=KILL_WINDOW)
        else:
            at = self.rng.uniform(0.0, KILL_WINDOW)
            await trio.sleep(max(0.0, start + at - trio.current_time()))
            await proc.kill_now()
            how = f"at {at:.3f}s"
        self.events.append(f"kill {index}: {kind} {victim} {how}")
        if victim != "alice":
            await self.send(f"{index}: while {victim} is down")
        await trio.sleep(self.rng.uniform(0.0, MAX_DOWNTIME))
        await nursery.start(proc.run)
        if victim == "alice":
            await self.send(f"{index}: after alice restarted")

    def total(self, name: str, count: Callable[[Node], int]) -> int:
        """``count`` summed over every incarnation of the node ``name``."""
        return sum(count(node) for node in self.procs[name].incarnations)

    async def all_delivered(self) -> bool:
        return all(m.state is OutboxState.DELIVERED for m in await self.alice.store.list_outbox())

    async def settle(self) -> None:
        with trio.move_on_after(SETTLE):
            while not await self.all_delivered():  # noqa: ASYNC110 - state in a store
                await trio.sleep(5.0)
            return
        outbox = await self.alice.store.list_outbox()
        stuck = [f"{m.id.hex()[:8]} {self.sent.get(m.id)!r} {m.state}" for m in outbox]
        raise AssertionError(
            "undelivered after the last restart:\n"
            + "\n".join(s for s in stuck if "DELIVERED" not in s)
            + "\n"
            + "\n".join(self.events)
        )

    async def check(self) -> None:
        outbox = await self.alice.store.list_outbox(limit=10 * len(self.sent))
        assert {m.id: m.state for m in outbox} == dict.fromkeys(self.sent, OutboxState.DELIVERED)
        inbox = await self.bob.store.list_inbox(limit=10 * len(self.sent))
        alice_id = self.alice.identity.node_id
        counts = Counter((m.peer, m.id) for m in inbox)
        doubled = [k for k, n in counts.items() if n > 1]
        assert not doubled, doubled
        assert {m.id: m.body.decode() for m in inbox} == self.sent
        assert {m.peer for m in inbox} == {alice_id}
        doubled_app = [k for k, n in Counter(self.yielded).items() if n > 1]
        assert not doubled_app, f"bob's app saw {doubled_app} twice"
        assert set(self.yielded) <= set(self.sent)
        doubled_acks = [k for k, n in Counter(self.reported).items() if n > 1]
        assert not doubled_acks, f"alice's app was told twice of {doubled_acks}"


async def run_crashes(world: SimWorld, seed: int, kills: int) -> Crashes:
    crashes = Crashes(world, seed)
    async with trio.open_nursery() as nursery:
        await crashes.start_all(nursery)
        for index in range(kills):
            await crashes.iteration(index, nursery)
        await crashes.settle()
        await crashes.check()
        nursery.cancel_scope.cancel()
    return crashes


async def test_kills_at_random_moments_lose_and_double_nothing(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    crashes = await run_crashes(world, seed=20240611, kills=KILLS)
    assert len(crashes.events) == KILLS
    victims = Counter(e.split()[2] for e in crashes.events)
    assert {"alice", "bob", "route", "any"} <= set(victims), victims
    restarted = {name for name, p in crashes.procs.items() if len(p.incarnations) > 1}
    assert {"alice", "bob"} <= restarted
    assert len(crashes.sent) >= 2 * KILLS
    # The kills hit the windows that matter: messages bob had committed came
    # again (their acks were lost), and exits deposited into mailboxes.
    assert crashes.total("bob", lambda n: n.stats.duplicates) >= 1
    deposited = sum(crashes.total(r, lambda n: n.onion.relay.stats.deposited) for r in RELAYS)
    assert deposited >= 1
