"""The tls transport: the conformance suite, its ClientHello, pins and certificates.

Conformance runs on 127.0.0.1 port 0 and on the simulated network (tls over
the ``sim`` transport under ``autojump_clock``). The ClientHello is read by a
raw listener and parsed just enough to list its extensions.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

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
from transports.tls import (
    TlsHandshakeFailed,
    TlsLink,
    TlsPinMismatch,
    TlsTransport,
    parse_tls_endpoint,
)
from transports.tls_certs import CERT_FILE, decode_pin, encode_pin

LOOPBACK = Endpoint.parse("tls:127.0.0.1:0")
SERVER_NAME, ALPN, SUPPORTED_VERSIONS = 0, 16, 43


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_conformance_tcp(check: Check, tmp_path: Path) -> None:
    await check(TlsTransport(cert_dir=tmp_path), LOOPBACK)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_conformance_sim(
    check: Check, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = TlsTransport(SimTransport(SimNetwork(), "a"), cert_dir=tmp_path)
    await check(transport, Endpoint.parse("tls:a:0"))


# --- endpoints ----------------------------------------------------------------

PIN = "a" * 52


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls:198.51.100.7:443", True),
        ("tls:198.51.100.7", True),  # port 443
        ("tls:[2001:db8::7]:8443;sni=cdn.example.com", True),
        (f"tls:198.51.100.7:443;pin={PIN}", True),
        (f"tls:198.51.100.7:443;pin={'0f' * 32}", True),
        ("tls:198.51.100.7:443;pin=abc", False),
        (f"tls:198.51.100.7:443;pin={'1' * 52}", False),  # not base32
        ("tls:198.51.100.7:443;sni=not a name", False),
        ("tls:198.51.100.7:443;sni=192.0.2.1", False),  # an IP is never sent as SNI
        ("tls:127.0.0.1:0", False),
        ("tls:127.0.0.1:99999", False),
        ("tcp:127.0.0.1:443", False),
    ],
)
def test_can_dial(text: str, expected: bool, tmp_path: Path) -> None:
    assert TlsTransport(cert_dir=tmp_path).can_dial(Endpoint.parse(text)) is expected


def test_endpoint_fields() -> None:
    target = parse_tls_endpoint(Endpoint.parse(f"tls:[2001:db8::7]:8443;sni=a.example;pin={PIN}"))
    assert (target.address, target.sni, target.pin) == (
        "[2001:db8::7]:8443",
        "a.example",
        b"\0" * 32,
    )
    assert parse_tls_endpoint(Endpoint.parse("tls:h")).address == "h:443"
    assert decode_pin(encode_pin(bytes(range(32)))) == bytes(range(32))
    assert decode_pin(bytes(range(32)).hex()) == bytes(range(32))


# --- certificates and pins ------------------------------------------------------------


async def _serve_once(transport: TlsTransport, endpoint: Endpoint = LOOPBACK) -> Endpoint:
    async def handler(link: Link) -> None:
        pass

    async with trio.open_nursery() as nursery:
        bound: Endpoint = await nursery.start(transport.serve, endpoint, handler)
        nursery.cancel_scope.cancel()
    return bound


async def test_serve_reports_the_pin_and_keeps_arguments(tmp_path: Path) -> None:
    given = Endpoint.parse(f"{LOOPBACK};sni=cdn.example.com;pin={PIN}")
    bound = await _serve_once(TlsTransport(cert_dir=tmp_path), given)
    assert str(bound).startswith("tls:127.0.0.1:")
    assert [key for key, _ in bound.args] == ["sni", "pin"]
    target = parse_tls_endpoint(bound)
    assert target.port != 0 and target.sni == "cdn.example.com"
    assert target.pin is not None and target.pin != decode_pin(PIN)


async def test_certificate_is_owner_only_and_reused(tmp_path: Path) -> None:
    cert_dir = tmp_path / "tls"
    first = await _serve_once(TlsTransport(cert_dir=cert_dir))
    path = cert_dir / CERT_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_dir.stat().st_mode) == 0o700
    content = path.read_bytes()
    assert b"PRIVATE KEY" in content and b"CERTIFICATE" in content
    second = await _serve_once(TlsTransport(cert_dir=cert_dir))
    assert first.arg("pin") == second.arg("pin")
    assert path.read_bytes() == content
    other = await _serve_once(TlsTransport(cert_dir=tmp_path / "other"))
    assert other.arg("pin") != first.arg("pin")


async def test_a_loose_certificate_file_is_tightened(tmp_path: Path) -> None:
    first = await _serve_once(TlsTransport(cert_dir=tmp_path))
    (tmp_path / CERT_FILE).chmod(0o644)
    assert (await _serve_once(TlsTransport(cert_dir=tmp_path))).arg("pin") == first.arg("pin")
    assert stat.S_IMODE((tmp_path / CERT_FILE).stat().st_mode) == 0o600


async def _dial_with_pin(transport: TlsTransport, pin: str | None) -> None:
    """Serve, dial the bound endpoint with ``pin`` (or none), exchange bytes."""

    async def handler(link: Link) -> None:
        await link.send(await link.receive())

    failure: list[Exception] = []
    async with trio.open_nursery() as nursery:
        bound: Endpoint = await nursery.start(transport.serve, LOOPBACK, handler)
        args = tuple(arg for arg in bound.args if arg[0] != "pin")
        if pin is not None:
            args += (("pin", pin.replace("{pin}", bound.arg("pin") or "")),)
        try:
            link = await transport.dial(Endpoint(bound.transport, bound.address, args))
        except Exception as exc:  # raised below, outside the nursery's group
            failure.append(exc)
        else:
            await link.send(b"ping")
            assert await link.receive() == b"ping"
            await link.aclose()
        nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]


async def test_the_reported_pin_and_no_pin_both_dial(tmp_path: Path) -> None:
    transport = TlsTransport(cert_dir=tmp_path)
    await _dial_with_pin(transport, "{pin}")
    await _dial_with_pin(transport, None)
    pin = decode_pin((await _serve_once(transport)).arg("pin") or "")
    await _dial_with_pin(transport, pin.hex())


async def test_a_wrong_pin_fails_the_dial(tmp_path: Path) -> None:
    with pytest.raises(TlsPinMismatch, match="expected pin") as info:
        await _dial_with_pin(TlsTransport(cert_dir=tmp_path), encode_pin(os.urandom(32)))
    assert isinstance(info.value, OSError)
    assert info.value.user_message().startswith("The server's TLS certificate does not match")


async def test_tls_13_and_alpn_http11(tmp_path: Path) -> None:
    async with open_link_pair(TlsTransport(cert_dir=tmp_path), LOOPBACK) as (client, server):
        for link in (client, server):
            assert isinstance(link, TlsLink)
            tls = link._tls
            assert (tls.version(), tls.selected_alpn_protocol()) == ("TLSv1.3", "http/1.1")
            assert not tls.session_reused


# --- the look on the wire ----------------------------------------------------------


def _client_hello_extensions(record: bytes) -> dict[int, bytes]:
    """The extensions of one ClientHello record (the minimum of RFC 8446, 4.1.2)."""
    assert record[0] == 0x16 and record[1] == 0x03, "not a TLS handshake record"
    assert record[5] == 0x01, "not a ClientHello"
    body = record[9 : 9 + int.from_bytes(record[6:9], "big")]
    at = 2 + 32  # legacy_version, random
    at += 1 + body[at]  # session id
    at += 2 + int.from_bytes(body[at : at + 2], "big")  # cipher suites
    at += 1 + body[at]  # compression methods
    end = at + 2 + int.from_bytes(body[at : at + 2], "big")
    at += 2
    extensions: dict[int, bytes] = {}
    while at < end:
        kind, size = struct.unpack("!HH", body[at : at + 4])
        extensions[kind] = body[at + 4 : at + 4 + size]
        at += 4 + size
    assert at == end == len(body), "the extensions do not fill the ClientHello"
    return extensions


async def _first_record(tmp_path: Path, args: str = "") -> bytes:
    """Dial a raw listener that hangs up; return the client's first TLS record."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]

    async def dial() -> None:
        with pytest.raises(TlsHandshakeFailed):
            await TlsTransport(cert_dir=tmp_path).dial(
                Endpoint.parse(f"tls:127.0.0.1:{port}{args}")
            )

    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(dial)
        stream = await listener.accept()
        head = b""
        while len(head) < 5 or len(head) < 5 + int.from_bytes(head[3:5], "big"):
            head += await stream.receive_some(4096)
        await stream.aclose()
    return head


