"""One conformance suite for every transport.

Theory of operation. Each check in :data:`CHECKS` is an async function
``check(transport, listen_endpoint)``: it serves ``listen_endpoint`` with
``transport``, dials the endpoint that ``serve`` reported, and drives the two
links (see :func:`open_link_pair`). Checks say nothing about time: they wait
on events and on ``trio.testing.wait_all_tasks_blocked`` only, so the same
check runs on real sockets and under ``MockClock(autojump_threshold=0)``.
Each runs under a hang guard of :data:`HANG_GUARD` (virtual) seconds.

Framed transports must deliver exactly the byte strings sent; for stream
transports the checks compare the concatenation. A sender to a peer that never
reads must block before :data:`FLOOD_LIMIT` bytes (above any kernel buffer).

Use it from pytest::

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    async def test_my_transport(check):
        await check(MyTransport(), Endpoint.parse("my:127.0.0.1:0"))

The module imports neither pytest nor ``transports``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio
import trio.testing

from p2pmsg.abc import MAX_SEND, Link, Transport
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import UnsupportedEndpoint

Check = Callable[[Transport, Endpoint], Awaitable[None]]

HANG_GUARD = 30.0
FLOOD_CHUNK = 64 * 1024
FLOOD_LIMIT = 96 * 1024 * 1024
_SEND_ATTEMPTS = 10_000
_BASE = bytes(range(251)) * (MAX_SEND // 251 + 2)

#: Every check, in a stable order.
CHECKS: list[Check] = []


def _check(fn: Check) -> Check:
    @functools.wraps(fn)
    async def guarded(transport: Transport, listen_endpoint: Endpoint) -> None:
        with trio.fail_after(HANG_GUARD):
            await fn(transport, listen_endpoint)

    CHECKS.append(guarded)
    return guarded


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking test bytes (``size <= MAX_SEND``)."""
    start = (seed * 37) % 251
    return _BASE[start : start + size]


@contextmanager
def _raises(*expected: type[BaseException]) -> Iterator[None]:
    """Like ``pytest.raises`` without pytest."""
    try:
        yield
    except expected:
        return
    names = " or ".join(e.__name__ for e in expected)
    raise AssertionError(f"expected {names}")


@asynccontextmanager
async def open_link_pair(
    transport: Transport, listen_endpoint: Endpoint
) -> AsyncIterator[tuple[Link, Link]]:
    """Serve, dial, and yield ``(client_link, server_link)``.

    On exit the server's handler returns (so ``serve`` closes its link), the
    client link is closed and ``serve`` is cancelled. An exception from the
    body comes out as itself, not wrapped in an exception group.
    """
    send_links, receive_links = trio.open_memory_channel[Link](1)
    handler_may_return = trio.Event()

    async def handler(link: Link) -> None:
        await send_links.send(link)
        await handler_may_return.wait()

    try:
        async with trio.open_nursery() as nursery:
            bound: Endpoint = await nursery.start(transport.serve, listen_endpoint, handler)
            client = await transport.dial(bound)
            try:
                yield client, await receive_links.receive()
            finally:
                handler_may_return.set()
                await client.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise


async def receive_exactly(link: Link, size: int) -> bytes:
    """Receive chunks until ``size`` bytes arrived; more is an error."""
    data = bytearray()
    while len(data) < size:
        data += await link.receive()
    assert len(data) == size, f"received {len(data)} bytes, expected {size}"
    return bytes(data)


async def expect_messages(framed: bool, link: Link, messages: list[bytes]) -> None:
    """Receive ``messages``: frame by frame when framed, else concatenated."""
    if framed:
        got = [await link.receive() for _ in messages]
        assert got == messages, "frames differ from what was sent"
    else:
        got_bytes = await receive_exactly(link, sum(map(len, messages)))
        assert got_bytes == b"".join(messages), "the byte stream differs from what was sent"


async def receive_until_end(link: Link, limit: int) -> tuple[list[bytes], type[Exception]]:
    """Receive until ``EndOfChannel`` or ``BrokenResourceError``; return both."""
    received: list[bytes] = []
    while sum(map(len, received)) <= limit:
        try:
            received.append(await link.receive())
        except (trio.EndOfChannel, trio.BrokenResourceError) as exc:
            return received, type(exc)
    raise AssertionError("received more than was sent")


async def _run_until_blocked(fn: Callable[[], Awaitable[object]]) -> bool:
    """Run ``fn`` until every task is blocked, then cancel it. True if it finished."""
    finished = False

    async def runner() -> None:
        nonlocal finished
        await fn()
        finished = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return finished


