"""LAN discovery in the simulator, and messages straight over the LAN (SCENARIOS S11).

A :class:`SimLan` is the simulator's mDNS; nodes on it with no bootstrap
list and no WAN find each other, and a message sent the ordinary way (not
``direct``) reaches a contact on the LAN although one LAN is too few
networks for an onion route. The real-zeroconf version of the same story is
``tests/test_node_mdns.py``.
"""

from __future__ import annotations

import trio
from trio.testing import MockClock

from p2pmsg.dht.peer import Peer
from p2pmsg.join import LanPeers
from p2pmsg.keys import Identity
from p2pmsg.node import NodeOptions
from p2pmsg.sim.lan import ANSWER, REGISTER, SimLan
from p2pmsg.sim.world import World


async def test_members_of_a_lan_see_each_other_and_not_those_gone(
    autojump_clock: MockClock,
) -> None:
    lan = SimLan("home")
    a_send, a_seen = trio.open_memory_channel[bytes](8)
    b_send, b_seen = trio.open_memory_channel[bytes](8)
    c_send, c_seen = trio.open_memory_channel[bytes](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(lan.discovery().run, b"a", a_send)
        with trio.CancelScope() as gone:
            async with trio.open_nursery() as inner:
                await inner.start(lan.discovery().run, b"b", b_send)
                assert await a_seen.receive() == b"b"
                assert await b_seen.receive() == b"a"
                assert trio.current_time() == REGISTER * 2 + ANSWER
                gone.cancel()
        await nursery.start(lan.discovery().run, b"c", c_send)
        assert await c_seen.receive() == b"a"  # only a: b withdrew
        assert await a_seen.receive() == b"c"
        await trio.sleep(1.0)
        assert b_seen.statistics().current_buffer_used == 0
        assert c_seen.statistics().current_buffer_used == 0
        nursery.cancel_scope.cancel()
    assert lan.dropped == 0


async def test_a_device_carried_to_another_lan_is_seen_there_and_leaves_the_first(
    autojump_clock: MockClock,
) -> None:
    first, second = SimLan("first"), SimLan("second")
    a_send, a_seen = trio.open_memory_channel[bytes](8)
    b_send, b_seen = trio.open_memory_channel[bytes](8)
    m_send, m_seen = trio.open_memory_channel[bytes](8)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.discovery().run, b"a", a_send)
        await nursery.start(second.discovery().run, b"b", b_send)
        mule = first.discovery()
        await nursery.start(mule.run, b"m", m_send)
        assert (await m_seen.receive(), await a_seen.receive()) == (b"a", b"m")
        moved = trio.current_time()
        mule.move(second)
        assert (await m_seen.receive(), await b_seen.receive()) == (b"b", b"m")
        assert trio.current_time() == moved + REGISTER + ANSWER
        late_send, late_seen = trio.open_memory_channel[bytes](8)
        await nursery.start(first.discovery().run, b"c", late_send)
        assert await late_seen.receive() == b"a"  # the mule is no longer on the first LAN
        await trio.sleep(1.0)
        assert late_seen.statistics().current_buffer_used == 0
        nursery.cancel_scope.cancel()


async def test_a_full_sightings_channel_drops_and_counts(autojump_clock: MockClock) -> None:
    lan = SimLan("home")
    sends = []
    async with trio.open_nursery() as nursery:
        for name in (b"a", b"b", b"c"):
            send, _ = trio.open_memory_channel[bytes](0)  # never read: always full
            sends.append(send)
            await nursery.start(lan.discovery().run, name, send)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert lan.dropped == 6  # each of three missed the other two


async def test_a_contact_on_the_lan_gets_an_ordinary_message_with_no_wan(
    simnet: World, autojump_clock: MockClock
) -> None:
    lan = SimLan("home")
    for name in ("alice", "bob"):
        simnet.home(name)  # no bootstrap list: the LAN is all there is
    async with (
        simnet.node("alice", lan=lan.discovery) as alice,
        simnet.node("bob", lan=lan.discovery) as bob,
    ):
        await alice.joined.wait()
        await bob.joined.wait()
        await alice.store.add_contact(simnet.contact_of("bob"))
        await bob.store.add_contact(simnet.contact_of("alice"))
        assert [p.peer.node_id for p in alice.lan_peers()] == [bob.identity.node_id]

        sent = await alice.send("bob", "over the LAN")  # not direct: onion-bound
        with trio.fail_after(60):
            got = await bob.messages().receive()
            assert await alice.deliveries().receive() == sent
        assert (got.id, got.text) == (sent, "over the LAN")
        status = await alice.status()
        assert (status["lan_peers"], status["lan_sent"]) == (1, 1)


async def test_with_lan_delivery_off_the_same_message_waits(
    simnet: World, autojump_clock: MockClock
) -> None:
    """The control of the test above: two nodes are too few for an onion route."""
    lan = SimLan("home")
    off = NodeOptions(lan_direct=False)
    for name in ("alice", "bob"):
        simnet.home(name)
    async with (
        simnet.node("alice", lan=lan.discovery, options=off) as alice,
        simnet.node("bob", lan=lan.discovery, options=off) as bob,
    ):
        await alice.joined.wait()
        await alice.store.add_contact(simnet.contact_of("bob"))
        await alice.send("bob", "over the LAN")
        await trio.sleep(600)
        assert await bob.store.count_inbox() == 0
        assert await alice.store.count_queued() == 1
        assert (await alice.status())["lan_sent"] == 0


async def test_a_contact_that_left_the_lan_gets_the_message_when_back(
    simnet: World, autojump_clock: MockClock
) -> None:
    lan = SimLan("home")
    for name in ("alice", "bob"):
        simnet.home(name)
    async with simnet.node("alice", lan=lan.discovery) as alice:
        async with simnet.node("bob", lan=lan.discovery) as bob:
            await alice.joined.wait()
            await alice.store.add_contact(simnet.contact_of("bob"))
        sent = await alice.send("bob", "while you were out")
        async with simnet.node("bob", lan=lan.discovery) as bob:
            with trio.fail_after(120):
                got = await bob.messages().receive()
                assert await alice.deliveries().receive() == sent
            assert (got.id, got.text) == (sent, "while you were out")


def peer(name: str) -> Peer:
    identity = Identity.generate()
    return Peer(identity.node_id, identity.public.key, (f"sim:{name}",), name)


async def test_lan_peers_are_bounded_expire_and_can_be_forgotten(
    autojump_clock: MockClock,
) -> None:
    peers = LanPeers(ttl=100.0, capacity=2)
    a, b, c = peer("a"), peer("b"), peer("c")
    peers.seen(a)
    await trio.sleep(10.0)
    peers.seen(b)
    peers.seen(a)  # seen again: newest, first sighting kept
    peers.seen(c)  # over capacity: b, the least recently seen, goes
    assert [e.peer for e in peers.entries()] == [a, c]
    assert peers.entries()[0].first_seen == 0.0
    assert peers.get(b.node_id) is None
    assert peers.get(a.node_id) == a
    peers.forget(a.node_id)
    assert peers.get(a.node_id) is None
    await trio.sleep(100.5)
    assert peers.get(c.node_id) is None  # not seen for longer than the ttl
    peers.seen(c)
    assert peers.get(c.node_id) == c
