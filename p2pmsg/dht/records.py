"""Signed, expiring DHT records: one generic wire format, one validator per type.

Theory of operation
-------------------
Everything a node publishes in the DHT under its own name (its peer record,
its prekey bundle, a publisher's bootstrap list) is a :class:`Record`: a type, the 32-byte DHT key
it is stored under, the publisher's Ed25519 key, a sequence number, an expiry
time and a type-specific value, signed by the publisher. A storing node can
withhold a record but cannot forge or alter one; the sequence number lets a
newer record replace an older one (a store keeps the highest it has seen, so
rolling back is impossible), and the expiry bounds how long an old record can
be replayed. (Mailbox entries are not records: a depositor must stay
anonymous, so they are unsigned; see :mod:`p2pmsg.dht.mailbox`.)

Wire format, version 1, big-endian, fixed sizes::

    version u8 | type u8 | key 32 | publisher 32 | seq u64 | expires u64 |
    value_len u16 | value (value_len <= MAX_VALUE) | signature 64

The signature covers ``SIGNING_CONTEXT`` followed by every byte before the
signature, so it cannot be mistaken for any other p2pmsg signature. Records
travel inside framed DHT messages, so :func:`decode` takes exactly one whole
record: truncated input and trailing bytes are refused, not waited for.

:func:`validate` runs the cheap checks first (expiry, then the type's rules
from :data:`RULES`: the key the record must live under, the shape of its
value) and the signature last. Every refusal is an :class:`InvalidRecord`, a
:class:`RemoteProtocolError` that names its reason.

Clock skew (SCENARIOS S20, works at <= 24 h skew): "expired" is judged
strictly by our clock, so an expired record is never admitted; the upper
bound on ``expires`` tolerates ``skew`` (default 24 h), so a publisher whose
clock runs a day fast is not refused. A publisher keeps its records alive for
readers whose clocks run ahead by republishing more than the skew before
expiry (:data:`REPUBLISH_MARGIN`).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Final

from p2pmsg.dht.peer import Peer
from p2pmsg.endpoint import MAX_ENDPOINT_CHARS, Endpoint, Invite
from p2pmsg.errors import BadEndpoint, BadInvite, BadKey, RemoteProtocolError
from p2pmsg.keys import KEY_BYTES, NODE_ID_BYTES, Identity, PublicIdentity, node_id_of

VERSION: Final = 1
KEY_SIZE: Final = NODE_ID_BYTES
SIGNATURE_BYTES: Final = 64
MAX_VALUE: Final = 4096
MAX_U64: Final = 2**64 - 1
SIGNING_CONTEXT: Final = b"p2pmsg record v1\0"
_HEADER: Final = struct.Struct(">BB32s32sQQH")
HEADER_BYTES: Final = _HEADER.size
MAX_RECORD_BYTES: Final = HEADER_BYTES + MAX_VALUE + SIGNATURE_BYTES

DAY: Final = 86_400
MAX_CLOCK_SKEW: Final = DAY
REPUBLISH_MARGIN: Final = 2 * DAY


class RecordType(IntEnum):
    """What a record's value means; the byte on the wire."""

    PEER = 1
    PREKEYS = 2
    BOOTSTRAP = 3


class InvalidReason(StrEnum):
    """Why a record was refused; also the key of the store's refusal counters."""

    MALFORMED = "malformed"
    EXPIRED = "expired"
    TOO_FAR_AHEAD = "too_far_ahead"
    WRONG_TYPE = "wrong_type"
    WRONG_KEY = "wrong_key"
    BAD_VALUE = "bad_value"
    BAD_SIGNATURE = "bad_signature"


