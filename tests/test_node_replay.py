"""S8 end to end: a recorded first flight gets no answer from a node, also after it restarts.

A real node (its own home and SQLite store) on the simulated network, under
the autojump clock; the censor dials it as any client would and sends the
exact bytes of a first flight it recorded. An answer is any byte back; a
refusal is the listener's silence until its handshake deadline, then a close.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio
from simworld import SimWorld, sim_wall_clock
from trio.testing import MockClock

from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import Identity, decode_key
from p2pmsg.link.connection import LinkConnection
from p2pmsg.sim.transport import SimTransport
from p2pmsg.sim.world import World
from p2pmsg.sim.world import sim_wall_clock as world_wall_clock
from transports.obfs_core import ClientHandshake
from transports.simstack import WRAPPERS


def recorded_flight(world: SimWorld) -> bytes:
    """An honest client's first flight to bob, as a censor on the path records it."""
    bob = world.home("bob").invite().identity
    conn = LinkConnection(Identity.generate(), peer=bob, now=sim_wall_clock(), rng=os.urandom)
    conn.initiate()
    return conn.data_to_send()


async def answered(world: SimWorld, flight: bytes) -> bool:
    link = await SimTransport(world.net, "censor").dial(Endpoint.parse("sim:bob"))
    try:
        await link.send(flight)
        with trio.fail_after(120):  # well past the listener's 30 s handshake deadline
            return bool(await link.receive())
    except (trio.EndOfChannel, trio.BrokenResourceError):
        return False
    finally:
        await link.aclose()


async def test_a_recorded_first_flight_is_refused_after_the_node_restarts(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    flight = recorded_flight(world)
    async with world.node("bob") as bob:
        assert await answered(world, flight)
        assert not await answered(world, flight)
        assert bob.stats.refused_handshakes == 1
    await trio.sleep(60)  # down for a minute: the flight is well inside the day-long window
    async with world.node("bob") as bob:
        assert not await answered(world, flight)
        assert bob.stats.refused_handshakes == 1
        assert await answered(world, recorded_flight(world))  # honest clients still get in
        assert await bob.store.count_link_replay() == 2


async def test_a_recorded_obfs_hello_is_refused_after_the_node_restarts(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    """obfs's own filter is handed the node's saved window: without
    ``keep_replays`` the restarted node answers the replay (obfs4 would)."""
    world = World(tmp_path, seed=1, transports=("obfs",), wrappers=WRAPPERS)
    world.add_host("censor")
    world.add_host("bob")
    endpoint = world.home("bob").invite().endpoints[0]
    key = decode_key(dict(endpoint.args)["key"])

    def recorded_hello() -> bytes:
        return ClientHandshake(key, now=world_wall_clock(), rng=os.urandom).hello

    async def answered(hello: bytes) -> bool:
        censor = SimTransport(world.net, "censor")
        link = await censor.dial(Endpoint.parse(f"sim:{endpoint.address}"))
        try:
            await link.send(hello)
            with trio.fail_after(300):  # past the listener's deadline (30 s + up to 60 s)
                return bool(await link.receive())
        except (trio.EndOfChannel, trio.BrokenResourceError):
            return False
        finally:
            await link.aclose()

    hello = recorded_hello()
    async with world.node("bob"):
        assert await answered(hello)
        assert not await answered(hello)
    await trio.sleep(60)
    async with world.node("bob") as bob:
        assert not await answered(hello)
        assert await answered(recorded_hello())  # honest clients still get in
        assert await bob.store.count_link_replay() == 2  # both hellos, in the link's table
