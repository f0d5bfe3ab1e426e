"""The real DHT on the simulated network, under the autojump clock."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing
from dhtworld import DhtWorld, as_seed, serve_rpc
from trio.testing import MockClock

from p2pmsg.dht import rpc
from p2pmsg.dht.peer import Peer
from p2pmsg.dht.service import Dht, DhtOptions
from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import Identity
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.sim.net import Deliver, Drop
from transports.sim import SimTransport


async def test_join_returns_false_when_no_seed_answers(autojump_clock: MockClock) -> None:
    world = DhtWorld()
    async with trio.open_nursery() as nursery:
        lonely = await world.add(nursery, "10.9.0.1")
        gone = await world.add(nursery, "10.9.0.2")
        seed = as_seed(gone)
        world.net.policy = lambda p: Drop() if p.dst_host == "10.9.0.2" else Deliver()
        assert not await lonely.join([seed, seed])
        world.net.policy = lambda p: Deliver()
        assert await lonely.join([seed])
        nursery.cancel_scope.cancel()


async def test_a_peer_that_moved_is_verified_at_its_new_endpoint(
    autojump_clock: MockClock,
) -> None:
    world = DhtWorld()
    async with trio.open_nursery() as nursery:
        a = await world.add(nursery, "10.9.0.1")
        b = await world.add(nursery, "10.9.0.2")
        assert await b.join([a.as_peer()])
        await trio.testing.wait_all_tasks_blocked()
        listed = a.table.get(b.identity.node_id)
        assert listed is not None
        assert listed.endpoints == ("sim:10.9.0.2:1",)
        # b also listens on a second port and advertises only that one now.
        await nursery.start(
            SimTransport(world.net, "10.9.0.2").serve,
            Endpoint.parse("sim:10.9.0.2:2"),
            partial(serve_rpc, b, ReplayWindow(86400)),
        )
        b.publish_local(["sim:10.9.0.2:2"], frozenset())
        assert await b.ping(a.as_peer())
        await trio.testing.wait_all_tasks_blocked()
        moved = a.table.get(b.identity.node_id)
        assert moved is not None
        assert moved.endpoints == ("sim:10.9.0.2:2",)
        nursery.cancel_scope.cancel()


async def test_find_peer_answers_from_our_own_store_when_the_owner_is_gone(
    autojump_clock: MockClock,
) -> None:
    """b stores its peer record at a, its only neighbour, then goes silent: a
    is one of the k closest to b's id, so its own copy is the answer."""
    world = DhtWorld()
    async with trio.open_nursery() as nursery:
        a = await world.add(nursery, "10.9.0.1")
        b = await world.add(nursery, "10.9.0.2")
        assert await b.join([a.as_peer()])
        record = b.publish_local(["sim:10.9.0.2:1"], frozenset({"v2"}))
        assert await b.put(record) == 1
        world.net.policy = lambda p: Drop() if "10.9.0.2" in (p.src_host, p.dst_host) else Deliver()
        found = await a.find_peer(b.identity.node_id)
        assert found is not None
        assert found.endpoints == ("sim:10.9.0.2:1",)
        nursery.cancel_scope.cancel()


class PingCounting(Dht):
    """The real service, listing the node ids it sends PINGs to."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.pinged: list[bytes] = []

    async def call(self, peer: Peer, method: rpc.Method, body: bytes = b"") -> bytes:
        if method is rpc.Method.PING:
            self.pinged.append(peer.node_id)
        return await super().call(peer, method, body)


async def test_a_peer_that_answered_us_is_not_dialled_again_to_verify_it(
    autojump_clock: MockClock,
) -> None:
    """a dials b, which answers but stays out of a's table (a's prefix limit is
    taken by c, on b's /16); b then verifies a with a PING carrying b's record.
    a verified b's endpoint when b answered on it, so it sends b no PING. A
    peer that only sent a request (d) is still verified before anything else."""
    world = DhtWorld()
    capped = DhtOptions(max_per_prefix_bucket=None, max_per_prefix_table=1)
    async with trio.open_nursery() as nursery:
        a = await world.add(nursery, "10.1.0.1", options=capped, cls=PingCounting)
        assert isinstance(a, PingCounting)
        b, c, d = [await world.add(nursery, f"10.2.0.{i}") for i in (1, 2, 3)]
        assert await a.ping(c.as_peer())
        await a.call(b.as_peer(), rpc.Method.FIND_NODE, bytes(32))
        await trio.testing.wait_all_tasks_blocked()
        assert c.identity.node_id in a.table
        assert b.identity.node_id not in a.table
        assert a.identity.node_id in b.table  # b verified a and took it
        assert b.identity.node_id not in a.pinged
        assert await d.ping(a.as_peer())
        await trio.testing.wait_all_tasks_blocked()
        assert a.pinged.count(d.identity.node_id) == 1
        assert d.identity.node_id not in a.table
        nursery.cancel_scope.cancel()


def _half(node_id: bytes) -> int:
    return node_id[0] >> 7


def _identity_in_half(half: int) -> Identity:
    while _half((identity := Identity.generate()).node_id) != half:
        pass
    return identity


async def test_a_requester_with_no_place_in_the_table_is_not_verified(
    autojump_clock: MockClock,
) -> None:
    """With k = 1, a's far half is one full bucket whose replacement cache is
    full too: a requester from there (far) could take no place once verified, so
    a does not dial it back. One from the half holding a's id (near: that bucket
    still splits) is verified and taken."""
    world = DhtWorld()
    async with trio.open_nursery() as nursery:
        a = await world.add(nursery, "10.1.0.1", options=DhtOptions(k=1), cls=PingCounting)
        assert isinstance(a, PingCounting)
        # a's publisher finds its table empty, so it dials none of the ghosts
        # below (three failed puts would evict the one in its far bucket)
        await trio.testing.wait_all_tasks_blocked()
        own = _half(a.identity.node_id)
        far = [_identity_in_half(1 - own) for _ in range(1 + a.table.max_replacements)]
        for i, identity in enumerate(far):
            ghost = Peer(identity.node_id, identity.public.key, (f"sim:10.9.0.{i}:1",), "v4:10.9")
            a.table.offer(ghost, trio.current_time())
        requester = await world.add(nursery, "10.2.0.1", identity=_identity_in_half(1 - own))
        near = await world.add(nursery, "10.3.0.1", identity=_identity_in_half(own))
        assert not a.table.has_room(requester.identity.node_id)
        for node in (requester, near):
            assert await node.ping(a.as_peer())
        await trio.testing.wait_all_tasks_blocked()
        assert a.pinged == [near.identity.node_id]
        assert near.identity.node_id in a.table
        nursery.cancel_scope.cancel()
