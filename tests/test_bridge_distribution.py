"""Bridge distribution between real nodes: a publisher hands bridges out, a
node behind a censor asks for more through the bridge it has (p2pmsg.bridges)."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from simworld import SimWorld
from trio.testing import MockClock

from p2pmsg import distributor
from p2pmsg.bridges import Supply
from p2pmsg.distributor import ASK_EVERY, FRESH_FOR
from p2pmsg.endpoint import Endpoint, Invite
from p2pmsg.keys import Identity
from p2pmsg.node import Node
from p2pmsg.sim.net import DELIVER, DROP, Packet, Verdict
from p2pmsg.store import Store, run_inline

LISTED = [f"n{i}" for i in range(4)]
BRIDGES = ["b0", "b1", "b2", "b3"]


def _setup(world: SimWorld) -> set[str]:
    """Homes: a listed network, four bridges, a publisher that distributes,
    and a client that uses b0 and asks the publisher. The set is what the
    client may reach (the censor drops the rest); tests change it."""
    boot = [world.invite(LISTED[0])]
    for name in BRIDGES:
        world.home(name, bootstrap=boot, bridge=True)
    publisher = world.home("publisher", bootstrap=boot)
    publisher.save_config(replace(publisher.load_config(), distribute=True))
    client = world.home("client", use_bridges=[world.invite("b0")])
    asks = (Invite.parse(world.invite("publisher")),)
    client.save_config(replace(client.load_config(), distributors=asks))
    open_to = set(BRIDGES)

    def censor(packet: Packet) -> Verdict:
        ends = {packet.src_host, packet.dst_host}
        if "client" in ends and not ends - {"client"} <= open_to:
            return DROP
        return DELIVER

    world.net.policy = censor
    return open_to


def _keys(node: Node) -> set[str]:
    return {b.identity.node_id.hex()[:8] for b in node.dialer.bridges}


async def test_a_node_asks_for_bridges_through_the_one_it_has_and_uses_them_once_it_falls(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    open_to = _setup(world)
    ids = {n: world.home(n).invite().identity.node_id.hex()[:8] for n in BRIDGES}
    boot = [world.invite(LISTED[0])]
    async with AsyncExitStack() as stack:
        for name in [*LISTED, *BRIDGES, "publisher"]:
            node = await stack.enter_async_context(world.node(name, bootstrap=boot))
        publisher = node
        for name in BRIDGES[1:]:
            assert await publisher.offer_bridge(Invite.parse(world.invite(name)))
        assert not await publisher.offer_bridge(Invite.parse(world.invite("b1")))  # once

        async with world.node("client") as client:
            keeper = client.bridge_keeper
            assert keeper is not None
            await trio.sleep(60.0)
            # one bridge is too few: it asked the publisher, through b0, and got three
            assert _keys(client) == set(ids.values())
            assert (keeper.requests, keeper.given) == (1, 3)
            assert publisher.bridge_supply is not None
            assert publisher.bridge_supply.requests == 1
            status = (await client.status())["bridges"]
            assert status["using"] == 4 and status["failed"] == 0
            with trio.fail_after(3600):
                await client.joined.wait()

            open_to.discard("b0")  # the censor learns b0
            await trio.sleep(ASK_EVERY + 60.0)
            assert keeper.failed.keys() == {world.home("b0").invite().identity.key}
            assert keeper.requests == 1  # three still work: no need to ask
            status = (await client.status())["bridges"]
            assert (status["using"], status["failed"]) == (4, 1)  # b0 came with the config
            hidden = world.home(LISTED[2]).invite().identity.node_id
            assert await client.find(hidden) is not None  # through the bridges it was given

        async with world.node("client") as again:  # the bridges given are kept
            assert _keys(again) == set(ids.values())


async def test_a_node_that_hands_out_nothing_answers_none_and_a_bad_request_ends_the_link(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    _setup(world)
    async with world.node(LISTED[0]) as plain, world.node("b1") as asker:
        invite = world.home(LISTED[0]).invite()
        link, _ = await asker.dialer.connect([str(e) for e in invite.endpoints], invite.identity)
        await link.send(distributor.encode_request([bytes(32)]))
        assert distributor.decode_reply(await link.receive()) == ()
        await link.send(bytes([distributor.VERSION, distributor.REQUEST_TYPE, 1]))  # no key
        with pytest.raises(trio.EndOfChannel):
            await link.receive()
        assert plain.stats.bad_frames == 1
        with pytest.raises(ValueError, match="does not hand out"):
            await plain.offer_bridge(invite)


async def test_a_publisher_keeps_its_offers_fresh_and_takes_a_bridge_that_moved(
    tmp_path: Path,
) -> None:
    now = [1_000_000.0]
    bridge = Identity.generate().public
    first = Invite(bridge, (Endpoint.parse("tcp:192.0.2.1:443"),))
    moved = Invite(bridge, (Endpoint.parse("tcp:192.0.2.2:443"),))
    other = Invite(Identity.generate().public, (Endpoint.parse("tcp:192.0.2.3:443"),))
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        supply = Supply(store, lambda: now[0], os.urandom)
        assert await supply.offer(first)
        assert not await supply.offer(first)
        assert await supply.offer(moved)  # the same bridge, elsewhere: its new invite
        assert await supply.offer(other)
        ring = await supply.ring()
        assert set(ring.hand_out(b"asker", now[0])) == {str(moved), str(other)}
        now[0] += FRESH_FOR
        assert await supply.offer(first)  # a week on, offered again
        assert [text for text, _ in await supply.offers()] == [str(first)]
        again = Supply(store, lambda: now[0], os.urandom)  # a restart: the same ring
        assert (await again.ring()).hand_out(b"asker", now[0]) == (str(first),)
