"""Bridges: unlisted nodes reachable only through their invites (issue 5, item 4).

A censor that enumerates the network (crawling the DHT, as researchers and
censors crawl BitTorrent's and Tor's public relay lists) and blocks every
address it finds cannot find a bridge: its peer record is never stored,
sent or answered. A node given the bridge's invite joins through it.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
from simworld import SimWorld
from trio.testing import MockClock

from p2pmsg.dht import records as rec
from p2pmsg.node import Node
from p2pmsg.sim.net import DELIVER, RESET, Packet, Verdict

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
