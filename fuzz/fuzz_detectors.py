"""Fuzz target: bytes into the censor's detectors and parsers (S3-S7).

``fully_encrypted``, ``allowed_protocol``, ``client_hello_sni`` and
``dns_query_name`` read whatever a simulated client sends first; each must
answer, never raise, and the parsers must only name what is there.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_detectors.py fuzz/corpus/detectors
"""

from __future__ import annotations

import struct

from p2pmsg.sim import detectors
from p2pmsg.sim.control import dns_query


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    assert isinstance(detectors.fully_encrypted(data), bool)
    half = len(data) // 2
    assert detectors.allowed_protocol([data[:half], data[half:]], 443) in (
        None, "dns", "http", "tls",
    )  # fmt: skip
    name = detectors.client_hello_sni(data)
    assert name is None or (name and len(name) <= detectors.MSS)
    query = detectors.dns_query_name(data)
    assert query is None or len(query) <= 255


def client_hello(name: bytes) -> bytes:
    """A minimal TLS 1.2 ClientHello with one extension, server_name (RFC 6066)."""
    sni = struct.pack(">HBH", len(name) + 3, 0, len(name)) + name
    extensions = struct.pack(">HH", 0, len(sni)) + sni
    body = (
        b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
        + struct.pack(">H", len(extensions)) + extensions
    )  # fmt: skip
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake


def seeds() -> dict[str, bytes]:
    """A ClientHello and a DNS query, and broken neighbours of each."""
    hello, query = client_hello(b"chat.messenger.example"), dns_query("s0.messenger.example")
    return {
        "client_hello": hello,
        "client_hello_cut": hello[:80],
        "client_hello_no_extensions": hello[: 5 + 4 + 2 + 32 + 1],
        "dns_query": query,
        "dns_query_cut": query[:-3],
        "http": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "random": bytes(range(256)),
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
