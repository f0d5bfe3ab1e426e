"""The simulated censor's rules, on real simulated streams (autojump clock)."""

from __future__ import annotations

import random

import pytest
import trio
from trio.testing import MockClock

from p2pmsg.sim.censor import (
    Censor,
    MatchPayload,
    Police,
    ResetEvery,
    ResidualBlock,
    contains,
    fully_encrypted_first,
)
from p2pmsg.sim.net import DROP, Packet, SimListener, SimNetwork, SimStream

LISTENERS: dict[tuple[int, int], SimListener] = {}


async def pair(net: SimNetwork, port: int = 80) -> tuple[SimStream, SimStream]:
    """A connection from the client to the server's ``port``, both ends."""
    listener = LISTENERS.get((id(net), port))
    if listener is None:
        listener = LISTENERS[id(net), port] = await net.listen("server", port)
    client = await net.connect("client", "server", port)  # queued in the backlog
    return client, await listener.accept()


def network(censor: Censor) -> SimNetwork:
    net = SimNetwork()
    net.add_host("client")
    net.add_host("server")
    net.policy = censor
    return net


async def test_a_pattern_in_the_first_payloads_resets_the_flow(autojump_clock: MockClock) -> None:
    rule = MatchPayload(contains(b"BAD"))
    net = network(Censor([rule]))
    clean, clean_server = await pair(net)
    for data in (b"hello", b"fine", b"BAD, but third"):  # only two payloads are read
        await clean.send(data)
    for data in (b"hello", b"fine", b"BAD, but third"):
        assert await clean_server.receive() == data
    client, server = await pair(net, 81)
    await client.send(b"GET")
    await client.send(b"A BAD request")  # the second payload still counts
    with pytest.raises(trio.BrokenResourceError):
        await server.receive()
    with pytest.raises(trio.BrokenResourceError):
        await client.send(b"more")
    assert rule.matched == 1


async def test_a_rule_added_mid_conversation_kills_the_flows_it_matches(
    autojump_clock: MockClock,
) -> None:
    censor = Censor([])
    net = network(censor)
    random_bytes, random_server = await pair(net)
    web, web_server = await pair(net, 81)
    await random_bytes.send(bytes(random.Random(1).randbytes(200)))
    await web.send(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
    await random_server.receive()
    await web_server.receive()
    censor.rules.append(MatchPayload(fully_encrypted_first))
    await random_bytes.send(b"later")
    await web.send(b"later")
    with pytest.raises(trio.BrokenResourceError):
        await random_server.receive()
    assert await web_server.receive() == b"later"


async def test_a_residual_block_resets_syns_on_the_same_three_tuple_only(
    autojump_clock: MockClock,
) -> None:
    residual = ResidualBlock(seconds=180.0)
    net = network(Censor([MatchPayload(contains(b"BAD"), residual=residual), residual]))
    client, _ = await pair(net)
    await client.send(b"BAD")
    with pytest.raises(ConnectionRefusedError):
        await pair(net)
    await pair(net, 443)  # another port is another 3-tuple
    await trio.sleep(180.0)
    await pair(net)
    assert residual.blocked_syns == 1


async def test_a_residual_block_with_probability_blocks_about_that_share(
    autojump_clock: MockClock,
) -> None:
    residual = ResidualBlock(seconds=1e9, p=0.5, rng=random.Random(7))
    net = network(Censor([MatchPayload(contains(b"BAD"), residual=residual), residual]))
    client, _ = await pair(net)
    await client.send(b"BAD")
    refused = 0
    for _ in range(200):
        try:
            await pair(net)
        except ConnectionRefusedError:
            refused += 1
    assert 70 <= refused <= 130


async def test_reset_every_breaks_a_flow_once_it_is_old_enough(autojump_clock: MockClock) -> None:
    rule = ResetEvery(20.0)
    net = network(Censor([rule]))
    client, server = await pair(net)
    await trio.sleep(19.0)
    await client.send(b"young")
    assert await server.receive() == b"young"
    await trio.sleep(1.0)
    await client.send(b"old")
    with pytest.raises(trio.BrokenResourceError):
        await server.receive()
    assert rule.resets == 1


async def test_police_delivers_in_order_at_the_rate(autojump_clock: MockClock) -> None:
    net = network(Censor([], police=Police(rate=1000.0)))
    client, server = await pair(net)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def read() -> None:
            for _ in range(10):
                got.append(await server.receive())

        nursery.start_soon(read)
        for i in range(10):
            await client.send(bytes([i]) * 500)
    assert got == [bytes([i]) * 500 for i in range(10)]
    assert trio.current_time() - start == pytest.approx(5.0)  # 5,000 bytes at 1,000 B/s


async def test_a_dropping_pattern_black_holes_the_flow(autojump_clock: MockClock) -> None:
    net = network(Censor([MatchPayload(contains(b"BAD"), verdict=DROP)]))
    client, server = await pair(net)
    await client.send(b"BAD")
    with trio.move_on_after(60.0) as waited:
        await server.receive()
    assert waited.cancelled_caught


def test_flow_views_are_bounded() -> None:
    censor = Censor([], clock=lambda: 0.0, max_flows=3)
    for flow in range(10):
        censor(Packet("client", 1, "server", 80, flow, "c2s", b"x"))
    assert len(censor._flows) == 3


async def test_a_residual_block_counts_the_tries_of_each_three_tuple_inside_one_window(
    autojump_clock: MockClock,
) -> None:
    """S4's figure: the most SYNs one 3-tuple saw inside one window, reset or not."""
    residual = ResidualBlock(seconds=180.0, p=0.0)  # counts, and lets every SYN through
    net = network(Censor([MatchPayload(contains(b"BAD"), residual=residual), residual]))
    client, _ = await pair(net)
    await client.send(b"BAD")
    await pair(net)
    await pair(net)
    await pair(net, 443)  # another 3-tuple, never blocked: not counted
    await trio.sleep(180.0)
    await pair(net)  # after the window
    ((key, tries),) = residual.retries.items()
    assert key[2] != 443 and tries == 2


def test_a_residual_block_keeps_at_most_max_keys_of_everything_it_counts() -> None:
    residual = ResidualBlock(seconds=180.0, max_keys=2)
    for n in range(3):
        residual.block(("client", f"server{n}", 443), float(n))
    assert len(residual._until) == len(residual._syns) == len(residual.retries) == 2
    assert ("client", "server0", 443) not in residual.retries
