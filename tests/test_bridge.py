"""Bridges: unlisted nodes reachable only through their invites (issue 5, item 4).

A censor that enumerates the network (crawling the DHT, as researchers and
censors crawl BitTorrent's and Tor's public relay lists) and blocks every
address it finds cannot find a bridge: its peer record is never stored,
sent or answered. A node given the bridge's invite joins through it.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import trio
from simworld import SimWorld
from test_node_onion import befriend
from trio.testing import MockClock

from p2pmsg.dht import records as rec
from p2pmsg.node import Node
from p2pmsg.sim.net import DELIVER, DROP, RESET, Packet, Verdict

LISTED = [f"n{i}" for i in range(8)]


async def test_a_bridge_lets_a_blocked_node_join_and_nobody_can_list_it(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    boot = [world.invite(LISTED[0])]
    world.home("bridge", bootstrap=boot, bridge=True)
    world.home("client", bootstrap=[*boot, world.invite("bridge")])

    def censor(packet: Packet) -> Verdict:
        """The client's border: the listed seed is blocked, the bridge is not."""
        blocked = packet.src_host == "client" and packet.dst_host == LISTED[0]
        return RESET if blocked else DELIVER

    world.net.policy = censor
    async with AsyncExitStack() as stack:
        listed: list[Node] = []
        for i, name in enumerate(LISTED):
            listed.append(await stack.enter_async_context(world.node(name, bootstrap=boot)))
            if i:
                await listed[-1].joined.wait()
        bridge = await stack.enter_async_context(world.node("bridge"))
        await bridge.joined.wait()
        client = await stack.enter_async_context(world.node("client"))
        with trio.fail_after(600):
            await client.joined.wait()
        await trio.sleep(2 * 3600.0)  # republishing and bucket refreshes run

        # the client learnt the listed network through the bridge
        assert len({p.node_id for p in client.dht.table.peers()} - {bridge.identity.node_id}) >= 5
        hidden = bridge.identity.node_id
        for node in [*listed, client]:
            assert node.dht.known.record_of(hidden) is None
            assert node.dht.records.get(rec.RecordType.PEER, hidden, 2e9) == []
        for node in listed:
            assert hidden not in node.dht.table
        # a crawler's lookup of the bridge's id finds nothing, from anywhere
        assert await listed[3].dht.find_peer(hidden) is None
        assert await client.dht.find_peer(hidden) is None
        # while the bridge itself sees the whole network
        assert len(bridge.dht.table) >= len(LISTED) - 1


async def test_a_node_behind_a_censor_that_blocks_every_listed_node_talks_through_its_bridge(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Tor's bridge users' case: the censor has every listed address (found by
    crawling) and drops all of it, both ways; only the unlisted bridge is
    reachable. A node told to use the bridge sends and receives through it,
    and never sends a packet to a listed address itself."""
    boot = [world.invite(LISTED[0])]
    world.home("bridge", bootstrap=boot, bridge=True)
    world.home("client", use_bridges=[world.invite("bridge")])
    befriend(world, "client", "friend", boot)
    crossed = {"to_listed": 0, "blocked": 0}

    def censor(packet: Packet) -> Verdict:
        ends = {packet.src_host, packet.dst_host}
        if "client" in ends and ends & {*LISTED, "friend"}:
            crossed["to_listed"] += packet.src_host == "client"
            crossed["blocked"] += 1
            return DROP
        return DELIVER

    world.net.policy = censor
    async with AsyncExitStack() as stack:
        nodes: list[Node] = []
        for name in [*LISTED, "friend", "bridge", "client"]:
            nodes.append(await stack.enter_async_context(world.node(name, bootstrap=boot)))
            if name != LISTED[0]:
                with trio.fail_after(600):
                    await nodes[-1].joined.wait()
        friend, bridge, client = nodes[-3:]

        sent = {await client.send("friend", f"out {i}") for i in range(5)}
        replies = {await friend.send("client", f"back {i}") for i in range(5)}
        got: dict[str, list[bytes]] = {"friend": [], "client": [], "acked": []}
        with trio.move_on_after(3600.0):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_collect, friend.messages(), got["friend"])
                nursery.start_soon(_collect, client.messages(), got["client"])
                nursery.start_soon(_collect, client.deliveries(), got["acked"])
        # an hour: retries still in flight have landed, and nothing is shown twice
        assert sorted(got["friend"]) == sorted(sent)
        assert sorted(got["client"]) == sorted(replies)
        assert set(got["acked"]) == sent
        assert crossed["to_listed"] == 0  # every connection went through the bridge
        assert crossed["blocked"] > 0  # while the listed network did try to reach the client
        assert bridge.tunnels.stats.served > 0
        assert (await client.status())["tunnels"]["opened"] > 0


async def _collect(channel: trio.MemoryReceiveChannel[Any], into: list[bytes]) -> None:
    async for item in channel:
        into.append(item if isinstance(item, bytes) else item.id)
