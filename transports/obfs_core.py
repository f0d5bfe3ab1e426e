"""The ``obfs`` transport's sans-IO core: a keyed handshake, then sealed frames.

Theory of operation. A server owns an X25519 key (:class:`ServerKey`: ``s``,
``S``); ``S`` is its endpoint's ``key=``, like an obfs4 bridge cert. Whoever
lacks ``S`` sees random-looking letters and bytes, and silence if it probes.
Primitives are libsodium's: X25519, XChaCha20-Poly1305 (``seal``), keyed
BLAKE2b (``kdf``).

* Hello (:class:`ClientHandshake`): a random nonce ``N``, ``H`` = ``version
  X time units`` (``X`` ephemeral) sealed under ``kdf(S)``, and ``B`` =
  ``5 * units - 16`` zeros sealed under another ``kdf(S)`` with ``N || H``
  as associated data. ``units`` is uniform in [4, 131]: 160-1,176 bytes.
* :class:`ServerHandshake` opens ``H`` once its letters are in, then ``B``;
  a hello whose tag was seen, or whose time is over :data:`REPLAY_WINDOW`
  off, is refused (a bounded :class:`~p2pmsg.link.replay.ReplayWindow`). The
  answer seals ``Y pad`` and ``pad`` zeros under keys from ``ss1 = X25519(s,
  X)``: only the holder of ``s`` can answer. Session keys are ``kdf(ss1 ||
  ss2)`` over both hellos (``ss2 = X25519(y, X)``: forward secrecy).
* :class:`ObfsFramer`: ``seal(length) || seal(type || data)``, the nonce a
  frame counter; messages are cut in frames of :data:`MAX_FRAME_DATA` bytes
  and each is followed by 0-255 bytes of padding frame.

Why the hello is written in letters. The GFW's detector (Wu et al. 2023,
:func:`p2pmsg.sim.detectors.fully_encrypted`) flags a first packet unless one
of Ex1-Ex5 holds; sealed bytes meet none, and an exemption that holds by
chance (a random printable prefix) fails on some connections. The hello is
base32 over :data:`ALPHABET`, 32 printable bytes with at most 3 bits set, so
every hello and every prefix of one (a censor may see one segment) meets Ex1
(<= 3 set bits per byte), Ex2, Ex3 and Ex4 (all printable) by construction:
dropping any one rule does not catch it. Ex5 would need constant bytes; here
every letter carries 5 bits of nonce or ciphertext. The alphabet is public:
keying it would hide nothing, every key would pick from the same 38 bytes.
The price: 8 letters per 5 bytes, and a look of its own that a learning
censor (S6) can block, like any fixed look. Only the hello is encoded (the
detector reads the client's first packet); answer and frames are raw sealed
bytes, as in obfs4.

No I/O, no clock, no randomness: ``now`` and ``rng`` are parameters;
:mod:`transports.obfs` is the trio adapter.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import nacl.bindings as sodium
import nacl.exceptions

from p2pmsg.abc import MAX_SEND
from p2pmsg.errors import LocalProtocolError, RemoteProtocolError
from p2pmsg.link.replay import Replays

Rng = Callable[[int], bytes]

VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 24
TAG_BYTES = 16
#: Printable ASCII with at most 3 bits set, 32 of the 38 such bytes.
ALPHABET = b"ABCDEFHIJLPQRTXabdhp01248!#&()*@"
MIN_UNITS, MAX_UNITS = 4, 131
HELLO_HEADER = NONCE_BYTES + 40 + TAG_BYTES  # 80 bytes, 128 letters
HELLO_HEADER_LETTERS = HELLO_HEADER * 8 // 5
MAX_HELLO_LETTERS = (HELLO_HEADER + 5 * MAX_UNITS) * 8 // 5
REPLY_HEADER = NONCE_BYTES + KEY_BYTES + 2 + TAG_BYTES
MAX_REPLY_PADDING = 511
#: How far a hello's time may be from the server's clock (the secure link's 24 h).
REPLAY_WINDOW = 24 * 3600.0
MAX_FRAME_DATA = 16 * 1024
FRAME_HEADER = 2 + TAG_BYTES
MAX_FRAME_BODY = 1 + MAX_FRAME_DATA + TAG_BYTES
MAX_MESSAGE = MAX_SEND

_HELLO = struct.Struct(">B32sIB2x")
_REPLY = struct.Struct(">32sH")
_LENGTH = struct.Struct(">H")
_BASE32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TO_LETTERS = bytes.maketrans(_BASE32, ALPHABET)
_FROM_LETTERS = bytes.maketrans(ALPHABET, _BASE32)
_LABEL = b"p2pmsg obfs v1"


class ObfsProtocolError(RemoteProtocolError):
    """The peer broke the obfs protocol."""


class FrameType(IntEnum):
    PADDING = 0
    MORE = 1
    END = 2


# --- primitives, named ---------------------------------------------------------


def _kdf(key: bytes, data: bytes, person: bytes) -> bytes:
    return hashlib.blake2b(data, key=key, person=person, digest_size=KEY_BYTES).digest()


def _seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes = b"") -> bytes:
    return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def _open(key: bytes, nonce: bytes, sealed: bytes, what: str, ad: bytes = b"") -> bytes:
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, ad, nonce, key)
    except nacl.exceptions.CryptoError:
        raise ObfsProtocolError(f"{what} does not authenticate") from None


def _x25519(secret: bytes, public: bytes) -> bytes:
    try:
        return sodium.crypto_scalarmult(secret, public)
    except nacl.exceptions.RuntimeError:  # libsodium refuses an all-zero result
        raise ObfsProtocolError("a low-order X25519 key") from None


def encode_letters(raw: bytes) -> bytes:
    """``raw`` (a multiple of 5 bytes) as 8 letters of :data:`ALPHABET` per 5 bytes."""
    assert len(raw) % 5 == 0, "letters carry whole 5-byte groups"
    return base64.b32encode(raw).translate(_TO_LETTERS)


def decode_letters(letters: bytes) -> bytes:
    """Inverse of :func:`encode_letters`. Raises :class:`ObfsProtocolError`."""
    if len(letters) % 8 or letters.translate(None, ALPHABET):
        raise ObfsProtocolError("not obfs letters")
    return base64.b32decode(letters.translate(_FROM_LETTERS))


def _key_pair(key: bytes, data: bytes, purpose: bytes) -> tuple[bytes, bytes]:
    """The header and the body key of a hello (``kdf(S)``) or an answer (``kdf(ss1)``)."""
    return _kdf(key, data, purpose + b" head"), _kdf(key, data, purpose + b" body")


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=KEY_BYTES).digest()


# --- keys and events -------------------------------------------------------------------


@dataclass(frozen=True)
class ServerKey:
    """A server's long-term X25519 secret; :attr:`public` is its endpoint's ``key=``."""

    secret: bytes = field(repr=False)
    public: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise LocalProtocolError("an obfs server key is 32 bytes")
        object.__setattr__(self, "public", sodium.crypto_scalarmult_base(self.secret))

    def __repr__(self) -> str:
        return f"ServerKey(public={self.public.hex()[:16]}…)"

    @property
    def close_policy(self) -> tuple[float, int]:
        """``(delay, budget)`` for refused connections: close ``delay`` s (in
        [0, 60)) after the handshake timeout, or once ``budget`` bytes (1 to 2
        of the longest hellos) came in. Fixed per server, as obfs4 draws them
        from its seed: one service's timeout and buffer, not a dice roll per probe."""
        draw = hashlib.blake2b(b"", key=self.secret, person=b"obfs close", digest_size=8).digest()
        delay = int.from_bytes(draw[:4], "big") % 60_000 / 1000
        return delay, MAX_HELLO_LETTERS + int.from_bytes(draw[4:], "big") % MAX_HELLO_LETTERS


