"""The trio adapter (connect_secure / accept_secure / SecureLink) over in-memory links.

The links here are test-local (the transports are not under test): a framed
pair over bounded trio memory channels that records every write it is asked
to make, and a stream pair over ``trio.testing.memory_stream_pair`` that
splits reads at an odd size. Every test runs under the ``autojump_clock``
fixture, so timeouts cost no real time and times are exact.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from p2pmsg.abc import Link
from p2pmsg.errors import HandshakeError, RemoteProtocolError
from p2pmsg.keys import Identity
from p2pmsg.link import wire
from p2pmsg.link.connection import Established, LinkConnection
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.link.secure import SecureLink, accept_secure, connect_secure

ALICE = Identity(bytes([1]) * 32)
BOB = Identity(bytes([2]) * 32)
CAROL = Identity(bytes([3]) * 32)
NOW = 1_700_000_000.0
WINDOW = 120.0
TIMEOUT = 30.0
STREAM_CHUNK = 333


def _rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def _wall_clock(at: float = NOW) -> Callable[[], float]:
    return lambda: at


class MemoryLink:
    """One end of a framed in-memory link; ``writes`` is every send it was asked for."""

    def __init__(
        self, send: trio.MemorySendChannel[bytes], receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self.writes: list[bytes] = []
        self.closed_at: float | None = None

    async def send(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        await self._send.send(bytes(data))

    async def receive(self) -> bytes:
        return await self._receive.receive()

    async def aclose(self) -> None:
        if self.closed_at is None:
            self.closed_at = trio.current_time()
        await self._send.aclose()
        await self._receive.aclose()

    @property
    def sent(self) -> bytes:
        return b"".join(self.writes)


def memory_link_pair(buffer: int = 8) -> tuple[MemoryLink, MemoryLink]:
    a_send, b_receive = trio.open_memory_channel[bytes](buffer)
    b_send, a_receive = trio.open_memory_channel[bytes](buffer)
    return MemoryLink(a_send, a_receive), MemoryLink(b_send, b_receive)


class StreamLink:
    """A Link over a byte stream: reads come back split and joined at will."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def send(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def receive(self) -> bytes:
        data = await self._stream.receive_some(STREAM_CHUNK)
        if not data:
            raise trio.EndOfChannel
        return bytes(data)

    async def aclose(self) -> None:
        await self._stream.aclose()


def stream_link_pair() -> tuple[StreamLink, StreamLink]:
    a, b = trio.testing.memory_stream_pair()
    return StreamLink(a), StreamLink(b)


LINK_PAIRS: dict[str, Callable[[], tuple[Link, Link]]] = {
    "framed": memory_link_pair,
    "stream": stream_link_pair,
}


