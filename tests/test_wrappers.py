"""The timeout and padding wrappers: conformance, their cores and their timings.

Conformance runs each wrapper, and the two stacked, over tcp on 127.0.0.1
port 0 and over the simulated network under ``autojump_clock``. Timeouts are
shown on the simulated network with censor policies (a dropped SYN, a
black-holed direction); every duration asserted is virtual time.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import ParamSpec

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2pmsg.abc import MAX_SEND, Link, Transport, remote_host
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import LocalProtocolError
from p2pmsg.keys import Identity
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.link.secure import accept_secure, connect_secure
from p2pmsg.sim.net import DELIVER, DROP, Deliver, Packet, SimNetwork, Verdict
from p2pmsg.testing.conformance import CHECKS, Check, open_link_pair
from transports import padding_core as core
from transports.sim import SimTransport
from transports.tcp import TcpTransport
from transports.wrappers import PaddingTransport, TimeoutTransport

TIMEOUTS = {"dial_timeout": 5.0, "idle_timeout": 10.0, "send_timeout": 20.0}
Stack = Callable[[Transport], Transport]
P = ParamSpec("P")


def _guarded(test: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
    """A hang fails fast: under ``autojump_clock`` the guard's virtual hour passes at once."""

    @functools.wraps(test)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        with trio.fail_after(3600):
            await test(*args, **kwargs)

    return guarded


def _rng(seed: int = 0) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def _timeout(inner: Transport) -> Transport:
    return TimeoutTransport(inner, **TIMEOUTS)


def _padding(inner: Transport) -> Transport:
    return PaddingTransport(inner, max_padding=300, rng=_rng())


def _stacked(inner: Transport) -> Transport:
    return PaddingTransport(_timeout(inner), cover_interval=(0.5, 2.0), rng=_rng())


STACKS: dict[str, Stack] = {"timeout": _timeout, "padding": _padding, "stacked": _stacked}
CASES = [(c, s) for c in CHECKS for s in STACKS]


def _ids(case: object) -> str:
    return case if isinstance(case, str) else getattr(case, "__name__", "?")


def _endpoint(transport: Transport, address: str) -> Endpoint:
    return Endpoint(transport.name, address)


@pytest.mark.parametrize(("check", "stack"), CASES, ids=_ids)
async def test_conformance_tcp(check: Check, stack: str) -> None:
    transport = STACKS[stack](TcpTransport())
    await check(transport, _endpoint(transport, "127.0.0.1:0"))


@pytest.mark.parametrize(("check", "stack"), CASES, ids=_ids)
async def test_conformance_sim(
    check: Check, stack: str, autojump_clock: trio.testing.MockClock
) -> None:
    # a framed inner that takes MAX_SEND bytes and no more: big frames go in two sends
    transport = STACKS[stack](SimTransport(SimNetwork(max_packet=MAX_SEND), "a"))
    await check(transport, _endpoint(transport, "a:0"))


# --- endpoints and settings ------------------------------------------------------------


def test_names_and_endpoints() -> None:
    padded, timed = PaddingTransport(TcpTransport()), _timeout(TcpTransport())
    assert (padded.name, padded.framed, timed.name, timed.framed) == ("pad_tcp", True, "tcp", False)
    assert padded.can_dial(Endpoint.parse("pad_tcp:127.0.0.1:443;k=v"))
    for text in ("tcp:127.0.0.1:443", "pad_tcp:127.0.0.1:0", "pad_tcp:nohost", "pad_sim:a:1"):
        assert not padded.can_dial(Endpoint.parse(text)), text
    assert timed.can_dial(Endpoint.parse("tcp:127.0.0.1:1"))
    assert not timed.can_dial(Endpoint.parse("pad_tcp:127.0.0.1:1"))
    assert PaddingTransport(_timeout(SimTransport(SimNetwork(), "a"))).name == "pad_sim"


