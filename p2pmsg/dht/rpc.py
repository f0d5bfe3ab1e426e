"""DHT RPCs inside secure links: PING, FIND_NODE, FIND_VALUE, STORE.

A request is ``version(1) type=3 rid(8) method(1) sender_len(2) sender body``
and a response ``version(1) type=4 rid(8) status(1) body``. They share the
link-message space with the delivery frames (types 1 and 2), so a node
dispatches on the second byte. ``sender`` is the requester's own signed peer
record (may be empty): a responder may verify it by dialling back before the
requester enters its routing table. Records travel as opaque, length-prefixed
bytes; :mod:`p2pmsg.dht.records` decodes and validates them. The link already
authenticates and encrypts, so nothing here is signed except the records.

One encoder and one decoder per message, side by side, with hard caps; the
decoders raise :class:`RemoteProtocolError` and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from p2pmsg.dht.peer import ID_BYTES
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.link.wire import MAX_MESSAGE

VERSION = 1
REQUEST_TYPE = 3
RESPONSE_TYPE = 4
RID_BYTES = 8
MAX_RECORD = 8192
MAX_RECORDS = 24
_REQ = struct.Struct(">BB8sBH")
_RESP = struct.Struct(">BB8sB")


class Method(IntEnum):
    PING = 1
    FIND_NODE = 2
    FIND_VALUE = 3
    STORE = 4


class Status(IntEnum):
    OK = 0
    ERROR = 1
    RATE_LIMITED = 2
    REFUSED = 3


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
    return bytes([len(records)]) + b"".join(struct.pack(">H", len(r)) + r for r in records)


def decode_records(data: bytes, offset: int = 0) -> tuple[list[bytes], int]:
    """Records at ``offset``; returns them and the offset after them."""
    if offset >= len(data):
        raise RemoteProtocolError("missing record list")
    count, pos = data[offset], offset + 1
    if count > MAX_RECORDS:
        raise RemoteProtocolError("too many records")
    records = []
    for _ in range(count):
        if pos + 2 > len(data):
            raise RemoteProtocolError("truncated record list")
        (size,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if size > MAX_RECORD or pos + size > len(data):
            raise RemoteProtocolError("record length out of range")
        records.append(data[pos : pos + size])
        pos += size
    return records, pos


def decode_target(body: bytes) -> bytes:
    """FIND_NODE's body: a 32-byte target id."""
    if len(body) != ID_BYTES:
        raise RemoteProtocolError("FIND_NODE needs a 32-byte target")
    return body


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
