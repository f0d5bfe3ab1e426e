"""Sphinx packets: fixed-size onions that reveal each relay only its next hop.

Theory of operation
-------------------
This is the Sphinx format of Danezis and Goldberg ("Sphinx: A Compact and
Provably Secure Mix Format", 2009) with the X25519 parameterisation that
Katzenpost uses. A packet is a header and a payload. The header (alpha,
beta, gamma: blinded X25519 element, encrypted routing slots, MAC) is
:mod:`p2pmsg.onion.header`'s business; this module says what a slot means,
wraps the payload and handles replies. The payload is encrypted once per
hop with LIONESS (:mod:`p2pmsg.onion.lioness`), a wide-block cipher: a
relay that flips a payload bit turns the whole plaintext to noise, which
the destination detects by its 16-byte zero prefix (Sphinx's tag check).

Geometry (all sizes in bytes)::

    slot    = command 1 | node id 32 | SURB id 16 | next MAC 16     = 65
    header  = alpha 32 | beta 6 * 65 = 390 | gamma 16                 = 438
    payload = LIONESS(zeros 16 | length u16 | message | zero padding) = 2048
    packet  = header + payload                                        = 2486
    SURB    = first hop 32 | header 438 | payload key 32              = 502

Up to :data:`MAX_HOPS` = 6 Sphinx hops: up to 5 relays plus the
destination, which peels the last layer. The slot has no spare padding on
purpose: a byte there costs six in the header and one more in every SURB,
and :data:`MAX_MESSAGE` (2030) must hold an end-to-end envelope of about
1.5 KB *and* one SURB (502), which leaves 1528.

Slot commands: 1 RELAY and 2 EXIT (node id = next hop), 3 DELIVER, and 4,
the DELIVER of a reply, whose SURB id field is meaningful. An EXIT relay
that cannot reach the destination deposits the packet in its mailbox; a
creator whose packet is worthless later (a mailbox request and its answer,
stale long before an offline destination is back) makes that hop RELAY
(``deposit=False``), and the relay drops it instead. Unused fields of
a slot must be zero. Every byte on the wire looks random; the version lives
in the key derivation (:data:`PERSONALISATION`).

Replies (SURBs): the creator builds a header to itself and keeps every
hop's payload key; the replier LIONESS-encrypts its payload under the
SURB's key and sends ``header || payload`` like any packet, so relays
cannot tell replies from forward packets. The creator undoes the hops'
decryptions and the replier's encryption in :func:`open_reply`.

Pure: randomness comes in as ``rng``. Untrusted bytes raise
:class:`InvalidPacket` or :class:`InvalidSurb`; local misuse ``ValueError``.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

import nacl.bindings as sodium

from p2pmsg.errors import RemoteProtocolError
from p2pmsg.onion import header as hdr
from p2pmsg.onion import lioness
from p2pmsg.onion.header import (
    HEADER_BYTES,
    KEY_BYTES,
    MAX_HOPS,
    PERSONALISATION,
    REPLAY_TAG_BYTES,
    SLOT_BYTES,
    InvalidPacket,
    InvalidReason,
    Rng,
)

__all__ = [
    "HEADER_BYTES",
    "ID_BYTES",
    "MAX_HOPS",
    "MAX_MESSAGE",
    "PACKET_BYTES",
    "PAYLOAD_BYTES",
    "PERSONALISATION",
    "REPLAY_TAG_BYTES",
    "SLOT_BYTES",
    "SURB_BYTES",
    "SURB_ID_BYTES",
    "Command",
    "Deliver",
    "Forward",
    "Hop",
    "InvalidPacket",
    "InvalidReason",
    "InvalidSurb",
    "Peeled",
    "Surb",
    "SurbSecret",
    "create_packet",
    "create_surb",
    "decode_surb",
    "encode_surb",
    "open_reply",
    "peel",
    "peel_with",
    "public_key",
    "use_surb",
]

ID_BYTES: Final = 32
SURB_ID_BYTES: Final = 16
TAG_PREFIX_BYTES: Final = 16
PAYLOAD_BYTES: Final = 2048
PACKET_BYTES: Final = HEADER_BYTES + PAYLOAD_BYTES
MAX_MESSAGE: Final = PAYLOAD_BYTES - TAG_PREFIX_BYTES - 2
SURB_BYTES: Final = ID_BYTES + HEADER_BYTES + KEY_BYTES

_DELIVER_REPLY: Final = 4
_NO_ID: Final = bytes(ID_BYTES)
_NO_SURB: Final = bytes(SURB_ID_BYTES)
_NO_MAC: Final = bytes(hdr.MAC_BYTES)


class Command(IntEnum):
    """What a hop is told to do; the first byte of its slot."""

    RELAY = 1  # forward to next_hop
    EXIT = 2  # forward to next_hop, the destination (may go to its mailbox)
    DELIVER = 3  # you are the destination


class InvalidSurb(RemoteProtocolError):
    """A peer sent a reply block (SURB) that is malformed."""


@dataclass(frozen=True)
class Hop:
    """One hop of a route: who it is and its X25519 onion key."""

    node_id: bytes
    onion_key: bytes

    def __post_init__(self) -> None:
        if len(self.node_id) != ID_BYTES or len(self.onion_key) != KEY_BYTES:
            raise ValueError("a hop's node id and onion key are 32 bytes each")


@dataclass(frozen=True)
class Forward:
    """Send ``packet`` on to ``next_hop``."""

    command: Command
    next_hop: bytes
    packet: bytes = field(repr=False)


@dataclass(frozen=True)
class Deliver:
    """We are the destination: the message, or a reply's wrapped payload."""

    message: bytes = field(repr=False)
    surb_id: bytes | None


