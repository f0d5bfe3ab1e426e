"""The real DHT on the simulated network, under the autojump clock."""

from __future__ import annotations

import trio
from dhtworld import DhtWorld, as_seed
from trio.testing import MockClock

from p2pmsg.sim.net import Deliver, Drop


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