async def _connect(
    client_link: Link,
    server_link: Link,
    *,
    window: ReplayWindow | None = None,
    seed: int = 0,
) -> tuple[SecureLink, SecureLink]:
    """Run both handshakes concurrently; return (client, server)."""
    replay = window if window is not None else ReplayWindow(WINDOW)
    accepted: list[SecureLink] = []

    async def serve() -> None:
        accepted.append(
            await accept_secure(
                server_link, BOB, replay, wall_clock=_wall_clock(), rng=_rng(seed + 1)
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        client = await connect_secure(
            client_link, ALICE, BOB.public, wall_clock=_wall_clock(), rng=_rng(seed)
        )
    return client, accepted[0]


# -- the happy path ----------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(LINK_PAIRS))
async def test_connect_accept_and_exchange_both_ways(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    a, b = LINK_PAIRS[kind]()
    start = trio.current_time()
    client, server = await _connect(a, b)
    assert trio.current_time() == start  # no time passes on an in-memory link
    assert client.peer == BOB.public
    assert server.peer == ALICE.public
    assert repr(client) == f"SecureLink(peer={BOB.public!r})"

    big = random.Random(5).randbytes(wire.MAX_MESSAGE)
    for message in (b"ping", b"", big):
        await client.send(message)
        assert await server.receive() == message
        await server.send(message[::-1])
        assert await client.receive() == message[::-1]

    async with trio.open_nursery() as nursery:  # both directions at once
        nursery.start_soon(client.send, b"one")
        nursery.start_soon(server.send, b"two")
    assert await server.receive() == b"one"
    assert await client.receive() == b"two"
    await client.aclose()
    await server.aclose()


async def test_aclose_gives_the_peer_end_of_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = memory_link_pair()
    client, server = await _connect(a, b)
    await client.send(b"last words")
    await client.aclose()
    assert a.closed_at is not None
    assert await server.receive() == b"last words"
    with pytest.raises(trio.EndOfChannel):
        await server.receive()
    with pytest.raises(trio.EndOfChannel):
        await server.receive()
    with pytest.raises(trio.ClosedResourceError):
        await client.send(b"after close")
    with pytest.raises(trio.ClosedResourceError):
        await client.receive()
    await client.aclose()  # idempotent
    await server.aclose()


async def test_a_send_waiting_while_another_task_closes_the_link_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two tasks share a pooled link; one closes it while the other waits to send."""
    a, b = memory_link_pair()
    client, server = await _connect(a, b)
    refused = trio.Event()

    async def late_send() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await client.send(b"too late")
        refused.set()

    async with trio.open_nursery() as nursery, client._send_lock:  # a send in progress
        nursery.start_soon(late_send)
        await trio.testing.wait_all_tasks_blocked()
        await client.aclose()
    assert refused.is_set()
    await server.aclose()


async def test_transport_eof_without_a_close_cell_is_broken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = memory_link_pair()
    _, server = await _connect(a, b)
    await a.aclose()  # the transport goes away under the secure link
    with pytest.raises(trio.BrokenResourceError):
        await server.receive()


async def test_a_bad_cell_closes_the_link(autojump_clock: trio.testing.MockClock) -> None:
    a, b = memory_link_pair()
    _, server = await _connect(a, b)
    await a.send(random.Random(1).randbytes(wire.CELL_SIZE))
    with pytest.raises(RemoteProtocolError):
        await server.receive()
    assert b.closed_at is not None
    with pytest.raises(trio.EndOfChannel):
        await a.receive()  # the peer sees the transport close
    with pytest.raises(trio.ClosedResourceError):
        await server.receive()


async def test_connect_times_out_and_closes_the_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = memory_link_pair()
    start = trio.current_time()
    with pytest.raises(HandshakeError):
        await connect_secure(a, ALICE, BOB.public, wall_clock=_wall_clock(), rng=_rng(0))
    assert trio.current_time() == pytest.approx(start + 30.0)
    assert a.closed_at == pytest.approx(start + 30.0)
    assert len(await b.receive()) > 0  # the hello went out
    with pytest.raises(trio.EndOfChannel):
        await b.receive()


async def test_cancelling_connect_closes_the_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, _b = memory_link_pair()
    with trio.move_on_after(5):
        await connect_secure(a, ALICE, BOB.public, wall_clock=_wall_clock(), rng=_rng(0))
    assert a.closed_at is not None


async def test_connect_to_a_responder_that_answers_garbage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = memory_link_pair()
    async with trio.open_nursery() as nursery:

        async def garbage_server() -> None:
            await b.receive()
            await b.send(random.Random(2).randbytes(300))

        nursery.start_soon(garbage_server)
        with pytest.raises(HandshakeError):
            await connect_secure(a, ALICE, BOB.public, wall_clock=_wall_clock(), rng=_rng(0))
    assert a.closed_at is not None


# -- probe resistance ----------------------------------------------------------


def _valid_hello(seed: int, *, peer: Identity = BOB, now: float = NOW) -> bytes:
    conn = LinkConnection(ALICE, peer=peer.public, now=now, rng=_rng(seed))
    conn.initiate()
    return conn.data_to_send()


def _registered_hello(window: ReplayWindow) -> bytes:
    """A valid hello that ``window`` has already accepted once."""
    hello = _valid_hello(77)
    conn = LinkConnection(BOB, replay=window, now=NOW, rng=_rng(78))
    conn.receive_data(hello)
    assert isinstance(conn.next_event(), Established)
    return hello


def _flipped(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x40
    return bytes(out)


PROBES: dict[str, Callable[[ReplayWindow], bytes]] = {
    "silence": lambda _: b"",
    "garbage-1": lambda _: random.Random(1).randbytes(1),
    "garbage-33": lambda _: random.Random(33).randbytes(33),
    "garbage-34": lambda _: random.Random(34).randbytes(34),
    "garbage-200": lambda _: random.Random(200).randbytes(200),
    "garbage-2100": lambda _: random.Random(2100).randbytes(2100),
    "garbage-9000": lambda _: random.Random(9000).randbytes(9000),
    "zeros-600": lambda _: bytes(600),
    "http-get": lambda _: b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "tls-client-hello-start": lambda _: bytes.fromhex("160301020001000200") + bytes(500),
    "truncated-hello-33": lambda _: _valid_hello(10)[:33],
    "truncated-hello-100": lambda _: _valid_hello(11)[:100],
    "truncated-hello-minus-1": lambda _: _valid_hello(12)[:-1],
    "replayed-hello": _registered_hello,
    "hello-for-another-key": lambda _: _valid_hello(13, peer=CAROL),
    "stale-hello": lambda _: _valid_hello(14, now=NOW - 10 * WINDOW),
    "hello-flipped-in-salt": lambda _: _flipped(_valid_hello(15), 3),
    "hello-flipped-in-header": lambda _: _flipped(_valid_hello(16), 20),
    "hello-flipped-in-body": lambda _: _flipped(_valid_hello(17), 100),
    "hello-flipped-last-byte": lambda _: _flipped(_valid_hello(18), -1),
}


@dataclass(frozen=True)
class Reaction:
    """What a prober can observe of the listener."""

    error: type[BaseException] | None
    listener_wrote: int
    prober_received: int
    close_delay: float


async def _probe(probe: bytes, window: ReplayWindow) -> Reaction:
    prober, listener = memory_link_pair()
    start = trio.current_time()
    errors: list[BaseException] = []
    received = 0
    closed_at = math.inf

    async def listen() -> None:
        try:
            await accept_secure(
                listener, BOB, window, wall_clock=_wall_clock(), rng=_rng(5), timeout=TIMEOUT
            )
        except HandshakeError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen)
        if probe:
            await prober.send(probe)
        with trio.move_on_after(4 * TIMEOUT):  # a listener that never closes fails, not hangs
            try:
                while True:
                    received += len(await prober.receive())
            except trio.EndOfChannel:
                closed_at = trio.current_time()
    if closed_at != math.inf:
        assert listener.closed_at == closed_at
    return Reaction(
        error=type(errors[0]) if errors else None,
        listener_wrote=len(listener.sent),
        prober_received=received,
        close_delay=round(closed_at - start, 9),
    )


SILENT_REFUSAL = Reaction(
    error=HandshakeError, listener_wrote=0, prober_received=0, close_delay=TIMEOUT
)


@pytest.mark.parametrize("name", sorted(PROBES))
async def test_the_listener_refuses_every_probe_the_same_way(
    autojump_clock: trio.testing.MockClock, name: str
) -> None:
    window = ReplayWindow(WINDOW)
    probe = PROBES[name](window)
    assert await _probe(probe, window) == SILENT_REFUSAL


async def test_the_probe_harness_sees_a_real_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Control: a valid hello does get bytes back, so the harness can see them."""
    prober, listener = memory_link_pair()
    window = ReplayWindow(WINDOW)
    async with trio.open_nursery() as nursery:

        async def listen() -> None:
            link = await accept_secure(listener, BOB, window, wall_clock=_wall_clock())
            assert link.peer == ALICE.public

        nursery.start_soon(listen)
        await prober.send(_valid_hello(20))
        assert len(await prober.receive()) > 0


async def test_a_refused_listener_reads_and_discards_until_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bytes keep being taken (no back-pressure tell) and nothing comes back."""
    prober, listener = memory_link_pair(buffer=1)
    window = ReplayWindow(WINDOW)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def listen() -> None:
            with pytest.raises(HandshakeError):
                await accept_secure(listener, BOB, window, wall_clock=_wall_clock())

        nursery.start_soon(listen)
        for i in range(50):  # with a one-frame buffer, each send needs the listener to read
            await prober.send(random.Random(i).randbytes(1000))
        assert trio.current_time() == start
        with pytest.raises(trio.EndOfChannel):
            await prober.receive()
    assert trio.current_time() == pytest.approx(start + 30.0)
    assert listener.sent == b""


async def test_accept_reports_a_peer_that_left_mid_handshake_as_a_handshake_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """accept_secure: "On any failure ... HandshakeError is raised."

    A client that sends a valid hello and hangs up before the reply makes
    the reply's ``link.send`` raise ``trio.BrokenResourceError``, which is
    not caught: it escapes accept_secure as is, and the link is not closed.
    """
    prober, listener = memory_link_pair()
    await prober.send(_valid_hello(21))
    await prober.aclose()
    with pytest.raises(HandshakeError):
        await accept_secure(listener, BOB, ReplayWindow(WINDOW), wall_clock=_wall_clock())
    assert listener.closed_at is not None


# -- what an observer sees -----------------------------------------------------


async def test_no_empty_writes_reach_the_transport(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the handshake every write is a non-empty multiple of CELL_SIZE.

    Closing a link whose peer already closed queues no close cell, and
    ``SecureLink.aclose`` then sends ``data_to_send()`` unconditionally: an
    empty frame on a framed transport (``_flush`` guards against this; the
    close path does not).
    """
    a, b = memory_link_pair()
    client, server = await _connect(a, b)
    await client.send(b"x" * 3000)
    assert await server.receive() == b"x" * 3000
    await server.send(b"y")
    assert await client.receive() == b"y"
    await client.aclose()
    with pytest.raises(trio.EndOfChannel):
        await server.receive()
    await server.aclose()
    for link in (a, b):
        after_handshake = link.writes[1:]
        assert after_handshake
        assert all(len(w) % wire.CELL_SIZE == 0 for w in after_handshake)
        assert all(len(w) > 0 for w in after_handshake), [len(w) for w in link.writes]


async def _captured_connection(seed: int) -> tuple[bytes, bytes]:
    a, b = memory_link_pair()
    client, server = await _connect(a, b, seed=seed * 2)
    for size in (5, 1500, 0):
        await client.send(bytes(size))
        assert await server.receive() == bytes(size)
        await server.send(bytes(size))
        assert await client.receive() == bytes(size)
    await client.aclose()
    with pytest.raises(trio.EndOfChannel):
        await server.receive()
    return a.sent, b.sent


async def test_captured_link_bytes_show_no_fixed_byte_at_any_position(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """20 connections with the same keys, clocks and messages (all zeros)."""
    captures = [await _captured_connection(seed) for seed in range(20)]
    for direction in (0, 1):
        streams = [capture[direction] for capture in captures]
        common = min(len(s) for s in streams)
        assert common > 4 * wire.CELL_SIZE
        fixed = [i for i in range(common) if len({s[i] for s in streams}) == 1]
        assert fixed == [], f"direction {direction}: constant bytes at {fixed[:10]}"

    everything = b"".join(s for capture in captures for s in capture)
    ones = int.from_bytes(everything, "big").bit_count()
    assert abs(ones / (8 * len(everything)) - 0.5) < 0.005
    counts = Counter(everything)
    expected = len(everything) / 256
    chi_square = sum((counts.get(v, 0) - expected) ** 2 / expected for v in range(256))
    assert chi_square < 400  # 255 degrees of freedom: mean 255, sd 23