@dataclass(frozen=True)
class SessionKeys:
    """One side's frame keys: what it seals with and what it opens with."""

    send_length: bytes = field(repr=False)
    send_data: bytes = field(repr=False)
    receive_length: bytes = field(repr=False)
    receive_data: bytes = field(repr=False)


def _session_keys(ss1: bytes, ss2: bytes, transcript: bytes, *, client: bool) -> SessionKeys:
    c_len, c_data, s_len, s_data = (
        _kdf(ss1 + ss2, _digest(transcript), person)
        for person in (b"obfs c2s length", b"obfs c2s data", b"obfs s2c length", b"obfs s2c data")
    )
    if client:
        return SessionKeys(c_len, c_data, s_len, s_data)
    return SessionKeys(s_len, s_data, c_len, c_data)


@dataclass(frozen=True)
class NeedData:
    """Feed more bytes."""


@dataclass(frozen=True)
class Established:
    """Send ``response`` (server only); frames follow, starting with ``trailing``."""

    response: bytes
    trailing: bytes
    keys: SessionKeys = field(repr=False)


@dataclass(frozen=True)
class Rejected:
    """Not one of ours: answer nothing (see :mod:`transports.obfs` for when to close)."""

    error: ObfsProtocolError


@dataclass(frozen=True)
class Message:
    """One whole message."""

    data: bytes


