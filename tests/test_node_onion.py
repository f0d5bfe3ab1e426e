"""Onion delivery between full nodes on the simulated network (autojump clock)."""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from simworld import SimWorld, sim_wall_clock
from trio.testing import MockClock

from p2pmsg.delivery import files, onion_frames
from p2pmsg.delivery.frames import MessageKind
from p2pmsg.delivery.mailbox_onion import MAX_ENTRIES_PER_POLL
from p2pmsg.delivery.onion_path import Attempt
from p2pmsg.delivery.sender import PARALLEL_TRANSMITS, SPARE_RETRIES
from p2pmsg.dht import mailbox
from p2pmsg.dht.records import RecordType, decode_peer_info, prekey_key
from p2pmsg.errors import NoSuchFile
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.node import Node
from p2pmsg.onion import sphinx
from p2pmsg.onion_service import PREKEY_COPIES
from p2pmsg.relay import OnionKeys
from p2pmsg.sim.net import DELIVER, DROP, Packet, Verdict
from p2pmsg.store import FILE_WINDOW, Database, OutboxMessage, OutboxState, Store, run_inline

RELAYS = [f"relay{i}" for i in range(6)]
SHORT = "through the onion"
LONG = "a long message " * 4350
"""65,250 bytes: in 33 fragments, each over its own route."""
TEXTS = pytest.mark.parametrize("text", [SHORT, LONG], ids=["one-packet", "fragmented"])


async def until(condition: Callable[[], bool], *, timeout: float = 600.0) -> None:
    """Wait, in simulated time, until ``condition()`` holds: for counters that
    live on other nodes and signal nothing. The autojump clock makes each
    simulated second free and the outcome deterministic."""
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - see the docstring
            await trio.sleep(1.0)


@asynccontextmanager
async def running(world: SimWorld, names: Sequence[str], boot: list[str]) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for i, name in enumerate(names):
            node = await stack.enter_async_context(world.node(name, bootstrap=boot))
            if i:  # the first is the seed: nobody to join yet
                with trio.fail_after(120):
                    await node.joined.wait()
        yield


@asynccontextmanager
async def alice_and_bob(world: SimWorld) -> AsyncIterator[tuple[Node, Node]]:
    """The relays running, and alice and bob joined, bob a contact of alice's."""
    boot = [world.invite(RELAYS[0])]
    async with (
        running(world, RELAYS, boot),
        world.node("bob", bootstrap=boot) as bob,
        world.node("alice", bootstrap=boot) as alice,
    ):
        await bob.joined.wait()
        await alice.joined.wait()
        await alice.store.add_contact(world.contact_of("bob"))
        yield alice, bob


async def whole_messages_waiting(holder: Node, owner: Identity) -> int:
    """How many whole messages wait in ``owner``'s mailbox, fetched by
    ``holder`` and opened with the owner's key: a message in fragments
    counts once all of one set are there."""
    epoch = mailbox.epoch_of(sim_wall_clock())
    sets: dict[tuple[bytes, int], set[int]] = {}
    whole = 0
    for blob in [
        b for e in (epoch - 1, epoch) for b in await holder.dht.fetch_mailbox(owner.node_id, e)
    ]:
        delivered = sphinx.peel(owner.x25519_private, blob).result
        assert isinstance(delivered, sphinx.Deliver)
        match onion_frames.decode(delivered.message):
            case onion_frames.Fragment(set=set_id, index=index, count=count):
                sets.setdefault((set_id, count), set()).add(index)
            case onion_frames.ForwardMessage():
                whole += 1
    return whole + sum(len(indices) == count for (_, count), indices in sets.items())


def befriend(world: SimWorld, a: str, b: str, boot: list[str]) -> None:
    world.home(a, bootstrap=boot)
    world.home(b, bootstrap=boot)
    for me, other in ((a, b), (b, a)):
        with Database.open(world.home(me).db_file) as db:
            db.add_contact(world.contact_of(other))


