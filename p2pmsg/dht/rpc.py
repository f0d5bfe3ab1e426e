"""DHT RPCs inside secure links: PING, FIND_NODE, FIND_VALUE, STORE, and the
mailbox methods DEPOSIT, FETCH and CLEAR (:mod:`p2pmsg.dht.mailbox`).

A request is ``version(1) type=3 rid(8) method(1) sender_len(2) sender body``
and a response ``version(1) type=4 rid(8) status(1) body``. They share the
link-message space with the delivery frames (types 1 and 2), so a node
dispatches on the second byte. ``sender`` is the requester's own signed peer
record (may be empty): a responder may verify it by dialling back before the
requester enters its routing table. Records travel as opaque, length-prefixed
bytes; :mod:`p2pmsg.dht.records` decodes and validates them. The link already
authenticates and encrypts, so nothing here is signed except the records.

One encoder and one decoder per message, side by side, with hard caps; the
decoders raise :class:`RemoteProtocolError` and nothing else. PING's reply
is ``clock u64 | record``: the responder's wall clock in milliseconds (as
Tor's NETINFO carries one, so a node can tell that its own clock is off)
and its own signed peer record (may be empty). Mailbox bodies::

    DEPOSIT  key 32 | expires u64 | blob (1..MAX_BLOB)   -> empty
    FETCH    key 32 | limit u8 | after (empty or id 16)  -> more u8 | count u8 | (len u16 | blob)*
    CLEAR    key 32 | the owner's signed clear request    -> empty

A node under a flood of writes answers STORE and DEPOSIT with status
PUZZLE and a price; the writer resends the write inside a PAID request with
a proof of work (:mod:`p2pmsg.dht.puzzle`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from p2pmsg import sized
from p2pmsg.dht.mailbox import ENTRY_ID_BYTES, MAX_BLOB, ClearRequest, decode_clear, encode_clear
from p2pmsg.dht.peer import ID_BYTES
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.link.wire import MAX_MESSAGE

VERSION = 1
REQUEST_TYPE = 3
RESPONSE_TYPE = 4
RID_BYTES = 8
MAX_RECORD = 8192
MAX_RECORDS = 24
MAX_FETCH_ENTRIES = 64
_REQ = struct.Struct(">BB8sBH")
_RESP = struct.Struct(">BB8sB")


class Method(IntEnum):
    PING = 1
    FIND_NODE = 2
    FIND_VALUE = 3
    STORE = 4
    DEPOSIT = 5
    FETCH = 6
    CLEAR = 7
    PAID = 8
    """A STORE or DEPOSIT with a proof of work (:mod:`p2pmsg.dht.puzzle`)."""


class Status(IntEnum):
    OK = 0
    ERROR = 1
    RATE_LIMITED = 2
    REFUSED = 3
    PUZZLE = 4
    """Pay first: the body is a price (:func:`p2pmsg.dht.puzzle.encode_price`)."""


@dataclass(frozen=True)
class Request:
    rid: bytes
    method: Method
    sender: bytes = field(default=b"", repr=False)
    body: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Response:
    rid: bytes
    status: Status
    body: bytes = field(default=b"", repr=False)


def encode_request(request: Request) -> bytes:
    if len(request.rid) != RID_BYTES or len(request.sender) > MAX_RECORD:
        raise ValueError("bad request id or sender record")
    head = _REQ.pack(VERSION, REQUEST_TYPE, request.rid, request.method, len(request.sender))
    data = head + request.sender + request.body
    if len(data) > MAX_MESSAGE:
        raise ValueError("request too large")
    return data


def encode_response(response: Response) -> bytes:
    if len(response.rid) != RID_BYTES:
        raise ValueError("bad request id")
    data = _RESP.pack(VERSION, RESPONSE_TYPE, response.rid, response.status) + response.body
    if len(data) > MAX_MESSAGE:
        raise ValueError("response too large")
    return data


def decode(data: bytes) -> Request | Response:
    """One RPC message from a link message. Raises RemoteProtocolError."""
    if len(data) > MAX_MESSAGE or len(data) < _RESP.size or data[0] != VERSION:
        raise RemoteProtocolError("malformed RPC message")
    if data[1] == RESPONSE_TYPE:
        _, _, rid, status = _RESP.unpack_from(data)
        try:
            return Response(rid, Status(status), data[_RESP.size :])
        except ValueError as exc:
            raise RemoteProtocolError(f"unknown status {status}") from exc
    if data[1] != REQUEST_TYPE or len(data) < _REQ.size:
        raise RemoteProtocolError("not an RPC message")
    _, _, rid, method, sender_len = _REQ.unpack_from(data)
    end = _REQ.size + sender_len
    if sender_len > MAX_RECORD or end > len(data):
        raise RemoteProtocolError("sender record out of range")
    try:
        method = Method(method)
    except ValueError as exc:
        raise RemoteProtocolError(f"unknown method {method}") from exc
    return Request(rid, method, data[_REQ.size : end], data[end:])


# -- bodies ---------------------------------------------------------------


def encode_records(records: list[bytes]) -> bytes:
    """``count(1) (len(2) record)*``."""
    if len(records) > MAX_RECORDS or any(len(r) > MAX_RECORD for r in records):
        raise ValueError("too many or too large records")
    return bytes([len(records)]) + sized.pack(records)


def decode_records(data: bytes, offset: int = 0) -> tuple[list[bytes], int]:
    """Records at ``offset``; returns them and the offset after them."""
    if offset >= len(data):
        raise RemoteProtocolError("missing record list")
    if data[offset] > MAX_RECORDS:
        raise RemoteProtocolError("too many records")
    return sized.unpack(data, offset + 1, data[offset], MAX_RECORD, "record list")


def decode_target(body: bytes) -> bytes:
    """FIND_NODE's body: a 32-byte target id."""
    if len(body) != ID_BYTES:
        raise RemoteProtocolError("FIND_NODE needs a 32-byte target")
    return body


