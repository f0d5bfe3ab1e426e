"""The dialer's race on the simulated network: staggered starts, the winner,
the losers, and what it learns (autojump clock: times are simulated); and,
over real loopback TCP, what a reset there arms."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio
from trio.testing import MockClock

from p2pmsg.abc import Link
from p2pmsg.dialer import DIAL_ERRORS, Dialer, Dialled
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import UnsupportedEndpoint
from p2pmsg.keys import Identity
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.link.secure import accept_secure
from p2pmsg.pathscore import STAGGER_DELAY
from p2pmsg.sim.net import DELIVER, DROP, Packet, SimNetwork, Verdict
from transports.sim import SimTransport
from transports.tcp import TcpTransport

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
        assert seen == [Dialled(STAGGER_DELAY, "sim", "sim")]  # what the lab times (S12)
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


async def reset_after_first_message(
    listeners: list[trio.SocketListener], handshakes: list[bytes]
) -> None:
    """A server that reads what the client sends first and then resets, as a
    node killed in the middle of a handshake does (or a censor's RST)."""
    async with listeners[0] as listener:
        while True:
            stream = await listener.accept()
            handshakes.append(await stream.receive_some(65536))
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.socket.close()


@pytest.mark.parametrize(
    ("host", "guarded"), [("127.0.0.1", False), ("127.0.0.2", False), ("localhost", True)]
)
async def test_a_reset_from_our_own_machine_is_the_peers_not_a_residual_block(
    host: str, guarded: bool
) -> None:
    """A handshake reset by a loopback address arms no residual guard: no
    censor sits on the loopback, and a peer restarting there must be dialled
    again at once. Only the literal address is trusted (``localhost`` is a
    name a resolver answers, so it is guarded like any other host)."""
    async with trio.open_nursery() as nursery:
        address = "127.0.0.1" if host == "localhost" else host
        listeners = await trio.open_tcp_listeners(0, host=address)
        port = listeners[0].socket.getsockname()[1]
        handshakes: list[bytes] = []
        nursery.start_soon(reset_after_first_message, listeners, handshakes)
        dialer = Dialer(Identity.generate(), [TcpTransport()])
        endpoints = [f"tcp:{host}:{port}"]
        with pytest.raises(DIAL_ERRORS):
            await dialer.connect(endpoints, SERVER.public)
        assert dialer.health["tcp"].failures == {"reset": 1}
        assert len(handshakes) == 1 and handshakes[0]  # reset in the handshake, not refused
        assert len(dialer.residual) == (1 if guarded else 0)
        if guarded:
            with pytest.raises(UnsupportedEndpoint):  # skipped for the residual window
                await dialer.connect(endpoints, SERVER.public)
        else:
            with pytest.raises(DIAL_ERRORS):  # dialled again, and reset again
                await dialer.connect(endpoints, SERVER.public)
            assert dialer.health["tcp"].failures == {"reset": 2} and len(handshakes) == 2
        nursery.cancel_scope.cancel()
