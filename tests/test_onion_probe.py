"""Probing the relays of a lost route (S10's border cut), on the simulated network.

A lost route blames all its relays alike, so behind a border cut the relays
abroad that shared routes with relays at home sank below the score floor
with them, and route selection fell back to every relay. A ping tells them
apart: :meth:`OnionPath.probe` marks the relays that do not answer, and
route selection takes every relay we reach before those.
"""

from __future__ import annotations

import trio
from simworld import SimWorld
from test_node_onion import RELAYS, alice_and_bob
from trio.testing import MockClock, wait_all_tasks_blocked

from p2pmsg.delivery.onion_path import PROBE_EVERY
from p2pmsg.node import Node
from p2pmsg.sim.net import DELIVER, DROP, Packet, Verdict


class Cut:
    """A policy that drops every packet between two hosts while ``on``."""

    def __init__(self, a: str, b: str) -> None:
        self.ends = {a, b}
        self.on = False

    def __call__(self, packet: Packet) -> Verdict:
        return DROP if self.on and {packet.src_host, packet.dst_host} == self.ends else DELIVER


class LoseOne:
    """A policy that drops the first packet ``src`` sends ``dst`` (and, as a
    censor's drop does, the rest of its flow direction): one ping lost with its
    link, while the next link gets through."""

    def __init__(self, src: str, dst: str) -> None:
        self.src, self.dst = src, dst
        self.dropped: tuple[int, str] | None = None

    def __call__(self, packet: Packet) -> Verdict:
        if self.dropped is None and (packet.src_host, packet.dst_host) == (self.src, self.dst):
            self.dropped = (packet.flow, packet.direction)
        return DROP if (packet.flow, packet.direction) == self.dropped else DELIVER


def unreachable(node: Node) -> set[bytes]:
    now = node.onion.path._wall_clock()
    return {c.node_id for c in node.onion.path.candidates(now) if c.unreachable}


def node_id(world: SimWorld, name: str) -> bytes:
    return world.home(name).invite().identity.node_id


async def test_a_relay_that_does_not_answer_is_marked_and_pinged_once_per_period(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    async with alice_and_bob(world) as (alice, _):
        cut = world.net.policy = Cut("alice", RELAYS[2])
        cut.on = True
        gone, fine = node_id(world, RELAYS[2]), node_id(world, RELAYS[3])
        assert gone not in unreachable(alice)
        assert sorted(await alice.onion.path.probe([gone, fine])) == sorted([gone, fine])
        assert unreachable(alice) & {gone, fine} == {gone}
        assert await alice.onion.path.probe([gone, fine]) == []  # probed just now: not again
        cut.on = False
        await trio.sleep(PROBE_EVERY)
        assert await alice.onion.path.probe([gone]) == [gone]  # the cut lifted: it answers
        assert gone not in unreachable(alice)


async def test_one_lost_ping_does_not_mark_a_relay(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """A lossy path (S18) loses a ping now and then: only a relay that misses
    both of a probe's pings counts as one we cannot reach."""
    async with alice_and_bob(world) as (alice, _):
        relay = node_id(world, RELAYS[4])
        await wait_all_tasks_blocked()  # so that the ping sends the first packet
        lose = world.net.policy = LoseOne("alice", RELAYS[4])
        assert await alice.onion.path.probe([relay]) == [relay]
        assert lose.dropped is not None  # the first ping was lost
        assert relay not in unreachable(alice)
