"""The dialer's race on the simulated network: staggered starts, the winner,
the losers, and what it learns (autojump clock: times are simulated)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import pytest
import trio
from trio.testing import MockClock

from p2pmsg.abc import Link
from p2pmsg.dialer import Dialer, Dialled
from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import Identity
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.link.secure import accept_secure
from p2pmsg.pathscore import STAGGER_DELAY
from p2pmsg.sim.net import DELIVER, DROP, Packet, SimNetwork, Verdict
from transports.sim import SimTransport

SERVER = Identity.generate()
ENDPOINTS = ["sim:server:1", "sim:server:2", "sim:server:3"]


async def serve(net: SimNetwork, nursery: trio.Nursery) -> list[int]:
    """The server on ports 1-3; returns the ports its handshakes completed on."""
    completed: list[int] = []
    replay = ReplayWindow(3600.0, 1000)

    def handler(port: int) -> Callable[[Link], Awaitable[None]]:
        async def handle(link: Link) -> None:
            secure = await accept_secure(link, SERVER, replay)
            completed.append(port)
            with contextlib.suppress(trio.EndOfChannel, trio.BrokenResourceError):
                await secure.receive()

        return handle

    transport = SimTransport(net, "server")
    for port in (1, 2, 3):
        await nursery.start(transport.serve, Endpoint.parse(f"sim:server:{port}"), handler(port))
    return completed


def black_hole(*ports: int) -> Callable[[Packet], Verdict]:
    def policy(packet: Packet) -> Verdict:
        server_port = packet.dst_port if packet.direction == "c2s" else packet.src_port
        return DROP if packet.kind == "data" and server_port in ports else DELIVER

    return policy


async def test_a_silent_first_endpoint_loses_the_race_after_the_stagger(
    autojump_clock: MockClock,
) -> None:
    net = SimNetwork()
    net.add_host("client")
    net.add_host("server")
    net.policy = black_hole(1)
    dialer = Dialer(Identity.generate(), [SimTransport(net, "client")], handshake_timeout=30.0)
    seen: list[Dialled] = []
    dialer.observers.append(seen.append)
    async with trio.open_nursery() as nursery:
        completed = await serve(net, nursery)
        start = trio.current_time()
        link, endpoint = await dialer.connect(ENDPOINTS, SERVER.public)
        assert trio.current_time() - start == STAGGER_DELAY  # not the 30 s handshake timeout
        assert seen == [Dialled(STAGGER_DELAY, "sim")]  # what the lab times (S12)
        assert str(endpoint) == "sim:server:2"
        assert completed == [2]
        # the loser was cancelled, not judged: only the winner is scored
        assert dialer.health["sim"].successes == 1
        assert dialer.health["sim"].failures == {}
        # and the winner's path goes first next time, with no second race
        again, endpoint = await dialer.connect(ENDPOINTS, SERVER.public)
        assert str(endpoint) == "sim:server:2"
        assert completed == [2, 2]
        await link.aclose()
        await again.aclose()
        nursery.cancel_scope.cancel()


async def test_every_endpoint_failing_raises_the_last_error_and_scores_each(
    autojump_clock: MockClock,
) -> None:
    net = SimNetwork()
    net.add_host("client")
    net.add_host("server")
    dialer = Dialer(Identity.generate(), [SimTransport(net, "client")])
    seen: list[Dialled] = []
    dialer.observers.append(seen.append)
    with pytest.raises(ConnectionRefusedError):
        await dialer.connect(ENDPOINTS, SERVER.public)  # nobody listens: refused
    assert [d.winner for d in seen] == [None]
    assert dialer.health["sim"].failures == {"reset": 3}
    assert len(dialer.residual) == 0  # a refused SYN is a peer that is down, not a censor