def test_bad_settings_are_refused() -> None:
    for key in TIMEOUTS:
        for bad in (0.0, -1.0, float("nan")):
            with pytest.raises(ValueError, match=key):
                TimeoutTransport(TcpTransport(), **{**TIMEOUTS, key: bad})
    long_named = _timeout(TcpTransport())
    long_named.name = "x" * 29
    with pytest.raises(ValueError, match="too long"):
        PaddingTransport(long_named)
    with pytest.raises(ValueError, match="max_padding"):
        PaddingTransport(TcpTransport(), max_padding=core.MAX_PADDING + 1)
    for interval in ((0.01, 1.0), (2.0, 1.0), (1.0, float("inf"))):
        with pytest.raises(ValueError, match="cover_interval"):
            PaddingTransport(TcpTransport(), cover_interval=interval)


# --- timeouts on a censored network -------------------------------------------------------


def _sim(policy: Callable[[Packet], Verdict] | None = None) -> tuple[SimNetwork, Transport]:
    net = SimNetwork(capture=1000)
    if policy is not None:
        net.policy = policy
    return net, _timeout(SimTransport(net, "a"))


@pytest.mark.parametrize("direction", ["c2s", "s2c"])
@_guarded
async def test_dial_timeout_when_the_syn_is_dropped(
    direction: str, autojump_clock: trio.testing.MockClock
) -> None:
    net, transport = _sim(
        lambda p: DROP if (p.kind, p.direction) == ("syn", direction) else DELIVER
    )
    accepted: list[Link] = []

    async def handler(link: Link) -> None:
        accepted.append(link)

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(transport.serve, Endpoint.parse("sim:a:0"), handler)
        start = trio.current_time()
        with pytest.raises(TimeoutError, match="no connection"):
            await transport.dial(bound)
        assert trio.current_time() - start == pytest.approx(TIMEOUTS["dial_timeout"])
        await trio.testing.wait_all_tasks_blocked()
        assert accepted == [], "a half-open connection reached the server"
        assert all(p.kind == "syn" for p in net.captured)
        nursery.cancel_scope.cancel()


@_guarded
async def test_a_slow_dial_within_the_timeout_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, transport = _sim(lambda p: Deliver(2.0) if p.kind == "syn" else DELIVER)
    start = trio.current_time()
    async with open_link_pair(transport, Endpoint.parse("sim:a:0")) as (client, server):
        assert trio.current_time() - start == pytest.approx(4.0)  # SYN and SYN/ACK
        await client.send(b"hello")
        assert await server.receive() == b"hello"


@_guarded
async def test_idle_timeout_detects_a_black_hole(autojump_clock: trio.testing.MockClock) -> None:
    net, transport = _sim()
    async with open_link_pair(transport, Endpoint.parse("sim:a:0")) as (client, server):
        await server.send(b"before")
        assert await client.receive() == b"before"
        net.policy = lambda p: DROP  # the censor black-holes the flow, no reset
        await server.send(b"lost")
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError, match="nothing received"):
            await client.receive()
        assert trio.current_time() - start == pytest.approx(TIMEOUTS["idle_timeout"])
        with pytest.raises(trio.BrokenResourceError):
            await client.send(b"still there?")
        with pytest.raises(trio.BrokenResourceError):
            await client.receive()


@_guarded
async def test_idle_time_adds_up_across_cancelled_receives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, transport = _sim()
    async with open_link_pair(transport, Endpoint.parse("sim:a:0")) as (client, server):
        await trio.sleep(100)  # nobody receives: unattended, not idle
        await server.send(b"late")
        assert await client.receive() == b"late"
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError):
            await _poll(client, every=50.0, wait=3.0)
        waited = trio.current_time() - start - 50 * 3
        assert waited == pytest.approx(TIMEOUTS["idle_timeout"])


async def _poll(link: Link, *, every: float, wait: float) -> None:
    """Receive in short waits with long pauses between."""
    for _ in range(100):
        with trio.move_on_after(wait):
            await link.receive()
        await trio.sleep(every)  # between polls: not counted
    raise AssertionError("the silent link never broke")