@dataclass(frozen=True)
class PeerClosed:
    """The connection ended between two messages."""


NEED_DATA = NeedData()


# --- the handshake -------------------------------------------------------------------------


class ClientHandshake:
    """Writes the hello (:attr:`hello`, letters) and checks the server's answer.

    Raises :class:`ObfsProtocolError` when ``server_public`` is a low-order point.
    """

    def __init__(self, server_public: bytes, *, now: float, rng: Rng) -> None:
        if len(server_public) != KEY_BYTES:
            raise LocalProtocolError("an obfs server key is 32 bytes")
        self._secret = rng(KEY_BYTES)
        self._ss1 = _x25519(self._secret, server_public)
        nonce, units = rng(NONCE_BYTES), MIN_UNITS + rng(1)[0] % (MAX_UNITS - MIN_UNITS + 1)
        head_key, body_key = _key_pair(_LABEL, server_public, b"obfs hello")
        public = sodium.crypto_scalarmult_base(self._secret)
        plain = _HELLO.pack(VERSION, public, int(now) & 0xFFFFFFFF, units)
        head = nonce + _seal(head_key, nonce, plain)
        self._hello = head + _seal(body_key, nonce, bytes(5 * units - TAG_BYTES), head)
        self.hello = encode_letters(self._hello)
        self._buffer = bytearray()
        self._done = False

    def receive_data(self, data: bytes) -> NeedData | Established:
        """Feed the server's bytes (``b""``: it closed). Raises :class:`ObfsProtocolError`."""
        if self._done:
            raise LocalProtocolError("the handshake is over")
        if not data:
            raise ObfsProtocolError("the server closed the connection")
        self._buffer += data
        if len(self._buffer) < REPLY_HEADER:
            return NEED_DATA
        head_key, body_key = _key_pair(self._ss1, _digest(self._hello), b"obfs reply")
        nonce, head = bytes(self._buffer[:NONCE_BYTES]), bytes(self._buffer[:REPLY_HEADER])
        plain = _open(head_key, nonce, head[NONCE_BYTES:], "the answer")
        server_public, padding = _REPLY.unpack(plain)
        if padding > MAX_REPLY_PADDING:
            raise ObfsProtocolError("too much padding in the server's answer")
        end = REPLY_HEADER + padding + TAG_BYTES
        if len(self._buffer) < end:
            return NEED_DATA
        _open(body_key, nonce, bytes(self._buffer[REPLY_HEADER:end]), "the answer's padding", head)
        self._done = True
        ss2 = _x25519(self._secret, server_public)
        reply = bytes(self._buffer[:end])
        keys = _session_keys(self._ss1, ss2, self._hello + reply, client=True)
        return Established(b"", bytes(self._buffer[end:]), keys)