class _Flood:
    """Sends distinct chunks to a peer that does not read; counts what was sent."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.sent = 0

    @staticmethod
    def chunk(index: int) -> bytes:
        return pattern(FLOOD_CHUNK, index)

    async def run(self) -> None:
        while self.sent * FLOOD_CHUNK < FLOOD_LIMIT:
            await self.link.send(self.chunk(self.sent))
            self.sent += 1
        raise AssertionError(f"{FLOOD_LIMIT} bytes to a peer that never reads did not block")


@_check
async def check_serve_reports_dialable_endpoint(transport: Transport, endpoint: Endpoint) -> None:
    """``serve`` reports an endpoint of its own that ``dial`` reaches, twice."""
    calls = trio.Semaphore(0)

    async def handler(link: Link) -> None:
        calls.release()  # returning closes the link

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(transport.serve, endpoint, handler)
        assert isinstance(bound, Endpoint), f"serve reported {bound!r}"
        assert bound.transport == transport.name
        assert transport.can_dial(bound), f"can_dial({bound}) is false"
        for _ in range(2):
            link = await transport.dial(bound)
            await calls.acquire()
            with _raises(trio.EndOfChannel, trio.BrokenResourceError):
                await link.receive()
            await link.aclose()
        nursery.cancel_scope.cancel()


@_check
async def check_unsupported_endpoint(transport: Transport, endpoint: Endpoint) -> None:
    """Another transport's endpoint: ``can_dial`` false, ``dial``/``serve`` refuse."""
    del endpoint
    name = "zz_other" if transport.name != "zz_other" else "zz_another"
    other = Endpoint(name, "192.0.2.1:1")
    assert not transport.can_dial(other)
    with _raises(UnsupportedEndpoint):
        await transport.dial(other)

    async def handler(link: Link) -> None:
        raise AssertionError("served an endpoint that is not ours")

    with _raises(UnsupportedEndpoint):
        await transport.serve(other, handler)


@_check
async def check_echo(transport: Transport, endpoint: Endpoint) -> None:
    """Bytes arrive intact and in order, both ways."""
    messages = [pattern(size, i) for i, size in enumerate((1, 2, 7, 100, 1000, 4096, 70000))]
    async with open_link_pair(transport, endpoint) as (client, server):

        async def echo() -> None:  # frame by frame, or chunk by chunk
            remaining = sum(map(len, messages))
            while remaining:
                chunk = await server.receive()
                remaining -= len(chunk)
                await server.send(chunk)

        async def send_all() -> None:
            for message in messages:
                await client.send(message)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            nursery.start_soon(send_all)
            await expect_messages(transport.framed, client, messages)