@TEXTS
async def test_a_message_crosses_three_relays_and_its_ack_comes_back(
    world: SimWorld, autojump_clock: MockClock, text: str
) -> None:
    async with alice_and_bob(world) as (alice, bob):
        sent = await alice.send("bob", text)
        with trio.fail_after(600):
            got = await bob.messages().receive()
            acked = await alice.deliveries().receive()
        assert (got.id, got.text, got.peer) == (sent, text, alice.identity.node_id)
        assert bob.onion.receiver.fragments.stats.completed == (text == LONG)
        assert acked == sent
        (row,) = await alice.store.list_outbox()
        assert row.state is OutboxState.DELIVERED
        assert not row.direct
        assert bob.onion.receiver.stats.opened >= 1
        assert alice.onion.receiver.stats.acks_received >= 1
        assert alice._sender.deposited == 0  # routes work: nothing is left unrouted


@TEXTS
async def test_sender_and_recipient_never_online_together(
    world: SimWorld, autojump_clock: MockClock, text: str
) -> None:
    boot = [world.invite(RELAYS[0])]
    befriend(world, "alice", "bob", boot)
    relays: list[Node] = []
    async with AsyncExitStack() as stack:
        for name in RELAYS:
            relays.append(await stack.enter_async_context(world.node(name, bootstrap=boot)))
            if len(relays) > 1:
                await relays[-1].joined.wait()

        def deposited() -> int:
            return sum(r.onion.relay.stats.deposited for r in relays)

        async with world.node("bob", bootstrap=boot) as bob:  # publishes its prekeys
            await bob.joined.wait()
            await until(bob.onion.prekeys_published.is_set)
        async with world.node("alice", bootstrap=boot) as alice:
            await alice.joined.wait()
            sent = await alice.send("bob", text)
            with trio.fail_after(600):
                while not await whole_messages_waiting(relays[0], bob.identity):  # noqa: ASYNC110 - as in until()
                    await trio.sleep(10.0)
            # bob offline is no cut-off: the relays deposited it, alice did not
            assert alice._sender.deposited == 0
        async with world.node("bob", bootstrap=boot) as bob:
            with trio.fail_after(900):
                got = await bob.messages().receive()
            assert (got.id, got.text) == (sent, text)
            # fetched through a relay, never from bob's own address
            assert bob.onion.mailbox.stats.fetched_onion >= 1
            assert bob.onion.mailbox.stats.fetched_direct == 0
            acks_before = deposited()
            await until(lambda: deposited() > acks_before)  # the ack waits for alice
        async with world.node("alice", bootstrap=boot) as alice:
            with trio.fail_after(900):
                assert await alice.deliveries().receive() == sent
            (row,) = await alice.store.list_outbox()
            assert row.state is OutboxState.DELIVERED


