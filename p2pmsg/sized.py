"""Lists of length-prefixed items: ``len(2) item`` after ``len(2) item``.

The one format several wire messages share for a list of byte strings (the
DHT's records and mailbox blobs, a tunnel's endpoints, a bridge reply's
invites). The count is the caller's: it knows how its message counts them.
A pure core; :func:`unpack` raises :class:`RemoteProtocolError` and nothing
else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

from p2pmsg.errors import RemoteProtocolError

_SIZE: Final = struct.Struct(">H")


def pack(items: Iterable[bytes]) -> bytes:
    """Each item after its length (callers bound the lengths themselves)."""
    return b"".join(_SIZE.pack(len(item)) + item for item in items)


def unpack(data: bytes, offset: int, count: int, limit: int, what: str) -> tuple[list[bytes], int]:
    """``count`` items from ``offset``, each at most ``limit`` bytes.

    Returns them and the offset after them; ``what`` names the message in
    the error.
    """
    items = []
    for _ in range(count):
        if offset + _SIZE.size > len(data):
            raise RemoteProtocolError(f"truncated {what}")
        (size,) = _SIZE.unpack_from(data, offset)
        offset += _SIZE.size
        if size > limit or offset + size > len(data):
            raise RemoteProtocolError(f"an item's length is out of range in a {what}")
        items.append(data[offset : offset + size])
        offset += size
    return items, offset


def texts(items: Iterable[bytes], what: str) -> tuple[str, ...]:
    """The items as UTF-8 text."""
    try:
        return tuple(item.decode() for item in items)
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"a {what} is not UTF-8") from None
