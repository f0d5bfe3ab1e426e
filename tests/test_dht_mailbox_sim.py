"""DHT mailboxes on the simulated network, under the autojump clock.

Real :class:`Dht` services on real secure links and the `sim` transport
(:mod:`dhtworld`): a deposit lands on the mailbox-k closest nodes of each of
the three replica keys, another node fetches it, the owner clears it; and
SCENARIOS S15, where 20 Sybils closest to one replica key accept deposits and
then answer fetches with nothing, garbage, refusals or silence.
"""

from __future__ import annotations

import os
import random

import pytest
import trio
from dhtworld import DhtWorld, as_seed
from simworld import sim_wall_clock
from trio.testing import MockClock

from p2pmsg.dht import rpc
from p2pmsg.dht.mailbox import entry_id, epoch_of, mailbox_keys, sign_clear
from p2pmsg.dht.peer import distance
from p2pmsg.dht.service import Dht, DhtOptions, RpcFailed
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.sim.sybils import grind

SMALL = DhtOptions(max_per_prefix_bucket=None, max_per_prefix_table=None, mailbox_k=5)
PACKET = 2560  # a Sphinx packet's size


def closest(nodes: list[Dht], key: bytes, count: int, *, not_: Dht | None) -> list[Dht]:
    others = [n for n in nodes if n is not not_]
    return sorted(others, key=lambda n: distance(n.identity.node_id, key))[:count]


def outsiders(nodes: list[Dht], keys: tuple[bytes, ...], count: int) -> list[Dht]:
    """Nodes that are not among the ``count`` closest to any of ``keys``, so
    that the test's own accounting of holders stays simple."""
    near = {id(n) for key in keys for n in closest(nodes, key, count, not_=None)}
    return [n for n in nodes if id(n) not in near]


async def test_deposit_fetch_and_clear(autojump_clock: MockClock) -> None:
    world = DhtWorld(SMALL)
    async with trio.open_nursery() as nursery:
        nodes = await world.build(nursery, 30)
        owner = nodes[3]
        owner_id = owner.identity.node_id
        epoch = epoch_of(sim_wall_clock())
        keys = mailbox_keys(owner_id, epoch)
        depositor, fetcher = [n for n in outsiders(nodes, keys, 5) if n is not owner][:2]
        packets = [os.urandom(PACKET) for _ in range(3)]
        for packet in packets:
            assert await depositor.deposit(owner_id, packet) == 3 * 5
        assert await depositor.deposit(owner_id, packets[0]) == 3 * 5  # duplicates are taken
        now = sim_wall_clock()
        holders: set[bytes] = set()
        for key in keys:
            for holder in closest(nodes, key, 5, not_=None):
                assert [e.blob for e in holder.mailboxes.store.get(key, now)] == packets
                holders.add(holder.identity.node_id)
        held = sum(len(n.mailboxes.store) for n in nodes)
        assert held == 3 * 5 * 3
        stats = next(n for n in nodes if n.identity.node_id in holders).stats()["mailbox"]
        assert stats["entries"] >= 3
        assert stats["refusals"] == {}

        assert sorted(await fetcher.fetch_mailbox(owner_id, epoch)) == sorted(packets)
        assert await fetcher.fetch_mailbox(owner_id, epoch - 1) == []

        cleared = [entry_id(p) for p in packets[:2]]
        assert await owner.clear_mailbox(owner.identity, epoch, cleared) == 3 * 5
        for key in keys:  # every holder the clear reached (the owner, if one, locally)
            for holder in closest(nodes, key, 5, not_=None):
                assert [e.blob for e in holder.mailboxes.store.get(key, now)] == packets[2:]
        assert sum(len(n.mailboxes.store) for n in nodes) == 3 * 5
        assert await fetcher.fetch_mailbox(owner_id, epoch) == [packets[2]]
        # only the owner can clear: a holder refuses anyone else's request for the key
        key = mailbox_keys(owner_id, epoch)[0]
        holder = closest(nodes, key, 1, not_=fetcher)[0]
        forged = sign_clear(fetcher.identity, epoch, 0, [entry_id(packets[2])])
        with pytest.raises(RpcFailed, match="REFUSED"):
            await fetcher.call(
                holder.as_peer(), rpc.Method.CLEAR, rpc.encode_clear_body(key, forged)
            )
        assert await depositor.fetch_mailbox(owner_id, epoch) == [packets[2]]
        nursery.cancel_scope.cancel()


