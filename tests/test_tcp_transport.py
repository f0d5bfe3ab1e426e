"""TCP specifics; the shared behaviour is in test_conformance.py."""

from __future__ import annotations

import logging
import socket

import pytest
import trio
import trio.testing

from p2pmsg.abc import Link, remote_host
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import UnsupportedEndpoint
from p2pmsg.testing.conformance import open_link_pair, receive_exactly
from transports.tcp import RECEIVE_CHUNK, TcpLink, TcpTransport

LOOPBACK = Endpoint.parse("tcp:127.0.0.1:0")


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:4001", True),
        ("[::1]:4001", True),
        ("[2001:db8::7]:443", True),
        ("example.org:443", True),
        ("127.0.0.1:0", False),  # a port to bind, not to dial
        ("127.0.0.1", False),
        ("127.0.0.1:99999", False),
        ("127.0.0.1:http", False),
        (":4001", False),
        ("[::1]x:4001", False),
    ],
)
def test_can_dial(address: str, expected: bool) -> None:
    assert TcpTransport().can_dial(Endpoint("tcp", address)) is expected


def test_can_dial_other_transports_and_arguments() -> None:
    transport = TcpTransport()
    assert not transport.can_dial(Endpoint.parse("sim:h17"))
    assert not transport.can_dial(Endpoint.parse("ws:198.51.100.7:443"))
    assert transport.can_dial(Endpoint.parse("tcp:203.0.113.5:4001;iat-mode=0"))


async def test_dial_refuses_unsupported_endpoints() -> None:
    for text in ("sim:h17", "tcp:127.0.0.1", "tcp:127.0.0.1:0"):
        with pytest.raises(UnsupportedEndpoint):
            await TcpTransport().dial(Endpoint.parse(text))


async def test_dial_to_a_closed_port_raises_oserror() -> None:
    with socket.socket() as probe:  # find a port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):  # noqa: PT011 - any connection failure is an OSError
        await TcpTransport().dial(Endpoint("tcp", f"127.0.0.1:{port}"))


async def test_serve_reports_the_port_and_keeps_arguments() -> None:
    async def handler(link: Link) -> None:
        pass

    async with trio.open_nursery() as nursery:
        endpoint = Endpoint.parse("tcp:127.0.0.1:0;note=x")
        bound = await nursery.start(TcpTransport().serve, endpoint, handler)
        host, port = bound.host_port()
        assert (host, bound.args) == ("127.0.0.1", (("note", "x"),))
        assert port != 0
        with pytest.raises(OSError, match="in use"):
            await TcpTransport().serve(bound, handler)
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this host")
async def test_ipv6_loopback() -> None:
    transport = TcpTransport()
    async with open_link_pair(transport, Endpoint.parse("tcp:[::1]:0")) as (client, server):
        assert isinstance(client, TcpLink)
        assert client.socket.family == socket.AF_INET6
        await client.send(b"over v6")
        assert await receive_exactly(server, 7) == b"over v6"


async def test_nodelay_on_both_ends() -> None:
    async with open_link_pair(TcpTransport(), LOOPBACK) as (client, server):
        for link in (client, server):
            assert isinstance(link, TcpLink)
            assert link.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_receive_returns_chunks_of_at_most_64_kib() -> None:
    data = bytes(range(256)) * 1024
    chunks: list[bytes] = []
    async with (
        open_link_pair(TcpTransport(), LOOPBACK) as (client, server),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(client.send, data)
        while sum(map(len, chunks)) < len(data):
            chunks.append(await server.receive())
    assert b"".join(chunks) == data
    assert max(map(len, chunks)) <= RECEIVE_CHUNK


async def test_a_failing_handler_closes_its_link_not_the_listener(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="transports.tcp")
    calls = 0

    async def handler(link: Link) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("the first handler fails")
        await link.send(b"second")

    transport = TcpTransport()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(transport.serve, LOOPBACK, handler)
        first = await transport.dial(bound)
        with pytest.raises(trio.EndOfChannel):
            await first.receive()
        second = await transport.dial(bound)
        assert await receive_exactly(second, 6) == b"second"
        for link in (first, second):
            await link.aclose()
        nursery.cancel_scope.cancel()
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.levelno == logging.DEBUG
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    above_debug = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert not any("127.0.0.1" in message for message in above_debug)


async def test_aborted_send_breaks_both_ends() -> None:
    async with open_link_pair(TcpTransport(), LOOPBACK) as (client, server):
        assert isinstance(client, TcpLink)
        async with trio.open_nursery() as nursery:  # cancel a send that wrote part of its bytes
            nursery.start_soon(client.send, b"x" * (64 * 1024 * 1024))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        for operation in (client.receive, lambda: client.send(b"more")):
            with pytest.raises(trio.BrokenResourceError):
                await operation()
        with pytest.raises(trio.BrokenResourceError):
            await _receive_until_failure(server)


async def _receive_until_failure(link: Link) -> None:
    while True:
        await link.receive()


async def test_a_served_link_knows_its_peers_address_and_loopback_counts_as_unknown() -> None:
    async with open_link_pair(TcpTransport(), LOOPBACK) as (_client, server):
        assert isinstance(server, TcpLink)
        assert server.remote_host == "127.0.0.1"
        assert remote_host(server) is None  # loopback: tests and local proxies share it
