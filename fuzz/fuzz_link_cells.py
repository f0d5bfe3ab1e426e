"""Fuzz target: the cell reader of an established secure link.

Random bytes never get past the cells' MAC, so the input mostly describes
*plaintext* cells, which the harness seals with the peer's real transport
cipher; that puts the parser (type, length, fragments, size limit, close)
within the fuzzer's reach. The first byte picks the mode:

* ``0``: 3-byte records ``type, length(u16)``; each becomes one cell whose
  data is a slice of a fixed filler (compact: a 64 KiB message is ~200 bytes
  of input);
* ``1``: raw plaintext blocks of ``CELL_PLAINTEXT`` bytes (zero-padded);
* ``2``: raw bytes on the wire after the handshake (no key: nothing may open).

Only events or :class:`RemoteProtocolError` may come out. The events must
also agree with a reference reassembly of the cells sent: equal to it when
no error was raised, a prefix of it when one was. Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_link_cells.py fuzz/corpus/link_cells
"""

from __future__ import annotations

import random
import struct

from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity
from p2pmsg.link import wire
from p2pmsg.link.connection import NEED_DATA, Closed, Established, LinkConnection, Message
from p2pmsg.link.noise import CipherState
from p2pmsg.link.replay import ReplayWindow

RESPONDER = Identity(bytes(range(32)))
INITIATOR = Identity(bytes(range(32, 64)))
NOW = 1_700_000_000.0
FEED = 1000  # not a multiple of CELL_SIZE, so cells arrive split
FILLER = bytes(range(256)) * 4
RECORDS, PLAINTEXT, RAW = 0, 1, 2
_KINDS = frozenset(int(kind) for kind in wire.CellType)


def _established() -> tuple[CipherState, LinkConnection]:
    """(the client's send cipher, the server connection), handshake done."""
    client = LinkConnection(
        INITIATOR, peer=RESPONDER.public, now=NOW, rng=random.Random(1).randbytes
    )
    server = LinkConnection(
        RESPONDER, replay=ReplayWindow(120.0), now=NOW, rng=random.Random(0).randbytes
    )
    client.initiate()
    server.receive_data(client.data_to_send())
    assert isinstance(server.next_event(), Established)
    client.receive_data(server.data_to_send())
    assert isinstance(client.next_event(), Established)
    cipher = client._send
    assert cipher is not None
    return cipher, server


def _blocks(mode: int, body: bytes) -> list[bytes]:
    """The plaintext cells (CELL_PLAINTEXT bytes each) that ``body`` describes."""
    if mode == RECORDS:
        blocks = []
        for pos in range(0, len(body) - 2, 3):
            (length,) = struct.unpack(">H", body[pos + 1 : pos + 3])
            data = FILLER[: min(length, wire.CELL_DATA)]
            blocks.append((body[pos : pos + 3] + data).ljust(wire.CELL_PLAINTEXT, b"\x00"))
        return blocks
    size = wire.CELL_PLAINTEXT
    return [body[p : p + size].ljust(size, b"\x00") for p in range(0, len(body), size)]


def _reference(blocks: list[bytes]) -> list[object]:
    """The events a correct reader gives for these cells, up to the first bad one."""
    events: list[object] = []
    fragments = b""
    for block in blocks:
        kind, length = struct.unpack(">BH", block[:3])
        if length > wire.CELL_DATA or kind not in _KINDS:
            break
        data = block[3 : 3 + length]
        match wire.CellType(kind):
            case wire.CellType.MORE:
                fragments += data
            case wire.CellType.END:
                events.append(Message(fragments + data))
                fragments = b""
            case wire.CellType.CLOSE:
                events.append(Closed())
                break
            case wire.CellType.PADDING:
                pass
    return events


def _drive(conn: LinkConnection, wire_bytes: bytes) -> tuple[list[object], bool]:
    """Feed and pull; (events, whether a RemoteProtocolError ended it)."""
    events: list[object] = []
    for pos in range(0, len(wire_bytes), FEED):
        conn.receive_data(wire_bytes[pos : pos + FEED])
        try:
            while (event := conn.next_event()) is not NEED_DATA:
                assert isinstance(event, Message | Closed), event
                events.append(event)
                if isinstance(event, Closed):
                    return events, False
        except RemoteProtocolError:
            return events, True
    return events, False


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    cipher, conn = _established()
    if mode == RAW:
        events, _ = _drive(conn, body)
        assert events == [], "a cell opened without the key"
        return
    blocks = _blocks(mode, body)
    sealed = b"".join(cipher.encrypt_with_ad(b"", block) for block in blocks)
    events, failed = _drive(conn, sealed)
    for event in events:
        if isinstance(event, Message):
            assert len(event.data) <= wire.MAX_MESSAGE, "message over MAX_MESSAGE"
    expected = _reference(blocks)
    if failed:
        assert events == expected[: len(events)], "events before the error are wrong"
    else:
        assert events == expected, "events differ from the reference reassembly"


def _records(*cells: tuple[int, int]) -> bytes:
    return bytes([RECORDS]) + b"".join(struct.pack(">BH", kind, n) for kind, n in cells)


def seeds() -> dict[str, bytes]:
    pad, more, end, close = (
        int(wire.CellType.PADDING),
        int(wire.CellType.MORE),
        int(wire.CellType.END),
        int(wire.CellType.CLOSE),
    )
    longest = wire.MAX_MESSAGE // wire.CELL_DATA
    tail = wire.MAX_MESSAGE - longest * wire.CELL_DATA
    plain = struct.pack(">BH", end, 5) + b"hello"
    noise = random.Random(3)
    return {
        "records_one_message": _records((end, 5)),
        "records_fragmented": _records((more, wire.CELL_DATA), (more, wire.CELL_DATA), (end, 7)),
        "records_padding_and_close": _records((pad, 0), (end, 0), (pad, 9), (close, 0), (end, 3)),
        "records_max_message": _records(*[(more, wire.CELL_DATA)] * longest, (end, tail)),
        "records_over_max_message": _records(*[(more, wire.CELL_DATA)] * longest, (end, tail + 1)),
        "records_bad_type": _records((end, 1), (9, 0)),
        "records_bad_length": _records((end, wire.CELL_DATA + 1)),
        "plaintext_one_cell": bytes([PLAINTEXT]) + plain,
        "plaintext_two_cells": bytes([PLAINTEXT]) + plain.ljust(wire.CELL_PLAINTEXT, b"\0") + plain,
        "raw_random": bytes([RAW]) + noise.randbytes(2 * wire.CELL_SIZE + 5),
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