async def test_a_mailbox_of_more_entries_than_one_poll_takes_is_emptied_over_polls(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """A fetch names at most MAX_SEEN entries the owner has: the second poll
    must still reach the entries the first one left."""
    boot = [world.invite(RELAYS[0])]
    bob_id = world.home("bob", bootstrap=boot).invite().identity
    route = [sphinx.Hop(bob_id.node_id, bob_id.x25519)]
    count = MAX_ENTRIES_PER_POLL + 20
    async with AsyncExitStack() as stack:
        relays = [await stack.enter_async_context(world.node(n, bootstrap=boot)) for n in RELAYS]
        for relay in relays[1:]:
            await relay.joined.wait()
        for i, relay in zip(range(count), itertools.cycle(relays), strict=False):
            # not onion messages: bob refuses each once
            packet = sphinx.create_packet(route, b"entry %d" % i, os.urandom)[1]
            assert await relay.dht.deposit(route[0].node_id, packet)
        async with world.node("bob", bootstrap=boot) as bob:
            await until(lambda: bob.onion.receiver.stats.refused == count, timeout=1800)
            assert bob.onion.mailbox.stats.fetched_direct == 0


def _packet_through(relay: Node, to: Identity, now: float, *, deposit: bool = True) -> bytes:
    """A packet for ``relay`` to forward to ``to``, built with the relay's published key."""
    epoch = int(now // 86_400)
    key = dict(relay.onion.keys.published())[epoch]
    route = [
        sphinx.Hop(relay.identity.node_id, key),
        sphinx.Hop(to.node_id, to.public.x25519),
    ]
    return sphinx.create_packet(route, b"replay me", os.urandom, deposit=deposit)[1]


async def test_a_packet_for_an_offline_destination_goes_to_its_mailbox_only_if_its_sender_asked(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Mailbox requests and their answers are sent without: stale by the time
    the destination is back, they would only fill its mailbox."""
    boot = [world.invite(RELAYS[0])]
    # bob never came online: nothing but these packets goes to him
    bob = world.home("bob", bootstrap=boot).load_identity()
    async with running(world, RELAYS[:3], boot), world.node("relay9", bootstrap=boot) as relay:
        await relay.joined.wait()
        stats = relay.onion.relay.stats
        assert relay.onion.relay.submit(_packet_through(relay, bob, sim_wall_clock()))
        await until(lambda: stats.deposited == 1)
        assert relay.onion.relay.submit(
            _packet_through(relay, bob, sim_wall_clock(), deposit=False)
        )
        await until(lambda: stats.forward_failed == 1)
        assert stats.deposited == 1


async def test_a_relay_finds_a_next_hop_that_moved_to_a_new_address(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """A relay that knows a stale address of the next hop looks it up again
    rather than leave the packet in its mailbox (S18's IP change)."""
    boot = [world.invite(RELAYS[0])]
    async with (
        running(world, RELAYS[:3], boot),
        world.node("relay9", bootstrap=boot) as relay,
        world.node("carol", bootstrap=boot) as carol,
    ):
        await relay.joined.wait()
        await carol.joined.wait()
        async with world.node("bob", bootstrap=boot) as bob:
            await bob.joined.wait()
            assert relay.onion.relay.submit(_packet_through(relay, bob.identity, sim_wall_clock()))
            # the payload is no onion message: bob opens its layer and refuses it
            await until(lambda: bob.onion.receiver.stats.refused == 1)
            old = await relay.onion.resolver.resolve(bob.identity.node_id)
            assert old is not None
        world.move("bob", "bob-elsewhere")
        async with world.node("bob", bootstrap=boot) as bob:
            await bob.joined.wait()

            def stored() -> bool:  # a holder has its new record (bob's own copy is no proof)
                now = sim_wall_clock()
                held = carol.dht.records.get(RecordType.PEER, bob.identity.node_id, now)
                return any(decode_peer_info(r.value).endpoints == moved for r in held)

            moved = ("sim:bob-elsewhere:1",)
            await until(stored)
            # the relay still knows the old address (its table learns the new
            # one when bob gets in touch, which need not have happened yet)
            relay.dht.table.remove(bob.identity.node_id)
            relay.dht.table.offer(old, trio.current_time())
            known = await relay.onion.resolver.resolve(bob.identity.node_id)
            assert known is not None and known.endpoints == ("sim:bob:1",)
            assert relay.onion.relay.submit(_packet_through(relay, bob.identity, sim_wall_clock()))
            await until(lambda: bob.onion.receiver.stats.refused == 1)
            assert relay.onion.relay.stats.deposited == 0  # not left in bob's mailbox


async def test_a_replayed_packet_is_refused_also_after_the_relay_restarts(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    boot = [world.invite(RELAYS[0])]
    async with running(world, RELAYS[:3], boot), world.node("bob", bootstrap=boot) as bob:
        await bob.joined.wait()
        async with world.node("relay9", bootstrap=boot) as relay:
            await relay.joined.wait()
            packet = _packet_through(relay, bob.identity, sim_wall_clock())
            for _ in range(3):
                assert relay.onion.relay.submit(packet)
            # the payload is no onion message: bob opens its layer and refuses it
            await until(lambda: bob.onion.receiver.stats.refused >= 1)
            await until(lambda: relay.onion.relay.stats.replays == 2)
            assert relay.onion.relay.stats.relayed == 1
        async with world.node("relay9", bootstrap=boot) as relay:
            assert relay.onion.relay.submit(packet)
            await until(lambda: relay.onion.relay.stats.replays == 1)
            assert relay.onion.relay.stats.relayed == 0
        assert bob.onion.receiver.stats.refused == 1  # it reached bob once


async def test_a_packet_replayed_to_its_destination_is_refused_also_after_it_restarts(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Even an ack to a replayed packet would confirm who it was for (S17)."""
    boot = [world.invite(RELAYS[0])]
    async with running(world, RELAYS[:3], boot):
        async with world.node("bob", bootstrap=boot) as bob:
            await bob.joined.wait()
            route = [sphinx.Hop(bob.identity.node_id, bob.identity.public.x25519)]
            packet = sphinx.create_packet(route, b"replay me", os.urandom)[1]
            for _ in range(3):
                assert bob.onion.relay.submit(packet)
            # the payload is no onion message: bob opens its layer and refuses it
            await until(lambda: bob.onion.relay.stats.replays == 2)
            assert bob.onion.receiver.stats.refused == 1
        async with world.node("bob", bootstrap=boot) as bob:
            assert bob.onion.relay.submit(packet)
            await until(lambda: bob.onion.relay.stats.replays == 1)
            assert bob.onion.receiver.stats.refused == 0


async def test_a_tagging_relay_is_detected_and_routed_around(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    names = [f"relay{i}" for i in range(8)]
    boot = [world.invite(names[0])]
    nodes: dict[str, Node] = {}
    async with AsyncExitStack() as stack:
        for name in [*names, "bob", "alice"]:
            nodes[name] = await stack.enter_async_context(world.node(name, bootstrap=boot))
            if name != names[0]:
                await nodes[name].joined.wait()
        tagger = nodes["relay3"].onion.relay
        honest_forward = tagger._forward

        async def tag(forward: sphinx.Forward) -> None:
            flipped = bytearray(forward.packet)
            flipped[-1] ^= 1  # a payload byte: the MAC cannot see it, the destination can
            await honest_forward(sphinx.Forward(forward.command, forward.next_hop, bytes(flipped)))

        tagger._forward = tag  # type: ignore[method-assign]
        alice, bob = nodes["alice"], nodes["bob"]
        await alice.store.add_contact(world.contact_of("bob"))
        sent = {await alice.send("bob", f"m{i}") for i in range(20)}
        got: set[bytes] = set()
        with trio.fail_after(3 * 3600):
            while got != sent:
                got.add((await bob.messages().receive()).id)
            await until(lambda: alice.stats.delivered == len(sent), timeout=3 * 3600)
        detected = bob.onion.relay.stats.tagged + sum(
            n.onion.relay.stats.tagged for n in nodes.values()
        )
        assert detected >= 1
        now = sim_wall_clock()
        bad = alice.onion.scores.weight(nodes["relay3"].identity.node_id, now)
        others = [
            alice.onion.scores.weight(nodes[n].identity.node_id, now)
            for n in names
            if n != "relay3"
        ]
        # the tagger sits on every failed route; an honest relay only on some, and
        # its acknowledged routes pay its failures back
        assert bad <= 0.25  # at least one failure's worth
        assert bad < statistics.median(others)


async def test_an_onion_message_is_retried_only_when_due(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """A new message to a peer must not drag its pending ones out again before
    their retry time (each onion attempt costs a packet and blames relays)."""
    world.home("bob")
    async with world.node("alice") as alice:
        await alice.store.add_contact(world.contact_of("bob"))

        async def attempts() -> list[int]:
            return [m.attempts for m in await alice.store.list_outbox()]

        await alice.send("bob", "first")
        with trio.fail_after(5):
            while await attempts() != [1]:  # noqa: ASYNC110 - store counters signal nothing
                await trio.sleep(0.1)
        await alice.send("bob", "second")
        with trio.fail_after(5):
            while await attempts() != [1, 1]:  # noqa: ASYNC110 - store counters signal nothing
                await trio.sleep(0.1)


async def test_a_recipient_that_lost_its_session_asks_for_a_new_one(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Bob loses the session alice writes in (a restored backup, say). He cannot
    open her next message and says so through its reply block; her next attempt,
    within UNREADABLE_RETRY, starts a new session. Without that she would retry
    into the same wall until her blind restart, an hour of backoff away."""
    boot = [world.invite(RELAYS[0])]
    befriend(world, "alice", "bob", boot)
    async with running(world, RELAYS, boot), world.node("alice", bootstrap=boot) as alice:
        await alice.joined.wait()
        async with world.node("bob", bootstrap=boot) as bob:
            await bob.joined.wait()
            await until(bob.onion.prekeys_published.is_set)
            hello = await alice.send("bob", "hello")
            with trio.fail_after(600):
                await bob.messages().receive()
                assert await alice.deliveries().receive() == hello
            await bob.send("alice", "hello back")  # alice now writes NORMAL messages
            with trio.fail_after(600):
                await alice.messages().receive()
        with Database.open(world.home("bob").db_file) as db, db._write() as conn:
            assert conn.execute("DELETE FROM sessions").rowcount == 1
        async with world.node("bob", bootstrap=boot) as bob:
            await bob.joined.wait()
            sent = await alice.send("bob", "after the loss")
            with trio.fail_after(300):
                got = await bob.messages().receive()
                assert await alice.deliveries().receive() == sent
            assert got.text == "after the loss"
            assert bob.onion.receiver.stats.unreadable_sent >= 1
            assert alice.onion.receiver.stats.unreadable_received >= 1


async def test_a_bundle_that_reached_too_few_nodes_is_published_again_soon(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Bob joins a network of one and stores his prekeys on at most two nodes.
    As the network grows he publishes again, backing off from 30 s, rather
    than a quarter of the bundle's week later: until then nobody finds it
    (found by the S1 simulation, where such users received nothing)."""
    boot = [world.invite(RELAYS[0])]
    async with running(world, RELAYS[:1], boot), world.node("bob", bootstrap=boot) as bob:
        await bob.joined.wait()
        await until(bob.onion.prekeys_published.is_set)
        key = prekey_key(bob.identity.node_id)

        def holders(nodes: Sequence[Node]) -> int:
            now = sim_wall_clock()
            return sum(bool(n.dht.records.get(RecordType.PREKEYS, key, now)) for n in nodes)

        async with AsyncExitStack() as stack:
            others = [
                await stack.enter_async_context(world.node(name, bootstrap=boot))
                for name in RELAYS[1:]
            ]
            for node in others:
                await node.joined.wait()
            assert holders(others) == 0
            await until(lambda: holders(others) >= PREKEY_COPIES, timeout=600.0)


async def test_a_packet_whose_first_relay_cannot_be_reached_takes_another_route(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """A censor null-routes relay0 for alice only (its other peers still reach
    it). A packet routed through relay0 first goes over a route without it in
    the same attempt, and relay0 takes a failure (found by the S1 simulation:
    blocked bootstrap relays cost a whole retry)."""
    async with alice_and_bob(world) as (alice, bob):
        await until(lambda: len(alice.onion.path.candidates(sim_wall_clock())) >= 4)

        def censor(packet: Packet) -> Verdict:
            hosts = {packet.src_host, packet.dst_host}
            return DROP if hosts == {"alice", RELAYS[0]} else DELIVER

        world.net.policy = censor
        path, now = alice.onion.path, sim_wall_clock()
        candidates = path.candidates(now)
        blocked = next(c for c in candidates if c.node_id == world.contact_of(RELAYS[0]).node_id)
        others = [c for c in candidates if c is not blocked][:2]
        dest = sphinx.Hop(bob.identity.node_id, bob.identity.public.x25519)
        ends = (alice.identity.node_id, bob.identity.node_id)
        await path._send_part(b"no onion message", [blocked, *others], candidates, ends, dest)
        # read at once: a later reply block through relay0 (its other links
        # work) may credit it back before bob's count moves
        assert path.scores.failures(blocked.node_id, sim_wall_clock()) > 0
        await until(lambda: bob.onion.receiver.stats.refused >= 1)  # it reached bob
        # and, cut off from us, it sits out of later routes while others remain
        assert {c.node_id for c in path.candidates(sim_wall_clock()) if c.unreachable} == {
            blocked.node_id
        }


async def test_early_retries_go_twice_over_disjoint_routes(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """S10: right after a border cut, any of a route's six relays may be abroad.
    The first retries go twice, the spare copy sharing no relay with the other;
    the first attempt and later retries go once."""
    names = [f"relay{i}" for i in range(16)]
    boot = [world.invite(names[0])]
    befriend(world, "alice", "bob", boot)
    sends: list[tuple[int, bool, set[bytes]]] = []
    async with running(world, names, boot):
        async with world.node("bob", bootstrap=boot) as bob:  # publishes its prekeys
            await bob.joined.wait()
            await until(bob.onion.prekeys_published.is_set)
        # bob is gone: no ack comes back, and alice retries
        async with world.node("alice", bootstrap=boot) as alice:
            await alice.joined.wait()
            path = alice.onion.path
            await until(lambda: len(path.candidates(sim_wall_clock())) >= 12)
            real_prepare = path.prepare

            async def prepare(
                recipient: PublicIdentity, message: OutboxMessage, **kw: Any
            ) -> Attempt:
                attempt = await real_prepare(recipient, message, **kw)
                sends.append((message.attempts, kw.get("spare", False), set(attempt.relays)))
                return attempt

            path.prepare = prepare  # type: ignore[method-assign]
            await alice.send("bob", "are you there?")
            await until(lambda: any(a > SPARE_RETRIES for a, _, _ in sends))
    retries = range(1, SPARE_RETRIES + 1)
    twice = [(a, spare) for a in retries for spare in (False, True)]
    assert [(a, spare) for a, spare, _ in sends] == [(0, False), *twice, (SPARE_RETRIES + 1, False)]
    for (_, _, first), (_, spare, second) in itertools.pairwise(sends):
        if spare:
            assert not first & second


async def test_an_attempt_that_hangs_does_not_hold_up_the_next_message(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """S10: a first relay across a cut border hangs its dial for seconds. The
    attempts of one contact's messages go out side by side, so the next
    message is delivered while the first one's attempt still hangs."""
    async with alice_and_bob(world) as (alice, bob):
        path, hung = alice.onion.path, trio.Event()
        real_transmit = path.transmit

        async def transmit(attempt: Attempt) -> None:
            if not hung.is_set():
                hung.set()
                await trio.sleep_forever()  # a dial that never answers
            await real_transmit(attempt)

        path.transmit = transmit  # type: ignore[method-assign]
        first = await alice.send("bob", "first")
        await hung.wait()
        second = await alice.send("bob", "second")
        with trio.fail_after(30):
            got = await bob.messages().receive()
        assert (got.id, got.text) == (second, "second")
        (row,) = [m for m in await alice.store.list_outbox() if m.id == first]
        assert row.state is OutboxState.QUEUED


async def test_at_most_parallel_transmits_attempts_are_on_their_way_at_once(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Attempts whose dials all hang fill PARALLEL_TRANSMITS places; the next
    one waits for a place rather than piling up."""
    async with alice_and_bob(world) as (alice, _):
        path, in_flight, most = alice.onion.path, 0, 0

        async def transmit(attempt: Attempt) -> None:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await trio.sleep_forever()  # a dial that never answers

        path.transmit = transmit  # type: ignore[method-assign]
        for i in range(PARALLEL_TRANSMITS + 6):
            await alice.send("bob", f"message {i}")
        await until(lambda: in_flight >= PARALLEL_TRANSMITS)
        await trio.sleep(600)  # retries fall due meanwhile
        assert most == in_flight == PARALLEL_TRANSMITS


async def test_a_relay_publishes_keys_for_senders_a_day_behind_or_ahead(tmp_path: Path) -> None:
    """S20: a sender's clock may be a day off; its epoch's key must be in the record."""
    async with await Store.open(tmp_path / "s.sqlite", offload=run_inline) as store:
        keys = OnionKeys(store, os.urandom)
        now = 100 * 86_400.0 + 5.0  # just after an epoch starts
        await keys.refresh(now)
        assert [epoch for epoch, _ in keys.published()] == [99, 100, 101]
        await keys.refresh(now + 86_400.0)
        published = dict(keys.published())
        assert sorted(published) == [100, 101, 102]  # epoch 99's key is gone
        assert await store.get_secret("onion:99") is None


async def test_onion_keys_are_swept_at_start_and_at_new_epochs_only(tmp_path: Path) -> None:
    """A key left by a run days ago goes at the first refresh; the refreshes
    within an epoch (every 10 minutes) write nothing."""
    async with await Store.open(tmp_path / "s.sqlite", offload=run_inline) as store:
        await store.set_secret("onion:95", os.urandom(32))
        keys = OnionKeys(store, os.urandom)
        now = 100 * 86_400.0 + 5.0
        assert await keys.refresh(now)
        assert await store.get_secret("onion:95") is None
        deleted: list[str] = []
        real_delete = store.delete_secret

        async def delete_secret(name: str) -> None:
            deleted.append(name)
            await real_delete(name)

        store.delete_secret = delete_secret  # type: ignore[method-assign]
        assert not await keys.refresh(now + 600.0)
        assert deleted == []
        assert await keys.refresh(now + 86_400.0)
        assert "onion:99" in deleted


async def test_a_full_disk_at_the_recipient_loses_nothing_and_the_node_runs_on(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Bob's disk fills (SQLite's own full condition, ``max_page_count``): the
    message that reaches him is neither kept nor acked, and he runs on; once
    there is room, alice's retries bring it, once."""
    async with alice_and_bob(world) as (alice, bob):
        await until(bob.onion.prekeys_published.is_set)
        conn = bob.store._db._conn
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        sent = await alice.send("bob", LONG)
        receiver = bob.onion.receiver.stats
        await until(lambda: receiver.not_saved > 0)
        assert await bob.store.count_inbox() == 0
        assert receiver.acks_sent == 0
        conn.execute(f"PRAGMA max_page_count = {2 * pages + 1024}")
        with trio.fail_after(3 * 3600):
            got = await bob.messages().receive()
            assert await alice.deliveries().receive() == sent
        assert (got.id, got.text) == (sent, LONG)
        await trio.sleep(600)
        assert await bob.store.count_inbox() == 1


FILE_DATA = bytes(i % 251 for i in range(FILE_WINDOW * files.PART_DATA + 3 * files.PART_DATA + 99))
"""More parts than one window: the rest go as acks come."""


async def test_a_file_goes_in_parts_and_arrives_whole(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    async with alice_and_bob(world) as (alice, bob):
        file_id = await alice.send_file("bob", FILE_DATA, "notes.txt")
        text_id = await alice.send("bob", SHORT)
        delivered: set[bytes] = set()
        with trio.fail_after(1800):
            got = [await bob.messages().receive() for _ in range(2)]
            while len(delivered) < 2:
                delivered.add(await alice.deliveries().receive())
        assert delivered == {file_id, text_id}  # the parts' ids are not reported
        (whole,) = [m for m in got if m.kind is MessageKind.FILE]
        assert (whole.id, whole.filename, whole.file_size) == (file_id, "notes.txt", len(FILE_DATA))
        assert whole.body == b""  # read on demand: files in the channel hold no memory
        assert await bob.read_file(file_id) == FILE_DATA
        with pytest.raises(NoSuchFile):
            await bob.read_file(text_id)
        assert [m.text for m in got if m.kind is MessageKind.TEXT] == [SHORT]
        parts = [m for m in await alice.store.list_outbox() if m.kind is MessageKind.FILE_PART]
        assert len(parts) == files.part_count(len(FILE_DATA))
        assert {m.state for m in parts} == {OutboxState.DELIVERED}
        assert await bob.store.count_file_parts() == 0


async def test_a_file_transfer_cut_off_goes_on_from_the_parts_not_yet_acked(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    boot = [world.invite(RELAYS[0])]
    befriend(world, "alice", "bob", boot)
    async with running(world, RELAYS, boot), world.node("bob", bootstrap=boot) as bob:
        await bob.joined.wait()
        async with world.node("alice", bootstrap=boot) as alice:
            await alice.joined.wait()
            file_id = await alice.send_file("bob", FILE_DATA, "notes.txt")
            await until(
                lambda: alice.stats.delivered == 0 and alice.onion.receiver.stats.acks_received >= 3
            )
        # alice stopped mid-transfer; what was acked is not sent again
        with Database.open(world.home("alice").db_file) as db:
            before = {
                m.id: m.attempts for m in db.list_outbox() if m.state is OutboxState.DELIVERED
            }
            assert before
        async with world.node("alice", bootstrap=boot) as alice:
            with trio.fail_after(1800):
                while (got := await bob.messages().receive()).kind is not MessageKind.FILE:
                    pass
                assert await alice.deliveries().receive() == file_id
            assert (got.id, await bob.read_file(file_id)) == (file_id, FILE_DATA)
            outbox = {m.id: m for m in await alice.store.list_outbox()}
            assert {i: outbox[i].attempts for i in before} == before
            assert all(m.state is OutboxState.DELIVERED for m in outbox.values())
