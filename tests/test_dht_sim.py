"""The real DHT on the simulated network, under the autojump clock."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing
from dhtworld import DhtWorld, as_seed, serve_rpc
from trio.testing import MockClock

from p2pmsg.endpoint import Endpoint
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
