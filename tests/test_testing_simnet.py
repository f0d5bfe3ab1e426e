"""The test kit's fixtures, used the way its docstring tells users to."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from p2pmsg.sim.world import World
from p2pmsg.testing.simnet import CensorKit


async def test_messages_get_through_while_the_seed_is_null_routed(
    simnet: World, censor: CensorKit, autojump_clock: MockClock
) -> None:
    simnet.home("seed")
    for name in ("alice", "bob"):
        simnet.home(name, bootstrap=[simnet.invite("seed")])
    dropped = censor.drop("seed", after=120.0)
    async with simnet.node("seed"), simnet.node("alice") as alice, simnet.node("bob") as bob:
        await alice.joined.wait()
        await bob.joined.wait()
        await alice.store.add_contact(simnet.contact_of("bob"))
        await trio.sleep(300)  # the seed is gone by now
        sent = await alice.send("bob", "still here", direct=True)
        with trio.fail_after(120):
            got = await bob.messages().receive()
        assert (got.id, got.text) == (sent, "still here")
    assert dropped.dropped > 0


async def test_a_dpi_rule_kills_the_flows_it_matches(
    simnet: World, censor: CensorKit, autojump_clock: MockClock
) -> None:
    rule = censor.match(b"HELLO")
    listener = await simnet.net.listen("server", 80)
    ok = await simnet.net.connect("client", "server", 80)
    await ok.send(b"GET / HTTP/1.1")
    assert await (await listener.accept()).receive() == b"GET / HTTP/1.1"
    bad = await simnet.net.connect("client", "server", 80)
    await bad.send(b"HELLO there")
    with trio.fail_after(5):
        try:
            await bad.receive()
        except trio.BrokenResourceError:
            pass
        else:
            raise AssertionError("the matched flow was not reset")
    assert rule.matched == 1