async def test_a_holder_among_the_closest_keeps_its_own_copy(autojump_clock: MockClock) -> None:
    """Everyone names the same holders: a depositor that is one of the
    mailbox-k closest to a key stores there itself instead of on the next node,
    so the owner's clear reaches every copy."""
    world = DhtWorld(SMALL)
    async with trio.open_nursery() as nursery:
        nodes = await world.build(nursery, 30)
        owner = nodes[0]
        epoch = epoch_of(sim_wall_clock())
        key = mailbox_keys(owner.identity.node_id, epoch)[0]
        depositor = closest(nodes, key, 1, not_=owner)[0]
        packet = os.urandom(PACKET)
        assert await depositor.deposit(owner.identity.node_id, packet) == 3 * 5
        assert [e.blob for e in depositor.mailboxes.store.get(key, sim_wall_clock())] == [packet]
        assert sum(len(n.mailboxes.store) for n in nodes) == 3 * 5
        await owner.clear_mailbox(owner.identity, epoch, [entry_id(packet)])
        assert sum(len(n.mailboxes.store) for n in nodes) == 0
        nursery.cancel_scope.cancel()


async def test_deposits_and_fetches_page_through_a_full_link_message(
    autojump_clock: MockClock,
) -> None:
    world = DhtWorld(SMALL)
    async with trio.open_nursery() as nursery:
        nodes = await world.build(nursery, 12)
        owner_id = nodes[0].identity.node_id
        packets = [os.urandom(4096) for _ in range(40)]  # more than two replies' worth
        # One at a time: 40 concurrent deposits are ~1000 concurrent FIND_NODE
        # dials, which overflow the sim listeners' backlogs, so lookups settle
        # on farther nodes and deposits land on fewer, other holders.
        for i, packet in enumerate(packets):
            assert await nodes[1 + i % 5].deposit(owner_id, packet) == 3 * 5
        got = await nodes[9].fetch_mailbox(owner_id, epoch_of(sim_wall_clock()))
        assert sorted(got) == sorted(packets)
        nursery.cancel_scope.cancel()


async def test_a_fetch_takes_the_union_of_holders_that_differ(autojump_clock: MockClock) -> None:
    """Holders keep entries in arrival order and some missed deposits: each is
    paged to its end, whatever the others gave first."""
    world = DhtWorld(SMALL)
    async with trio.open_nursery() as nursery:
        nodes = await world.build(nursery, 12)
        owner_id = nodes[0].identity.node_id
        epoch = epoch_of(sim_wall_clock())
        key = mailbox_keys(owner_id, epoch)[0]
        first, second = closest(nodes, key, 2, not_=None)
        shared = [os.urandom(4096) for _ in range(20)]  # more than one reply holds
        only_first = [os.urandom(4096) for _ in range(20)]
        only_second = [os.urandom(4096) for _ in range(20)]
        now = sim_wall_clock()
        for holder, blobs in ((first, shared + only_first), (second, shared + only_second)):
            for blob in blobs:
                outcome = holder.mailboxes.store.put(
                    key, blob, int(now) + 600, now, source=bytes(32)
                )
                assert outcome.accepted
        fetcher = next(n for n in nodes if n not in (first, second, nodes[0]))
        got = await fetcher.fetch_mailbox(owner_id, epoch)
        assert sorted(got) == sorted(shared + only_first + only_second)
        nursery.cancel_scope.cancel()


