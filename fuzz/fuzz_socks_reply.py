"""Fuzz target: a SOCKS5 proxy's replies into the pt client handshake.

The first byte picks the handshake (even: no arguments, odd: pt-spec
arguments in RFC 1929 username/password); the rest is everything the proxy
sends (method choice, authentication reply, CONNECT reply, then peer bytes),
fed whole and then :attr:`Socks5Client.need` bytes at a time as the adapter
reads. Only :class:`PtProtocolError` or :class:`SocksReplyError` may come
out, both deliveries must agree, and reading by ``need`` leaves no leftover.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_socks_reply.py fuzz/corpus/socks_reply
"""

from __future__ import annotations

from transports.socks5 import PtProtocolError, Socks5Client, SocksReplyError

ARGS = (("cert", "a" * 70), ("iat-mode", "0"))


def _client(selector: int) -> Socks5Client:
    return Socks5Client("192.0.2.9", 443, ARGS if selector & 1 else ())


def _outcome(client: Socks5Client, sent: bytes) -> tuple[object, ...]:
    return (client.state, client.bound, sent)


def _whole(selector: int, data: bytes) -> tuple[object, ...]:
    client = _client(selector)
    try:
        sent = client.receive_data(data)
    except (PtProtocolError, SocksReplyError) as exc:
        return (type(exc), str(exc))
    if client.connected:
        assert client.leftover == data[len(data) - len(client.leftover) :]
    return _outcome(client, sent)


def _by_need(selector: int, data: bytes) -> tuple[object, ...]:
    client = _client(selector)
    sent, offset = bytearray(), 0
    try:
        while not client.connected and offset < len(data):
            need = client.need
            assert need > 0
            sent += client.receive_data(data[offset : offset + need])
            offset += need
    except (PtProtocolError, SocksReplyError) as exc:
        return (type(exc), str(exc))
    assert client.leftover == b""
    return _outcome(client, bytes(sent))


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    if not data:
        return
    assert _whole(data[0], data[1:]) == _by_need(data[0], data[1:])


def seeds() -> dict[str, bytes]:
    """Successful handshakes, every refusal, and malformed replies."""
    ok_v4 = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x10\x00"
    return {
        "no_auth_ok": b"\x00\x05\x00" + ok_v4,
        "auth_ok": b"\x01\x05\x02\x01\x00" + ok_v4 + b"peer bytes",
        "auth_ok_v6": b"\x01\x05\x02\x01\x00\x05\x00\x00\x04" + bytes(16) + b"\x00\x50",
        "auth_ok_name": b"\x01\x05\x02\x01\x00\x05\x00\x00\x03\x04host\x01\xbb",
        "auth_refused": b"\x01\x05\x02\x01\x01",
        "no_acceptable_method": b"\x01\x05\xff",
        "unoffered_method": b"\x00\x05\x02",
        "general_failure": b"\x01\x05\x02\x01\x00\x05\x01\x00\x01" + bytes(6),
        "connection_refused": b"\x00\x05\x00\x05\x05\x00\x01" + bytes(6),
        "ttl_expired": b"\x00\x05\x00\x05\x06\x00\x01" + bytes(6),
        "unassigned_code": b"\x00\x05\x00\x05\x09\x00\x01" + bytes(6),
        "bad_version": b"\x00\x04\x00",
        "bad_auth_version": b"\x01\x05\x02\x05\x00",
        "bad_reserved": b"\x00\x05\x00\x05\x00\x01\x01" + bytes(6),
        "bad_atyp": b"\x00\x05\x00\x05\x00\x00\x07",
        "empty_name": b"\x00\x05\x00\x05\x00\x00\x03\x00",
        "truncated": b"\x01\x05\x02\x01\x00\x05\x00\x00\x01\x7f",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
