"""Fuzz target: a tunnel request (what a bridge reads) and a tunnel reply
(what its client reads), from :mod:`p2pmsg.link.tunnel`.

The first byte picks the decoder; only :class:`RemoteProtocolError` may come
out, and whatever decodes encodes back to the same bytes.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_tunnel.py fuzz/corpus/tunnel
"""

from __future__ import annotations

from p2pmsg.errors import RemoteProtocolError
from p2pmsg.link import tunnel


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    if not data:
        return
    body = data[1:]
    try:
        if data[0] & 1:
            assert tunnel.encode_reply(tunnel.decode_reply(body)) == body
        else:
            assert tunnel.encode_open(tunnel.decode_open(body)) == body
    except RemoteProtocolError:
        pass


def seeds() -> dict[str, bytes]:
    """Valid requests and replies, and their broken neighbours."""
    request = tunnel.encode_open(tunnel.Open(bytes(range(32)), ("sim:a:1", "tcp:192.0.2.1:443")))
    return {
        "open": b"\x00" + request,
        "open_truncated": b"\x00" + request[:-3],
        "open_trailing": b"\x00" + request + b"\x00",
        "open_no_endpoints": b"\x00" + request[:34] + b"\x00",
        "open_too_many": b"\x00" + request[:34] + b"\x09",
        "open_not_utf8": b"\x00" + request[:35] + b"\x00\x02\xff\xfe",
        "reply_opened": b"\x01" + tunnel.encode_reply(tunnel.Reply(tunnel.Status.OPENED, 1)),
        "reply_busy": b"\x01" + tunnel.encode_reply(tunnel.Reply(tunnel.Status.BUSY)),
        "reply_unknown_status": b"\x01\x01\x07\x63\x00",
        "reply_bad_index": b"\x01\x01\x07\x00\x08",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