class SybilHolder(Dht):
    """S15: a Sybil near one mailbox key. It answers lookups honestly (so it is
    found as a holder), takes every DEPOSIT and keeps nothing, and answers every
    FETCH in its ``mode``: empty, garbage (with "more" forever), refused, silent."""

    mode = "empty"
    fetches = 0  # over all Sybils

    async def handle(self, requester: PublicIdentity, request: rpc.Request) -> rpc.Response:
        ok = rpc.Response(request.rid, rpc.Status.OK)
        match request.method, self.mode:
            case rpc.Method.DEPOSIT, "refused":
                return rpc.Response(request.rid, rpc.Status.REFUSED)
            case rpc.Method.DEPOSIT | rpc.Method.CLEAR, _:
                return ok
            case rpc.Method.FETCH, mode:
                SybilHolder.fetches += 1
                return await self._lie(request, mode)
            case _:
                return await super().handle(requester, request)

    async def _lie(self, request: rpc.Request, mode: str) -> rpc.Response:
        match mode:
            case "garbage":
                body = rpc.encode_fetch_reply([os.urandom(2560) for _ in range(20)], more=True)
            case "refused":
                return rpc.Response(request.rid, rpc.Status.REFUSED)
            case "silent":
                await trio.sleep_forever()
            case _:
                body = rpc.encode_fetch_reply([], more=False)
        return rpc.Response(request.rid, rpc.Status.OK, body)


MODES = ("empty", "garbage", "refused", "silent")


async def test_s15_sybils_closest_to_one_key_do_not_stop_a_fetch(
    autojump_clock: MockClock,
) -> None:
    rng = random.Random(15)
    world = DhtWorld(DhtOptions(max_per_prefix_bucket=None, max_per_prefix_table=None))
    async with trio.open_nursery() as nursery:
        honest = await world.build(nursery, 24, rng=rng)  # fixed ids: none among the Sybils
        victim = honest[5].identity.node_id
        target = mailbox_keys(victim, epoch_of(sim_wall_clock()))[0]
        sybils = []
        for j in range(20):
            cls = type(f"Sybil{j}", (SybilHolder,), {"mode": MODES[j % 4]})
            sybil = await world.add(
                nursery, f"66.{j}.0.1", identity=grind(rng, target, 10), cls=cls
            )
            assert await sybil.join([as_seed(rng.choice(honest))])
            sybils.append(sybil)
        every = honest + sybils
        # the 20 nodes closest to replica key 0 are all Sybils
        assert set(closest(every, target, 20, not_=honest[0])) == set(sybils)

        packets = {os.urandom(PACKET): d for d in rng.sample(honest, 4)}
        for packet, depositor in packets.items():
            assert await depositor.deposit(victim, packet) >= 20
        slowest = 0.0
        for fetcher in rng.sample([d for d in honest if d not in packets.values()], 5):
            started = trio.current_time()
            got = await fetcher.fetch_mailbox(victim, epoch_of(sim_wall_clock()))
            slowest = max(slowest, trio.current_time() - started)
            assert set(packets) <= set(got)
        print(f"S15 mailbox: slowest fetch {slowest:.1f} s simulated")
        assert slowest <= 10
        assert SybilHolder.fetches > 0, "the Sybils were never asked"
        nursery.cancel_scope.cancel()


def test_grind_puts_an_identity_near_a_key() -> None:
    key = bytes(32)
    ident: Identity = grind(random.Random(1), key, 6)
    assert distance(ident.node_id, key) < 2 ** (256 - 6)


async def test_a_deposit_left_with_a_neighbour_is_fetched_from_it_alone(
    autojump_clock: MockClock,
) -> None:
    """A sender no route leaves leaves its packet with a node it can reach,
    holder or not; the owner, meeting that node later, asks it straight."""
    world = DhtWorld(SMALL)
    async with trio.open_nursery() as nursery:
        nodes = await world.build(nursery, 12)
        owner, sender, neighbour = nodes[3], nodes[5], nodes[7]
        owner_id = owner.identity.node_id
        packet = os.urandom(PACKET)
        near = neighbour.as_peer()
        assert await sender.mailboxes.deposit_at([near], owner_id, packet) == 3
        assert await sender.mailboxes.deposit_at([], owner_id, packet) == 0
        epoch = epoch_of(sim_wall_clock())
        assert await owner.mailboxes.fetch_at(near, owner_id, epoch) == [packet]
        assert await owner.mailboxes.fetch_at(near, owner_id, epoch - 1) == []
        assert await owner.mailboxes.fetch_at(sender.as_peer(), owner_id, epoch) == []
        with pytest.raises(ValueError, match="blob"):
            await sender.mailboxes.deposit_at([near], owner_id, b"")
        nursery.cancel_scope.cancel()