async def test_first_packet_is_a_client_hello_without_sni(tmp_path: Path) -> None:
    record = await _first_record(tmp_path)
    extensions = _client_hello_extensions(record)
    assert SERVER_NAME not in extensions
    assert extensions[ALPN] == b"\x00\x0c\x02h2\x08http/1.1"
    assert extensions[SUPPORTED_VERSIONS] == b"\x02\x03\x04"  # TLS 1.3 only


async def test_sni_sends_the_cover_name(tmp_path: Path) -> None:
    record = await _first_record(tmp_path, ";sni=cdn.example.com")
    name = b"cdn.example.com"
    expected = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    assert _client_hello_extensions(record)[SERVER_NAME] == expected


async def test_a_server_that_is_not_tls_fails_the_dial(tmp_path: Path) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, answer, 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(TlsHandshakeFailed):
            await TlsTransport(cert_dir=tmp_path).dial(Endpoint.parse(f"tls:127.0.0.1:{port}"))
        nursery.cancel_scope.cancel()


async def test_a_probe_never_reaches_the_handler(tmp_path: Path) -> None:
    async def handler(link: Link) -> None:
        raise AssertionError("a probe reached the handler")

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(TlsTransport(cert_dir=tmp_path).serve, LOOPBACK, handler)
        host, port = parse_tls_endpoint(bound).host, parse_tls_endpoint(bound).port
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
        answer = b""
        while chunk := await stream.receive_some(4096):
            answer += chunk
        assert not answer.startswith(b"HTTP/")  # a TLS alert, or nothing
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_stalled_handshake_is_closed_after_the_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    transport = TlsTransport(SimTransport(net, "a"), cert_dir=tmp_path, handshake_timeout=30.0)

    async def handler(link: Link) -> None:
        raise AssertionError("a stalled handshake reached the handler")

    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve, Endpoint.parse("tls:a:443"), handler)
        probe = await SimTransport(net, "b").dial(Endpoint.parse("sim:a:443"))
        start = trio.current_time()
        await probe.send(b"\x16\x03\x01")  # the start of a record, then silence
        with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
            await probe.receive()
        assert trio.current_time() - start == pytest.approx(30.0, abs=1.0)
        nursery.cancel_scope.cancel()


# --- a real secure link over tls ---------------------------------------------------------


async def test_secure_link_over_tls(tmp_path: Path) -> None:
    alice, bob = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
    transport = TlsTransport(cert_dir=tmp_path)
    accepted: trio.MemorySendChannel[bytes]
    accepted, results = trio.open_memory_channel[bytes](1)

    async def handler(link: Link) -> None:
        secure = await accept_secure(link, bob, ReplayWindow(120.0))
        message = await secure.receive()
        await secure.send(message[::-1])
        await accepted.send(message)

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(transport.serve, LOOPBACK, handler)
        assert bound.arg("pin")
        client = await connect_secure(await transport.dial(bound), alice, bob.public)
        payload = os.urandom(60_000)  # the secure link carries up to 64 KiB
        await client.send(payload)
        assert await client.receive() == payload[::-1]
        assert await results.receive() == payload
        await client.aclose()
        nursery.cancel_scope.cancel()
