"""The node's own frames inside a secure link: a message and its ack.

``MSG = version(1) type(1) id(16) sent_ms(8) kind(1) seq(8) low(8) body`` and
``ACK = version(1) type(1) id(16)``. ``seq`` numbers the message in its
conversation (from 1; 0: unordered) and ``low`` is the sender's low-water
mark: every earlier number is delivered or expired, so the receiver, which
shows a conversation in order, never waits for one below it. One encoder and one decoder side by
side; the decoder takes one whole link message (the link preserves
boundaries) and returns a frame or raises :class:`RemoteProtocolError`.
Direct link delivery is the first step; onion routing (a later layer)
carries the same frames inside Sphinx payloads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from p2pmsg.delivery import files
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.link.wire import MAX_MESSAGE

VERSION = 1
ID_BYTES = 16
_MSG = struct.Struct(">BB16sQBQQ")
_ACK = struct.Struct(">BB16s")
HEADER_BYTES = _MSG.size
MAX_BODY = MAX_MESSAGE - HEADER_BYTES


class FrameType(IntEnum):
    MSG = 1
    ACK = 2


class MessageKind(IntEnum):
    """What a message body holds."""

    BYTES = 0
    TEXT = 1
    FILE_PART = 2
    """One part of a file (:mod:`p2pmsg.delivery.files`), unordered (``seq`` 0)."""
    FILE = 3
    """A whole file, put together by the recipient: never on the wire."""


@dataclass(frozen=True)
class MsgFrame:
    id: bytes
    sent_ms: int
    kind: MessageKind
    body: bytes = field(repr=False)
    seq: int = 0
    low: int = 0


@dataclass(frozen=True)
class AckFrame:
    id: bytes


Frame = MsgFrame | AckFrame


def encode(frame: Frame) -> bytes:
    """Raises ``ValueError`` for a frame we must not send."""
    if len(frame.id) != ID_BYTES:
        raise ValueError("message ids are 16 bytes")
    if isinstance(frame, AckFrame):
        return _ACK.pack(VERSION, FrameType.ACK, frame.id)
    if len(frame.body) > MAX_BODY:
        raise ValueError(f"message body larger than {MAX_BODY} bytes")
    if frame.kind not in iter(MessageKind) or frame.kind is MessageKind.FILE:
        raise ValueError(f"unknown body kind {frame.kind}")
    if not all(0 <= v < 2**64 for v in (frame.sent_ms, frame.seq, frame.low)):
        raise ValueError("sent_ms, seq or low out of range")
    _check_body(frame.kind, frame.body, ValueError)
    head = _MSG.pack(
        VERSION, FrameType.MSG, frame.id, frame.sent_ms, frame.kind, frame.seq, frame.low
    )
    return head + frame.body


def _check_body(kind: MessageKind, body: bytes, error: type[Exception]) -> None:
    try:
        if kind is MessageKind.TEXT:
            body.decode("utf-8")
        elif kind is MessageKind.FILE_PART:
            files.decode_part(body)
    except UnicodeDecodeError as exc:
        raise error("text body is not UTF-8") from exc
    except ValueError as exc:
        raise error(str(exc)) from exc


def decode(data: bytes) -> Frame:
    """Raises :class:`RemoteProtocolError` on anything malformed."""
    if not _ACK.size <= len(data) <= MAX_MESSAGE:
        raise RemoteProtocolError("frame too short or too long")
    version, kind = data[0], data[1]
    if version != VERSION:
        raise RemoteProtocolError(f"unknown frame version {version}")
    if kind == FrameType.ACK:
        if len(data) != _ACK.size:
            raise RemoteProtocolError("ack of the wrong size")
        return AckFrame(data[2:18])
    if kind != FrameType.MSG or len(data) < _MSG.size:
        raise RemoteProtocolError("unknown or short frame")
    _, _, msg_id, sent_ms, body_kind, seq, low = _MSG.unpack_from(data)
    try:
        body_kind = MessageKind(body_kind)
    except ValueError as exc:
        raise RemoteProtocolError(f"unknown body kind {body_kind}") from exc
    if body_kind is MessageKind.FILE:
        raise RemoteProtocolError("a whole file is never sent as one message")
    body = data[_MSG.size :]
    _check_body(body_kind, body, RemoteProtocolError)
    return MsgFrame(msg_id, sent_ms, body_kind, body, seq, low)


def retry_delay(attempts: int, jitter: float) -> float:
    """Seconds before attempt ``attempts + 1``: exponential from 2 s, capped at
    10 minutes, with ``jitter`` in [0, 1) spreading it by up to +-25%."""
    base = min(600.0, 2.0 * 2.0 ** min(attempts, 20))
    return base * (0.75 + 0.5 * jitter)


def onion_retry_delay(attempts: int, jitter: float, first: float = 15.0) -> float:
    """Seconds before onion attempt ``attempts + 1``: from ``first`` (the
    retransmission timeout, :mod:`p2pmsg.delivery.rto`), doubling to at most an
    hour, +-25% jitter; the first retry's jitter only shortens it, since
    ``first`` is already as long as all but the slowest acks take. The cap is
    longer than for direct links: an unreachable recipient's retries land in
    its mailbox, and each costs the mailbox holders storage."""
    base = min(3600.0, first * 2.0 ** min(attempts, 20))
    return base * (0.75 + (0.5 if attempts else 0.25) * jitter)
