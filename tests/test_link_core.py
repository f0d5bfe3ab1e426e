"""LinkConnection, sans-IO: two pure peers passing bytes in memory.

Every test asserts exact event lists. Randomness comes from seeded
``random.Random`` instances, so each test sees the same bytes on every run.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from p2pmsg.errors import HandshakeError, LocalProtocolError, RemoteProtocolError
from p2pmsg.keys import Identity
from p2pmsg.link import wire
from p2pmsg.link.connection import (
    MAX_BUFFER,
    NEED_DATA,
    Closed,
    Established,
    Event,
    LinkConnection,
    Message,
    State,
)
from p2pmsg.link.noise import CipherState, HandshakeState
from p2pmsg.link.replay import ReplayWindow

ALICE = Identity(bytes([1]) * 32)
BOB = Identity(bytes([2]) * 32)
CAROL = Identity(bytes([3]) * 32)
NOW = 1_700_000_000.0
WINDOW = 120.0

HELLO_NOISE_LEN = 32 + 32 + 16 + (8 + 32) + 16
REPLY_NOISE_LEN = 32 + 16
FRAME_OVERHEAD = wire.HEADER_LEN + 2 + wire.TAG_LEN


def _rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def _initiator(seed: int = 0, *, now: float = NOW, peer: Identity = BOB) -> LinkConnection:
    return LinkConnection(ALICE, peer=peer.public, now=now, rng=_rng(seed))


def _responder(
    seed: int = 1_000, *, window: ReplayWindow | None = None, now: float = NOW
) -> LinkConnection:
    replay = window if window is not None else ReplayWindow(WINDOW)
    return LinkConnection(BOB, replay=replay, now=now, rng=_rng(seed))


def _events(conn: LinkConnection) -> list[Event]:
    """Pull events until NEED_DATA (or a close, which repeats forever)."""
    out: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        assert isinstance(event, Established | Message | Closed)
        out.append(event)
        if isinstance(event, Closed):
            return out


def _feed(conn: LinkConnection, data: bytes, chunks: list[int] | None = None) -> list[Event]:
    """Deliver ``data`` in pieces of the given sizes (cycled), pulling events after each."""
    sizes = chunks or [len(data) or 1]
    out: list[Event] = []
    pos = 0
    n = 0
    while pos < len(data):
        size = sizes[n % len(sizes)]
        conn.receive_data(data[pos : pos + size])
        pos += size
        n += 1
        out += _events(conn)
        if out and isinstance(out[-1], Closed):
            break
    return out


def _feed_into(conn: LinkConnection, data: bytes, delivered: list[Event]) -> None:
    """Like :func:`_feed` one cell at a time, keeping the events seen before a raise."""
    for i in range(0, len(data), wire.CELL_SIZE):
        conn.receive_data(data[i : i + wire.CELL_SIZE])
        delivered += _events(conn)


def _established_pair(seed: int = 0) -> tuple[LinkConnection, LinkConnection]:
    init, resp = _initiator(seed), _responder(seed + 1_000)
    init.initiate()
    resp.receive_data(init.data_to_send())
    assert _events(resp) == [Established(ALICE.public)]
    init.receive_data(resp.data_to_send())
    assert _events(init) == [Established(BOB.public)]
    return init, resp


def _send_cipher(conn: LinkConnection) -> CipherState:
    """The peer's transport cipher, to craft cells the API would not send."""
    cipher = conn._send
    assert cipher is not None
    return cipher


def _assert_broken(conn: LinkConnection, more: bytes = b"") -> None:
    assert conn.state is State.BROKEN
    for _ in range(3):
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
    conn.receive_data(more or bytes(wire.CELL_SIZE))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


# -- the happy path ----------------------------------------------------------


def test_exact_events_both_ways() -> None:
    init, resp = _initiator(), _responder()
    assert init.state is State.START
    assert resp.state is State.AWAIT_HELLO
    assert init.next_event() is NEED_DATA
    init.initiate()
    assert init.state is State.SENT_HELLO
    hello = init.data_to_send()
    assert init.data_to_send() == b""

    assert _feed(resp, hello) == [Established(ALICE.public)]
    assert resp.state is State.OPEN
    assert resp.peer == ALICE.public
    reply = resp.data_to_send()

    assert _feed(init, reply) == [Established(BOB.public)]
    assert init.state is State.OPEN

    init.send_message(b"hello bob")
    init.send_message(b"")
    assert _feed(resp, init.data_to_send()) == [Message(b"hello bob"), Message(b"")]
    resp.send_padding()
    resp.send_message(b"hi alice")
    resp.send_padding()
    assert _feed(init, resp.data_to_send()) == [Message(b"hi alice")]

    init.close()
    assert _feed(resp, init.data_to_send()) == [Closed()]
    assert resp.state is State.CLOSED
    assert resp.next_event() == Closed()
    with pytest.raises(LocalProtocolError):
        init.send_message(b"after close")