@dataclass(frozen=True)
class Peeled:
    """One hop's result; act on it only if ``replay_tag`` is fresh."""

    replay_tag: bytes
    result: Forward | Deliver


@dataclass(frozen=True)
class Surb:
    """A single-use reply block, as the replier receives it."""

    first_hop: bytes
    header: bytes = field(repr=False)
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if (len(self.first_hop), len(self.header), len(self.key)) != (
            ID_BYTES,
            HEADER_BYTES,
            KEY_BYTES,
        ):
            raise ValueError("malformed SURB fields")


@dataclass(frozen=True)
class SurbSecret:
    """What a SURB's creator keeps: ``keys[0]`` is the replier's payload key,
    ``keys[1:]`` the route's per-hop payload keys in route order."""

    id: bytes
    keys: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.id) != SURB_ID_BYTES or not 2 <= len(self.keys) <= MAX_HOPS + 1:
            raise ValueError("malformed SURB secret")
        if any(len(k) != KEY_BYTES for k in self.keys):
            raise ValueError("a SURB key is 32 bytes")

    def to_bytes(self) -> bytes:
        """``id || keys``: what :meth:`from_bytes` reads back."""
        return self.id + b"".join(self.keys)

    @classmethod
    def from_bytes(cls, data: bytes) -> SurbSecret:
        """Parse :meth:`to_bytes` output. Raises ``ValueError`` when malformed."""
        body = data[SURB_ID_BYTES:]
        if len(body) % KEY_BYTES:
            raise ValueError("malformed SURB secret")
        keys = tuple(body[i : i + KEY_BYTES] for i in range(0, len(body), KEY_BYTES))
        return cls(data[:SURB_ID_BYTES], keys)


# -- packets ---------------------------------------------------------------


def public_key(private_key: bytes) -> bytes:
    """The X25519 public key of ``private_key`` (32 bytes, clamped on use)."""
    if len(private_key) != KEY_BYTES:
        raise ValueError("an X25519 private key is 32 bytes")
    return sodium.crypto_scalarmult_base(private_key)


def _info(command: int, node_id: bytes = _NO_ID, surb_id: bytes = _NO_SURB) -> bytes:
    return bytes([command]) + node_id + surb_id


