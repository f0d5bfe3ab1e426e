"""The secure link's bytes on the wire: sealed handshake frames and cells.

Nothing the link sends is in clear, so that to anyone who lacks the
responder's public key every byte looks random (no magic, no version byte,
no length field, no recognisable X25519 point):

* A handshake frame is ``salt(16) || hdr(18) || body``. The two per-frame
  keys are keyed BLAKE2b of the salt under the *obfuscation key* (a BLAKE2b
  hash of the responder's static X25519 key), personalised by direction so a
  frame cannot be reflected. ``hdr`` seals the body's length; ``body`` seals
  ``u16 noise_len || noise message || tail || zero padding`` of random
  length. The salt is random and the rest is ChaCha20-Poly1305 output, so
  the frame is uniformly random to an observer; a prober without the key
  cannot produce a header that opens, and gets nothing back.
* The tail lets a responder under load ask for work before it spends any
  X25519 operation (:mod:`p2pmsg.puzzle`). A first flight's tail is a
  :class:`Flight`: ``timestamp u64 || seed(16) || effort u32 || nonce(8)``,
  the timestamp of the Noise payload (checked against the replay window
  before the Noise message is read) and a proof of work, all zero when
  unpaid. A responder's *price frame* has an empty Noise message and a price
  (``seed(16) || effort u32``) for its tail; the initiator then sends a new
  first flight that pays it.
* After the handshake every frame is one fixed-size cell, sealed with the
  Noise transport cipher: ``type(1) || len(2) || data || zeros``, so the
  observer sees only a stream of equal-sized random blocks. Messages larger
  than a cell are fragmented and reassembled up to :data:`MAX_MESSAGE`.

Both formats are self-delimiting, which lets the link run on raw TCP
streams as well as on framed transports. The version lives in the Noise
prologue, never on the wire. Pure: no I/O, randomness comes as a parameter.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum

import nacl.bindings as sodium
import nacl.exceptions

from p2pmsg import puzzle
from p2pmsg.errors import HandshakeError, RemoteProtocolError
from p2pmsg.link.noise import CipherState
from p2pmsg.puzzle import Price

PROLOGUE = b"p2pmsg link v1"
SALT_LEN = 16
TAG_LEN = 16
HEADER_LEN = SALT_LEN + 2 + TAG_LEN
MAX_HANDSHAKE_BODY = 2048
MAX_PADDING = 512

CELL_SIZE = 1024
CELL_PLAINTEXT = CELL_SIZE - TAG_LEN
CELL_HEADER = 3
CELL_DATA = CELL_PLAINTEXT - CELL_HEADER
MAX_MESSAGE = 64 * 1024

POW_PERSON = b"p2pmsg link pow"
"""The personalisation of a handshake's proof of work (which has no subject:
the replay window spends each flight once, and each proof is spent once)."""
_FLIGHT = struct.Struct(">Q16sI8s")
FLIGHT_LEN = _FLIGHT.size

_ZERO_NONCE = bytes(12)
_INITIATOR = b"p2pmsg-hs-init"
_RESPONDER = b"p2pmsg-hs-resp"


class CellType(IntEnum):
    PADDING = 0
    MORE = 1
    END = 2
    CLOSE = 3


def obfuscation_key(responder_x25519: bytes) -> bytes:
    """The key that hides handshake frames sent to or by this responder."""
    return hashlib.blake2b(responder_x25519, key=b"p2pmsg link obfs v1", digest_size=32).digest()


def _frame_keys(obfs_key: bytes, salt: bytes, from_initiator: bool) -> tuple[bytes, bytes]:
    person = _INITIATOR if from_initiator else _RESPONDER
    keys = hashlib.blake2b(salt, key=obfs_key, person=person, digest_size=64).digest()
    return keys[:32], keys[32:]


@dataclass(frozen=True)
class Flight:
    """A first flight's tail: its timestamp, and the price it pays (``nonce``) if any."""

    timestamp: int
    price: Price | None = None
    nonce: bytes = bytes(puzzle.NONCE_BYTES)


def encode_flight(flight: Flight) -> bytes:
    seed, effort = (flight.price.seed, flight.price.effort) if flight.price else (bytes(16), 0)
    return _FLIGHT.pack(flight.timestamp, seed, effort, flight.nonce)


def decode_flight(tail: bytes) -> Flight:
    """The flight at the start of a first flight's ``tail``. Raises :class:`HandshakeError`."""
    if len(tail) < _FLIGHT.size:
        raise HandshakeError("first flight without its tail")
    timestamp, seed, effort, nonce = _FLIGHT.unpack_from(tail)
    return Flight(timestamp, Price(seed, effort) if effort else None, nonce)