def test_reply_and_first_cells_in_one_chunk() -> None:
    """A stream transport may join the reply with the cells that follow it."""
    init, resp = _initiator(), _responder()
    init.initiate()
    resp.receive_data(init.data_to_send())
    assert _events(resp) == [Established(ALICE.public)]
    resp.send_message(b"early")
    resp.close()
    assert _feed(init, resp.data_to_send()) == [
        Established(BOB.public),
        Message(b"early"),
        Closed(),
    ]


def _transcript(seed: int) -> tuple[bytes, bytes]:
    """(initiator's hello, everything the responder sends) for one seed."""
    init, resp = _initiator(seed), _responder(seed + 1_000)
    init.initiate()
    hello = init.data_to_send()
    resp.receive_data(hello)
    _events(resp)
    resp.send_message(b"a")
    resp.send_message(bytes(range(256)) * 12)
    resp.send_padding()
    resp.send_message(b"")
    resp.close()
    return hello, resp.data_to_send()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_byte_by_byte_equals_all_at_once(seed: int) -> None:
    hello, responder_bytes = _transcript(seed)
    expected = [
        Established(BOB.public),
        Message(b"a"),
        Message(bytes(range(256)) * 12),
        Message(b""),
        Closed(),
    ]
    for chunks in (None, [1], [7, 1, 1500], [wire.CELL_SIZE - 1]):
        init = _initiator(seed)
        init.initiate()
        assert init.data_to_send() == hello  # same seed, same bytes
        assert _feed(init, responder_bytes, chunks) == expected

    whole = _responder(seed + 1_000)
    bytewise = _responder(seed + 1_000)
    assert _feed(whole, hello) == _feed(bytewise, hello, [1]) == [Established(ALICE.public)]
    assert whole.data_to_send() == bytewise.data_to_send()