class ServerHandshake:
    """Reads one hello; answers it only if it opens under ``key`` and is fresh.

    ``replay`` is shared by every connection of a server; ``now`` is its
    wall clock (seconds); ``rng`` draws its ephemeral key and padding.
    """

    def __init__(self, key: ServerKey, replay: Replays, *, now: float, rng: Rng) -> None:
        self._key = key
        self._replay = replay
        self._now = now
        self._rng = rng
        self._keys = _key_pair(_LABEL, key.public, b"obfs hello")
        self._buffer = bytearray()
        self._head: tuple[bytes, bytes, int, int] | None = None  # raw header, X, units, time
        self._done = False

    def receive_data(self, data: bytes) -> NeedData | Established | Rejected:
        """Feed the client's bytes (``b""``: it closed); what to do next.
        Raises :class:`LocalProtocolError` after an outcome other than ``NeedData``."""
        if self._done:
            raise LocalProtocolError("the handshake is over")
        outcome: NeedData | Established | Rejected
        try:
            outcome = self._receive(data)
        except ObfsProtocolError as exc:
            outcome = Rejected(exc)
        self._done = not isinstance(outcome, NeedData)
        return outcome

    def _receive(self, data: bytes) -> NeedData | Established:
        if not data:
            raise ObfsProtocolError("the client closed the connection")
        self._buffer += data
        if self._head is None:
            letters = bytes(self._buffer[:HELLO_HEADER_LETTERS])
            if letters.translate(None, ALPHABET):
                raise ObfsProtocolError("not obfs letters")
            if len(letters) < HELLO_HEADER_LETTERS:
                return NEED_DATA
            self._head = self._open_head(decode_letters(letters))
        head, client_public, units, timestamp = self._head
        end = HELLO_HEADER_LETTERS + 8 * units
        if len(self._buffer) < end:
            return NEED_DATA
        body = decode_letters(bytes(self._buffer[HELLO_HEADER_LETTERS:end]))
        _open(self._keys[1], head[:NONCE_BYTES], body, "the padding", head)
        # Only a whole authentic hello is remembered: a forged body cannot burn a real tag.
        if not self._replay.accept(head[-TAG_BYTES:], float(timestamp), self._now):
            raise ObfsProtocolError("a replayed or stale hello")
        return self._answer(head + body, client_public, bytes(self._buffer[end:]))

    def _open_head(self, head: bytes) -> tuple[bytes, bytes, int, int]:
        nonce, sealed = head[:NONCE_BYTES], head[NONCE_BYTES:]
        plain = _open(self._keys[0], nonce, sealed, "the hello")
        version, client_public, timestamp, units = _HELLO.unpack(plain)
        if version != VERSION or not MIN_UNITS <= units <= MAX_UNITS:
            raise ObfsProtocolError(f"hello version {version}, {units} units")
        return head, client_public, units, timestamp

    def _answer(self, hello: bytes, client_public: bytes, trailing: bytes) -> Established:
        ss1 = _x25519(self._key.secret, client_public)
        secret = self._rng(KEY_BYTES)
        ss2 = _x25519(secret, client_public)
        nonce = self._rng(NONCE_BYTES)
        padding = int.from_bytes(self._rng(2), "big") % (MAX_REPLY_PADDING + 1)
        head_key, body_key = _key_pair(ss1, _digest(hello), b"obfs reply")
        plain = _REPLY.pack(sodium.crypto_scalarmult_base(secret), padding)
        head = nonce + _seal(head_key, nonce, plain)
        reply = head + _seal(body_key, nonce, bytes(padding), head)
        keys = _session_keys(ss1, ss2, hello + reply, client=False)
        return Established(reply, trailing, keys)


# --- frames -----------------------------------------------------------------------------------


