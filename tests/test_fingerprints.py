"""Every transport's first packets against the S5 and S7 detectors.

Both censors classify the client's first bytes only (Wu et al. 2023 look at
the first client-to-server data packet; Bock et al. 2020 found Iran's filter
unidirectional), so the server's replies are not captured here.

The 10,000 first packets per transport come from the sans-IO cores with
10,000 rng seeds (a real handshake per connection would be too slow); a few
seeds are also dialled over real sockets on 127.0.0.1 against a listener that
records what arrives, to show that the core's bytes are what goes on the wire.

A new transport adds: a ``*_first_packet(seed)`` built from its core, a
capture over real sockets, and the two assertions its scenario promises.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Awaitable, Callable

import pytest
import trio

from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import HandshakeError
from p2pmsg.keys import Identity
from p2pmsg.link.connection import LinkConnection
from p2pmsg.link.secure import connect_secure
from p2pmsg.sim.detectors import Exemption, allowed_protocol, exemption, fully_encrypted
from transports.tcp import TcpTransport
from transports.tls import client_context
from transports.ws import WsTransport, parse_ws_endpoint
from transports.ws_core import ClientHandshake, WsRefused

SEEDS = range(10_000)
WIRE_SEEDS = (0, 1, 9_999)
TLS_SAMPLES = 10_000  # OpenSSL draws its own randomness: samples, not seeds
NOW = 1_700_000_000.0
ALICE = Identity(bytes([1]) * 32)
BOB = Identity(bytes([2]) * 32)


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def ws_first_packet(seed: int, target_text: str = "ws:198.51.100.7:80/chat") -> bytes:
    """The ``ws`` client's first payload: the upgrade request with a seeded key.

    :class:`~transports.ws.WsTransport` draws the key as ``rng(16)`` and sends
    ``ClientHandshake.request`` as one write.
    """
    target = parse_ws_endpoint(Endpoint.parse(target_text))
    return ClientHandshake(target, key=seeded(seed)(16)).request


def secure_first_flight(seed: int) -> bytes:
    """The secure link's first flight, as :func:`connect_secure` writes it raw on tcp."""
    conn = LinkConnection(ALICE, peer=BOB.public, now=NOW, rng=seeded(seed))
    conn.initiate()
    return conn.data_to_send()


async def capture(
    dial: Callable[[int], Awaitable[None]], expected_for: Callable[[int], bytes]
) -> tuple[bytes, bytes]:
    """Run ``dial(port)`` against a listener on 127.0.0.1 that records as many
    bytes as ``expected_for(port)`` holds (fewer on EOF), then closes.

    Returns ``(captured, expected)``. The client's handshake then fails (it
    gets no answer); ``dial`` asserts how.
    """
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    expected = expected_for(port)
    captured = bytearray()
    with trio.fail_after(10):  # a guard against a hang, not a wait
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(dial, port)
            async with await listener.accept() as stream:
                while len(captured) < len(expected):
                    chunk = await stream.receive_some(len(expected) - len(captured))
                    if not chunk:
                        break
                    captured += chunk
    return bytes(captured), expected


# --- ws: HTTP/1.1 WebSocket upgrade ---------------------------------------------------


@pytest.mark.parametrize("seed", WIRE_SEEDS)
async def test_ws_sends_its_cores_first_packet(seed: int) -> None:
    async def dial(port: int) -> None:
        with pytest.raises(WsRefused):
            await WsTransport(rng=seeded(seed)).dial(Endpoint.parse(f"ws:127.0.0.1:{port}/chat"))

    # Host and Origin name the listener's port
    wire, expected = await capture(
        dial, lambda port: ws_first_packet(seed, f"ws:127.0.0.1:{port}/chat")
    )
    assert wire == expected


def test_ws_first_packets_pass_s5_and_s7() -> None:
    packets = [ws_first_packet(seed) for seed in SEEDS]
    assert sum(fully_encrypted(packet) for packet in packets) == 0
    assert {exemption(packet) for packet in packets} == {Exemption.FIRST_SIX_PRINTABLE}
    assert {allowed_protocol([packet], 80) for packet in packets} == {"http"}
    assert {allowed_protocol([packet], 443) for packet in packets} == {"http"}


def test_ws_headers_are_exempt_without_their_first_bytes() -> None:
    # Ex2 is not all that stands between the request and S5: behind a
    # non-printable byte, the header block alone still meets Ex3.
    for seed in range(100):
        packet = ws_first_packet(seed)
        headers = packet[packet.index(b"\r\n") + 2 :]
        assert exemption(b"\x80" + headers) is Exemption.HALF_PRINTABLE


# --- tcp: the raw secure link (the control) ----------------------------------------


@pytest.mark.parametrize("seed", WIRE_SEEDS)
async def test_tcp_sends_the_secure_links_first_flight(seed: int) -> None:
    async def dial(port: int) -> None:
        link = await TcpTransport().dial(Endpoint.parse(f"tcp:127.0.0.1:{port}"))
        with pytest.raises(HandshakeError):
            await connect_secure(link, ALICE, BOB.public, wall_clock=lambda: NOW, rng=seeded(seed))

    wire, expected = await capture(dial, lambda _port: secure_first_flight(seed))
    assert wire == expected


def test_raw_secure_link_is_what_s5_and_s7_block() -> None:
    flights = [secure_first_flight(seed) for seed in SEEDS]
    flagged = sum(fully_encrypted(flight) for flight in flights)
    # 9,976 of 10,000 for these seeds; uniformly random bytes of these lengths
    # are flagged at ~99.7% (tests/test_detectors.py calibration).
    assert flagged >= len(flights) // 2
    assert flagged == 9_976
    for port in (53, 80, 443):
        assert [allowed_protocol([flight], port) for flight in flights] == [None] * len(flights)


# --- tls ---------------------------------------------------------------------------


def tls_first_packet(sni: str | None) -> bytes:
    """The ClientHello our tls transport's client context writes, made in memory
    (the same context and server_hostname the transport gives trio.SSLStream)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("sni", [None, "cdn.example.com"])
def test_tls_first_packets_pass_s5_and_read_as_tls_under_s7(sni: str | None) -> None:
    hellos = [tls_first_packet(sni) for _ in range(TLS_SAMPLES)]
    assert len(set(hellos)) == TLS_SAMPLES  # random, key shares and session ids differ
    assert sum(fully_encrypted(hello) for hello in hellos) == 0
    for port in (443, 80):
        assert {allowed_protocol([hello], port) for hello in hellos} == {"tls"}


# --- obfs: its S5 and constant-byte checks live in tests/test_obfs_transport.py ----------
