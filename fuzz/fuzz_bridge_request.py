"""Fuzz target: a bridge request (what a distributor reads) and a bridge
reply (what the node that asked reads), from :mod:`p2pmsg.distributor`.

The first byte picks the decoder; only :class:`RemoteProtocolError` may come
out, and whatever decodes encodes back to the same bytes.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_bridge_request.py fuzz/corpus/bridge_request
"""

from __future__ import annotations

from p2pmsg import distributor
from p2pmsg.errors import RemoteProtocolError


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    if not data:
        return
    body = data[1:]
    try:
        if data[0] & 1:
            assert distributor.encode_reply(distributor.decode_reply(body)) == body
        else:
            assert distributor.encode_request(distributor.decode_request(body)) == body
    except RemoteProtocolError:
        pass


def seeds() -> dict[str, bytes]:
    """Valid requests and replies, and their broken neighbours."""
    request = distributor.encode_request([bytes(range(32)), bytes(32)])
    reply = distributor.encode_reply(["p2pmsg://key@tcp:192.0.2.1:443", "p2pmsg://other"])
    return {
        "request": b"\x00" + request,
        "request_empty": b"\x00" + distributor.encode_request([]),
        "request_short_key": b"\x00" + request[:-1],
        "request_too_many": b"\x00\x01\x09\xff",
        "reply": b"\x01" + reply,
        "reply_empty": b"\x01" + distributor.encode_reply([]),
        "reply_truncated": b"\x01" + reply[:-4],
        "reply_trailing": b"\x01" + reply + b"\x00",
        "reply_too_many": b"\x01\x01\x0a\x04",
        "reply_not_utf8": b"\x01\x01\x0a\x01\x00\x02\xff\xfe",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