@_guarded
async def test_send_timeout_breaks_a_link_whose_window_stays_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net, transport = _sim()
    async with open_link_pair(transport, Endpoint.parse("sim:a:0")) as (client, _server):
        net.policy = lambda p: DROP if p.direction == "c2s" else DELIVER
        for _ in range(net.queue_packets):  # the lost packets fill the window
            await client.send(b"x")
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError, match="blocked"):
            await client.send(b"x")
        assert trio.current_time() - start == pytest.approx(TIMEOUTS["send_timeout"])
        with pytest.raises(trio.BrokenResourceError):
            await client.receive()


@_guarded
async def test_accepted_links_time_out_too(autojump_clock: trio.testing.MockClock) -> None:
    net, transport = _sim()
    got = await _accept_raw(net, transport, None)
    assert got == [trio.BrokenResourceError, pytest.approx(TIMEOUTS["idle_timeout"])]


async def _accept_raw(net: SimNetwork, transport: Transport, wire: bytes | None) -> list[object]:
    """Serve on host a; from host b send ``wire`` raw and close (None: stay silent).

    Returns what the accepted link's receives gave, then the error type and its time.
    """
    got: list[object] = []
    done = trio.Event()

    async def handler(link: Link) -> None:
        start = trio.current_time()
        try:
            while True:
                got.append(await link.receive())
        except (trio.EndOfChannel, trio.BrokenResourceError) as exc:
            got.extend([type(exc), trio.current_time() - start])
        done.set()

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(transport.serve, Endpoint(transport.name, "a:0"), handler)
        raw = await net.connect("b", "a", int(bound.address.rpartition(":")[2]))
        if wire is not None:
            await raw.send(wire)
            await raw.aclose()
        await done.wait()
        await raw.aclose()
        nursery.cancel_scope.cancel()
    return got


# --- padding on the wire ---------------------------------------------------------------------


def _c2s(net: SimNetwork) -> list[bytes]:
    return [p.data for p in net.captured if p.kind == "data" and p.direction == "c2s"]


async def _wire_sizes(seed: int) -> list[int]:
    net = SimNetwork(capture=100)
    transport = PaddingTransport(SimTransport(net, "a"), max_padding=300, rng=_rng(seed))
    async with open_link_pair(transport, Endpoint.parse("pad_sim:a:0")) as (client, server):
        for _ in range(20):
            await client.send(b"m" * 100)
            assert await server.receive() == b"m" * 100
        with pytest.raises(ValueError, match="at most"):
            await client.send(b"x" * (MAX_SEND + 1))
    return [len(data) for data in _c2s(net)]


@_guarded
async def test_sizes_on_the_wire_are_random_and_reproducible(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sizes = await _wire_sizes(seed=1)
    assert len(sizes) == 20 and len(set(sizes)) > 10
    assert all(core.HEADER_SIZE + 100 <= size <= core.HEADER_SIZE + 100 + 300 for size in sizes)
    assert await _wire_sizes(seed=1) == sizes
    assert await _wire_sizes(seed=2) != sizes


@_guarded
async def test_cover_frames_fill_silence_and_keep_a_quiet_link_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(capture=1000)
    transport = _stacked(SimTransport(net, "a"))  # cover every 0.5..2 s, idle after 10 s
    async with open_link_pair(transport, Endpoint.parse("pad_sim:a:0")) as (client, server):
        await trio.sleep(60)  # nobody receives: no cover
        assert _c2s(net) == []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_receive_until_broken, server)
            with trio.move_on_after(100) as quiet:
                await client.receive()
            assert quiet.cancelled_caught, "a healthy quiet link broke"
            deframer = core.Deframer()
            deframer.receive_data(b"".join(_c2s(net)))
            assert deframer.next_event() is core.NEED_DATA  # padding never surfaces
            assert 100 / 2.0 - 1 <= deframer.pad_frames <= 100 / 0.5 + 1
            net.policy = lambda p: DROP
            start = trio.current_time()
            with pytest.raises(trio.BrokenResourceError):
                await client.receive()
            assert 10 - 2.0 <= trio.current_time() - start <= 10


