"""What onion delivery puts in a link message and in a Sphinx message.

Link message carrying one Sphinx packet (shares the link-message space with
the delivery frames, types 1-2, and DHT RPCs, types 3-4)::

    version(1) type=5 packet(PACKET_BYTES)

Sphinx message of a forward packet, as its destination reads it::

    version(1) kind=1 surb(SURB_BYTES) envelope_len(2) envelope

where ``envelope`` is the sealed-sender e2e message (:mod:`p2pmsg.e2e`) and
``surb`` the single-use reply block for the ack. A reply through a SURB::

    version(1) kind=2 count(1) count x message id(16)

One encoder and one decoder per format, side by side; decoders raise
:class:`RemoteProtocolError` and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from p2pmsg.delivery.frames import ID_BYTES
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.onion import sphinx

VERSION: Final = 1
PACKET_TYPE: Final = 5
MAX_ACKS: Final = 32
_ENVELOPE_LEN: Final = struct.Struct(">H")
_FORWARD_HEAD: Final = 2 + sphinx.SURB_BYTES + _ENVELOPE_LEN.size
MAX_ENVELOPE: Final = sphinx.MAX_MESSAGE - _FORWARD_HEAD
"""The largest sealed e2e envelope one packet carries."""


class Kind(IntEnum):
    FORWARD = 1
    REPLY = 2


@dataclass(frozen=True)
class ForwardMessage:
    surb: bytes = field(repr=False)
    envelope: bytes = field(repr=False)


@dataclass(frozen=True)
class ReplyMessage:
    acks: tuple[bytes, ...]


def encode_packet_message(packet: bytes) -> bytes:
    if len(packet) != sphinx.PACKET_BYTES:
        raise ValueError(f"a Sphinx packet is {sphinx.PACKET_BYTES} bytes")
    return bytes([VERSION, PACKET_TYPE]) + packet


def decode_packet_message(data: bytes) -> bytes:
    """The packet in a link message of type 5. Raises :class:`RemoteProtocolError`."""
    if len(data) != 2 + sphinx.PACKET_BYTES or data[0] != VERSION or data[1] != PACKET_TYPE:
        raise RemoteProtocolError("not an onion packet message")
    return bytes(data[2:])


def encode_forward(message: ForwardMessage) -> bytes:
    """Raises ``ValueError`` when the SURB or envelope does not fit."""
    if len(message.surb) != sphinx.SURB_BYTES:
        raise ValueError(f"a SURB is {sphinx.SURB_BYTES} bytes")
    if len(message.envelope) > MAX_ENVELOPE:
        raise ValueError(f"an envelope is at most {MAX_ENVELOPE} bytes")
    head = bytes([VERSION, Kind.FORWARD]) + message.surb
    return head + _ENVELOPE_LEN.pack(len(message.envelope)) + message.envelope


def encode_reply(message: ReplyMessage) -> bytes:
    if not 1 <= len(message.acks) <= MAX_ACKS:
        raise ValueError(f"a reply carries 1 to {MAX_ACKS} acks")
    if any(len(a) != ID_BYTES for a in message.acks):
        raise ValueError("message ids are 16 bytes")
    return bytes([VERSION, Kind.REPLY, len(message.acks)]) + b"".join(message.acks)


def decode(data: bytes) -> ForwardMessage | ReplyMessage:
    """Parse a Sphinx message. Raises :class:`RemoteProtocolError`."""
    if len(data) < 3 or data[0] != VERSION:
        raise RemoteProtocolError("unknown onion message version")
    if data[1] == Kind.REPLY:
        count = data[2]
        if not 1 <= count <= MAX_ACKS or len(data) != 3 + count * ID_BYTES:
            raise RemoteProtocolError("malformed reply")
        ids = tuple(bytes(data[3 + i * ID_BYTES : 3 + (i + 1) * ID_BYTES]) for i in range(count))
        return ReplyMessage(ids)
    if data[1] != Kind.FORWARD or len(data) < _FORWARD_HEAD:
        raise RemoteProtocolError("unknown or short onion message")
    surb = bytes(data[2 : 2 + sphinx.SURB_BYTES])
    (length,) = _ENVELOPE_LEN.unpack_from(data, 2 + sphinx.SURB_BYTES)
    if length > MAX_ENVELOPE or len(data) != _FORWARD_HEAD + length:
        raise RemoteProtocolError("envelope length does not match")
    return ForwardMessage(surb, bytes(data[_FORWARD_HEAD:]))
