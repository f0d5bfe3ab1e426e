"""Fuzz target: a prober's bytes into the ws server's handshake and de-framer.

The first input byte picks the parser; the rest is what a peer sends:

0. the server's HTTP request parser (:class:`ServerHandshake`), fed whole and
   byte by byte; an upgrade's trailing bytes go on into a server de-framer;
1. a server-side de-framer (masked client frames), whole and in 7-byte pieces;
2. a client-side de-framer (unmasked server frames), the same way;
3. the client's parser of the server's answer (:class:`ClientHandshake`).

Only the events of those cores, :class:`WsProtocolError` (de-framers) or
:class:`WsRefused` (client handshake) may come out, both deliveries must
agree, and a server answers a ``101`` only to a request it upgraded.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_ws_deframe.py fuzz/corpus/ws_deframe
"""

from __future__ import annotations

import struct

from p2pmsg.endpoint import Endpoint
from transports.ws import parse_ws_endpoint
from transports.ws_core import (
    NEED_DATA,
    ClientHandshake,
    Message,
    NeedData,
    PeerClosed,
    Refused,
    ServerHandshake,
    Upgraded,
    WsFramer,
    WsProtocolError,
    WsRefused,
)

NOW = 1_700_000_000.0
KEY = bytes(range(16))
TARGET = parse_ws_endpoint(Endpoint.parse("ws:198.51.100.7:443/chat"))
Outcome = tuple[list[bytes], str]


def _drain(framer: WsFramer, messages: list[bytes]) -> str | None:
    """Collect messages; the terminal state's name, or None when more is needed."""
    while True:
        try:
            event = framer.next_event()
        except WsProtocolError as exc:
            code = exc.close_code
            return "error" if 1000 <= code < 5000 else f"bad close code {code}"
        if isinstance(event, NeedData):
            return None
        if isinstance(event, PeerClosed):
            return "closed"
        assert isinstance(event, Message)
        messages.append(event.data)


def deframe(data: bytes, *, client: bool, piece: int) -> Outcome:
    framer = WsFramer(client=client)
    messages: list[bytes] = []
    end = None
    for i in range(0, len(data), piece):
        framer.receive_data(data[i : i + piece])
        end = _drain(framer, messages)
        if end is not None:
            break
    if end is None:
        framer.receive_eof()
        end = _drain(framer, messages)
    assert end in ("closed", "error"), end
    return messages, end


def handshake(data: bytes, piece: int) -> tuple[NeedData | Upgraded | Refused, bytes]:
    """Outcome and the bytes after it (trailing plus the unfed rest)."""
    server = ServerHandshake("/chat", now=NOW)
    for i in range(0, len(data), piece):
        outcome = server.receive_data(data[i : i + piece])
        if not isinstance(outcome, NeedData):
            rest = data[i + piece :]
            return outcome, (outcome.trailing + rest if isinstance(outcome, Upgraded) else rest)
    return NEED_DATA, b""


def check_handshake(data: bytes) -> None:
    whole, after_whole = handshake(data, len(data) or 1)
    single, after_single = handshake(data, 1)
    assert type(whole) is type(single)
    if isinstance(whole, Refused | Upgraded):
        assert isinstance(single, Refused | Upgraded)
        assert whole.response == single.response
        assert whole.response.startswith(b"HTTP/1.1 101 ") == isinstance(whole, Upgraded)
    if isinstance(whole, Upgraded):
        assert after_whole == after_single
        deframe(after_whole, client=False, piece=max(1, len(after_whole)))


def check_answer(data: bytes) -> None:
    client = ClientHandshake(TARGET, key=KEY)
    try:
        outcome = client.receive_data(data)
    except WsRefused:
        return
    assert isinstance(outcome, NeedData | Upgraded)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    if mode == 0:
        check_handshake(body)
    elif mode == 3:
        check_answer(body)
    else:
        client = mode == 2
        assert deframe(body, client=client, piece=max(1, len(body))) == deframe(
            body, client=client, piece=7
        )


def _masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        head = bytes([first, 0x80 | size])
    elif size < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack("!H", size)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack("!Q", size)
    mask = b"\x01\x02\x03\x04"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def seeds() -> dict[str, bytes]:
    """A real client's request, probes, and good and bad frames for each parser."""
    request = ClientHandshake(TARGET, key=KEY).request
    server = ServerHandshake("/chat", now=NOW).receive_data(request)
    assert isinstance(server, Upgraded)
    frames = _masked(2, b"hello") + _masked(9, b"ping") + _masked(8, b"\x03\xe8")
    return {
        "handshake_upgrade": b"\x00" + request + frames,
        "handshake_cut": b"\x00" + request[:100],
        "handshake_other_path": b"\x00" + request.replace(b"/chat", b"/other", 1),
        "handshake_plain_get": b"\x00GET / HTTP/1.1\r\nHost: example.org\r\n\r\n",
        "handshake_head": b"\x00HEAD /chat HTTP/1.1\r\nHost: example.org\r\n\r\n",
        "handshake_tls_hello": b"\x00\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),
        "handshake_huge_header": b"\x00GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
        "server_frames": b"\x01" + frames,
        "server_fragmented": b"\x01" + _masked(2, b"ab", fin=False) + _masked(0, b"cd"),
        "server_unmasked": b"\x01\x82\x02hi",
        "server_text": b"\x01" + _masked(1, "hé".encode()),
        "server_bad_utf8_text": b"\x01" + _masked(1, b"\xc3\x28"),
        "server_too_big": b"\x01\x82\xff" + struct.pack("!Q", 2**20 + 1) + b"\0\0\0\0",
        "server_reserved_bit": b"\x01\xc2\x80\0\0\0\0",
        "server_bad_close_code": b"\x01" + _masked(8, b"\x03\xec"),
        "server_long_ping": b"\x01" + _masked(9, b"p" * 126),
        "server_cut_frame": b"\x01" + _masked(2, b"x" * 300)[:-1],
        "client_frames": b"\x02\x82\x05hello\x89\x00\x88\x02\x03\xe8",
        "client_masked": b"\x02" + _masked(2, b"no"),
        "answer_101": b"\x03" + server.response + b"\x82\x00",
        "answer_404": b"\x03HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        "answer_bad_accept": b"\x03" + server.response.replace(b"Accept: ", b"Accept: x"),
        "answer_garbage": b"\x03SSH-2.0-OpenSSH_9.2\r\n\r\n",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