def _create_header(
    route: Sequence[Hop], surb_id: bytes | None, rng: Rng, *, deposit: bool
) -> tuple[bytes, list[bytes]]:
    """(header, per-hop payload keys): RELAY, ..., EXIT (RELAY without
    ``deposit``), then DELIVER."""
    infos = [_info(Command.RELAY, hop.node_id) for hop in route[1:]]
    if deposit and len(route) >= 2:
        infos[-1] = _info(Command.EXIT, route[-1].node_id)
    if surb_id is None:
        infos.append(_info(Command.DELIVER))
    else:
        infos.append(_info(_DELIVER_REPLY, surb_id=surb_id))
    header, keys = hdr.create([hop.onion_key for hop in route], infos, rng)
    return header, [k.payload for k in keys]


def _encode_payload(message: bytes) -> bytes:
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"a message is at most {MAX_MESSAGE} bytes")
    body = bytes(TAG_PREFIX_BYTES) + len(message).to_bytes(2, "big") + message
    return body.ljust(PAYLOAD_BYTES, b"\x00")


def _decode_payload(plain: bytes) -> bytes:
    if not hmac.compare_digest(plain[:TAG_PREFIX_BYTES], bytes(TAG_PREFIX_BYTES)):
        raise InvalidPacket(InvalidReason.TAGGED_PAYLOAD, "the payload was modified")
    length = int.from_bytes(plain[TAG_PREFIX_BYTES : TAG_PREFIX_BYTES + 2], "big")
    if length > MAX_MESSAGE:
        raise InvalidPacket(InvalidReason.BAD_LENGTH, f"message length {length}")
    start = TAG_PREFIX_BYTES + 2
    return plain[start : start + length]


def create_packet(
    route: Sequence[Hop], message: bytes, rng: Rng, *, deposit: bool = True
) -> tuple[bytes, bytes]:
    """(first hop node id, packet) carrying ``message`` along ``route``.

    ``route[-1]`` is the destination (it gets DELIVER), the hop before it
    EXIT (RELAY without ``deposit``), the others RELAY. Raises
    ``ValueError`` for a route of 0 or more than :data:`MAX_HOPS` hops or a
    message over :data:`MAX_MESSAGE` bytes.
    """
    payload = _encode_payload(message)
    header, payload_keys = _create_header(route, None, rng, deposit=deposit)
    for key in reversed(payload_keys):
        payload = lioness.encrypt(key, payload)
    return route[0].node_id, header + payload


# -- processing ---------------------------------------------------------------


def _parse_slot(slot: bytes) -> tuple[int, bytes, bytes, bytes]:
    command = slot[0]
    node_id = slot[1 : 1 + ID_BYTES]
    surb_id = slot[1 + ID_BYTES : 1 + ID_BYTES + SURB_ID_BYTES]
    mac = slot[1 + ID_BYTES + SURB_ID_BYTES :]
    if command in (Command.RELAY, Command.EXIT):
        valid = surb_id == _NO_SURB
    elif command in (Command.DELIVER, _DELIVER_REPLY):
        valid = node_id == _NO_ID and mac == _NO_MAC
        valid = valid and (command == _DELIVER_REPLY or surb_id == _NO_SURB)
    else:
        valid = False
    if not valid:
        raise InvalidPacket(InvalidReason.BAD_COMMAND, f"command {command}")
    return command, node_id, surb_id, mac


def peel(private_key: bytes, packet: bytes) -> Peeled:
    """Process ``packet`` as the hop owning X25519 ``private_key``.

    Derives the shared secret, checks the header MAC *before* any other
    work, then unwraps one layer. A forward packet's DELIVER has its zero
    prefix checked; a reply's (``surb_id`` set) payload is returned still
    wrapped, for :func:`open_reply`. Raises :class:`InvalidPacket`; the
    caller must refuse a :attr:`Peeled.replay_tag` it has seen before.
    """
    return peel_with((private_key,), packet)[1]


