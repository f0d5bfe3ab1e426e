"""Links through a bridge (:mod:`p2pmsg.link.tunnel`): the wire, and real
nodes on the simulated network carrying, refusing and ending tunnels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from simworld import SimWorld, sim_wall_clock
from trio.testing import MockClock

from p2pmsg.dialer import Dialer
from p2pmsg.endpoint import Invite
from p2pmsg.errors import RemoteProtocolError, TunnelRefused
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.link import tunnel
from p2pmsg.node import Node, NodeOptions
from p2pmsg.sim.net import DELIVER, Packet, Verdict
from transports.sim import SimTransport

ENDPOINT = st.text(min_size=1, max_size=60)


@given(
    st.binary(min_size=32, max_size=32),
    st.lists(ENDPOINT, min_size=1, max_size=tunnel.MAX_TARGET_ENDPOINTS),
)
def test_a_tunnel_request_round_trips(key: bytes, endpoints: list[str]) -> None:
    request = tunnel.Open(key, tuple(endpoints))
    assert tunnel.decode_open(tunnel.encode_open(request)) == request


@given(st.sampled_from(tunnel.Status), st.integers(0, tunnel.MAX_TARGET_ENDPOINTS - 1))
def test_a_tunnel_reply_round_trips(status: tunnel.Status, index: int) -> None:
    reply = tunnel.Reply(status, index)
    assert tunnel.decode_reply(tunnel.encode_reply(reply)) == reply


def test_a_request_cut_short_or_extended_is_refused() -> None:
    wire = tunnel.encode_open(tunnel.Open(bytes(32), ("sim:a", "sim:b")))
    for bad in (wire[:-1], wire + b"x", wire[:34], bytes([1, 6]) + bytes(32) + b"\x09"):
        with pytest.raises(RemoteProtocolError):
            tunnel.decode_open(bad)
    with pytest.raises(RemoteProtocolError):
        tunnel.decode_reply(bytes([1, 7, 9, 0]))  # an unknown status
    with pytest.raises(RemoteProtocolError):
        tunnel.decode_reply(bytes([1, 7, 0, tunnel.MAX_TARGET_ENDPOINTS]))
    with pytest.raises(ValueError, match="1 to 8"):
        tunnel.encode_open(tunnel.Open(bytes(32), ()))


@dataclass
class Lab:
    world: SimWorld
    nodes: dict[str, Node]
    sources: list[tuple[str, str]]
    """(source host, destination host) of every connection that was opened."""

    def client(self, via: str) -> Dialer:
        """A node's dialer on host ``client`` that reaches every peer through ``via``."""
        return Dialer(
            Identity.generate(),
            [SimTransport(self.world.net, "client")],
            bridges=[Invite.parse(self.world.invite(via))],
            wall_clock=sim_wall_clock,
        )

    def target(self, name: str) -> tuple[list[str], PublicIdentity]:
        invite = self.world.home(name).invite()
        return [str(e) for e in invite.endpoints], invite.identity


@asynccontextmanager
async def lab(world: SimWorld, bridge: NodeOptions | None = None) -> AsyncIterator[Lab]:
    """A bridge (with options ``bridge``), a listed node that is not one, and a
    target; nobody joins anybody: tunnels need no DHT."""
    world.home("bridge", bridge=True)
    sources: list[tuple[str, str]] = []

    def watch(packet: Packet) -> Verdict:
        if packet.kind == "syn":
            sources.append((packet.src_host, packet.dst_host))
        return DELIVER

    world.net.policy = watch
    async with AsyncExitStack() as stack:
        nodes = {
            name: await stack.enter_async_context(
                world.node(name, options=bridge if name == "bridge" else None)
            )
            for name in ("bridge", "plain", "target")
        }
        yield Lab(world, nodes, sources)


