"""The ``pad_*`` wire format's sans-IO core: data frames with padding, and cover frames.

Theory of operation. Every write on the wire is one frame::

    type u8 | data_len u32 | pad_len u16 | data (data_len) | padding (pad_len)

big-endian. The type byte is the format version in its high nibble
(:data:`VERSION`) and the kind in its low nibble: :data:`DATA` frames carry
one message of the layer above (at most :data:`~p2pmsg.abc.MAX_SEND` bytes)
followed by ``pad_len`` bytes of padding; :data:`PAD` frames carry padding
only (``data_len`` must be 0) and are cover traffic. Padding content is
whatever the sender chose (the adapter sends random bytes) and is never read,
so a receiver accepts any padding up to :data:`MAX_PADDING` bytes.

The encoders (:func:`encode_data`, :func:`encode_pad`) take the padding bytes
as a parameter; the :class:`Deframer` takes bytes in any split and returns
:class:`Data` events, :data:`NEED_DATA` or, after :meth:`Deframer.receive_eof`
at a frame boundary, :data:`END`. PAD frames never surface: they are counted
in :attr:`Deframer.pad_frames` and skipped. A header is checked as soon as its
seven bytes are in, before any of its body is buffered: a bad version or
kind, data in a PAD frame, ``data_len`` above ``MAX_SEND`` or ``pad_len``
above ``MAX_PADDING`` raise :class:`PaddingProtocolError`, and so does an end
of stream inside a frame. Errors are sticky: every later ``next_event``
raises again.

Bounds: the caller must drain events until :data:`NEED_DATA` before feeding
more (feeding earlier is a :class:`~p2pmsg.errors.LocalProtocolError`), so
the buffer never holds more than one partial frame (below :data:`MAX_FRAME`)
plus the one chunk just fed. Parsing moves an offset and compacts the buffer
once per chunk, so a chunk of many small frames costs linear time.

No I/O, no clock, no randomness: :mod:`transports.wrappers` is the trio adapter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from p2pmsg.abc import MAX_SEND
from p2pmsg.errors import LocalProtocolError, RemoteProtocolError

VERSION: Final = 1
DATA: Final = 1
PAD: Final = 2
MAX_PADDING: Final = 16 * 1024
_HEADER: Final = struct.Struct(">BIH")
HEADER_SIZE: Final = _HEADER.size
MAX_FRAME: Final = HEADER_SIZE + MAX_SEND + MAX_PADDING


class PaddingProtocolError(RemoteProtocolError):
    """The peer broke the padding transport's framing."""


@dataclass(frozen=True)
class Data:
    """One message of the layer above, padding removed."""

    data: bytes


@dataclass(frozen=True)
class NeedData:
    """Feed more bytes."""


@dataclass(frozen=True)
class EndOfStream:
    """The stream ended cleanly, at a frame boundary."""


NEED_DATA: Final = NeedData()
END: Final = EndOfStream()


def _type_byte(kind: int) -> int:
    return VERSION << 4 | kind


def encode_data(data: bytes, padding: bytes = b"") -> bytes:
    """One DATA frame. Raises :class:`LocalProtocolError` above the size caps."""
    if len(data) > MAX_SEND:
        raise LocalProtocolError(f"a message is at most {MAX_SEND} bytes")
    if len(padding) > MAX_PADDING:
        raise LocalProtocolError(f"padding is at most {MAX_PADDING} bytes")
    return _HEADER.pack(_type_byte(DATA), len(data), len(padding)) + data + padding


def encode_pad(padding: bytes = b"") -> bytes:
    """One PAD (cover) frame. Raises :class:`LocalProtocolError` above :data:`MAX_PADDING`."""
    if len(padding) > MAX_PADDING:
        raise LocalProtocolError(f"padding is at most {MAX_PADDING} bytes")
    return _HEADER.pack(_type_byte(PAD), 0, len(padding)) + padding


def _check_header(type_byte: int, data_len: int, pad_len: int) -> None:
    """Raises :class:`PaddingProtocolError` for a header we must not buffer a body for."""
    if type_byte >> 4 != VERSION:
        raise PaddingProtocolError(f"unknown version {type_byte >> 4}")
    kind = type_byte & 0x0F
    if kind not in (DATA, PAD):
        raise PaddingProtocolError(f"unknown frame kind {kind}")
    if kind == PAD and data_len:
        raise PaddingProtocolError("a PAD frame carries data")
    if data_len > MAX_SEND:
        raise PaddingProtocolError(f"a frame of {data_len} data bytes (> {MAX_SEND})")
    if pad_len > MAX_PADDING:
        raise PaddingProtocolError(f"a frame of {pad_len} padding bytes (> {MAX_PADDING})")


class Deframer:
    """Incremental decoder of one direction of a ``pad_*`` stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._eof = False
        self._need_data = True
        #: PAD frames read and dropped so far.
        self.pad_frames = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned or skipped."""
        return len(self._buffer) - self._pos

    def receive_data(self, data: bytes) -> None:
        """Feed bytes. Raises :class:`LocalProtocolError` after ``receive_eof``
        or when :meth:`next_event` has not returned :data:`NEED_DATA` since the
        last feed (the bound on the buffer).
        """
        if self._eof:
            raise LocalProtocolError("bytes after the end of the stream")
        if not self._need_data:
            raise LocalProtocolError("drain the events before feeding more bytes")
        del self._buffer[: self._pos]
        self._pos = 0
        self._buffer += data
        self._need_data = not data

    def receive_eof(self) -> None:
        """The stream ended (idempotent)."""
        self._eof = True

    def next_event(self) -> Data | NeedData | EndOfStream:
        """The next message, :data:`NEED_DATA` or :data:`END`.

        Raises :class:`PaddingProtocolError` (sticky) for a bad header or a
        stream that ends inside a frame.
        """
        while True:
            available = self.buffered
            if available >= HEADER_SIZE:
                type_byte, data_len, pad_len = _HEADER.unpack_from(self._buffer, self._pos)
                _check_header(type_byte, data_len, pad_len)
                size = HEADER_SIZE + data_len + pad_len
                if available >= size:
                    start = self._pos + HEADER_SIZE
                    self._pos += size
                    if type_byte & 0x0F == PAD:
                        self.pad_frames += 1
                        continue
                    return Data(bytes(self._buffer[start : start + data_len]))
            if self._eof:
                if available:
                    raise PaddingProtocolError(f"the stream ends inside a frame ({available} B)")
                return END
            self._need_data = True
            return NEED_DATA