@_check
async def check_max_size_send(transport: Transport, endpoint: Endpoint) -> None:
    """One ``send`` of ``MAX_SEND`` bytes works, both ways at once."""
    up, down = pattern(MAX_SEND, 1), pattern(MAX_SEND, 2)
    async with (
        open_link_pair(transport, endpoint) as (client, server),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(client.send, up)
        nursery.start_soon(server.send, down)
        nursery.start_soon(expect_messages, transport.framed, server, [up])
        await expect_messages(transport.framed, client, [down])


@_check
async def check_concurrent_sends(transport: Transport, endpoint: Endpoint) -> None:
    """50 concurrent senders: every message arrives whole, none interleave."""
    size, count = 20_000, 50
    messages = [bytes([i]) * size for i in range(count)]
    async with (
        open_link_pair(transport, endpoint) as (client, server),
        trio.open_nursery() as nursery,
    ):
        for message in messages:
            nursery.start_soon(client.send, message)
        if transport.framed:
            got = [await server.receive() for _ in messages]
        else:
            data = await receive_exactly(server, size * count)
            got = [data[i : i + size] for i in range(0, len(data), size)]
    for message in got:
        assert message == message[:1] * size, "concurrent sends interleaved"
    assert sorted(got) == messages, "a message was lost or duplicated"


@_check
async def check_back_pressure(transport: Transport, endpoint: Endpoint) -> None:
    """A sender to a peer that never reads blocks instead of buffering forever."""
    async with open_link_pair(transport, endpoint) as (client, _server):
        flood = _Flood(client)
        assert not await _run_until_blocked(flood.run)
        assert flood.sent > 0, "not a single chunk could be sent"


@_check
async def check_peer_vanishes_while_we_send(transport: Transport, endpoint: Endpoint) -> None:
    """A send blocked on a peer that closes raises ``BrokenResourceError``."""
    async with open_link_pair(transport, endpoint) as (client, server):

        async def flood() -> None:
            with _raises(trio.BrokenResourceError):
                await _Flood(client).run()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()
        with _raises(trio.EndOfChannel, trio.BrokenResourceError):
            await client.receive()


@_check
async def check_peer_vanishes_while_we_receive(transport: Transport, endpoint: Endpoint) -> None:
    """A pending receive sees the peer's last bytes, then the end; never hangs."""
    async with open_link_pair(transport, endpoint) as (client, server):
        async with trio.open_nursery() as nursery:

            async def last_words() -> None:
                await trio.testing.wait_all_tasks_blocked()
                await server.send(b"last words")
                await server.aclose()

            nursery.start_soon(last_words)
            received, end = await receive_until_end(client, limit=10)
        assert b"".join(received) == b"last words"
        assert end in (trio.EndOfChannel, trio.BrokenResourceError)
        with _raises(trio.BrokenResourceError):
            for _ in range(_SEND_ATTEMPTS):  # a stream may learn of the close on a later send
                await client.send(b"anyone there?")


@_check
async def check_cancelled_receive(transport: Transport, endpoint: Endpoint) -> None:
    """Cancelled receives lose nothing: the data goes to a later receive."""
    async with open_link_pair(transport, endpoint) as (client, server):
        for _ in range(3):
            assert not await _run_until_blocked(client.receive)
        await server.send(b"after the cancellations")
        await expect_messages(transport.framed, client, [b"after the cancellations"])
        for round_ in range(20):
            await _cancel_a_woken_receive(transport.framed, client, server, b"round %d" % round_)


async def _cancel_a_woken_receive(framed: bool, client: Link, server: Link, message: bytes) -> None:
    """Cancel a receive right after its data was sent: it returns it or leaves it."""
    got: list[bytes] = []

    async def receive_once() -> None:
        got.append(await client.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_once)
        await trio.testing.wait_all_tasks_blocked()
        await server.send(message)
        nursery.cancel_scope.cancel()
    if framed:
        got = got or [await client.receive()]
        assert got == [message], "a cancelled receive lost or changed a frame"
    else:
        rest = len(message) - sum(map(len, got))
        data = b"".join(got) + await receive_exactly(client, rest)
        assert data == message, "a cancelled receive lost bytes"


@_check
async def check_cancelled_send(transport: Transport, endpoint: Endpoint) -> None:
    """A cancelled send leaves the link usable or cleanly broken, never torn."""
    async with open_link_pair(transport, endpoint) as (client, server):
        flood = _Flood(client)
        assert not await _run_until_blocked(flood.run)
        sent = [flood.chunk(i) for i in range(flood.sent)]
        limit = (flood.sent + 1) * FLOOD_CHUNK + 4
        async with trio.open_nursery() as nursery:
            result: list[tuple[list[bytes], type[Exception]]] = []

            async def drain() -> None:
                result.append(await receive_until_end(server, limit))

            nursery.start_soon(drain)
            try:
                await client.send(b"tail")
            except trio.BrokenResourceError:
                broken = True
            else:
                broken = False
            await client.aclose()
        received = result[0][0]
    _check_after_cancelled_send(transport.framed, sent, received, broken)


def _check_after_cancelled_send(
    framed: bool, sent: list[bytes], received: list[bytes], broken: bool
) -> None:
    if not broken and framed:
        assert received == [*sent, b"tail"], "frames differ after a cancelled send"
    elif not broken:
        assert b"".join(received) == b"".join(sent) + b"tail", "bytes differ after a cancelled send"
    elif framed:
        assert received == sent[: len(received)], "a broken link delivered wrong frames"
    else:
        after = b"".join(received)
        cancelled = _Flood.chunk(len(sent))
        assert (b"".join(sent) + cancelled).startswith(after), "a broken link tore the stream"


@_check
async def check_close_semantics(transport: Transport, endpoint: Endpoint) -> None:
    """After ``aclose``: own ops raise ``ClosedResourceError``, the peer drains
    then sees ``EndOfChannel``, and ``aclose`` is idempotent."""
    async with open_link_pair(transport, endpoint) as (client, server):
        await client.send(b"goodbye")
        await client.aclose()
        await client.aclose()
        with _raises(trio.ClosedResourceError):
            await client.send(b"more")
        with _raises(trio.ClosedResourceError):
            await client.receive()
        await expect_messages(transport.framed, server, [b"goodbye"])
        for _ in range(2):
            with _raises(trio.EndOfChannel):
                await server.receive()
        with _raises(trio.BrokenResourceError):
            for _ in range(_SEND_ATTEMPTS):  # a stream may learn of the close on a later send
                await server.send(b"anyone there?")


@_check
async def check_close_wakes_own_pending_ops(transport: Transport, endpoint: Endpoint) -> None:
    """Closing a link wakes its own pending receive and send with ``ClosedResourceError``."""
    async with (
        open_link_pair(transport, endpoint) as (client, _server),
        trio.open_nursery() as nursery,
    ):

        async def flood() -> None:
            with _raises(trio.ClosedResourceError):
                await _Flood(client).run()

        async def receive() -> None:
            with _raises(trio.ClosedResourceError):
                await client.receive()

        nursery.start_soon(flood)
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        await client.aclose()


async def check_transport(transport: Transport, listen_endpoint: Endpoint) -> None:
    """Run every check in :data:`CHECKS`, in order."""
    for check in CHECKS:
        await check(transport, listen_endpoint)
