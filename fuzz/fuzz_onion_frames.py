"""Fuzz target: a Sphinx message, as its destination reads it, into the onion-frame decoder.

Only a :class:`ForwardMessage` / :class:`ReplyMessage` or
:class:`RemoteProtocolError` may come out, and a decoded message must encode
back to exactly the input bytes. The same bytes are also tried as a link
message carrying a packet. Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_onion_frames.py fuzz/corpus/onion_frames
"""

from __future__ import annotations

from p2pmsg.delivery.onion_frames import (
    ForwardMessage,
    ReplyMessage,
    decode,
    decode_packet_message,
    encode_forward,
    encode_packet_message,
    encode_reply,
)
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.onion import sphinx

ID = bytes(range(16))


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    try:
        packet = decode_packet_message(data)
    except RemoteProtocolError:
        pass
    else:
        assert encode_packet_message(packet) == data
    try:
        message = decode(data)
    except RemoteProtocolError:
        return
    if isinstance(message, ForwardMessage):
        assert encode_forward(message) == data
    else:
        assert isinstance(message, ReplyMessage)
        assert encode_reply(message) == data


def seeds() -> dict[str, bytes]:
    """Valid messages of each kind and their tampered neighbours."""
    surb = bytes(range(256)) * (sphinx.SURB_BYTES // 256) + bytes(sphinx.SURB_BYTES % 256)
    forward = encode_forward(ForwardMessage(surb, b"sealed envelope"))
    reply = encode_reply(ReplyMessage((ID, ID[::-1])))
    return {
        "forward": forward,
        "forward_empty_envelope": encode_forward(ForwardMessage(surb, b"")),
        "forward_cut": forward[:-1],
        "forward_long": forward + b"\x00",
        "reply": reply,
        "reply_cut": reply[:-1],
        "reply_zero_acks": reply[:2] + b"\x00",
        "bad_version": b"\x02" + reply[1:],
        "bad_kind": reply[:1] + b"\x09" + reply[2:],
        "packet": encode_packet_message(bytes(sphinx.PACKET_BYTES)),
        "packet_short": encode_packet_message(bytes(sphinx.PACKET_BYTES))[:-1],
        "empty": b"",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
