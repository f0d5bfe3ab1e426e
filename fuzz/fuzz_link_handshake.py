"""Fuzz target: untrusted bytes into a secure-link responder.

The input is what a client sends to a listener: it goes into a fresh
responder :class:`LinkConnection` (fixed test key, fixed clock, fresh replay
window, so each input is judged alone), once whole and once byte by byte.
Only events or :class:`RemoteProtocolError` (``HandshakeError`` is one) may
come out, and both deliveries must give the same events and the same error.
Anything else is a bug.

A valid hello for the fixed key (``seeds()``) lets the fuzzer past the
handshake into the cell reader.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_link_handshake.py fuzz/corpus/link_handshake
"""

from __future__ import annotations

import random

from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity
from p2pmsg.link.connection import NEED_DATA, Closed, Established, LinkConnection, Message
from p2pmsg.link.replay import ReplayWindow

RESPONDER = Identity(bytes(range(32)))
INITIATOR = Identity(bytes(range(32, 64)))
NOW = 1_700_000_000.0
CHUNK = 4096  # stays far below the receive buffer's bound

Outcome = tuple[list[object], type[RemoteProtocolError] | None]


def _responder() -> LinkConnection:
    return LinkConnection(
        RESPONDER, replay=ReplayWindow(120.0), now=NOW, rng=random.Random(0).randbytes
    )


def _run(data: bytes, step: int) -> Outcome:
    conn = _responder()
    events: list[object] = []
    for pos in range(0, len(data), step):
        conn.receive_data(data[pos : pos + step])
        try:
            while (event := conn.next_event()) is not NEED_DATA:
                assert isinstance(event, Established | Message | Closed), event
                events.append(event)
                if isinstance(event, Closed):
                    return events, None
        except RemoteProtocolError as exc:
            return events, type(exc)
    return events, None


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    whole = _run(data, CHUNK)
    if len(data) <= 2 * CHUNK:  # byte by byte is quadratic-ish; keep it for sane sizes
        assert _run(data, 1) == whole, "byte-by-byte delivery disagrees with whole"


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: a valid hello and its neighbours."""
    client = LinkConnection(
        INITIATOR, peer=RESPONDER.public, now=NOW, rng=random.Random(1).randbytes
    )
    client.initiate()
    hello = client.data_to_send()

    # the same client, continued: the responder's reply is deterministic, so
    # the cells below open under the keys the target's responder will derive
    server = _responder()
    server.receive_data(hello)
    assert isinstance(server.next_event(), Established)
    client.receive_data(server.data_to_send())
    assert isinstance(client.next_event(), Established)
    client.send_message(b"hello from the fuzz corpus")
    client.send_message(bytes(3000))
    client.send_padding()
    client.close()
    cells = client.data_to_send()

    noise = random.Random(2)
    return {
        "valid_hello": hello,
        "valid_hello_then_cells": hello + cells,
        "valid_hello_then_cells_cut": hello + cells[:1500],
        "truncated_hello_33": hello[:33],
        "truncated_hello_34": hello[:34],
        "truncated_hello_minus_1": hello[:-1],
        "random_16": noise.randbytes(16),
        "random_200": noise.randbytes(200),
        "random_3000": noise.randbytes(3000),
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
