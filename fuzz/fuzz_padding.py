"""Fuzz target: a peer's bytes into the ``pad_*`` transport's de-framer.

The input is what a peer sends on a ``pad_*`` link. It goes into a
:class:`~transports.padding_core.Deframer` whole and in 7-byte pieces (events
drained between feeds, as the adapter does), then the end of the stream.
Only :class:`Data` events, the clean end or :class:`PaddingProtocolError` may
come out, and both deliveries must agree (messages, outcome, PAD frames
skipped). No message exceeds ``MAX_SEND``, the buffer never holds more than
one partial frame plus the piece just fed, and the messages re-encoded
without padding decode to themselves.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_padding.py fuzz/corpus/padding
"""

from __future__ import annotations

import random
import struct

from p2pmsg.abc import MAX_SEND
from transports.padding_core import (
    MAX_FRAME,
    MAX_PADDING,
    Data,
    Deframer,
    EndOfStream,
    NeedData,
    PaddingProtocolError,
    encode_data,
    encode_pad,
)

Outcome = tuple[list[bytes], str, int]


def _drain(deframer: Deframer, messages: list[bytes]) -> str | None:
    """Collect messages; ``"end"`` or ``"error"``, or None when more is needed."""
    while True:
        try:
            event = deframer.next_event()
        except PaddingProtocolError:
            return "error"
        if isinstance(event, NeedData):
            return None
        if isinstance(event, EndOfStream):
            return "end"
        assert isinstance(event, Data)
        assert len(event.data) <= MAX_SEND
        messages.append(event.data)


def deframe(data: bytes, piece: int) -> Outcome:
    deframer = Deframer()
    messages: list[bytes] = []
    for i in range(0, len(data), piece):
        chunk = data[i : i + piece]
        deframer.receive_data(chunk)
        end = _drain(deframer, messages)
        assert deframer.buffered < MAX_FRAME + len(chunk)
        if end is not None:
            return messages, end, deframer.pad_frames
    deframer.receive_eof()
    end = _drain(deframer, messages)
    assert end is not None
    return messages, end, deframer.pad_frames


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    whole = deframe(data, max(1, len(data)))
    assert deframe(data, 7) == whole
    messages = whole[0]
    again = b"".join(encode_data(m) for m in messages)
    assert deframe(again, max(1, len(again))) == (messages, "end", 0)


def _header(type_byte: int, data_len: int, pad_len: int) -> bytes:
    return struct.pack(">BIH", type_byte, data_len, pad_len)


def seeds() -> dict[str, bytes]:
    """Good streams, their truncations, and each header the de-framer refuses."""
    two = encode_data(b"hello", b"\0\1\2") + encode_data(b"", b"")
    return {
        "empty": b"",
        "data_frames": two,
        "pad_then_data": encode_pad(bytes(100)) + encode_data(b"x" * 300, b"p" * 17),
        "many_pads": encode_pad() * 200 + encode_data(b"after"),
        "max_padding": encode_data(b"m", bytes(MAX_PADDING)),
        "truncated_body": encode_data(b"hello", b"\0\1\2")[:-1],
        "truncated_header": two[:5],
        "oversized_data": _header(0x11, MAX_SEND + 1, 0),
        "oversized_padding": _header(0x11, 1, MAX_PADDING + 1) + b"x",
        "bad_version": _header(0x21, 0, 0),
        "bad_kind": _header(0x13, 0, 0),
        "pad_with_data": _header(0x12, 1, 0) + b"x",
        "random": random.Random(0).randbytes(300),
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
