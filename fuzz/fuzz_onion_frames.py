"""Fuzz target: a Sphinx message, as its destination reads it, into the onion-frame decoder.

Only a decoded message (forward, reply, mailbox fetch, clear, entry part or
fragment) or :class:`RemoteProtocolError` may come out, and a decoded message
must encode back to exactly the input bytes. The same bytes are also tried as a link
message carrying a packet. Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_onion_frames.py fuzz/corpus/onion_frames
"""

from __future__ import annotations

from p2pmsg.delivery.onion_frames import (
    ClearRequests,
    EntryPart,
    FetchRequest,
    ForwardMessage,
    Fragment,
    ReplyMessage,
    Unreadable,
    decode,
    decode_packet_message,
    encode_clears,
    encode_fetch,
    encode_forward,
    encode_fragment,
    encode_packet_message,
    encode_part,
    encode_reply,
    encode_unreadable,
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
    match message:
        case ForwardMessage():
            assert encode_forward(message) == data
        case ReplyMessage():
            assert encode_reply(message) == data
        case FetchRequest():
            assert encode_fetch(message) == data
        case ClearRequests():
            assert encode_clears(message) == data
        case EntryPart():
            assert encode_part(message) == data
        case Fragment():
            assert encode_fragment(message) == data
        case Unreadable():
            assert encode_unreadable(message) == data


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
        "fetch": encode_fetch(FetchRequest(bytes(32), 7, b"session!", (surb, surb), (b"p" * 8,))),
        "fetch_cut": encode_fetch(FetchRequest(bytes(32), 7, b"session!", (surb,)))[:-1],
        "clears": encode_clears(ClearRequests((b"signed", b"requests"))),
        "clears_trailing": encode_clears(ClearRequests((b"x",))) + b"\x00",
        "part": encode_part(EntryPart(ID, 1, 2, 3, b"data")),
        "part_index_past_count": encode_part(EntryPart(ID, 0, 1, 0, b"d"))[:18]
        + b"\x05\x01"
        + encode_part(EntryPart(ID, 0, 1, 0, b"d"))[20:],
        "part_none_left": encode_part(EntryPart(bytes(16), 0, 0, 0, b"")),
        "fragment": encode_fragment(Fragment(ID, 1, 3, b"data")),
        "fragment_alone": encode_fragment(Fragment(ID, 0, 2, b"d"))[:18]
        + b"\x00\x01"
        + encode_fragment(Fragment(ID, 0, 2, b"d"))[20:],
        "unreadable": encode_unreadable(Unreadable.REPLAYED_START),
        "unreadable_unknown_reason": encode_unreadable(Unreadable.NO_SESSION)[:2] + b"\x09",
        "packet": encode_packet_message(bytes(sphinx.PACKET_BYTES)),
        "packet_short": encode_packet_message(bytes(sphinx.PACKET_BYTES))[:-1],
        "empty": b"",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
