"""Full nodes joining the DHT on the simulated network (autojump clock)."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack

import trio
from simworld import EPOCH, SimWorld
from trio.testing import MockClock

from p2pmsg.dht.service import DhtOptions
from p2pmsg.keys import Identity
from p2pmsg.node import NodeOptions
from p2pmsg.sim.net import Deliver, Drop, Packet, Verdict, deliver_all
from p2pmsg.store import Contact


async def test_a_contact_added_by_bare_id_is_found_through_the_dht(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    world.home("seed")
    boot = [world.invite("seed")]
    async with (
        world.node("seed"),
        world.node("alice", bootstrap=boot) as alice,
        world.node("bob", bootstrap=boot) as bob,
    ):
        await alice.joined.wait()
        await bob.joined.wait()
        await alice.store.add_contact(Contact("bob", bob.identity.node_id, None, (), EPOCH))
        sent = await alice.send("bob", "found you", direct=True)
        got = await bob.messages().receive()
        assert got.id == sent
        contact = await alice.store.get_contact("bob")
        assert contact is not None
        assert contact.public_key == bob.identity.public.key
        assert contact.endpoints == ("sim:bob:1",)


async def test_a_blocked_bootstrap_list_is_survived_through_one_working_invite(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    for name in ("dead1", "dead2", "seed"):
        world.home(name)

    def censor(packet: Packet) -> Verdict:
        return Drop() if packet.dst_host.startswith("dead") else Deliver()

    world.net.policy = censor
    boot = [world.invite("dead1"), world.invite("dead2"), world.invite("seed")]
    async with world.node("seed"), world.node("alice", bootstrap=boot) as alice:
        with trio.fail_after(120):
            await alice.joined.wait()
        assert [p.prefix for p in alice.dht.table.peers()] == ["host:seed"]


async def test_a_restarted_node_rejoins_from_its_cache_without_the_seed(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    world.home("seed")
    boot = [world.invite("seed")]
    async with (
        world.node("seed"),
        world.node("bob", bootstrap=boot) as bob,
        world.node("alice", bootstrap=boot) as alice,
    ):
        await alice.joined.wait()
        await bob.joined.wait()
        await trio.sleep(700)  # the node caches its routing table every 10 minutes
    # The seed is gone for good; alice comes back and still finds bob.
    world.net.policy = lambda p: Drop() if p.dst_host == "seed" else Deliver()
    async with world.node("bob") as bob, world.node("alice", bootstrap=boot) as alice:
        with trio.fail_after(300):
            await alice.joined.wait()
        assert bob.identity.node_id in alice.dht.table


async def test_a_wholly_blocked_static_list_is_survived_through_a_contacts_invite(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    for name in ("dead1", "dead2", "friend"):
        world.home(name)
    world.net.policy = lambda p: Drop() if p.dst_host.startswith("dead") else Deliver()
    static = [world.invite("dead1"), world.invite("dead2")]
    world.home("alice", bootstrap=static)
    async with world.node("friend"), world.node("alice") as alice:
        # Only the static list: nothing answers.
        with trio.move_on_after(120):
            await alice.joined.wait()
        assert not alice.joined.is_set()
        # A friend's invite arrives (a contact): the next attempt joins through it.
        await alice.store.add_contact(world.contact_of("friend"))
        with trio.fail_after(120):
            await alice.joined.wait()
        assert [p.prefix for p in alice.dht.table.peers()] == ["host:friend"]


async def test_a_node_started_while_its_seed_was_down_joins_soon_after_it_is_up(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    # The join is retried after 1 s, then 2, 4 ... up to 30 s: a seed that
    # comes back 8 s in is reached within the next wait, not 30 s later.
    world.home("seed")
    world.net.policy = lambda p: Drop() if p.dst_host == "seed" else Deliver()
    boot = [world.invite("seed")]
    async with world.node("seed"), world.node("alice", bootstrap=boot) as alice:
        start = trio.current_time()
        await trio.sleep(8)
        assert not alice.joined.is_set()
        world.net.policy = deliver_all
        await alice.joined.wait()
        assert trio.current_time() - start < 25


async def test_a_burst_of_deposits_reaches_every_holder(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """A relay deposits a long message's fragments at once: every deposit must
    reach every holder, not lose some to handshakes the holders' admission
    control refuses in the burst. (The holders' request rate limits are
    raised: a burst this size in a network of 8 goes beyond them, and that
    is not what is tested.)"""
    options = NodeOptions(dht=DhtOptions(rate=1000.0, burst=1000.0))
    names = [f"node{i}" for i in range(8)]
    boot = [world.invite(names[0])]
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(world.node(n, bootstrap=boot, options=options))
            for n in names
        ]
        for node in nodes[1:]:
            await node.joined.wait()
        owner = Identity.generate().node_id
        single = await nodes[1].dht.deposit(owner, os.urandom(2486))
        assert single > 0
        taken: list[int] = []

        async def deposit() -> None:
            taken.append(await nodes[1].dht.deposit(owner, os.urandom(2486)))

        async with trio.open_nursery() as burst:
            for _ in range(33):
                burst.start_soon(deposit)
        assert taken == [single] * 33
