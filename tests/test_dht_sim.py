"""The real DHT on the simulated network, under the autojump clock."""

from __future__ import annotations

import os

import trio
from dhtworld import DhtWorld, as_seed
from trio.testing import MockClock

from p2pmsg.dht.peer import distance
from p2pmsg.sim.net import Deliver, Drop


def true_closest(world: DhtWorld, target: bytes, count: int) -> list[bytes]:
    ids = sorted((d.identity.node_id for d in world.nodes), key=lambda i: distance(i, target))
    return ids[:count]


async def build(world: DhtWorld, nursery: trio.Nursery, count: int) -> None:
    first = await world.add(nursery, "10.0.0.1")
    seed = as_seed(first)
    for i in range(1, count):
        dht = await world.add(nursery, f"10.{i // 250}.{i % 250}.2")
        assert await dht.join([seed])


async def test_lookups_find_the_true_closest(autojump_clock: MockClock) -> None:
    world = DhtWorld()
    async with trio.open_nursery() as nursery:
        await build(world, nursery, 100)
        ok = 0
        trials = 100
        for i in range(trials):
            target = os.urandom(32)
            searcher = world.nodes[i % len(world.nodes)]
            peers, _ = await searcher.lookup(target)
            expected = [
                n for n in true_closest(world, target, 21) if n != searcher.identity.node_id
            ]
            ok += [p.node_id for p in peers] == expected[:20]
        assert ok >= trials * 0.99
        nursery.cancel_scope.cancel()


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