async def _receive_until_broken(link: Link) -> None:
    with pytest.raises(trio.BrokenResourceError):
        await link.receive()


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"\x11\0\0\0\x05\0\0hello", [b"hello", trio.EndOfChannel]),
        (core.encode_data(b"hello", b"pad")[:-1], [trio.BrokenResourceError]),  # cut in a frame
        (b"\x21\0\0\0\x00\0\0", [trio.BrokenResourceError]),  # unknown version
        (b"\x12\0\0\0\x01\0\0x", [trio.BrokenResourceError]),  # data in a PAD frame
    ],
    ids=["clean", "truncated", "version", "pad_with_data"],
)
@_guarded
async def test_bad_framing_breaks_the_link(
    wire: bytes, expected: list[object], autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    got = await _accept_raw(net, PaddingTransport(SimTransport(net, "a")), wire)
    assert got[:-1] == expected


@_guarded
async def test_a_send_cancelled_inside_a_frame_breaks_the_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(max_packet=MAX_SEND, queue_packets=1)
    transport = _padding(SimTransport(net, "a"))
    async with open_link_pair(transport, Endpoint.parse("pad_sim:a:0")) as (client, server):
        with trio.move_on_after(1):  # the second part waits for a window that stays full
            await client.send(b"x" * MAX_SEND)
        with pytest.raises(trio.BrokenResourceError, match="inside a frame"):
            await client.send(b"more")
        with pytest.raises(trio.BrokenResourceError, match="ends inside a frame"):
            await server.receive()


async def test_secure_link_over_stacked_tcp() -> None:
    alice, bob = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
    transport = _stacked(TcpTransport())
    echoed = trio.Event()

    async def handler(link: Link) -> None:
        secure = await accept_secure(link, bob, ReplayWindow(120.0))
        await secure.send((await secure.receive())[::-1])
        echoed.set()

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            transport.serve, Endpoint.parse("pad_tcp:127.0.0.1:0;k=v"), handler
        )
        assert (bound.transport, bound.args) == ("pad_tcp", (("k", "v"),))
        client = await connect_secure(await transport.dial(bound), alice, bob.public)
        payload = os.urandom(60_000)
        await client.send(payload)
        assert await client.receive() == payload[::-1]
        await echoed.wait()
        await client.aclose()
        nursery.cancel_scope.cancel()


# --- the pure de-framer ----------------------------------------------------------------------


def _drain(deframer: core.Deframer) -> list[bytes]:
    out = []
    while isinstance(event := deframer.next_event(), core.Data):
        out.append(event.data)
    assert event in (core.NEED_DATA, core.END)
    return out


def test_known_answers() -> None:
    assert core.encode_data(b"hi", b"\xaa") == bytes.fromhex("11 00000002 0001 6869 aa")
    assert core.encode_pad(b"\0\0") == bytes.fromhex("12 00000000 0002 0000")
    with pytest.raises(LocalProtocolError):
        core.encode_data(b"x" * (MAX_SEND + 1))
    with pytest.raises(LocalProtocolError):
        core.encode_pad(b"x" * (core.MAX_PADDING + 1))


frames = st.lists(
    st.tuples(st.booleans(), st.binary(max_size=200), st.integers(0, 64)), max_size=12
)


def _wire(items: list[tuple[bool, bytes, int]]) -> tuple[bytes, list[bytes]]:
    wire = b"".join(
        core.encode_data(d, bytes(p)) if is_data else core.encode_pad(b"p" * p)
        for is_data, d, p in items
    )
    return wire, [d for is_data, d, _ in items if is_data]


@given(items=frames, cuts=st.lists(st.integers(0, 20_000), max_size=20))
def test_round_trip_under_any_split(items: list[tuple[bool, bytes, int]], cuts: list[int]) -> None:
    wire, messages = _wire(items)
    bounds = [0, *sorted(c % (len(wire) + 1) for c in cuts), len(wire)]
    deframer, got = core.Deframer(), []
    for start, end in itertools.pairwise(bounds):
        deframer.receive_data(wire[start:end])
        got += _drain(deframer)
        assert deframer.buffered < core.MAX_FRAME + (end - start)
    deframer.receive_eof()
    got += _drain(deframer)
    assert got == messages  # padding and PAD frames never surface
    assert deframer.pad_frames == sum(not is_data for is_data, _, _ in items)
    assert deframer.next_event() is core.END