class InvalidRecord(RemoteProtocolError):
    """A peer sent a DHT record that is malformed, forged or out of date."""

    def __init__(self, reason: InvalidReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Record:
    """One signed DHT record. Construction checks sizes only (``ValueError``)."""

    type: RecordType
    key: bytes
    publisher: bytes
    seq: int
    expires: int
    value: bytes
    signature: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", RecordType(self.type))
        if len(self.key) != KEY_SIZE or len(self.publisher) != KEY_BYTES:
            raise ValueError("a record's key and publisher are 32 bytes each")
        if not (0 <= self.seq <= MAX_U64 and 0 <= self.expires <= MAX_U64):
            raise ValueError("seq and expires are unsigned 64-bit integers")
        if len(self.value) > MAX_VALUE:
            raise ValueError(f"a record's value is at most {MAX_VALUE} bytes")
        if len(self.signature) != SIGNATURE_BYTES:
            raise ValueError(f"a signature is {SIGNATURE_BYTES} bytes")

    def __repr__(self) -> str:
        # no value: a peer record's value holds IP addresses (STYLE rule 7)
        return (
            f"Record({self.type.name}, key={self.key.hex()[:16]}…, "
            f"publisher={self.publisher.hex()[:16]}…, seq={self.seq}, "
            f"expires={self.expires}, value=<{len(self.value)} bytes>)"
        )


def _unsigned(r: Record) -> bytes:
    header = _HEADER.pack(VERSION, r.type, r.key, r.publisher, r.seq, r.expires, len(r.value))
    return header + r.value


def encode(record: Record) -> bytes:
    """The wire bytes of ``record``: exactly what :func:`decode` accepts."""
    return _unsigned(record) + record.signature


def decode(data: bytes) -> Record:
    """Parse one whole record. Raises :class:`InvalidRecord` (``MALFORMED``).

    Checks structure only; :func:`validate` judges signature, expiry and value.
    """
    if len(data) < HEADER_BYTES + SIGNATURE_BYTES:
        raise InvalidRecord(InvalidReason.MALFORMED, f"truncated at {len(data)} bytes")
    if len(data) > MAX_RECORD_BYTES:
        raise InvalidRecord(InvalidReason.MALFORMED, f"longer than {MAX_RECORD_BYTES} bytes")
    version, rtype, key, publisher, seq, expires, length = _HEADER.unpack_from(data)
    if version != VERSION:
        raise InvalidRecord(InvalidReason.MALFORMED, f"unknown version {version}")
    try:
        rtype = RecordType(rtype)
    except ValueError:
        raise InvalidRecord(InvalidReason.MALFORMED, f"unknown record type {rtype}") from None
    if length > MAX_VALUE:
        raise InvalidRecord(InvalidReason.MALFORMED, f"value of {length} bytes")
    end = HEADER_BYTES + length
    if len(data) != end + SIGNATURE_BYTES:
        raise InvalidRecord(InvalidReason.MALFORMED, "length does not match the value length")
    value, signature = bytes(data[HEADER_BYTES:end]), bytes(data[end:])
    return Record(rtype, key, publisher, seq, expires, value, signature)


def signed_message(record: Record) -> bytes:
    """The bytes a record's signature covers."""
    return SIGNING_CONTEXT + _unsigned(record)


def sign_record(  # noqa: PLR0917 - the fields in wire order, as callers read them
    identity: Identity, rtype: RecordType, key: bytes, seq: int, expires: int, value: bytes
) -> Record:
    """A record published by ``identity``. Raises ``ValueError`` on bad sizes.

    Does not apply the type's rules: :func:`validate` the result if unsure.
    """
    unsigned = Record(rtype, key, identity.public.key, seq, expires, value, bytes(64))
    signature = identity.sign(signed_message(unsigned))
    return Record(rtype, key, identity.public.key, seq, expires, value, signature)


def verify_signature(record: Record) -> bool:
    """True when the publisher (a valid Ed25519 key) signed exactly this record."""
    try:
        publisher = PublicIdentity(record.publisher)
    except BadKey:
        return False
    return publisher.verify(signed_message(record), record.signature)


@dataclass(frozen=True)
class TypeRules:
    """What one record type must satisfy beyond the generic format."""

    max_ttl: int
    """Seconds ``expires`` may lie ahead of now (plus the skew tolerance)."""
    check: Callable[[Record], None]
    """Raises :class:`InvalidRecord` (``WRONG_KEY``, ``BAD_VALUE``) for a bad key or value."""


def validate(record: Record, now: float, *, skew: float = MAX_CLOCK_SKEW) -> None:
    """Accept ``record`` at unix time ``now`` or raise :class:`InvalidRecord`.

    Refuses, in this order: expired (``expires <= now``), expiring more than
    the type's max TTL plus ``skew`` seconds ahead, the type's key or value
    rules, and finally a bad signature.
    """
    if skew < 0:
        raise ValueError("the skew tolerance is not negative")
    rules = RULES[record.type]
    if record.expires <= now:
        raise InvalidRecord(InvalidReason.EXPIRED, f"expired {now - record.expires:.0f} s ago")
    if record.expires > now + rules.max_ttl + skew:
        ahead = record.expires - now
        raise InvalidRecord(
            InvalidReason.TOO_FAR_AHEAD,
            f"expires {ahead:.0f} s ahead, more than {rules.max_ttl} s + {skew:.0f} s skew",
        )
    rules.check(record)
    if not verify_signature(record):
        raise InvalidRecord(InvalidReason.BAD_SIGNATURE, "the publisher did not sign it")


# --- peer records ------------------------------------------------------------
#
# value, version 2:  version u8 | n u8 | n x (len u16 | endpoint, UTF-8)
#                                | m u8 | m x (len u8 | capability, ASCII)
#                                | o u8 | o x (epoch u32 | X25519 public key 32)
# Canonical only (endpoints as str(Endpoint.parse(e)), no duplicates, in the
# publisher's order of preference; capabilities sorted; onion keys by strictly
# increasing epoch), so a value has exactly one encoding and decode/encode
# round-trip. A relay publishes the onion keys of its current and next key
# epochs, so senders can build packets across an epoch change.

PEER_VALUE_VERSION: Final = 2
PEER_MAX_TTL: Final = 7 * DAY
MAX_PEER_ENDPOINTS: Final = 16
MAX_CAPABILITIES: Final = 16
MAX_ONION_KEYS: Final = 4
ONION_KEY_BYTES: Final = 32
_CAPABILITY: Final = re.compile(r"[a-z0-9_-]{1,32}")


def _check_endpoint(text: str) -> None:
    if len(text) > MAX_ENDPOINT_CHARS:
        raise ValueError(f"an endpoint is longer than {MAX_ENDPOINT_CHARS} characters")
    try:
        canonical = str(Endpoint.parse(text))
    except BadEndpoint as exc:
        raise ValueError(f"bad endpoint: {exc}") from exc
    if canonical != text:
        raise ValueError("an endpoint is not in canonical form: use str(Endpoint.parse(text))")


def _check_onion_keys(keys: tuple[tuple[int, bytes], ...]) -> None:
    if len(keys) > MAX_ONION_KEYS:
        raise ValueError(f"more than {MAX_ONION_KEYS} onion keys")
    previous = -1
    for epoch, key in keys:
        if not 0 <= epoch < 2**32 or len(key) != ONION_KEY_BYTES:
            raise ValueError("an onion key is (epoch u32, 32-byte X25519 public key)")
        if epoch <= previous:
            raise ValueError("onion key epochs are not strictly increasing")
        previous = epoch


@dataclass(frozen=True)
class PeerInfo:
    """How to reach a node and what it offers. Raises ``ValueError`` if out of bounds."""

    endpoints: tuple[str, ...]
    capabilities: frozenset[str] = frozenset()
    onion_keys: tuple[tuple[int, bytes], ...] = ()
    """(key epoch, X25519 public key) pairs, epochs strictly increasing."""

    def __post_init__(self) -> None:
        if len(self.endpoints) > MAX_PEER_ENDPOINTS:
            raise ValueError(f"more than {MAX_PEER_ENDPOINTS} endpoints")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError("an endpoint is listed twice")
        for text in self.endpoints:
            _check_endpoint(text)
        if len(self.capabilities) > MAX_CAPABILITIES:
            raise ValueError(f"more than {MAX_CAPABILITIES} capabilities")
        for cap in self.capabilities:
            if not _CAPABILITY.fullmatch(cap):
                raise ValueError(f"bad capability {cap!r}: expected [a-z0-9_-]{{1,32}}")
        _check_onion_keys(self.onion_keys)


def encode_peer_info(info: PeerInfo) -> bytes:
    """The canonical peer-record value of ``info`` (may exceed MAX_VALUE: sign_record checks)."""
    out = bytearray([PEER_VALUE_VERSION, len(info.endpoints)])
    for text in info.endpoints:
        raw = text.encode("utf-8")
        out += len(raw).to_bytes(2, "big") + raw
    out.append(len(info.capabilities))
    for cap in sorted(info.capabilities):
        out += bytes([len(cap)]) + cap.encode("ascii")
    out.append(len(info.onion_keys))
    for epoch, key in info.onion_keys:
        out += epoch.to_bytes(4, "big") + key
    return bytes(out)


class _Reader:
    """A cursor over a value; running off the end is ``BAD_VALUE``."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise InvalidRecord(InvalidReason.BAD_VALUE, "the value is truncated")
        self._pos += n
        return self._data[self._pos - n : self._pos]

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise InvalidRecord(InvalidReason.BAD_VALUE, "trailing bytes after the value")


def decode_peer_info(value: bytes) -> PeerInfo:
    """Parse a peer-record value. Raises :class:`InvalidRecord` (``BAD_VALUE``)."""
    reader = _Reader(value)
    if (version := reader.uint(1)) != PEER_VALUE_VERSION:
        raise InvalidRecord(InvalidReason.BAD_VALUE, f"unknown peer value version {version}")
    try:
        endpoints = tuple(reader.take(reader.uint(2)).decode() for _ in range(reader.uint(1)))
        caps = [reader.take(reader.uint(1)).decode("ascii") for _ in range(reader.uint(1))]
        keys = tuple((reader.uint(4), reader.take(ONION_KEY_BYTES)) for _ in range(reader.uint(1)))
        reader.finish()
        if caps != sorted(set(caps)):
            raise ValueError("capabilities are not sorted and unique")
        return PeerInfo(endpoints, frozenset(caps), keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRecord(InvalidReason.BAD_VALUE, str(exc)) from exc


# A peer record lives at its node id, and copies of it under PEER_REPLICAS - 1
# more keys scattered by a hash, as prekey records do (below): Sybils ground
# next to a victim's id hide the record there, not the copies (S14).

PEER_REPLICAS: Final = 3
_PEER_DOMAIN: Final = b"p2pmsg peer v1"


def _scattered_key(domain: bytes, node_id: bytes, replica: int, replicas: int) -> bytes:
    """BLAKE2b-256(domain || node id), the replica's number appended after
    the first: copy ``replica``'s key, which the hash scatters over the id
    space. Raises ``ValueError`` unless 0 <= replica < replicas."""
    if not 0 <= replica < replicas:
        raise ValueError(f"a replica is 0 to {replicas - 1}")
    suffix = bytes([replica]) if replica else b""
    return hashlib.blake2b(domain + node_id + suffix, digest_size=KEY_SIZE).digest()


def peer_key(node_id: bytes, replica: int = 0) -> bytes:
    """The DHT key of copy ``replica`` of ``node_id``'s peer record: the node
    id itself for the first, a scattered key (:func:`_scattered_key`) after."""
    if replica == 0:
        return node_id
    return _scattered_key(_PEER_DOMAIN, node_id, replica, PEER_REPLICAS)


def peer_keys(node_id: bytes) -> tuple[bytes, ...]:
    """Every key ``node_id``'s peer record is stored under, its node id first."""
    return tuple(peer_key(node_id, i) for i in range(PEER_REPLICAS))


def _check_peer_record(record: Record) -> None:
    if record.key not in peer_keys(node_id_of(record.publisher)):
        raise InvalidRecord(InvalidReason.WRONG_KEY, "a peer record lives at peer_keys(id)")
    decode_peer_info(record.value)


def make_peer_record(
    identity: Identity, info: PeerInfo, seq: int, expires: int, replica: int = 0
) -> Record:
    """``identity``'s signed peer record, copy ``replica`` (0: at its node id).
    Raises ``ValueError``."""
    value = encode_peer_info(info)
    key = peer_key(identity.node_id, replica)
    return sign_record(identity, RecordType.PEER, key, seq, expires, value)


def peer_from_record(record: Record, prefix: str) -> Peer:
    """The :class:`Peer` a peer record (any copy) describes, with the
    caller's diversity ``prefix``.

    Raises :class:`InvalidRecord` for another type, a key that is none of
    the publisher's :func:`peer_keys`, or a bad value. It does not check the
    signature or expiry: pass only records that passed :func:`validate`
    (every record a ``RecordStore`` returns did).
    """
    if record.type is not RecordType.PEER:
        raise InvalidRecord(InvalidReason.WRONG_TYPE, f"{record.type.name} is not a peer record")
    node_id = node_id_of(record.publisher)
    if record.key not in peer_keys(node_id):
        raise InvalidRecord(InvalidReason.WRONG_KEY, "the key is none of the publisher's")
    info = decode_peer_info(record.value)
    return Peer(node_id, record.publisher, info.endpoints, prefix)


# --- prekey records -----------------------------------------------------------
#
# The value is the e2e layer's prekey bundle, opaque here (the e2e layer
# validates it; the DHT never imports it). The keys are derived from the
# publisher's node id, so a publisher can only ever fill its own slots. A
# bundle is stored under PREKEY_REPLICAS keys, scattered over the id space
# by the hash, so Sybils ground next to one of them hide nothing (S15).

PREKEY_MAX_TTL: Final = 7 * DAY
PREKEY_REPLICAS: Final = 3
_PREKEY_DOMAIN: Final = b"p2pmsg prekeys v1"


def prekey_key(node_id: bytes, replica: int = 0) -> bytes:
    """The DHT key of copy ``replica`` of ``node_id``'s prekey bundle
    (:func:`_scattered_key`)."""
    return _scattered_key(_PREKEY_DOMAIN, node_id, replica, PREKEY_REPLICAS)


def prekey_keys(node_id: bytes) -> tuple[bytes, ...]:
    """Every key ``node_id``'s prekey bundle is stored under."""
    return tuple(prekey_key(node_id, i) for i in range(PREKEY_REPLICAS))


def _check_prekey_record(record: Record) -> None:
    if record.key not in prekey_keys(node_id_of(record.publisher)):
        raise InvalidRecord(InvalidReason.WRONG_KEY, "a prekey record lives at prekey_keys(id)")
    if not record.value:
        raise InvalidRecord(InvalidReason.BAD_VALUE, "an empty prekey bundle")


def make_prekey_record(
    identity: Identity, bundle: bytes, seq: int, expires: int, replica: int = 0
) -> Record:
    """``identity``'s signed prekey record, copy ``replica``. Raises
    ``ValueError`` on bad sizes."""
    if not bundle:
        raise ValueError("a prekey bundle is not empty")
    key = prekey_key(identity.node_id, replica)
    return sign_record(identity, RecordType.PREKEYS, key, seq, expires, bundle)


# --- bootstrap lists (p2pmsg.bootstrap) ------------------------------------
#
# value, version 1:  version u8 | n u8 | n x (len u16 | invite link, UTF-8)
# Canonical only (each invite as str(Invite.parse(i)), no duplicates), 1 to
# MAX_BOOTSTRAP_INVITES of them.

BOOTSTRAP_VALUE_VERSION: Final = 1
BOOTSTRAP_MAX_TTL: Final = 30 * DAY
MAX_BOOTSTRAP_INVITES: Final = 16
_BOOTSTRAP_DOMAIN: Final = b"p2pmsg bootstrap v1"


def bootstrap_key(publisher: bytes) -> bytes:
    """The DHT key of ``publisher``'s bootstrap list: BLAKE2b-256(domain || key)."""
    return hashlib.blake2b(_BOOTSTRAP_DOMAIN + publisher, digest_size=KEY_SIZE).digest()


def _check_invite(text: str) -> None:
    try:
        canonical = str(Invite.parse(text))
    except BadInvite as exc:
        raise ValueError(f"a bad invite: {exc}") from exc
    if canonical != text:
        raise ValueError("an invite is not in its canonical form")


def encode_bootstrap_value(invites: Sequence[str]) -> bytes:
    """Raises ``ValueError`` for a bad, repeated or non-canonical invite, or a bad count."""
    if not 1 <= len(invites) <= MAX_BOOTSTRAP_INVITES:
        raise ValueError(f"a bootstrap list holds 1 to {MAX_BOOTSTRAP_INVITES} invites")
    if len(set(invites)) != len(invites):
        raise ValueError("an invite is listed twice")
    out = bytearray([BOOTSTRAP_VALUE_VERSION, len(invites)])
    for text in invites:
        _check_invite(text)
        data = text.encode()
        out += len(data).to_bytes(2, "big") + data
    if len(out) > MAX_VALUE:
        raise ValueError(f"the invites take more than {MAX_VALUE} bytes")
    return bytes(out)


def decode_bootstrap_value(value: bytes) -> tuple[str, ...]:
    """The invites of a bootstrap list. Raises :class:`InvalidRecord` (``BAD_VALUE``)."""
    reader = _Reader(value)
    if (version := reader.uint(1)) != BOOTSTRAP_VALUE_VERSION:
        raise InvalidRecord(InvalidReason.BAD_VALUE, f"unknown bootstrap list version {version}")
    try:
        invites = tuple(reader.take(reader.uint(2)).decode() for _ in range(reader.uint(1)))
        reader.finish()
        if encode_bootstrap_value(invites) != value:
            raise ValueError("not the canonical encoding")
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRecord(InvalidReason.BAD_VALUE, str(exc)) from exc
    return invites


def _check_bootstrap_record(record: Record) -> None:
    if record.key != bootstrap_key(record.publisher):
        raise InvalidRecord(InvalidReason.WRONG_KEY, "a bootstrap list lives at bootstrap_key()")
    decode_bootstrap_value(record.value)


def make_bootstrap_record(
    identity: Identity, invites: Sequence[str], seq: int, expires: int
) -> Record:
    """``identity``'s signed bootstrap list. Raises ``ValueError`` (see the encoder)."""
    value = encode_bootstrap_value(invites)
    key = bootstrap_key(identity.public.key)
    return sign_record(identity, RecordType.BOOTSTRAP, key, seq, expires, value)


RULES: Final[Mapping[RecordType, TypeRules]] = MappingProxyType(
    {
        RecordType.PEER: TypeRules(max_ttl=PEER_MAX_TTL, check=_check_peer_record),
        RecordType.PREKEYS: TypeRules(max_ttl=PREKEY_MAX_TTL, check=_check_prekey_record),
        RecordType.BOOTSTRAP: TypeRules(max_ttl=BOOTSTRAP_MAX_TTL, check=_check_bootstrap_record),
    }
)
"""The per-type validator table: every :class:`RecordType` has one row."""