# -- fragmentation ---------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=wire.MAX_MESSAGE), min_size=1, max_size=3),
    data_seed=st.integers(min_value=0, max_value=2**32),
    chunks=st.lists(st.integers(min_value=1, max_value=3 * wire.CELL_SIZE), min_size=1),
)
@example(sizes=[0, 1, wire.CELL_DATA - 1], data_seed=0, chunks=[1])
@example(sizes=[wire.CELL_DATA, wire.CELL_DATA + 1], data_seed=0, chunks=[wire.CELL_SIZE])
@example(sizes=[wire.MAX_MESSAGE - 1, wire.MAX_MESSAGE], data_seed=0, chunks=[4096])
def test_fragmentation_round_trip(sizes: list[int], data_seed: int, chunks: list[int]) -> None:
    init, resp = _established_pair()
    source = random.Random(data_seed)
    messages = [source.randbytes(size) for size in sizes]
    for message in messages:
        init.send_message(message)
    sent = init.data_to_send()
    cells = sum(max(1, -(-len(m) // wire.CELL_DATA)) for m in messages)
    assert len(sent) == cells * wire.CELL_SIZE
    assert _feed(resp, sent, chunks) == [Message(m) for m in messages]


def test_max_message_plus_one_is_refused_locally() -> None:
    init, resp = _established_pair()
    with pytest.raises(ValueError, match="larger than"):
        init.send_message(bytes(wire.MAX_MESSAGE + 1))
    assert init.data_to_send() == b""
    init.send_message(b"still fine")  # no nonce was spent
    assert _feed(resp, init.data_to_send()) == [Message(b"still fine")]


def _seal(cipher: CipherState, *cells: wire.Cell) -> bytes:
    return b"".join(wire.seal_cell(cipher, cell) for cell in cells)


FULL_MORE = wire.Cell(wire.CellType.MORE, bytes(wire.CELL_DATA))
MAX_FULL_CELLS = wire.MAX_MESSAGE // wire.CELL_DATA
TAIL = wire.MAX_MESSAGE - MAX_FULL_CELLS * wire.CELL_DATA


def test_a_crafted_message_of_exactly_max_size_is_delivered() -> None:
    init, resp = _established_pair()
    sealed = _seal(
        _send_cipher(init),
        *[FULL_MORE] * MAX_FULL_CELLS,
        wire.Cell(wire.CellType.END, bytes(TAIL)),
    )
    assert _feed(resp, sealed, [4096]) == [Message(bytes(wire.MAX_MESSAGE))]


def test_a_crafted_end_cell_past_max_message_is_refused() -> None:
    init, resp = _established_pair()
    sealed = _seal(
        _send_cipher(init),
        *[FULL_MORE] * MAX_FULL_CELLS,
        wire.Cell(wire.CellType.END, bytes(TAIL + 1)),
    )
    with pytest.raises(RemoteProtocolError, match="larger than"):
        _feed(resp, sealed, [4096])
    _assert_broken(resp)


def test_more_fragments_than_max_message_are_refused() -> None:
    init, resp = _established_pair()
    sealed = _seal(_send_cipher(init), *[FULL_MORE] * (MAX_FULL_CELLS + 1))
    # refused on the cell that crosses the limit, before any END arrives
    assert _feed(resp, sealed[: MAX_FULL_CELLS * wire.CELL_SIZE], [4096]) == []
    resp.receive_data(sealed[MAX_FULL_CELLS * wire.CELL_SIZE :])
    with pytest.raises(RemoteProtocolError, match="larger than"):
        resp.next_event()
    _assert_broken(resp)


def test_a_message_has_no_more_cells_than_max_message_needs() -> None:
    """Empty MORE cells must not let one message grow without bound.

    ``fragment()`` never produces a MORE cell that is not full, so a message
    needs at most ``ceil(MAX_MESSAGE / CELL_DATA)`` cells. The reader only
    bounds the *bytes* of a message, so a peer can send empty MORE cells
    forever and the fragment list grows by one entry each (rule 4: every
    buffer bounded).
    """
    init, resp = _established_pair()
    empty_more = wire.Cell(wire.CellType.MORE, b"")
    most_cells = -(-wire.MAX_MESSAGE // wire.CELL_DATA)
    sealed = _seal(
        _send_cipher(init), *[empty_more] * (most_cells + 1), wire.Cell(wire.CellType.END)
    )
    with pytest.raises(RemoteProtocolError):
        _feed(resp, sealed, [4096])


@pytest.mark.parametrize("kind", [4, 5, 127, 255])
def test_unknown_cell_type_is_refused(kind: int) -> None:
    init, resp = _established_pair()
    plain = struct.pack(">BH", kind, 0).ljust(wire.CELL_PLAINTEXT, b"\x00")
    resp.receive_data(_send_cipher(init).encrypt_with_ad(b"", plain))
    with pytest.raises(RemoteProtocolError, match="unknown cell type"):
        resp.next_event()
    _assert_broken(resp)


@pytest.mark.parametrize("length", [wire.CELL_DATA + 1, 0xFFFF])
def test_cell_length_past_the_cell_is_refused(length: int) -> None:
    init, resp = _established_pair()
    plain = struct.pack(">BH", wire.CellType.END, length).ljust(wire.CELL_PLAINTEXT, b"\x00")
    resp.receive_data(_send_cipher(init).encrypt_with_ad(b"", plain))
    with pytest.raises(RemoteProtocolError, match="length"):
        resp.next_event()
    _assert_broken(resp)


# -- tampering ---------------------------------------------------------------

TAMPER_MESSAGES = [b"a" * 10, b"b" * 2000, b"c"]  # cells: END | MORE END | END
MESSAGES_DONE_BEFORE_CELL = [0, 1, 1, 2, 3]  # complete messages before cell i


@settings(max_examples=150, deadline=None)
@given(
    cell=st.integers(min_value=0, max_value=4),
    offset=st.integers(min_value=0, max_value=wire.CELL_SIZE - 1),
    mask=st.integers(min_value=1, max_value=255),
)
def test_tampering_any_byte_of_any_cell_breaks_the_link(cell: int, offset: int, mask: int) -> None:
    init, resp = _established_pair()
    for message in TAMPER_MESSAGES:
        init.send_message(message)
    init.close()
    stream = bytearray(init.data_to_send())
    assert len(stream) == 5 * wire.CELL_SIZE
    stream[cell * wire.CELL_SIZE + offset] ^= mask

    delivered: list[Event] = []
    with pytest.raises(RemoteProtocolError):
        _feed_into(resp, bytes(stream), delivered)
    done = MESSAGES_DONE_BEFORE_CELL[cell]
    assert delivered == [Message(m) for m in TAMPER_MESSAGES[:done]]
    _assert_broken(resp)


def test_tampering_any_byte_of_the_hello_is_refused_silently() -> None:
    init = _initiator()
    init.initiate()
    hello = init.data_to_send()
    for i in range(len(hello)):
        resp = _responder()
        tampered = bytearray(hello)
        tampered[i] ^= 0x01
        resp.receive_data(bytes(tampered))
        with pytest.raises(HandshakeError):
            resp.next_event()
        assert resp.data_to_send() == b""
        _assert_broken(resp)


def test_tampering_any_byte_of_the_reply_is_refused() -> None:
    hello, responder_bytes = _transcript(5)
    reply_len = len(responder_bytes) % wire.CELL_SIZE  # the cells are whole
    reply = responder_bytes[:reply_len]
    for i in range(len(reply)):
        init = _initiator(5)
        init.initiate()
        assert init.data_to_send() == hello
        tampered = bytearray(reply)
        tampered[i] ^= 0x80
        init.receive_data(bytes(tampered))
        with pytest.raises(HandshakeError):
            init.next_event()
        _assert_broken(init)


def test_a_reflected_hello_is_refused() -> None:
    """The per-direction frame keys stop a hello from being bounced back."""
    init = _initiator()
    init.initiate()
    hello = init.data_to_send()
    init.receive_data(hello)
    with pytest.raises(HandshakeError):
        init.next_event()


# -- replay and time ---------------------------------------------------------


def test_a_replayed_hello_is_refused_by_the_same_window() -> None:
    window = ReplayWindow(WINDOW)
    init = _initiator()
    init.initiate()
    hello = init.data_to_send()
    assert _feed(_responder(window=window), hello) == [Established(ALICE.public)]

    again = _responder(7, window=window)
    again.receive_data(hello)
    with pytest.raises(HandshakeError, match="replayed"):
        again.next_event()
    assert again.data_to_send() == b""
    # another listener, with its own window, would have taken it
    assert _feed(_responder(8), hello) == [Established(ALICE.public)]


def test_a_rewrapped_replay_is_refused() -> None:
    """Knowing the responder's public key, one can re-seal the same Noise message."""
    window = ReplayWindow(WINDOW)
    init = _initiator()
    init.initiate()
    hello = init.data_to_send()
    assert _feed(_responder(window=window), hello) == [Established(ALICE.public)]

    obfs = wire.obfuscation_key(BOB.public.x25519)
    opened = wire.open_handshake(hello, obfs, from_initiator=True)
    assert opened is not None
    noise_message, tail, used = opened
    assert used == len(hello)
    rewrapped = wire.seal_handshake(
        obfs, noise_message, salt=bytes(range(16)), padding=17, from_initiator=True, tail=tail
    )
    assert rewrapped != hello
    assert _feed(_responder(9), rewrapped) == [Established(ALICE.public)]
    again = _responder(10, window=window)
    again.receive_data(rewrapped)
    with pytest.raises(HandshakeError, match="replayed"):
        again.next_event()


@pytest.mark.parametrize(
    ("skew", "accepted"),
    [
        (0, True),
        (WINDOW, True),
        (-WINDOW, True),
        (WINDOW + 1, False),
        (-WINDOW - 1, False),
        (-86_400, False),
        (10 * 86_400, False),
    ],
)
def test_first_flight_timestamp_window(skew: float, accepted: bool) -> None:
    init = _initiator(now=NOW + skew)
    init.initiate()
    resp = _responder()
    resp.receive_data(init.data_to_send())
    if accepted:
        assert _events(resp) == [Established(ALICE.public)]
    else:
        with pytest.raises(HandshakeError, match="time window"):
            resp.next_event()
        assert resp.data_to_send() == b""


# -- identities --------------------------------------------------------------


def _crafted_hello(static: Identity, payload: bytes, seed: int = 3) -> bytes:
    """A first flight built from the Noise layer up, proving ``static``'s key."""
    hs = HandshakeState(
        initiator=True,
        prologue=wire.PROLOGUE,
        s_private=static.x25519_private,
        rs=BOB.public.x25519,
        rng=_rng(seed),
    )
    return wire.seal_handshake(
        wire.obfuscation_key(BOB.public.x25519),
        hs.write_message(payload),
        salt=bytes(16),
        padding=0,
        from_initiator=True,
        tail=wire.encode_flight(wire.Flight(int(NOW))),
    )


def _hello_payload(ed_key: bytes, timestamp: float = NOW) -> bytes:
    return struct.pack(">Q32s", int(timestamp), ed_key)


def test_a_crafted_hello_with_the_matching_identity_is_accepted() -> None:
    resp = _responder()
    resp.receive_data(_crafted_hello(ALICE, _hello_payload(ALICE.public.key)))
    assert _events(resp) == [Established(ALICE.public)]


def test_an_identity_that_does_not_match_the_noise_static_is_refused() -> None:
    resp = _responder()
    resp.receive_data(_crafted_hello(ALICE, _hello_payload(CAROL.public.key)))
    with pytest.raises(HandshakeError, match="does not match"):
        resp.next_event()
    assert resp.data_to_send() == b""


def test_an_invalid_identity_key_is_refused() -> None:
    resp = _responder()
    resp.receive_data(_crafted_hello(ALICE, _hello_payload(bytes(32))))
    with pytest.raises(HandshakeError, match="bad identity key"):
        resp.next_event()


@pytest.mark.parametrize("size", [0, 39, 41, 200])
def test_a_first_flight_payload_of_the_wrong_size_is_refused(size: int) -> None:
    payload = (_hello_payload(ALICE.public.key) * 5)[:size]
    resp = _responder()
    resp.receive_data(_crafted_hello(ALICE, payload))
    with pytest.raises(HandshakeError, match="payload"):
        resp.next_event()


def test_a_reply_with_a_payload_is_refused() -> None:
    init = _initiator()
    init.initiate()
    obfs = wire.obfuscation_key(BOB.public.x25519)
    opened = wire.open_handshake(init.data_to_send(), obfs, from_initiator=True)
    assert opened is not None
    hs = HandshakeState(
        initiator=False, prologue=wire.PROLOGUE, s_private=BOB.x25519_private, rs=None, rng=_rng(4)
    )
    hs.read_message(opened[0])
    reply = wire.seal_handshake(
        obfs, hs.write_message(b"x"), salt=bytes(16), padding=0, from_initiator=False
    )
    init.receive_data(reply)
    with pytest.raises(HandshakeError, match="reply payload"):
        init.next_event()


def test_an_initiator_with_the_wrong_responder_key_is_refused_silently() -> None:
    init = _initiator(peer=CAROL)  # believes BOB's address belongs to CAROL
    init.initiate()
    resp = _responder()
    resp.receive_data(init.data_to_send())
    with pytest.raises(HandshakeError):
        resp.next_event()
    assert resp.data_to_send() == b""
    _assert_broken(resp)


# -- lengths on the wire ---------------------------------------------------


def test_every_wire_length() -> None:
    hello_lengths: set[int] = set()
    reply_lengths: set[int] = set()
    for seed in range(40):
        init, resp = _initiator(seed), _responder(seed + 1_000)
        init.initiate()
        hello = init.data_to_send()
        resp.receive_data(hello)
        _events(resp)
        reply = resp.data_to_send()
        init.receive_data(reply)
        _events(init)
        hello_lengths.add(len(hello))
        reply_lengths.add(len(reply))
        base = FRAME_OVERHEAD + HELLO_NOISE_LEN + wire.FLIGHT_LEN
        assert base <= len(hello) < base + wire.MAX_PADDING
        base = FRAME_OVERHEAD + REPLY_NOISE_LEN
        assert base <= len(reply) < base + wire.MAX_PADDING

        for size in (0, 1, wire.CELL_DATA, wire.CELL_DATA + 1, 5000, wire.MAX_MESSAGE):
            for conn in (init, resp):
                conn.send_message(bytes(size))
                written = conn.data_to_send()
                assert len(written) > 0
                assert len(written) % wire.CELL_SIZE == 0
        for conn in (init, resp):
            conn.send_padding()
            assert len(conn.data_to_send()) == wire.CELL_SIZE
            conn.close()
            assert len(conn.data_to_send()) == wire.CELL_SIZE
    # random padding: the handshake lengths are spread out, not a constant
    assert len(hello_lengths) > 30
    assert len(reply_lengths) > 30


# -- local misuse ----------------------------------------------------------


def test_local_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        LinkConnection(BOB, now=NOW, rng=_rng(0))  # a responder needs a window
    resp = _responder()
    with pytest.raises(LocalProtocolError):
        resp.initiate()
    with pytest.raises(LocalProtocolError):
        resp.send_message(b"too early")
    with pytest.raises(LocalProtocolError):
        resp.send_padding()

    init = _initiator()
    with pytest.raises(LocalProtocolError):
        init.send_message(b"too early")
    init.initiate()
    with pytest.raises(LocalProtocolError):
        init.initiate()
    with pytest.raises(LocalProtocolError):
        init.send_message(b"still too early")

    init.receive_data(bytes(MAX_BUFFER))
    with pytest.raises(LocalProtocolError):
        init.receive_data(b"x")


def test_close_before_the_handshake_sends_nothing() -> None:
    init = _initiator()
    init.initiate()
    init.data_to_send()
    init.close()
    assert init.data_to_send() == b""


def test_repr_of_events_hides_message_data() -> None:
    assert "secret" not in repr(Message(b"secret"))
