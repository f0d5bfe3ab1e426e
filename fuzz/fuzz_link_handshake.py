"""Fuzz target: untrusted bytes into both ends of a secure-link handshake.

The input goes, once whole and once byte by byte, into three fresh
:class:`LinkConnection` (fixed test keys, fixed clock, fresh replay window,
so each input is judged alone): a calm responder (what a client sends to a
listener), a responder under load whose :class:`Pricing` asks every first
flight for work (the flight's tail, the paid flight), and an initiator that
has sent its first flight (what a listener answers: a reply or a price
frame). Only events or :class:`RemoteProtocolError` (``HandshakeError`` is
one) may come out, and both deliveries must give the same events and the
same error. Anything else is a bug.

A valid hello for the fixed key (``seeds()``) lets the fuzzer past the
handshake into the cell reader; a hello followed by one that pays the busy
responder's price, past the price.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_link_handshake.py fuzz/corpus/link_handshake
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from p2pmsg import puzzle
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity
from p2pmsg.link import wire
from p2pmsg.link.connection import NEED_DATA, Closed, Established, LinkConnection, Message, Priced
from p2pmsg.link.replay import ReplayWindow

RESPONDER = Identity(bytes(range(32)))
INITIATOR = Identity(bytes(range(32, 64)))
NOW = 1_700_000_000.0
CHUNK = 4096  # stays far below the receive buffer's bound

Outcome = tuple[list[object], type[RemoteProtocolError] | None]


def _responder(busy: bool = False) -> LinkConnection:
    pricing = None
    if busy:
        pricing = puzzle.Pricing(random.Random(3).randbytes, calm=2, window=10.0)
        for _ in range(3):
            pricing.ask(0.0)  # a busy window: from 10.0 on, every flight is priced
    return LinkConnection(
        RESPONDER,
        replay=ReplayWindow(120.0),
        now=NOW,
        rng=random.Random(0).randbytes,
        pricing=pricing,
        monotonic=10.0,
    )


def _initiator() -> LinkConnection:
    """A client that has sent its first flight."""
    client = LinkConnection(
        INITIATOR, peer=RESPONDER.public, now=NOW, rng=random.Random(1).randbytes
    )
    client.initiate()
    client.data_to_send()
    return client


ROLES: dict[str, Callable[[], LinkConnection]] = {
    "calm responder": _responder,
    "busy responder": lambda: _responder(busy=True),
    "initiator": _initiator,
}


def _run(conn: LinkConnection, data: bytes, step: int) -> Outcome:
    events: list[object] = []
    for pos in range(0, len(data), step):
        conn.receive_data(data[pos : pos + step])
        try:
            while (event := conn.next_event()) is not NEED_DATA:
                assert isinstance(event, Established | Message | Closed | Priced), event
                events.append(event)
                if isinstance(event, Closed | Priced):
                    return events, None
        except RemoteProtocolError as exc:
            return events, type(exc)
    return events, None


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    for role, make in ROLES.items():
        whole = _run(make(), data, CHUNK)
        if len(data) <= 2 * CHUNK:  # byte by byte is quadratic-ish; keep it for sane sizes
            assert _run(make(), data, 1) == whole, f"{role}: byte by byte disagrees with whole"


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: a valid hello and its neighbours."""
    client = LinkConnection(
        INITIATOR, peer=RESPONDER.public, now=NOW, rng=random.Random(1).randbytes
    )
    client.initiate()
    hello = client.data_to_send()

    # the busy responder's price for this hello, and the flight that pays it
    busy = _responder(busy=True)
    busy.receive_data(hello)
    assert busy.next_event() is NEED_DATA
    price_frame = busy.data_to_send()
    payer = _initiator()
    payer.receive_data(price_frame)
    priced = payer.next_event()
    assert isinstance(priced, Priced)
    payer.pay(
        trio.run(
            lambda: puzzle.solve_nonce(
                priced.price,
                person=wire.POW_PERSON,
                checkpoint=trio.lowlevel.checkpoint,
                first=bytes(puzzle.NONCE_BYTES),
            )
        )
    )
    paid_hello = payer.data_to_send()

    # the same client, continued: the responder's reply is deterministic, so
    # the cells below open under the keys the target's responder will derive
    server = _responder()
    server.receive_data(hello)
    assert isinstance(server.next_event(), Established)
    reply = server.data_to_send()
    client.receive_data(reply)
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
        "valid_hello_then_paid_hello": hello + paid_hello,
        "valid_reply": reply,
        "price_frame": price_frame,
        "price_frame_cut": price_frame[:40],
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
