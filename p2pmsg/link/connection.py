"""The secure link as a sans-IO state machine (the h11 shape).

Feed received bytes with :meth:`LinkConnection.receive_data`, pull events
with :meth:`LinkConnection.next_event` until it returns :data:`NEED_DATA`,
and after every call send whatever :meth:`LinkConnection.data_to_send`
returns. The initiator calls :meth:`LinkConnection.initiate` first.

States: the initiator goes ``START -> SENT_HELLO -> OPEN``; the responder
``AWAIT_HELLO -> OPEN``; both end in ``CLOSED`` (peer's close cell) or
``BROKEN`` (any protocol error; every later call raises again). The
responder refuses a first flight whose timestamp is outside its replay
window or seen before, and one whose Ed25519 identity does not map to the
static key that the Noise handshake proved. Untrusted bytes produce events or
:class:`RemoteProtocolError` (:class:`HandshakeError` during the handshake),
nothing else.

Work under load (:mod:`p2pmsg.puzzle`). A responder given a
:class:`~p2pmsg.puzzle.Pricing` asks it about every first flight whose tail
(:class:`wire.Flight`) is fresh in the replay window, before any X25519
operation. When it names a price, the responder burns the flight's
ephemeral key in the window (a replay of it gets nothing back, as from a
closed service), answers with a price frame and waits for another first
flight, at most once per connection. The initiator then reports
:class:`Priced` and goes ``SENT_HELLO -> PRICED``; its owner solves the
price and calls :meth:`LinkConnection.pay`, which sends a new first flight
(new ephemeral key) carrying the proof and goes back to ``SENT_HELLO``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Final

from p2pmsg import puzzle
from p2pmsg.errors import BadKey, HandshakeError, LocalProtocolError, RemoteProtocolError
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.link import wire
from p2pmsg.link.noise import DHLEN, CipherState, HandshakeState
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.puzzle import Price, Pricing

_HELLO = struct.Struct(">Q32s")
MAX_BUFFER = 4 * wire.MAX_MESSAGE


class State(Enum):
    START = auto()
    SENT_HELLO = auto()
    PRICED = auto()
    AWAIT_HELLO = auto()
    OPEN = auto()
    CLOSED = auto()
    BROKEN = auto()


@dataclass(frozen=True)
class Established:
    """The handshake finished; ``peer`` is the authenticated identity."""

    peer: PublicIdentity


@dataclass(frozen=True)
class Message:
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Closed:
    """The peer closed the link cleanly."""


@dataclass(frozen=True)
class Priced:
    """The responder asks for work first: solve ``price``, then :meth:`LinkConnection.pay`."""

    price: Price


Event = Established | Message | Closed | Priced


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class LinkConnection:
    """One end of a secure link. ``peer`` is required for the initiator.

    ``now`` is the wall-clock time (seconds since the epoch) used for the
    first flight's timestamp and its replay check; ``rng`` supplies every
    random byte (ephemeral key, salts, padding). A responder's ``pricing``
    (optional) runs on the ``monotonic`` clock's time.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        peer: PublicIdentity | None = None,
        replay: ReplayWindow | None = None,
        now: float,
        rng: Callable[[int], bytes],
        pricing: Pricing | None = None,
        monotonic: float = 0.0,
    ) -> None:
        self.initiator = peer is not None
        if not self.initiator and replay is None:
            raise LocalProtocolError("a responder needs a replay window")
        self.identity = identity
        self.peer = peer
        self._replay = replay
        self._now = now
        self._rng = rng
        self._pricing = pricing
        self._monotonic = monotonic
        self._price: Price | None = None
        """The price asked (initiator) or given (responder) on this connection."""
        self._responder_x = peer.x25519 if peer is not None else identity.public.x25519
        self._obfs_key = wire.obfuscation_key(self._responder_x)
        self._hs: HandshakeState | None = self._new_handshake()
        self.state = State.START if self.initiator else State.AWAIT_HELLO
        self._in = bytearray()
        self._out = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_bytes = 0
        self._send: CipherState | None = None
        self._recv: CipherState | None = None

    # -- sending -----------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes produced so far that must go on the wire, in order."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def _new_handshake(self) -> HandshakeState:
        return HandshakeState(
            initiator=self.initiator,
            prologue=wire.PROLOGUE,
            s_private=self.identity.x25519_private,
            rs=self._responder_x if self.initiator else None,
            rng=self._rng,
        )

    def _padding(self) -> int:
        return int.from_bytes(self._rng(2), "big") % wire.MAX_PADDING

    def _seal_handshake(self, noise_message: bytes, tail: bytes = b"") -> None:
        self._out += wire.seal_handshake(
            self._obfs_key,
            noise_message,
            salt=self._rng(wire.SALT_LEN),
            padding=self._padding(),
            from_initiator=self.initiator,
            tail=tail,
        )

    def initiate(self) -> None:
        """Initiator: queue the first flight."""
        if self.state is not State.START:
            raise LocalProtocolError("initiate() is for a fresh initiator")
        self._send_hello(wire.Flight(int(self._now)))

    def pay(self, nonce: bytes) -> None:
        """Initiator: queue a new first flight that pays the price of :class:`Priced`."""
        if self.state is not State.PRICED or self._price is None:
            raise LocalProtocolError("pay() is for an initiator that was asked for work")
        self._hs = self._new_handshake()  # the unanswered flight's keys are not used again
        self._send_hello(wire.Flight(int(self._now), self._price, nonce))

    def _send_hello(self, flight: wire.Flight) -> None:
        assert self._hs is not None
        hello = _HELLO.pack(flight.timestamp, self.identity.public.key)
        self._seal_handshake(self._hs.write_message(hello), wire.encode_flight(flight))
        self.state = State.SENT_HELLO

    def send_message(self, data: bytes) -> None:
        """Queue one message (at most ``wire.MAX_MESSAGE`` bytes) as cells."""
        cipher = self._open_cipher()
        for cell in wire.fragment(data):
            self._out += wire.seal_cell(cipher, cell)

    def send_padding(self) -> None:
        """Queue one dummy cell, which the peer discards."""
        self._out += wire.seal_cell(self._open_cipher(), wire.Cell(wire.CellType.PADDING))

    def close(self) -> None:
        """Queue a close cell; the link sends nothing after it."""
        if self.state is State.OPEN and self._send is not None:
            self._out += wire.seal_cell(self._send, wire.Cell(wire.CellType.CLOSE))
        self._send = None

    def _open_cipher(self) -> CipherState:
        if self.state not in (State.OPEN, State.CLOSED) or self._send is None:
            raise LocalProtocolError(f"cannot send in state {self.state.name}")
        return self._send

    # -- receiving ---------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if len(self._in) + len(data) > MAX_BUFFER:
            raise LocalProtocolError("receive buffer over its bound; read events first")
        self._in += data

    def next_event(self) -> Event | _NeedData:
        """The next event, or ``NEED_DATA``. Raises RemoteProtocolError."""
        try:
            match self.state:
                case State.AWAIT_HELLO:
                    return self._read_hello()
                case State.SENT_HELLO:
                    return self._read_reply()
                case State.OPEN:
                    return self._read_cells()
                case State.CLOSED:
                    return Closed()
                case State.BROKEN:
                    raise RemoteProtocolError("the link is broken")
                case _:
                    return NEED_DATA
        except RemoteProtocolError:
            self._break()
            raise

    def _break(self) -> None:
        self.state = State.BROKEN
        self._in.clear()
        self._hs = self._send = self._recv = None

    def _take_handshake(self, from_initiator: bool) -> tuple[bytes, bytes] | None:
        opened = wire.open_handshake(self._in, self._obfs_key, from_initiator=from_initiator)
        if opened is None:
            return None
        noise_message, tail, used = opened
        del self._in[:used]
        return noise_message, tail

    def _read_hello(self) -> Event | _NeedData:
        assert self._hs is not None and self._replay is not None
        taken = self._take_handshake(from_initiator=True)
        if taken is None:
            return NEED_DATA
        noise_message, tail = taken
        flight = wire.decode_flight(tail)
        if self._pricing is not None:
            price = self._price_of(noise_message, flight, self._pricing)
            if price is not None:
                self._seal_handshake(b"", puzzle.encode_price(price))
                return self._read_hello()  # the next flight must pay (at most once more here)
        payload = self._hs.read_message(noise_message)
        if len(payload) != _HELLO.size:
            raise HandshakeError("bad first-flight payload")
        timestamp, ed_key = _HELLO.unpack(payload)
        if timestamp != flight.timestamp:
            raise HandshakeError("the first flight's timestamps differ")
        try:
            peer = PublicIdentity(ed_key)
        except BadKey as exc:
            raise HandshakeError("bad identity key") from exc
        if peer.x25519 != self._hs.rs:
            raise HandshakeError("identity does not match the handshake key")
        if not self._replay.accept(self._hs.re or b"", timestamp, self._now):
            raise HandshakeError("first flight replayed or outside the time window")
        self._seal_handshake(self._hs.write_message(b""))
        return self._establish(peer)

    def _price_of(
        self, noise_message: bytes, flight: wire.Flight, pricing: Pricing
    ) -> Price | None:
        """The price this flight must pay first, or None; raises for a stale or
        replayed flight, or one that comes unpaid after its price."""
        assert self._replay is not None
        ephemeral = noise_message[:DHLEN]
        if not self._replay.fresh(ephemeral, flight.timestamp, self._now):
            raise HandshakeError("first flight replayed or outside the time window")
        if flight.price is None:
            price = pricing.ask(self._monotonic)
        else:
            proof = puzzle.proof(flight.price, flight.nonce, person=wire.POW_PERSON)
            price = pricing.accept(flight.price, proof, self._monotonic)
        if price is not None:
            if self._price is not None:
                raise HandshakeError("the first flight did not pay its price")
            self._price = price
            # Spent: a replay of this flight gets nothing back.
            self._replay.accept(ephemeral, flight.timestamp, self._now)
        return price

    def _read_reply(self) -> Event | _NeedData:
        assert self._hs is not None and self.peer is not None
        taken = self._take_handshake(from_initiator=False)
        if taken is None:
            return NEED_DATA
        noise_message, tail = taken
        if not noise_message:
            if self._price is not None:
                raise HandshakeError("asked for work twice")
            self._price = wire.decode_price_tail(tail)
            if self._price.effort > puzzle.MAX_EFFORT:
                raise HandshakeError("the responder asks for more work than a handshake is worth")
            self.state = State.PRICED
            return Priced(self._price)
        if self._hs.read_message(noise_message):
            raise HandshakeError("unexpected reply payload")
        return self._establish(self.peer)

    def _establish(self, peer: PublicIdentity) -> Established:
        assert self._hs is not None
        self._send, self._recv = self._hs.split()
        self._hs = None
        self.peer = peer
        self.state = State.OPEN
        return Established(peer)

    def _read_cells(self) -> Event | _NeedData:
        assert self._recv is not None
        while len(self._in) >= wire.CELL_SIZE:
            cell = wire.open_cell(self._recv, bytes(self._in[: wire.CELL_SIZE]))
            del self._in[: wire.CELL_SIZE]
            if cell.type is wire.CellType.PADDING:
                continue
            if cell.type is wire.CellType.CLOSE:
                self.state = State.CLOSED
                return Closed()
            if cell.type is wire.CellType.MORE and len(cell.data) != wire.CELL_DATA:
                raise RemoteProtocolError("a non-final fragment must fill its cell")
            self._fragment_bytes += len(cell.data)
            if self._fragment_bytes > wire.MAX_MESSAGE:
                raise RemoteProtocolError(f"message larger than {wire.MAX_MESSAGE} bytes")
            self._fragments.append(cell.data)
            if cell.type is wire.CellType.END:
                data = b"".join(self._fragments)
                self._fragments, self._fragment_bytes = [], 0
                return Message(data)
        return NEED_DATA