@given(items=frames.filter(bool), data=st.data())
def test_a_truncated_stream_is_refused(
    items: list[tuple[bool, bytes, int]], data: st.DataObject
) -> None:
    wire, _ = _wire(items)
    cut = data.draw(st.integers(1, len(wire) - 1))
    boundaries = {len(_wire(items[:i])[0]) for i in range(len(items) + 1)}
    deframer = core.Deframer()
    deframer.receive_data(wire[:cut])
    _drain(deframer)
    deframer.receive_eof()
    if cut in boundaries:
        assert deframer.next_event() is core.END
        return
    for _ in range(2):  # sticky
        with pytest.raises(core.PaddingProtocolError, match="inside a frame"):
            deframer.next_event()


@given(data_len=st.integers(MAX_SEND + 1, 2**32 - 1), pad_len=st.integers(0, core.MAX_PADDING))
def test_an_oversized_header_is_refused_before_its_body(data_len: int, pad_len: int) -> None:
    for header in (
        b"\x11" + data_len.to_bytes(4, "big") + pad_len.to_bytes(2, "big"),
        b"\x11\0\0\0\0" + (core.MAX_PADDING + 1 + pad_len % 1000).to_bytes(2, "big"),
    ):
        deframer = core.Deframer()
        deframer.receive_data(header)
        with pytest.raises(core.PaddingProtocolError, match="bytes"):
            deframer.next_event()


def test_feeding_rules() -> None:
    deframer = core.Deframer()
    deframer.receive_data(core.encode_data(b"a") * 2)
    with pytest.raises(LocalProtocolError, match="drain"):
        deframer.receive_data(b"more")
    assert _drain(deframer) == [b"a", b"a"]
    deframer.receive_eof()
    with pytest.raises(LocalProtocolError, match="end of the stream"):
        deframer.receive_data(b"")


class DeframerMachine(RuleBasedStateMachine):
    """Frames written in any order reach the reader in order, in any delivery."""

    def __init__(self) -> None:
        super().__init__()
        self.deframer = core.Deframer()
        self.wire = b""
        self.expected: deque[bytes] = deque()
        self.pads_sent = 0

    @rule(data=st.binary(max_size=300), pad=st.integers(0, 40))
    def send_data(self, data: bytes, pad: int) -> None:
        self.wire += core.encode_data(data, bytes(range(pad)))
        self.expected.append(data)

    @rule(pad=st.integers(0, 40))
    def send_pad(self, pad: int) -> None:
        self.wire += core.encode_pad(bytes(range(pad)))
        self.pads_sent += 1

    @rule(size=st.integers(0, 400))
    def deliver(self, size: int) -> None:
        piece, self.wire = self.wire[:size], self.wire[size:]
        self.deframer.receive_data(piece)
        for message in _drain(self.deframer):
            assert message == self.expected.popleft()

    @invariant()
    def bounded(self) -> None:
        assert self.deframer.buffered < core.MAX_FRAME + 400
        assert self.deframer.pad_frames <= self.pads_sent

    def teardown(self) -> None:
        self.deliver(len(self.wire))
        self.deframer.receive_eof()
        assert _drain(self.deframer) == [] and not self.expected
        assert self.deframer.pad_frames == self.pads_sent


TestDeframerMachine = DeframerMachine.TestCase
TestDeframerMachine.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)


@pytest.mark.parametrize("stack", STACKS)
async def test_a_wrapped_link_passes_its_peers_address_on(
    stack: str, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    served: list[str | None] = []
    transport, dialer = STACKS[stack](SimTransport(net, "a")), STACKS[stack](SimTransport(net, "b"))

    async def handler(link: Link) -> None:
        served.append(remote_host(link))

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(transport.serve, Endpoint(transport.name, "a:0"), handler)
        link = await dialer.dial(bound)
        await trio.testing.wait_all_tasks_blocked()
        await link.aclose()
        nursery.cancel_scope.cancel()
    assert served == ["b"]
