"""Fuzz target: one link message into the delivery frame decoder.

The input is what a peer sends inside an established secure link (the link
preserves message boundaries). Only a :class:`MsgFrame` / :class:`AckFrame`
or :class:`RemoteProtocolError` may come out, and a decoded frame must
encode back to exactly the input bytes. Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_frames.py fuzz/corpus/frames
"""

from __future__ import annotations

from p2pmsg.delivery.files import split
from p2pmsg.delivery.frames import (
    HEADER_BYTES,
    AckFrame,
    MessageKind,
    MsgFrame,
    decode,
    encode,
)
from p2pmsg.errors import RemoteProtocolError

ID = bytes(range(16))
SENT_MS = 1_700_000_000_123


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    try:
        frame = decode(data)
    except RemoteProtocolError:
        return
    assert isinstance(frame, MsgFrame | AckFrame)
    if isinstance(frame, MsgFrame):
        assert isinstance(frame.kind, MessageKind)
        if frame.kind is MessageKind.TEXT:
            frame.body.decode("utf-8")  # a UnicodeDecodeError here is a bug
    assert encode(frame) == data


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: valid frames and their tampered neighbours."""
    text = encode(MsgFrame(ID, SENT_MS, MessageKind.TEXT, "hé 😀".encode(), seq=7, low=3))
    raw = encode(MsgFrame(ID, 0, MessageKind.BYTES, bytes(range(256))))
    ack = encode(AckFrame(ID))
    return {
        "msg_text": text,
        "msg_bytes": raw,
        "msg_empty": encode(MsgFrame(ID, 2**64 - 1, MessageKind.TEXT, b"")),
        "ack": ack,
        "ack_long": ack + b"\x00",
        "ack_short": ack[:-1],
        "msg_header_cut": text[: HEADER_BYTES - 1],
        "text_cut_in_a_character": text[:-1],
        "text_not_utf8": text[:HEADER_BYTES] + b"\xc3\x28",
        "bad_version": b"\x02" + text[1:],
        "bad_type": text[:1] + b"\x03" + text[2:],
        "bad_kind": text[:26] + b"\x09" + text[27:],
        "file_part": encode(MsgFrame(ID, 0, MessageKind.FILE_PART, split(ID, "a.txt", b"hi")[0])),
        "empty": b"",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
