"""What onion delivery puts in a link message and in a Sphinx message.

Link message carrying one Sphinx packet (shares the link-message space with
the delivery frames, types 1-2, DHT RPCs, types 3-4, and tunnels, 6-7)::

    version(1) type=5 packet(PACKET_BYTES)

and the one a node that nobody can dial sends its gateway relay, every
:data:`p2pmsg.onion_service.GATEWAY_REFRESH` seconds: "send packets for me back over this link"::

    version(1) type=8

Sphinx message of a forward packet, as its destination reads it::

    version(1) kind=1 surb(SURB_BYTES) envelope_len(4) envelope

where ``envelope`` is the sealed-sender e2e message
(:mod:`p2pmsg.e2e`) and ``surb`` the single-use reply block for the ack. A
forward message longer than one packet travels as ``count`` fragments, each
in its own packet over its own route (:mod:`p2pmsg.delivery.fragments`)::

    FRAGMENT version(1) kind=6 set(16) index(1) count(1) len(2) data

``set`` is random per attempt, so fragments of two attempts never mix. A
reply through a SURB::

    version(1) kind=2 count(1) count x message id(16)

or, when the recipient unsealed the message but no session it holds opens
the e2e message inside (it lost its state, retired the prekey named, or
refused a replayed start), a request to start a new session::

    UNREADABLE version(1) kind=7 reason(1)

A mailbox owner's requests to a node that fetches or clears for it (so the
holders never see the owner's address), and that node's answers through the
owner's SURBs, one entry in ``count`` parts (a stored entry is a whole
packet, larger than one reply)::

    FETCH  version(1) kind=3 owner(32) epoch(4) session(8) n(1) n x surb
           m(1) m x seen entry id prefix(8)
    CLEAR  version(1) kind=4 n(1) n x (len(2) signed clear request)
    PART   version(1) kind=5 entry(16) index(1) count(1) remaining(2)
           len(2) data            (count 0: nothing unseen is left)

One encoder and one decoder per format, side by side; decoders raise
:class:`RemoteProtocolError` and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from p2pmsg.delivery.frames import ID_BYTES
from p2pmsg.e2e.sealed import MAX_ENVELOPE_BYTES
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.onion import sphinx

VERSION: Final = 1
PACKET_TYPE: Final = 5
GATEWAY_TYPE: Final = 8
GATEWAY_MESSAGE: Final = bytes([VERSION, GATEWAY_TYPE])
MAX_ACKS: Final = 32
_ENVELOPE_LEN: Final = struct.Struct(">I")
_FORWARD_HEAD: Final = 2 + sphinx.SURB_BYTES + _ENVELOPE_LEN.size
MAX_ENVELOPE: Final = sphinx.MAX_MESSAGE - _FORWARD_HEAD
"""The largest sealed e2e envelope one packet carries."""
MAX_FORWARD: Final = _FORWARD_HEAD + MAX_ENVELOPE_BYTES
"""The longest forward message, in fragments: the largest sealed envelope."""
SET_BYTES: Final = 16
_FRAGMENT_HEAD: Final = struct.Struct(">BB16sBBH")
FRAGMENT_DATA: Final = sphinx.MAX_MESSAGE - _FRAGMENT_HEAD.size
MAX_FRAGMENTS: Final = -(-MAX_FORWARD // FRAGMENT_DATA)


class Kind(IntEnum):
    FORWARD = 1
    REPLY = 2
    FETCH = 3
    CLEAR = 4
    PART = 5
    FRAGMENT = 6
    UNREADABLE = 7


class Unreadable(IntEnum):
    """Why the recipient could not open an e2e message (for the sender's stats)."""

    NO_SESSION = 1
    UNKNOWN_PREKEY = 2
    REPLAYED_START = 3


@dataclass(frozen=True)
class ForwardMessage:
    surb: bytes = field(repr=False)
    envelope: bytes = field(repr=False)


@dataclass(frozen=True)
class ReplyMessage:
    acks: tuple[bytes, ...]


MAX_FETCH_SURBS: Final = 3
PREFIX_BYTES: Final = 8
SESSION_BYTES: Final = 8
_FETCH_HEAD: Final = struct.Struct(">BB32sI8sB")
MAX_SEEN: Final = (
    sphinx.MAX_MESSAGE - _FETCH_HEAD.size - MAX_FETCH_SURBS * sphinx.SURB_BYTES - 1
) // PREFIX_BYTES
_PART_HEAD: Final = struct.Struct(">BB16sBBHH")
MAX_PART: Final = sphinx.MAX_MESSAGE - _PART_HEAD.size
MAX_CLEARS: Final = 3


@dataclass(frozen=True)
class FetchRequest:
    owner: bytes
    epoch: int
    session: bytes
    """Random per poll: the relay may reuse one DHT fetch within a session only."""
    surbs: tuple[bytes, ...] = field(repr=False)
    seen: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ClearRequests:
    requests: tuple[bytes, ...] = field(repr=False)
    """Signed clear requests (:func:`p2pmsg.dht.mailbox.encode_clear`), opaque here."""


@dataclass(frozen=True)
class EntryPart:
    entry: bytes
    index: int
    count: int
    remaining: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Fragment:
    set: bytes
    index: int
    count: int
    data: bytes = field(repr=False)


OnionMessage = (
    ForwardMessage | ReplyMessage | FetchRequest | ClearRequests | EntryPart | Fragment | Unreadable
)


def encode_fetch(message: FetchRequest) -> bytes:
    """Raises ``ValueError`` for a request that does not fit one packet."""
    if not 1 <= len(message.surbs) <= MAX_FETCH_SURBS or len(message.seen) > MAX_SEEN:
        raise ValueError(f"1 to {MAX_FETCH_SURBS} SURBs and at most {MAX_SEEN} seen entries")
    if any(len(s) != sphinx.SURB_BYTES for s in message.surbs):
        raise ValueError(f"a SURB is {sphinx.SURB_BYTES} bytes")
    if any(len(p) != PREFIX_BYTES for p in message.seen) or len(message.owner) != 32:
        raise ValueError("an owner is 32 bytes and a seen prefix 8")
    if len(message.session) != SESSION_BYTES:
        raise ValueError(f"a session is {SESSION_BYTES} bytes")
    head = _FETCH_HEAD.pack(
        VERSION, Kind.FETCH, message.owner, message.epoch, message.session, len(message.surbs)
    )
    return head + b"".join(message.surbs) + bytes([len(message.seen)]) + b"".join(message.seen)


def _decode_fetch(data: bytes) -> FetchRequest:
    if len(data) < _FETCH_HEAD.size:
        raise RemoteProtocolError("short fetch request")
    _, _, owner, epoch, session, n = _FETCH_HEAD.unpack_from(data)
    end = _FETCH_HEAD.size + n * sphinx.SURB_BYTES
    if not 1 <= n <= MAX_FETCH_SURBS or len(data) < end + 1:
        raise RemoteProtocolError("malformed fetch request")
    surbs = tuple(
        bytes(data[i : i + sphinx.SURB_BYTES])
        for i in range(_FETCH_HEAD.size, end, sphinx.SURB_BYTES)
    )
    m = data[end]
    if m > MAX_SEEN or len(data) != end + 1 + m * PREFIX_BYTES:
        raise RemoteProtocolError("malformed fetch request")
    seen = tuple(bytes(data[i : i + PREFIX_BYTES]) for i in range(end + 1, len(data), PREFIX_BYTES))
    return FetchRequest(bytes(owner), epoch, bytes(session), surbs, seen)


def encode_clears(message: ClearRequests) -> bytes:
    if not 1 <= len(message.requests) <= MAX_CLEARS:
        raise ValueError(f"1 to {MAX_CLEARS} clear requests")
    out = bytearray([VERSION, Kind.CLEAR, len(message.requests)])
    for request in message.requests:
        out += len(request).to_bytes(2, "big") + request
    if len(out) > sphinx.MAX_MESSAGE:
        raise ValueError("the clear requests do not fit one packet")
    return bytes(out)


def _decode_clears(data: bytes) -> ClearRequests:
    if len(data) < 3 or not 1 <= data[2] <= MAX_CLEARS:
        raise RemoteProtocolError("malformed clear requests")
    requests, pos = [], 3
    for _ in range(data[2]):
        if pos + 2 > len(data):
            raise RemoteProtocolError("truncated clear requests")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if pos + 2 + length > len(data):
            raise RemoteProtocolError("truncated clear requests")
        requests.append(bytes(data[pos + 2 : pos + 2 + length]))
        pos += 2 + length
    if pos != len(data):
        raise RemoteProtocolError("trailing bytes after the clear requests")
    return ClearRequests(tuple(requests))


def encode_part(message: EntryPart) -> bytes:
    if len(message.entry) != 16 or len(message.data) > MAX_PART:
        raise ValueError(f"a 16-byte entry id and at most {MAX_PART} bytes of data")
    if not 0 <= message.index < 256 or not 0 <= message.count < 256:
        raise ValueError("index and count are bytes")
    head = _PART_HEAD.pack(
        VERSION,
        Kind.PART,
        message.entry,
        message.index,
        message.count,
        min(message.remaining, 0xFFFF),
        len(message.data),
    )
    return head + message.data


def _decode_part(data: bytes) -> EntryPart:
    if len(data) < _PART_HEAD.size:
        raise RemoteProtocolError("short entry part")
    _, _, entry, index, count, remaining, length = _PART_HEAD.unpack_from(data)
    if len(data) != _PART_HEAD.size + length or (count and index >= count):
        raise RemoteProtocolError("malformed entry part")
    return EntryPart(bytes(entry), index, count, remaining, bytes(data[_PART_HEAD.size :]))


def encode_fragment(message: Fragment) -> bytes:
    if len(message.set) != SET_BYTES or not 0 < len(message.data) <= FRAGMENT_DATA:
        raise ValueError(f"a {SET_BYTES}-byte set id and 1 to {FRAGMENT_DATA} bytes of data")
    if not 0 <= message.index < message.count <= MAX_FRAGMENTS or message.count < 2:
        raise ValueError(f"an index below a count of 2 to {MAX_FRAGMENTS}")
    head = _FRAGMENT_HEAD.pack(
        VERSION, Kind.FRAGMENT, message.set, message.index, message.count, len(message.data)
    )
    return head + message.data


def _decode_fragment(data: bytes) -> Fragment:
    if len(data) <= _FRAGMENT_HEAD.size:
        raise RemoteProtocolError("short fragment")
    _, _, set_id, index, count, length = _FRAGMENT_HEAD.unpack_from(data)
    if (
        not 0 <= index < count <= MAX_FRAGMENTS
        or count < 2
        or length == 0
        or len(data) != _FRAGMENT_HEAD.size + length
    ):
        raise RemoteProtocolError("malformed fragment")
    return Fragment(bytes(set_id), index, count, bytes(data[_FRAGMENT_HEAD.size :]))


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
    if len(message.envelope) > MAX_ENVELOPE_BYTES:
        raise ValueError(f"an envelope is at most {MAX_ENVELOPE_BYTES} bytes")
    head = bytes([VERSION, Kind.FORWARD]) + message.surb
    return head + _ENVELOPE_LEN.pack(len(message.envelope)) + message.envelope


def encode_reply(message: ReplyMessage) -> bytes:
    if not 1 <= len(message.acks) <= MAX_ACKS:
        raise ValueError(f"a reply carries 1 to {MAX_ACKS} acks")
    if any(len(a) != ID_BYTES for a in message.acks):
        raise ValueError("message ids are 16 bytes")
    return bytes([VERSION, Kind.REPLY, len(message.acks)]) + b"".join(message.acks)


def encode_unreadable(reason: Unreadable) -> bytes:
    return bytes([VERSION, Kind.UNREADABLE, reason])


def _decode_reply(data: bytes) -> ReplyMessage:
    count = data[2]
    if not 1 <= count <= MAX_ACKS or len(data) != 3 + count * ID_BYTES:
        raise RemoteProtocolError("malformed reply")
    return ReplyMessage(
        tuple(bytes(data[3 + i * ID_BYTES : 3 + (i + 1) * ID_BYTES]) for i in range(count))
    )


def _decode_unreadable(data: bytes) -> Unreadable:
    if len(data) != 3:
        raise RemoteProtocolError("malformed unreadable reply")
    try:
        return Unreadable(data[2])
    except ValueError:
        raise RemoteProtocolError("unknown unreadable reason") from None


_DECODERS: Final[dict[int, Callable[[bytes], OnionMessage]]] = {
    Kind.REPLY: _decode_reply,
    Kind.FETCH: _decode_fetch,
    Kind.CLEAR: _decode_clears,
    Kind.PART: _decode_part,
    Kind.FRAGMENT: _decode_fragment,
    Kind.UNREADABLE: _decode_unreadable,
}


def decode(data: bytes) -> OnionMessage:
    """Parse a Sphinx message. Raises :class:`RemoteProtocolError`."""
    if len(data) < 3 or data[0] != VERSION:
        raise RemoteProtocolError("unknown onion message version")
    if (decoder := _DECODERS.get(data[1])) is not None:
        return decoder(data)
    if data[1] != Kind.FORWARD or len(data) < _FORWARD_HEAD:
        raise RemoteProtocolError("unknown or short onion message")
    surb = bytes(data[2 : 2 + sphinx.SURB_BYTES])
    (length,) = _ENVELOPE_LEN.unpack_from(data, 2 + sphinx.SURB_BYTES)
    if length > MAX_ENVELOPE_BYTES or len(data) != _FORWARD_HEAD + length:
        raise RemoteProtocolError("envelope length does not match")
    return ForwardMessage(surb, bytes(data[_FORWARD_HEAD:]))
