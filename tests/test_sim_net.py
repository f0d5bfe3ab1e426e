"""Unit tests of the simulated network, under the autojump clock."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from itertools import accumulate

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmsg.abc import Link
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import UnsupportedEndpoint
from p2pmsg.sim.net import (
    DELIVER,
    DROP,
    RESET,
    Deliver,
    Packet,
    SimNetwork,
    SimStream,
    Verdict,
)
from transports.sim import SimTransport

FOREVER = 10_000.0  # simulated seconds: every async test runs under the autojump clock


async def open_pair(net: SimNetwork, port: int = 80) -> tuple[SimStream, SimStream]:
    listener = await net.listen("server", port)
    client = await net.connect("client", "server", port)
    return client, await listener.accept()


async def hangs(operation: Callable[[], Awaitable[object]]) -> bool:
    """Await ``operation`` for FOREVER simulated seconds: True if it never finished."""
    with trio.move_on_after(FOREVER) as scope:
        await operation()
    return scope.cancelled_caught


async def test_delivery_times_are_exact_and_order_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    delays = {b"slow": 5.0, b"fast": 1.0}
    net = SimNetwork()
    net.policy = lambda packet: Deliver(delays.get(packet.data, 0.0))
    client, server = await open_pair(net)
    sent_at = trio.current_time()
    await client.send(b"slow")
    await client.send(b"fast")
    assert await server.receive() == b"slow"
    assert trio.current_time() == sent_at + 5.0
    assert await server.receive() == b"fast"  # never overtakes the packet before it
    assert trio.current_time() == sent_at + 5.0

    sent_at = trio.current_time()
    await server.send(b"fast")
    await server.send(b"slow")
    assert await client.receive() == b"fast"
    assert trio.current_time() == sent_at + 1.0
    assert await client.receive() == b"slow"
    assert trio.current_time() == sent_at + 5.0


async def test_connect_takes_the_syn_and_syn_ack_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork()
    net.policy = lambda p: Deliver(0.25 if p.direction == "c2s" else 0.5)
    await net.listen("server", 443)
    started = trio.current_time()
    await net.connect("client", "server", 443)
    assert trio.current_time() == started + 0.75


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=20))
def test_arrival_time_is_the_running_max_of_delays(delays: list[int]) -> None:
    async def scenario() -> list[float]:
        net = SimNetwork()
        net.policy = lambda p: Deliver(float(p.data[0])) if p.kind == "data" else DELIVER
        client, server = await open_pair(net)
        start = trio.current_time()
        for delay in delays:
            await client.send(bytes([delay]))
        arrivals = []
        for delay in delays:
            assert await server.receive() == bytes([delay])
            arrivals.append(trio.current_time() - start)
        return arrivals

    arrivals = trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert arrivals == [float(d) for d in accumulate(delays, max)]


async def test_drop_black_holes_the_rest_of_the_direction(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(queue_packets=4)
    seen: list[bytes] = []

    def censor(packet: Packet) -> Verdict:
        seen.append(packet.data)
        return DROP if packet.data == b"censored" else DELIVER

    net.policy = censor
    client, server = await open_pair(net)
    for data in (b"one", b"censored", b"three"):
        await client.send(data)
    assert await server.receive() == b"one"
    assert await hangs(server.receive)
    assert b"three" in seen  # later packets still cross the censor, then vanish

    await server.send(b"the other direction still works")
    assert await client.receive() == b"the other direction still works"

    # Lost packets never leave the window: two more fit, then the sender stalls.
    await client.send(b"four")
    await client.send(b"five")
    assert await hangs(lambda: client.send(b"six"))
    await client.aclose()
    assert await hangs(server.receive)  # even the FIN is black-holed


async def test_reset_breaks_both_ends(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork()
    net.policy = lambda p: RESET if p.data == b"forbidden" else DELIVER
    client, server = await open_pair(net)
    await client.send(b"fine")
    assert await server.receive() == b"fine"
    async with trio.open_nursery() as nursery:

        async def pending_receive() -> None:
            with pytest.raises(trio.BrokenResourceError):
                await server.receive()

        nursery.start_soon(pending_receive)
        await trio.testing.wait_all_tasks_blocked()
        await client.send(b"forbidden")  # returns: the RST comes back later
    for operation in (client.receive, server.receive, lambda: client.send(b"x")):
        with pytest.raises(trio.BrokenResourceError):
            await operation()
    with pytest.raises(trio.BrokenResourceError):
        await server.send(b"x")
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await client.receive()


async def test_connect_refused_or_hanging(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork()
    net.add_host("server")
    with pytest.raises(ConnectionRefusedError):
        await net.connect("client", "server", 80)  # nobody listens
    await net.listen("server", 80)
    net.policy = lambda p: RESET if p.kind == "syn" else DELIVER
    with pytest.raises(ConnectionRefusedError):
        await net.connect("client", "server", 80)
    net.policy = lambda p: RESET if p.direction == "s2c" else DELIVER
    with pytest.raises(ConnectionRefusedError):
        await net.connect("client", "server", 80)
    net.policy = lambda p: DROP if p.kind == "syn" else DELIVER
    assert await hangs(lambda: net.connect("client", "server", 80))
    with pytest.raises(OSError, match="no route") as info:
        await net.connect("client", "nowhere", 80)
    assert info.value.errno == errno.EHOSTUNREACH


async def test_full_backlog_refuses_and_closing_a_listener_resets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork()
    listener = await net.listen("server", 80, backlog=2)
    first = await net.connect("client", "server", 80)
    second = await net.connect("client", "server", 80)
    with pytest.raises(ConnectionRefusedError):
        await net.connect("client", "server", 80)
    accepted = await listener.accept()
    assert accepted.remote == first.local
    assert accepted.local == first.remote == ("server", 80)
    await net.connect("client", "server", 80)  # room again
    await listener.aclose()
    await listener.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await second.receive()  # never accepted, then the listener closed
    await accepted.send(b"accepted streams live on")
    assert await first.receive() == b"accepted streams live on"
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()
    with pytest.raises(ConnectionRefusedError):
        await net.connect("client", "server", 80)


async def test_back_pressure_blocks_at_the_queue_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(queue_packets=4)
    client, server = await open_pair(net)
    for i in range(4):
        await client.send(bytes([i]))
    done = trio.Event()

    async def fifth() -> None:
        await client.send(b"\x04")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fifth)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert await server.receive() == b"\x00"
        await done.wait()
    assert [await server.receive() for _ in range(4)] == [bytes([i]) for i in range(1, 5)]


async def test_capture_keeps_the_first_delivered_packets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(capture=3)
    net.policy = lambda p: DROP if p.data == b"lost" else DELIVER
    client, _server = await open_pair(net)
    await client.send(b"hello")
    await client.send(b"overflow")
    await client.send(b"lost")
    host, port = client.local
    assert net.captured == [
        Packet(host, port, "server", 80, client.flow_id, "c2s", b"", "syn"),
        Packet("server", 80, host, port, client.flow_id, "s2c", b"", "syn"),
        Packet(host, port, "server", 80, client.flow_id, "c2s", b"hello", "data"),
    ]
    assert net.capture_overflow == 1


async def test_capture_is_off_by_default(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork()
    client, _server = await open_pair(net)
    await client.send(b"hello")
    assert net.captured == []
    assert net.capture_overflow == 0


async def test_close_drains_then_ends(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork()
    net.policy = lambda p: Deliver(2.0)
    client, server = await open_pair(net)
    start = trio.current_time()
    await client.send(b"last")
    await client.aclose()
    await client.aclose()
    assert await server.receive() == b"last"
    assert trio.current_time() == start + 2.0
    for _ in range(2):
        with pytest.raises(trio.EndOfChannel):
            await server.receive()
    with pytest.raises(trio.BrokenResourceError):
        await server.send(b"anyone?")
    for operation in (client.receive, lambda: client.send(b"x")):
        with pytest.raises(trio.ClosedResourceError):
            await operation()


async def test_cancelled_send_queues_nothing(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(queue_packets=1)
    client, server = await open_pair(net)
    await client.send(b"fills the window")
    with trio.move_on_after(1.0):
        await client.send(b"cancelled")
    assert await server.receive() == b"fills the window"
    await client.send(b"next")
    assert await server.receive() == b"next"


async def test_listen_ports_and_hosts(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork()
    first = await net.listen("server")
    second = await net.listen("server", 0)
    assert first.port != second.port
    assert first.port >= 49152
    with pytest.raises(OSError, match="in use") as info:
        await net.listen("server", first.port)
    assert info.value.errno == errno.EADDRINUSE
    assert set(net.hosts) == {"server"}
    with pytest.raises(ValueError, match="taken"):
        net.add_host("server")
    with pytest.raises(ValueError, match="bad port"):
        await net.listen("server", 70000)


async def test_a_flow_can_have_its_own_window(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(queue_packets=4)
    await net.listen("server", 80)
    narrow = await net.connect("client", "server", 80, window=2)
    wide = await net.connect("client", "server", 80)
    for stream, room in ((narrow, 2), (wide, 4)):
        for i in range(room):
            await stream.send(bytes([i]))
        assert await hangs(lambda: stream.send(b"one too many"))  # noqa: B023
    with pytest.raises(ValueError, match="window must be positive"):
        await net.connect("client", "server", 80, window=0)


async def test_bad_sizes_and_delays_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(ValueError, match="bad delay"):
        Deliver(-1.0)
    with pytest.raises(ValueError, match="positive"):
        SimNetwork(queue_packets=0)
    net = SimNetwork(max_packet=4)
    client, _server = await open_pair(net)
    with pytest.raises(ValueError, match="packet of 5 bytes"):
        await client.send(b"12345")


async def test_a_run_is_reproducible(autojump_clock: trio.testing.MockClock) -> None:
    async def script() -> list[Packet]:
        net = SimNetwork(capture=100)
        client, server = await open_pair(net)
        await client.send(b"ping")
        await server.send(await server.receive())
        other, _ = await open_pair(net, port=81)
        await other.send(b"second flow")
        return net.captured

    assert await script() == await script()


async def test_sim_transport_endpoints(autojump_clock: trio.testing.MockClock) -> None:
    transport = SimTransport(SimNetwork(), "a")
    assert transport.can_dial(Endpoint.parse("sim:h17"))
    assert transport.can_dial(Endpoint.parse("sim:h17:4001"))
    assert not transport.can_dial(Endpoint.parse("sim:h17:0"))
    assert not transport.can_dial(Endpoint.parse("tcp:127.0.0.1:4001"))
    with pytest.raises(UnsupportedEndpoint):
        await transport.dial(Endpoint.parse("tcp:127.0.0.1:4001"))

    async def handler(link: Link) -> None:
        pass

    with pytest.raises(OSError, match="serves host 'a' only") as info:
        await transport.serve(Endpoint.parse("sim:b"), handler)
    assert info.value.errno == errno.EADDRNOTAVAIL


async def test_sim_transport_default_port_and_failing_handlers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork()
    calls = 0

    async def handler(link: Link) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("the first handler fails")
        await link.send(b"second")

    async with trio.open_nursery() as nursery:
        server = SimTransport(net, "server")
        bound = await nursery.start(server.serve, Endpoint.parse("sim:server"), handler)
        assert str(bound) == "sim:server:1"
        client = SimTransport(net, "client")
        first = await client.dial(Endpoint.parse("sim:server"))
        with pytest.raises(trio.EndOfChannel):
            await first.receive()  # its handler failed: that link closed
        second = await client.dial(bound)
        assert await second.receive() == b"second"
        nursery.cancel_scope.cancel()