def decode_price_tail(tail: bytes) -> Price:
    """The price at the start of a price frame's ``tail``. Raises :class:`HandshakeError`."""
    try:
        return puzzle.decode_price(tail[: puzzle.PRICE.size])
    except RemoteProtocolError as exc:
        raise HandshakeError(f"bad price frame: {exc}") from exc


def seal_handshake(
    obfs_key: bytes,
    noise_message: bytes,
    *,
    salt: bytes,
    padding: int,
    from_initiator: bool,
    tail: bytes = b"",
) -> bytes:
    """Wrap one Noise handshake message (and its ``tail``) into an obfuscated frame."""
    body = struct.pack(">H", len(noise_message)) + noise_message + tail + bytes(padding)
    sealed_len = len(body) + TAG_LEN
    if sealed_len > MAX_HANDSHAKE_BODY or len(salt) != SALT_LEN:
        raise ValueError("handshake frame too large or bad salt")
    k_hdr, k_body = _frame_keys(obfs_key, salt, from_initiator)
    aead = sodium.crypto_aead_chacha20poly1305_ietf_encrypt
    hdr = aead(struct.pack(">H", sealed_len), b"", _ZERO_NONCE, k_hdr)
    return salt + hdr + aead(body, b"", _ZERO_NONCE, k_body)


def _open(key: bytes, ciphertext: bytes, what: str) -> bytes:
    try:
        return sodium.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, b"", _ZERO_NONCE, key)
    except nacl.exceptions.CryptoError as exc:
        raise HandshakeError(f"{what} does not open") from exc


def open_handshake(
    buffer: bytes | bytearray, obfs_key: bytes, *, from_initiator: bool
) -> tuple[bytes, bytes, int] | None:
    """Unwrap a frame at the start of ``buffer``.

    Returns ``(noise_message, tail_and_padding, bytes_consumed)``, or ``None``
    when more bytes are needed. Raises :class:`HandshakeError` on anything
    invalid.
    """
    if len(buffer) < HEADER_LEN:
        return None
    salt = bytes(buffer[:SALT_LEN])
    k_hdr, k_body = _frame_keys(obfs_key, salt, from_initiator)
    (sealed_len,) = struct.unpack(">H", _open(k_hdr, bytes(buffer[SALT_LEN:HEADER_LEN]), "header"))
    if not TAG_LEN + 2 <= sealed_len <= MAX_HANDSHAKE_BODY:
        raise HandshakeError("handshake body length out of range")
    end = HEADER_LEN + sealed_len
    if len(buffer) < end:
        return None
    body = _open(k_body, bytes(buffer[HEADER_LEN:end]), "body")
    (noise_len,) = struct.unpack(">H", body[:2])
    if noise_len > len(body) - 2:
        raise HandshakeError("handshake message length out of range")
    return body[2 : 2 + noise_len], body[2 + noise_len :], end


@dataclass(frozen=True)
class Cell:
    type: CellType
    data: bytes = b""


def seal_cell(cipher: CipherState, cell: Cell) -> bytes:
    """One fixed-size sealed cell."""
    if len(cell.data) > CELL_DATA:
        raise ValueError("cell data too large")
    plain = struct.pack(">BH", cell.type, len(cell.data)) + cell.data
    return cipher.encrypt_with_ad(b"", plain.ljust(CELL_PLAINTEXT, b"\x00"))


def open_cell(cipher: CipherState, sealed: bytes) -> Cell:
    """Inverse of :func:`seal_cell`. Raises :class:`RemoteProtocolError`."""
    try:
        plain = cipher.decrypt_with_ad(b"", sealed)
    except HandshakeError as exc:
        raise RemoteProtocolError("cell authentication failed") from exc
    kind, length = struct.unpack(">BH", plain[:CELL_HEADER])
    if length > CELL_DATA:
        raise RemoteProtocolError("cell length out of range")
    try:
        cell_type = CellType(kind)
    except ValueError as exc:
        raise RemoteProtocolError(f"unknown cell type {kind}") from exc
    return Cell(cell_type, plain[CELL_HEADER : CELL_HEADER + length])


def fragment(data: bytes) -> list[Cell]:
    """Split a message into MORE... END cells (an empty message is one END)."""
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message larger than {MAX_MESSAGE} bytes")
    chunks = [data[i : i + CELL_DATA] for i in range(0, len(data), CELL_DATA)] or [b""]
    return [Cell(CellType.MORE, c) for c in chunks[:-1]] + [Cell(CellType.END, chunks[-1])]