def peel_with(private_keys: Sequence[bytes], packet: bytes) -> tuple[int, Peeled]:
    """(index, result): :func:`peel` with the first of ``private_keys``, in
    their order, whose header MAC verifies.

    For a node with several keys: each key tried before the right one costs
    an X25519 and two BLAKE2b, so the likeliest comes first. The layer is
    processed under that key only; a failure after its MAC verified (a bad
    slot, a tagged payload) is final. Raises :class:`InvalidPacket`
    (``bad_mac`` when no key verifies) and ``ValueError`` for no keys or a
    key that is not 32 bytes.
    """
    if len(packet) != PACKET_BYTES:
        raise InvalidPacket(InvalidReason.WRONG_SIZE, f"{len(packet)} bytes")
    if any(len(key) != KEY_BYTES for key in private_keys):
        raise ValueError("an X25519 private key is 32 bytes")
    packet = bytes(packet)
    index, opened = hdr.open_header_with(private_keys, packet[:HEADER_BYTES])
    command, node_id, surb_id, _ = _parse_slot(opened.info + opened.next_mac)
    payload = lioness.decrypt(opened.keys.payload, packet[HEADER_BYTES:])
    result: Forward | Deliver
    if command == _DELIVER_REPLY:
        result = Deliver(payload, surb_id)
    elif command == Command.DELIVER:
        result = Deliver(_decode_payload(payload), None)
    else:
        forwarded = hdr.next_header(opened, packet[:KEY_BYTES]) + payload
        result = Forward(Command(command), node_id, forwarded)
    return index, Peeled(opened.keys.replay_tag, result)


# -- replies --------------------------------------------------------------------


def create_surb(
    route: Sequence[Hop], surb_id: bytes, rng: Rng, *, deposit: bool = True
) -> tuple[Surb, SurbSecret]:
    """A reply block along ``route``, whose last hop is the creator itself
    (``deposit`` as in :func:`create_packet`).

    Give the :class:`Surb` to the replier (:func:`encode_surb`) and keep the
    :class:`SurbSecret`. Raises ``ValueError`` for a bad route or id size.
    """
    if len(surb_id) != SURB_ID_BYTES:
        raise ValueError(f"a SURB id is {SURB_ID_BYTES} bytes")
    header, payload_keys = _create_header(route, surb_id, rng, deposit=deposit)
    reply_key = rng(KEY_BYTES)
    surb = Surb(route[0].node_id, header, reply_key)
    return surb, SurbSecret(surb_id, (reply_key, *payload_keys))


def use_surb(surb: Surb, message: bytes) -> tuple[bytes, bytes]:
    """(first hop node id, packet) carrying ``message`` back to the SURB's creator.

    Raises ``ValueError`` for a message over :data:`MAX_MESSAGE` bytes.
    """
    return surb.first_hop, surb.header + lioness.encrypt(surb.key, _encode_payload(message))


def open_reply(secret: SurbSecret, payload: bytes) -> bytes:
    """The replier's message from a reply's :attr:`Deliver.message`.

    Raises :class:`InvalidPacket` (``tagged_payload``) when any hop modified
    the payload, and (``wrong_size``) for a payload of the wrong size.
    """
    if len(payload) != PAYLOAD_BYTES:
        raise InvalidPacket(InvalidReason.WRONG_SIZE, f"payload of {len(payload)} bytes")
    reply_key, *hop_keys = secret.keys
    for key in reversed(hop_keys):
        payload = lioness.encrypt(key, payload)
    return _decode_payload(lioness.decrypt(reply_key, payload))


def encode_surb(surb: Surb) -> bytes:
    """``first hop || header || key``, :data:`SURB_BYTES` long."""
    return surb.first_hop + surb.header + surb.key


def decode_surb(data: bytes) -> Surb:
    """Parse :func:`encode_surb` output. Raises :class:`InvalidSurb` on a wrong size."""
    if len(data) != SURB_BYTES:
        raise InvalidSurb(f"a SURB is {SURB_BYTES} bytes, not {len(data)}")
    data = bytes(data)
    return Surb(data[:ID_BYTES], data[ID_BYTES:-KEY_BYTES], data[-KEY_BYTES:])
