"""Two or more real nodes on the simulated network, under the autojump clock."""

from __future__ import annotations

from random import Random

import pytest
import trio
import trio.testing
from simworld import SimWorld, sim_wall_clock
from trio.testing import MockClock

from p2pmsg.admission import IDLE_EVICTION, Limits, Refused
from p2pmsg.dht import rpc
from p2pmsg.dht.service import DhtOptions
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import OutboxFull, UnknownContact
from p2pmsg.keys import Identity
from p2pmsg.link.secure import connect_secure
from p2pmsg.node import NodeOptions
from p2pmsg.onion_service import OnionServiceOptions
from p2pmsg.puzzle import MIN_EFFORT, Pricing
from p2pmsg.sim.net import Deliver, Drop, Packet, Verdict
from transports.sim import SimTransport


async def test_two_nodes_exchange_messages_both_ways(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    async with world.node("alice") as alice, world.node("bob") as bob:
        await alice.store.add_contact(world.contact_of("bob"))
        await bob.store.add_contact(world.contact_of("alice"))
        sent = await alice.send("bob", "hello bob", direct=True)
        got = await bob.messages().receive()
        assert (got.id, got.text, got.contact) == (sent, "hello bob", "alice")
        assert await alice.deliveries().receive() == sent
        reply = await bob.send("alice", b"\x00binary", direct=True)
        back = await alice.messages().receive()
        assert (back.id, back.body, back.contact) == (reply, b"\x00binary", "bob")
        outbox = await alice.store.list_outbox()
        assert [(m.id, m.state) for m in outbox] == [(sent, "delivered")]


def test_pools_must_close_their_links_before_the_peer_times_them_out() -> None:
    NodeOptions(link_idle=200.0, dht=DhtOptions(link_idle=100.0),
                onion=OnionServiceOptions(link_idle=150.0))  # fmt: skip
    with pytest.raises(ValueError, match=r"onion.link_idle \(900 s\) must be under link_idle"):
        NodeOptions(link_idle=900.0, onion=OnionServiceOptions(link_idle=900.0))
    with pytest.raises(ValueError, match=r"dht.link_idle \(60 s\) must be under link_idle"):
        NodeOptions(link_idle=60.0, onion=OnionServiceOptions(link_idle=30.0))


async def test_unknown_contact_is_refused(world: SimWorld, autojump_clock: MockClock) -> None:
    async with world.node("alice") as alice:
        with pytest.raises(UnknownContact):
            await alice.send("nobody", "hi", direct=True)


async def test_a_full_outbox_refuses_the_send_and_then_delivers_all_it_took(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Bounded, and never silent: the caller is told, and nothing queued is lost."""
    world.home("bob")
    small = NodeOptions(max_queued_per_contact=2)
    async with world.node("alice", options=small) as alice:
        await alice.store.add_contact(world.contact_of("bob"))
        sent = {await alice.send("bob", f"m{i}", direct=True) for i in range(2)}
        with pytest.raises(OutboxFull):
            await alice.send("bob", "one too many", direct=True)
        assert await alice.store.count_queued() == 2
        async with world.node("bob") as bob:
            got = {(await bob.messages().receive()).id for _ in sent}
            assert got == sent
            assert {await alice.deliveries().receive() for _ in sent} == sent
        await alice.send("bob", "room again", direct=True)


async def test_message_waits_for_an_offline_peer_then_arrives(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    world.home("bob")
    async with world.node("alice") as alice:
        await alice.store.add_contact(world.contact_of("bob"))
        sent = await alice.send("bob", "are you there?", direct=True)
        await trio.sleep(120)  # simulated: several failed attempts while bob is away
        (queued,) = await alice.store.list_outbox()
        assert queued.state == "queued" and queued.attempts >= 3
        async with world.node("bob") as bob:
            got = await bob.messages().receive()
            assert got.id == sent
            assert await alice.deliveries().receive() == sent


async def test_a_full_disk_ends_the_link_unacked_and_the_message_comes_later(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Direct delivery to a recipient whose disk is full (SQLite's own full
    condition): no ack, the node runs on, and alice's retry delivers once."""
    async with world.node("alice") as alice, world.node("bob") as bob:
        await alice.store.add_contact(world.contact_of("bob"))
        conn = bob.store._db._conn
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        body = bytes(60_000)
        sent = await alice.send("bob", body, direct=True)
        await trio.sleep(120)
        (queued,) = await alice.store.list_outbox()
        assert queued.state == "queued" and queued.attempts >= 1
        assert await bob.store.count_inbox() == 0
        conn.execute(f"PRAGMA max_page_count = {2 * pages + 1024}")
        got = await bob.messages().receive()
        assert (got.id, got.body) == (sent, body)
        assert await alice.deliveries().receive() == sent
        await trio.sleep(600)
        assert await bob.store.count_inbox() == 1


async def test_lost_acks_cause_a_retry_but_one_delivery(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    dropped: list[Packet] = []

    def lose_first_replies(packet: Packet) -> Verdict:
        # Black-hole bob's first reply flow after the handshake: the ack is lost.
        one_cell = len(packet.data) == 1024  # the ack is one cell
        if packet.kind == "data" and packet.src_host == "bob" and one_cell and not dropped:
            dropped.append(packet)
            return Drop()
        return Deliver()

    world.net.policy = lose_first_replies
    async with world.node("alice") as alice, world.node("bob") as bob:
        await alice.store.add_contact(world.contact_of("bob"))
        sent = await alice.send("bob", "once only", direct=True)
        got = await bob.messages().receive()
        assert got.id == sent
        assert await alice.deliveries().receive() == sent
        assert dropped
        assert bob.stats.duplicates == 1
        assert bob.stats.received == 1
        assert [m.id for m in await bob.store.list_inbox()] == [sent]


async def test_queued_messages_survive_a_restart_of_the_sender(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    world.home("bob")
    async with world.node("alice") as alice:
        await alice.store.add_contact(world.contact_of("bob"))
        ids = [await alice.send("bob", f"m{i}", direct=True) for i in range(5)]
    async with world.node("bob") as bob, world.node("alice") as alice:
        got = [await bob.messages().receive() for _ in ids]
        assert sorted(m.id for m in got) == sorted(ids)
        delivered = {await alice.deliveries().receive() for _ in ids}
        assert delivered == set(ids)


async def test_a_restarted_node_sends_what_waits_once_joined_not_at_its_backoffs_end(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """A start is a change of network (a move, a reconnect): what waits goes out at once."""
    world.home("bob")
    async with world.node("alice", bootstrap=["bob"]) as alice:
        await alice.store.add_contact(world.contact_of("bob"))
        sent = await alice.send("bob", "after the move", direct=True)
        await trio.sleep(900)  # bob away: the backoff grows
        (queued,) = await alice.store.list_outbox()
        while queued.next_attempt < sim_wall_clock() + 60:  # the jitter put one near
            await trio.sleep(queued.next_attempt - sim_wall_clock() + 5)
            (queued,) = await alice.store.list_outbox()
    due = queued.next_attempt
    assert due > sim_wall_clock() + 60  # its next attempt is more than a minute away
    async with world.node("bob") as bob, world.node("alice", bootstrap=["bob"]) as alice:
        assert (await bob.messages().receive()).id == sent
        assert sim_wall_clock() < due - 60
        assert alice.joined.is_set()


async def test_undeliverable_message_expires_and_says_so(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    options = NodeOptions(message_ttl=600.0)
    async with world.node("alice", options=options) as alice:
        await alice.store.add_contact(world.contact_of("ghost", ["sim:ghost"]))
        await alice.send("ghost", "into the void", direct=True)
        await trio.sleep(1200)
        (message,) = await alice.store.list_outbox()
        assert message.state == "expired"


async def test_endpoints_of_unknown_transports_are_skipped(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    async with world.node("alice") as alice, world.node("bob") as bob:
        eps = ["nosuch:somewhere;k=v", "tcp:192.0.2.1:1", "sim:bob"]
        await alice.store.add_contact(world.contact_of("bob", eps))
        sent = await alice.send("bob", "via sim", direct=True)
        assert (await bob.messages().receive()).id == sent


async def test_garbage_to_the_listener_gets_silence_and_the_node_lives_on(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    async with world.node("alice") as alice, world.node("bob") as bob:
        probe = await world.net.connect("prober", "bob", 1)
        await probe.send(b"GET / HTTP/1.1\r\n\r\n" * 10)
        with pytest.raises(trio.EndOfChannel):
            await probe.receive()
        assert bob.stats.refused_handshakes == 1
        await alice.store.add_contact(world.contact_of("bob"))
        sent = await alice.send("bob", "still alive?", direct=True)
        assert (await bob.messages().receive()).id == sent


async def test_many_messages_in_batches(world: SimWorld, autojump_clock: MockClock) -> None:
    async with world.node("alice") as alice, world.node("bob") as bob:
        await alice.store.add_contact(world.contact_of("bob"))
        ids = [await alice.send("bob", f"n{i}", direct=True) for i in range(200)]
        got = [await bob.messages().receive() for _ in ids]
        assert sorted(m.id for m in got) == sorted(ids)
        assert bob.stats.duplicates == 0


async def test_a_bad_frame_ends_that_link_only(world: SimWorld, autojump_clock: MockClock) -> None:
    async with world.node("alice") as alice, world.node("bob") as bob:
        mallory = Identity.generate()
        raw = await SimTransport(world.net, "mallory").dial(Endpoint.parse("sim:bob"))
        link = await connect_secure(raw, mallory, bob.identity.public, wall_clock=sim_wall_clock)
        await link.send(b"\x01\x01" + b"\x00" * 10)  # a truncated MSG frame
        with pytest.raises(trio.EndOfChannel):
            await link.receive()
        assert bob.stats.bad_frames == 1
        await alice.store.add_contact(world.contact_of("bob"))
        sent = await alice.send("bob", "after the bad frame", direct=True)
        assert (await bob.messages().receive()).id == sent


async def test_inbound_links_are_bounded(world: SimWorld, autojump_clock: MockClock) -> None:
    async with world.node("bob", options=NodeOptions(admission=Limits(links=3))) as bob:
        silent = [await world.net.connect(f"c{i}", "bob", 1) for i in range(5)]
        await trio.testing.wait_all_tasks_blocked()
        assert bob.stats.inbound_refused == 2
        for stream in silent:
            await stream.aclose()


async def test_when_the_inbound_links_are_full_the_one_silent_longest_gives_way(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Links stay open for ``link_idle``; a newcomer takes the place of the
    one that carried nothing longest, not of one that carried a message."""
    options = NodeOptions(admission=Limits(links=2))
    async with world.node("bob", options=options) as bob, world.node("alice") as alice:
        held = []
        for host in ("c0", "c1"):
            raw = await SimTransport(world.net, host).dial(Endpoint.parse("sim:bob"))
            held.append(
                await connect_secure(
                    raw, Identity.generate(), bob.identity.public, wall_clock=sim_wall_clock
                )
            )
        await trio.sleep(IDLE_EVICTION)
        await held[0].send(
            rpc.encode_request(rpc.Request(b"\x00" * rpc.RID_BYTES, rpc.Method.PING))
        )
        assert rpc.decode(await held[0].receive()).rid == b"\x00" * rpc.RID_BYTES
        await alice.store.add_contact(world.contact_of("bob"))
        sent = await alice.send("bob", "room for me?", direct=True)
        assert (await bob.messages().receive()).id == sent
        with trio.fail_after(1.0), pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
            await held[1].receive()  # ended at once, not after link_idle
        assert bob.admission.evicted_idle == 1 and bob.stats.inbound_refused == 0
        await held[0].send(
            rpc.encode_request(rpc.Request(b"\x01" * rpc.RID_BYTES, rpc.Method.PING))
        )
        assert rpc.decode(await held[0].receive()).rid == b"\x01" * rpc.RID_BYTES
        for link in held:
            await link.aclose()


async def test_one_address_gets_only_its_share_of_handshakes(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Half-open handshakes from one address stop at its limit; another address
    still gets a link, and a finished handshake frees its place."""
    options = NodeOptions(admission=Limits(pending_per_address=4))
    async with world.node("bob", options=options) as bob, world.node("alice") as alice:
        silent = [await world.net.connect("flooder", "bob", 1) for _ in range(4 + 3)]
        await trio.testing.wait_all_tasks_blocked()
        assert bob.stats.inbound_refused == 3
        assert bob.admission.refused[Refused.PENDING_ADDRESS] == 3
        await alice.store.add_contact(world.contact_of("bob"))
        sent = await alice.send("bob", "past the flood", direct=True)
        assert (await bob.messages().receive()).id == sent
        for stream in silent:
            await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert bob.admission.pending == 0


async def test_a_node_flooded_with_handshakes_asks_for_work_and_a_paying_contact_gets_through(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Past its calm, a node answers first flights with a price; a real node pays it."""
    async with world.node("alice") as alice, world.node("bob") as bob:
        bob.handshake_pricing = Pricing(Random(5).randbytes, calm=2, window=10.0)
        for _ in range(3):  # a busy window: three handshakes, each answered
            raw = await SimTransport(world.net, "flooder").dial(Endpoint.parse("sim:bob"))
            link = await connect_secure(
                raw, Identity.generate(), bob.identity.public, wall_clock=sim_wall_clock
            )
            await link.aclose()
        await trio.sleep(10.0)
        await alice.store.add_contact(world.contact_of("bob"))
        sent = await alice.send("bob", "worth the work", direct=True)
        assert (await bob.messages().receive()).id == sent
        assert (await bob.status())["handshake_pricing"] == {
            "effort": MIN_EFFORT,
            "priced": 1,
            "paid": 1,
            "refused_proofs": 0,
        }
