"""The ws transport: the conformance suite, its HTTP look and its refusals.

Conformance runs on 127.0.0.1 port 0 and on the simulated network (ws over
the ``sim`` transport under ``autojump_clock``). Probes talk to the server
with raw sockets and must get ordinary web-server answers, never a ``101``.
"""

from __future__ import annotations

import base64
import os
import random
import struct

import h11
import pytest
import trio
import trio.testing

from p2pmsg.abc import Link
from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import Identity
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.link.secure import accept_secure, connect_secure
from p2pmsg.sim.net import SimNetwork
from p2pmsg.testing.conformance import CHECKS, Check, open_link_pair
from transports.sim import SimTransport
from transports.ws import WsTransport, parse_ws_endpoint
from transports.ws_core import (
    MAX_MESSAGE,
    NEED_DATA,
    ClientHandshake,
    Message,
    PeerClosed,
    Refused,
    ServerHandshake,
    Upgraded,
    WsFramer,
    WsProtocolError,
    WsRefused,
    accept_token,
)

LOOPBACK = Endpoint.parse("ws:127.0.0.1:0/chat")
NOW = 1_700_000_000.0
KEY = bytes(range(16))
UPGRADE = (
    b"GET %s HTTP/1.1\r\nHost: example.org\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: %s\r\n\r\n"
)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_conformance_tcp(check: Check) -> None:
    await check(WsTransport(), LOOPBACK)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_conformance_sim(check: Check, autojump_clock: trio.testing.MockClock) -> None:
    await check(WsTransport(SimTransport(SimNetwork(), "a")), Endpoint.parse("ws:a:0/chat"))


# --- endpoints ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ws:198.51.100.7:443/chat", True),
        ("ws:198.51.100.7:443", True),
        ("ws:[2001:db8::7]:80/a/b?", False),
        ("ws:[2001:db8::7]:80/a/b", True),
        ("ws:example.org/chat", True),  # port 80
        ("ws:127.0.0.1:0/chat", False),
        ("ws:127.0.0.1:99999/chat", False),
        ("ws::443/chat", False),
        ("ws:/chat", False),
        ("ws:127.0.0.1:443/a b", False),
        ("tcp:127.0.0.1:443", False),
    ],
)
def test_can_dial(text: str, expected: bool) -> None:
    assert WsTransport().can_dial(Endpoint.parse(text)) is expected


def test_endpoint_path_host_and_origin() -> None:
    target = parse_ws_endpoint(Endpoint.parse("ws:198.51.100.7:443/chat"))
    assert (target.address, target.path) == ("198.51.100.7:443", "/chat")
    assert (target.host_header, target.origin) == ("198.51.100.7", "https://198.51.100.7")
    cover = parse_ws_endpoint(Endpoint.parse("ws:[2001:db8::7]:8080/x;host=cdn.example.com"))
    assert (cover.address, cover.host_header) == ("[2001:db8::7]:8080", "cdn.example.com:8080")
    assert cover.origin == "http://cdn.example.com:8080"
    assert parse_ws_endpoint(Endpoint.parse("ws:h:80")).path == "/"


async def test_serve_reports_path_and_arguments() -> None:
    async def handler(link: Link) -> None:
        pass

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(WsTransport().serve, Endpoint.parse(f"{LOOPBACK};k=v"), handler)
        assert str(bound).startswith("ws:127.0.0.1:")
        assert str(bound).endswith("/chat;k=v")
        assert parse_ws_endpoint(bound).port != 0
        nursery.cancel_scope.cancel()


# --- the look on the wire -----------------------------------------------------------