_CLOCK = struct.Struct(">Q")


def encode_pong(clock_ms: int, record: bytes) -> bytes:
    if len(record) > MAX_RECORD:
        raise ValueError("record too long")
    return _CLOCK.pack(clock_ms) + record


def decode_pong(body: bytes) -> tuple[int, bytes]:
    """PING's reply: (the responder's clock in ms, its record or empty)."""
    if not _CLOCK.size <= len(body) <= _CLOCK.size + MAX_RECORD:
        raise RemoteProtocolError("a PING reply is a clock and at most one record")
    return _CLOCK.unpack_from(body)[0], body[_CLOCK.size :]


def encode_find_value(record_type: int, key: bytes) -> bytes:
    return bytes([record_type]) + key


def decode_find_value(body: bytes) -> tuple[int, bytes]:
    if len(body) != 1 + ID_BYTES:
        raise RemoteProtocolError("FIND_VALUE needs a type and a 32-byte key")
    return body[0], body[1:]


def encode_value_reply(values: list[bytes], closer: list[bytes]) -> bytes:
    return encode_records(values) + encode_records(closer)


def decode_value_reply(body: bytes) -> tuple[list[bytes], list[bytes]]:
    values, pos = decode_records(body)
    closer, end = decode_records(body, pos)
    if end != len(body):
        raise RemoteProtocolError("trailing bytes after the reply")
    return values, closer


def decode_node_reply(body: bytes) -> list[bytes]:
    records, end = decode_records(body)
    if end != len(body):
        raise RemoteProtocolError("trailing bytes after the reply")
    return records


# -- mailbox bodies -------------------------------------------------------

_DEPOSIT = struct.Struct(">32sQ")
_FETCH = struct.Struct(">32sB")


def encode_deposit(key: bytes, expires: int, blob: bytes) -> bytes:
    if len(key) != ID_BYTES or not 0 < len(blob) <= MAX_BLOB:
        raise ValueError(f"a 32-byte key and a blob of 1..{MAX_BLOB} bytes")
    return _DEPOSIT.pack(key, expires) + blob


def decode_deposit(body: bytes) -> tuple[bytes, int, bytes]:
    """DEPOSIT's body: (key, expires, blob)."""
    if not _DEPOSIT.size < len(body) <= _DEPOSIT.size + MAX_BLOB:
        raise RemoteProtocolError("DEPOSIT needs a key, an expiry and a blob")
    key, expires = _DEPOSIT.unpack_from(body)
    return key, expires, body[_DEPOSIT.size :]


def encode_fetch(key: bytes, after: bytes | None, limit: int) -> bytes:
    if len(key) != ID_BYTES or not 0 < limit <= MAX_FETCH_ENTRIES:
        raise ValueError(f"a 32-byte key and a limit of 1..{MAX_FETCH_ENTRIES}")
    if after is not None and len(after) != ENTRY_ID_BYTES:
        raise ValueError(f"an entry id is {ENTRY_ID_BYTES} bytes")
    return _FETCH.pack(key, limit) + (after or b"")


def decode_fetch(body: bytes) -> tuple[bytes, bytes | None, int]:
    """FETCH's body: (key, the id to continue after or None, limit)."""
    if len(body) not in {_FETCH.size, _FETCH.size + ENTRY_ID_BYTES}:
        raise RemoteProtocolError("FETCH needs a key, a limit and an optional entry id")
    key, limit = _FETCH.unpack_from(body)
    if not 0 < limit <= MAX_FETCH_ENTRIES:
        raise RemoteProtocolError(f"FETCH limit {limit} out of range")
    return key, body[_FETCH.size :] or None, limit


def encode_fetch_reply(blobs: list[bytes], more: bool) -> bytes:
    if len(blobs) > MAX_FETCH_ENTRIES or not all(0 < len(b) <= MAX_BLOB for b in blobs):
        raise ValueError("too many, empty or too large blobs")
    return bytes([more, len(blobs)]) + sized.pack(blobs)


def decode_fetch_reply(body: bytes) -> tuple[list[bytes], bool]:
    """FETCH's reply: (blobs, whether the holder has more after them)."""
    if len(body) < 2 or body[0] > 1 or body[1] > MAX_FETCH_ENTRIES:
        raise RemoteProtocolError("malformed FETCH reply")
    blobs, end = sized.unpack(body, 2, body[1], MAX_BLOB, "FETCH reply")
    if not all(blobs):
        raise RemoteProtocolError("an empty blob in a FETCH reply")
    if end != len(body):
        raise RemoteProtocolError("trailing bytes after the FETCH reply")
    return blobs, bool(body[0])


def encode_clear_body(key: bytes, request: ClearRequest) -> bytes:
    if len(key) != ID_BYTES:
        raise ValueError("a 32-byte key")
    return key + encode_clear(request)


def decode_clear_body(body: bytes) -> tuple[bytes, ClearRequest]:
    """CLEAR's body: (key, request). Checks the format only, not the signature."""
    if len(body) < ID_BYTES:
        raise RemoteProtocolError("CLEAR needs a key")
    return body[:ID_BYTES], decode_clear(body[ID_BYTES:])