class ObfsFramer:
    """Messages both ways as sealed frames, after a handshake.

    Feed :meth:`receive_data` / :meth:`receive_eof`, then call
    :meth:`next_event` until it returns :class:`NeedData`. Memory is bounded
    by the bytes fed since the last ``NeedData`` plus one partial message of
    at most :data:`MAX_MESSAGE` bytes.
    """

    def __init__(self, keys: SessionKeys, *, rng: Rng, trailing: bytes = b"") -> None:
        self._keys = keys
        self._rng = rng
        self._sent = 0
        self._received = 0
        self._buffer = bytearray(trailing)
        self._body_length: int | None = None
        self._parts = bytearray()
        self._eof = False
        self._end: PeerClosed | ObfsProtocolError | None = None

    def encode_frame(self, kind: int, data: bytes) -> bytes:
        """One frame with any type byte: :meth:`encode`'s building block, and
        the tests' and the fuzzer's way past the MAC."""
        if len(data) > MAX_FRAME_DATA or not 0 <= kind <= 255:
            raise LocalProtocolError("a frame carries at most MAX_FRAME_DATA bytes")
        nonce = self._sent.to_bytes(NONCE_BYTES, "little")
        self._sent += 1
        body = _seal(self._keys.send_data, nonce, bytes([kind]) + data)
        return _seal(self._keys.send_length, nonce, _LENGTH.pack(len(body))) + body

    def encode(self, data: bytes) -> bytes:
        """One message, then a padding frame of 0-255 random bytes.

        Raises :class:`LocalProtocolError` above :data:`MAX_MESSAGE` bytes.
        """
        if len(data) > MAX_MESSAGE:
            raise LocalProtocolError("a message larger than the peer accepts")
        pieces = [data[i : i + MAX_FRAME_DATA] for i in range(0, len(data), MAX_FRAME_DATA)]
        pieces = pieces or [b""]
        frames = [self.encode_frame(FrameType.MORE, piece) for piece in pieces[:-1]]
        frames.append(self.encode_frame(FrameType.END, pieces[-1]))
        frames.append(self.encode_frame(FrameType.PADDING, bytes(self._rng(1)[0])))
        return b"".join(frames)

    def receive_data(self, data: bytes) -> None:
        """Feed the peer's bytes; ignored after its end or an error."""
        if self._end is None and not self._eof:
            self._buffer += data

    def receive_eof(self) -> None:
        """The connection ended (inside a message, that is an error)."""
        self._eof = True

    def next_event(self) -> Message | PeerClosed | NeedData:
        """The next message, the end (again and again) or ``NeedData``.

        Raises :class:`ObfsProtocolError` (again and again) after a violation.
        """
        try:
            if self._end is None and (message := self._next_message()) is not None:
                return message
        except ObfsProtocolError as exc:
            self._end = exc
        if self._end is None and not self._eof:
            return NEED_DATA
        if self._end is None:
            cut = self._buffer or self._parts or self._body_length is not None
            self._end = (
                ObfsProtocolError("the stream ended inside a message") if cut else PeerClosed()
            )
        if isinstance(self._end, ObfsProtocolError):
            raise self._end
        return self._end

    def _next_message(self) -> Message | None:
        """Open frames until a message is whole (it) or more bytes are needed (None)."""
        while (frame := self._next_frame()) is not None:
            kind, data = frame
            if kind == FrameType.PADDING:
                continue
            if kind not in (FrameType.MORE, FrameType.END):
                raise ObfsProtocolError(f"unknown frame type {kind}")
            if len(self._parts) + len(data) > MAX_MESSAGE:
                raise ObfsProtocolError("a message larger than MAX_MESSAGE")
            self._parts += data
            if kind == FrameType.END:
                message = Message(bytes(self._parts))
                self._parts.clear()
                return message
        return None

    def _next_frame(self) -> tuple[int, bytes] | None:
        nonce = self._received.to_bytes(NONCE_BYTES, "little")
        if self._body_length is None:
            if len(self._buffer) < FRAME_HEADER:
                return None
            sealed = bytes(self._buffer[:FRAME_HEADER])
            (length,) = _LENGTH.unpack(_open(self._keys.receive_length, nonce, sealed, "a length"))
            if not 1 + TAG_BYTES <= length <= MAX_FRAME_BODY:
                raise ObfsProtocolError(f"a frame of {length} bytes")
            del self._buffer[:FRAME_HEADER]
            self._body_length = length
        if len(self._buffer) < self._body_length:
            return None
        sealed = bytes(self._buffer[: self._body_length])
        plain = _open(self._keys.receive_data, nonce, sealed, "a frame")
        del self._buffer[: self._body_length]
        self._body_length = None
        self._received += 1
        return plain[0], plain[1:]