async def _first_request(endpoint_text: str) -> tuple[bytes, h11.Request, type[Exception]]:
    """Dial a raw listener; return the client's first bytes, parsed, and how dial ended."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    outcome: list[type[Exception]] = []

    async def dial() -> None:
        with pytest.raises((WsRefused, trio.BrokenResourceError, OSError)) as info:
            await WsTransport().dial(Endpoint.parse(endpoint_text.format(port=port)))
        outcome.append(info.type)

    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(dial)
        stream = await listener.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()
    server = h11.Connection(h11.SERVER)
    server.receive_data(head)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    return head, request, outcome[0]


async def test_first_packet_is_a_browser_upgrade_request() -> None:
    head, request, outcome = await _first_request("ws:127.0.0.1:{port}/chat")
    assert head.startswith(b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:")
    assert (request.method, request.target, request.http_version) == (b"GET", b"/chat", b"1.1")
    headers = dict(request.headers)
    assert headers[b"upgrade"] == b"websocket"
    assert headers[b"connection"] == b"Upgrade"
    assert headers[b"sec-websocket-version"] == b"13"
    assert headers[b"user-agent"].startswith(b"Mozilla/5.0 ")
    assert len(base64.b64decode(headers[b"sec-websocket-key"], validate=True)) == 16
    assert outcome is WsRefused  # a 404 is a refusal, reported as an OSError
    assert issubclass(WsRefused, OSError)
    _, again, _ = await _first_request("ws:127.0.0.1:{port}/chat")
    assert dict(again.headers)[b"sec-websocket-key"] != headers[b"sec-websocket-key"]


async def test_cover_host_and_origin() -> None:
    text = "ws:127.0.0.1:{port}/x;host=cdn.example.com;origin=https://example.com"
    _, request, _ = await _first_request(text)
    headers = dict(request.headers)
    assert headers[b"host"].startswith(b"cdn.example.com:")
    assert headers[b"origin"] == b"https://example.com"


async def _open_raw(bound: Endpoint) -> trio.SocketStream:
    target = parse_ws_endpoint(bound)
    return await trio.open_tcp_stream(target.host, target.port)


async def _probe(payload: bytes, *, half_close: bool = False) -> bytes:
    """Send ``payload`` to a ws server; return everything it answers before closing."""
    calls: list[Link] = []

    async def handler(link: Link) -> None:
        calls.append(link)

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(WsTransport().serve, LOOPBACK, handler)
        stream = await _open_raw(bound)
        await stream.send_all(payload)
        if half_close:
            await stream.send_eof()
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert not calls, "a probe reached the link handler"
    assert b" 101 " not in answer
    return answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n",
        b"GET /chat HTTP/1.1\r\nHost: example.org\r\n\r\n",  # our path, no upgrade
        UPGRADE % (b"/other", b"13"),
        UPGRADE % (b"/chat", b"8"),
        UPGRADE.replace(b"websocket", b"h2c") % (b"/chat", b"13"),
        b"POST /chat HTTP/1.1\r\nHost: example.org\r\nContent-Length: 3\r\n\r\nabc",
    ],
)
async def test_probes_get_a_plain_404(request_bytes: bytes) -> None:
    answer = await _probe(request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\nDate: ")
    assert b"Connection: close" in head
    assert body.startswith(b"<html>") and b"p2p" not in body.lower()


async def test_head_probe_gets_no_body() -> None:
    answer = await _probe(b"HEAD / HTTP/1.1\r\nHost: example.org\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert answer.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("seed", range(4))
async def test_random_bytes_get_a_400_or_a_close(seed: int) -> None:
    noise = random.Random(seed).randbytes(600)
    answer = await _probe(noise, half_close=True)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 Bad Request\r\nServer: nginx")


async def test_a_cut_request_is_closed_silently() -> None:
    assert await _probe(b"GET /chat HTTP/1.1\r\nHost: exa", half_close=True) == b""


async def test_a_stalled_request_is_closed_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork()
    transport = WsTransport(SimTransport(net, "a"), handshake_timeout=30.0)

    async def handler(link: Link) -> None:
        raise AssertionError("a stalled probe reached the handler")

    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve, Endpoint.parse("ws:a:80/chat"), handler)
        start = trio.current_time()
        probe = await net.connect("a", "a", 80)
        await probe.send(b"GET /chat HTTP/1.1\r\n")
        with pytest.raises(trio.EndOfChannel):
            await probe.receive()
        assert trio.current_time() - start == pytest.approx(30.0, abs=1.0)
        nursery.cancel_scope.cancel()


async def test_a_valid_upgrade_gets_the_rfc_accept_token() -> None:
    calls = 0

    async def handler(link: Link) -> None:
        nonlocal calls
        calls += 1

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(WsTransport().serve, LOOPBACK, handler)
        stream = await _open_raw(bound)
        await stream.send_all(UPGRADE % (b"/chat", b"13"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert calls == 1


# --- oversized frames -----------------------------------------------------------------


def _masked_header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([first, 0x80 | length]) + b"\0\0\0\0"
    if length < 65536:
        return bytes([first, 0x80 | 126]) + struct.pack("!H", length) + b"\0\0\0\0"
    return bytes([first, 0x80 | 127]) + struct.pack("!Q", length) + b"\0\0\0\0"


@pytest.mark.parametrize(
    "frames",
    [
        _masked_header(0x2, MAX_MESSAGE + 1),  # refused from the header alone
        _masked_header(0x2, 2**62),
        _masked_header(0x2, 700_000, fin=False)
        + b"x" * 700_000
        + _masked_header(0x0, 400_000),  # a fragmented message grows too large
    ],
    ids=["just_above", "huge", "fragmented"],
)
async def test_oversized_messages_are_refused_with_a_close(frames: bytes) -> None:
    failures: list[type[Exception]] = []

    async def handler(link: Link) -> None:
        with pytest.raises(trio.BrokenResourceError) as info:
            await link.receive()
        failures.append(info.type)

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(WsTransport().serve, LOOPBACK, handler)
        stream = await _open_raw(bound)
        await stream.send_all(UPGRADE % (b"/chat", b"13"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += await stream.receive_some(4096)
        answer = answer.partition(b"\r\n\r\n")[2]
        await stream.send_all(frames)
        while chunk := await stream.receive_some(4096):
            answer += chunk
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert answer[:4] == b"\x88\x02\x03\xf1"  # close frame, code 1009 (message too big)
    assert failures == [trio.BrokenResourceError]


async def test_sending_above_the_limit_is_refused_locally() -> None:
    async with open_link_pair(WsTransport(), LOOPBACK) as (client, server):
        with pytest.raises(ValueError, match="at most"):
            await client.send(b"x" * (MAX_MESSAGE + 1))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send, b"x" * MAX_MESSAGE)
            assert len(await server.receive()) == MAX_MESSAGE


# --- a real secure link over ws ----------------------------------------------------------


async def test_secure_link_over_ws() -> None:
    alice, bob = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
    transport = WsTransport()
    accepted: trio.MemorySendChannel[bytes]
    accepted, results = trio.open_memory_channel[bytes](1)

    async def handler(link: Link) -> None:
        secure = await accept_secure(link, bob, ReplayWindow(120.0))
        message = await secure.receive()
        await secure.send(message[::-1])
        await accepted.send(message)

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(transport.serve, LOOPBACK, handler)
        client = await connect_secure(await transport.dial(bound), alice, bob.public)
        payload = os.urandom(60_000)  # the secure link carries up to 64 KiB
        await client.send(payload)
        assert await client.receive() == payload[::-1]
        assert await results.receive() == payload
        await client.aclose()
        nursery.cancel_scope.cancel()


# --- the sans-IO cores ---------------------------------------------------------------------


def test_accept_token_known_answer() -> None:  # RFC 6455, section 1.3
    assert accept_token(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _handshake_pair() -> tuple[ClientHandshake, ServerHandshake]:
    target = parse_ws_endpoint(Endpoint.parse("ws:198.51.100.7:443/chat"))
    return ClientHandshake(target, key=KEY), ServerHandshake("/chat", now=NOW)


def test_handshake_byte_by_byte_with_trailing_frames() -> None:
    client, server = _handshake_pair()
    outcomes = [server.receive_data(bytes([byte])) for byte in client.request]
    assert outcomes[:-1] == [NEED_DATA] * (len(client.request) - 1)
    outcome = outcomes[-1]
    assert isinstance(outcome, Upgraded)
    assert outcome.trailing == b""
    assert b"Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n" in outcome.response
    _, whole = _handshake_pair()
    assert whole.receive_data(client.request + b"\x82\x80") == Upgraded(
        outcome.response, b"\x82\x80"
    )
    answered = client.receive_data(outcome.response + b"\x82\x01z")
    assert answered == Upgraded(b"", b"\x82\x01z")


def test_client_refuses_a_bad_answer() -> None:
    client, _ = _handshake_pair()
    with pytest.raises(WsRefused, match="bad 101"):
        client.receive_data(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n"
        )
    client, _ = _handshake_pair()
    with pytest.raises(WsRefused, match="not HTTP"):
        client.receive_data(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")


def test_server_handshake_refuses_after_an_answer() -> None:
    _, server = _handshake_pair()
    assert server.receive_data(b"") == Refused(b"")
    with pytest.raises(Exception, match="over"):
        server.receive_data(b"GET")


def _pair() -> tuple[WsFramer, WsFramer]:
    return WsFramer(client=True), WsFramer(client=False)


def test_framer_round_trip_split_anywhere() -> None:
    client, server = _pair()
    wire = b"".join(client.encode(m) for m in (b"", b"a", b"b" * 70_000))
    for i in range(0, len(wire), 997):
        server.receive_data(wire[i : i + 997])
    got = []
    while (event := server.next_event()) is not NEED_DATA:
        assert isinstance(event, Message)
        got.append(event.data)
    assert got == [b"", b"a", b"b" * 70_000]


def test_framer_answers_the_latest_ping_with_the_next_message() -> None:
    client, server = _pair()
    server.receive_data(b"\x89\x81\0\0\0\0" + b"1" + b"\x89\x81\0\0\0\0" + b"2")
    assert server.next_event() is NEED_DATA
    client.receive_data(server.encode(b"data"))
    assert client.next_event() == Message(b"data")
    assert server.encode(b"again") == b"\x82\x05again"  # the pong was sent once
    assert client.encode(b"")[0] == 0x82  # the client saw a pong, not a ping: nothing to answer


def test_framer_close_is_sticky() -> None:
    client, server = _pair()
    server.receive_data(client.encode(b"last") + client.close_frame())
    assert server.next_event() == Message(b"last")
    assert server.next_event() == PeerClosed(1000)
    assert server.next_event() == PeerClosed(1000)
    assert not server.can_send
    assert server.close_frame() == b"\x88\x02\x03\xe8"
    assert server.close_frame() == b""


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"\x82\x01x", 1002),  # a client frame without a mask
        (b"\x81\x81\0\0\0\0x", 1003),  # text
        (b"\x02\x80\0\0\0\0\x81\x80\0\0\0\0", 1002),  # text inside a binary message
        (b"\xc2\x80\0\0\0\0", 1002),  # a reserved bit
    ],
)
def test_framer_protocol_errors(wire: bytes, code: int) -> None:
    _, server = _pair()
    server.receive_data(wire)
    for _ in range(2):
        with pytest.raises(WsProtocolError) as info:
            server.next_event()
        assert info.value.close_code == code


def test_framer_eof_without_close_is_an_error() -> None:
    client, server = _pair()
    server.receive_data(client.encode(b"x")[:-1])
    server.receive_eof()
    with pytest.raises(WsProtocolError, match="without a close"):
        server.next_event()