async def test_a_bridge_carries_a_secure_link_to_the_target_that_sees_only_the_bridge(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    async with lab(world) as at:
        dialer = at.client(via="bridge")
        endpoints, target = at.target("target")
        link, endpoint = await dialer.connect(endpoints, target)
        assert link.peer == target  # the handshake ran end to end, with the target
        assert str(endpoint) == endpoints[0]
        await link.send(b"\x01\x03" + bytes(40))  # any message: the target reads it
        assert ("client", "target") not in at.sources
        assert ("client", "bridge") in at.sources
        assert ("bridge", "target") in at.sources
        assert at.nodes["bridge"].tunnels.stats.served == 1
        assert dialer.tunnels.opened == 1
        # the bridge is dialled directly, never through itself
        bridge = Invite.parse(world.invite("bridge"))
        direct, _ = await dialer.connect([str(e) for e in bridge.endpoints], bridge.identity)
        assert dialer.tunnels.opened == 1
        await direct.aclose()
        await link.aclose()
        await trio.testing.wait_all_tasks_blocked()  # the bridge winds the tunnel down
        assert not at.nodes["bridge"].tunnels.open  # closing the link ended the tunnel


async def test_endpoints_a_request_cannot_carry_are_left_out(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    """Printable but over the request's byte bound once in UTF-8, or malformed."""
    async with lab(world) as at:
        endpoints, target = at.target("target")
        unfit = ["sim:" + "é" * 1500, "no colon here"]
        link, endpoint = await at.client(via="bridge").connect([*unfit, *endpoints], target)
        assert str(endpoint) == endpoints[0]
        await link.aclose()


async def test_a_listed_node_is_not_a_bridge_and_says_so(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    async with lab(world) as at:
        dialer = at.client(via="plain")
        with pytest.raises(TunnelRefused, match="not a bridge"):
            await dialer.connect(*at.target("target"))
        assert ("plain", "target") not in at.sources
        assert at.nodes["plain"].tunnels.stats.refused == 1
        assert dialer.tunnels.failed == 1


async def test_a_target_the_bridge_cannot_reach_is_reported_unreachable(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    async with lab(world) as at:
        dialer = at.client(via="bridge")
        nowhere = Identity.generate().public
        with pytest.raises(TunnelRefused, match="unreachable"):
            await dialer.connect(["sim:nowhere:1", "tcp:192.0.2.1:4001"], nowhere)
        # and the bridge keeps serving
        link, _ = await dialer.connect(*at.target("target"))
        await link.aclose()


async def test_a_bridge_carries_at_most_its_limit_of_tunnels_per_client(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    options = NodeOptions(max_tunnels_per_peer=2)
    async with lab(world, options) as at:
        dialer = at.client(via="bridge")
        held = [await dialer.connect(*at.target("target")) for _ in range(2)]
        with pytest.raises(TunnelRefused, match="busy"):
            await dialer.connect(*at.target("target"))
        await held[0][0].aclose()
        await trio.testing.wait_all_tasks_blocked()  # the bridge winds the tunnel down
        again, _ = await dialer.connect(*at.target("target"))  # room again
        for link in (again, held[1][0]):
            await link.aclose()


async def test_an_idle_tunnel_is_closed(world: SimWorld, autojump_clock: MockClock) -> None:
    """By the bridge: the target would keep it for its own link_idle (900 s)."""
    options = NodeOptions(idle_timeout=50.0)
    async with lab(world, options) as at:
        dialer = at.client(via="bridge")
        link, _ = await dialer.connect(*at.target("target"))
        with trio.fail_after(60.0), pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
            await link.receive()
        await trio.testing.wait_all_tasks_blocked()  # the bridge winds the tunnel down
        assert not at.nodes["bridge"].tunnels.open


async def test_a_bridge_carries_at_most_its_limit_in_all_and_never_back_to_a_client(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    options = NodeOptions(max_tunnels=2, max_tunnels_per_peer=16)
    async with lab(world, options) as at:
        first, second = at.client(via="bridge"), at.client(via="bridge")
        with pytest.raises(TunnelRefused, match="refused"):  # to the client itself
            await first.connect(["sim:client:1"], first.identity.public)
        held = [
            await first.connect(*at.target("target")),
            await second.connect(*at.target("plain")),
        ]
        with pytest.raises(TunnelRefused, match="busy"):  # a third client's worth is none left
            await at.client(via="bridge").connect(*at.target("target"))
        assert at.nodes["bridge"].tunnels.stats.refused == 2
        for link, _ in held:
            await link.aclose()
