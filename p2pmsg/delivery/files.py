"""Files: cut into parts that each travel as one message, put back together.

A file larger than one message goes as up to :data:`MAX_PARTS` FILE_PART
messages (:class:`~p2pmsg.delivery.frames.MessageKind`), each an ordinary
outbox message: durable, retried and acked on its own, so a transfer
survives connection resets and restarts and resumes where it stopped, as
Briar's and Session's attachments do. Every part names its file::

    PART = file(16) index(4) count(4) size(8) digest(32) name_len(1) name data

``digest`` is the BLAKE2b-256 of the whole file, checked once the parts are
together; ``name`` is a UTF-8 file name of at most :data:`MAX_NAME_BYTES`
without a path. Every part but the last holds exactly :data:`PART_DATA`
bytes, so ``count`` follows from ``size`` and each part's length from its
index: a part that disagrees is malformed. The recipient keeps parts in the
store (``file_parts``) and shows the application one FILE message once all
are in. Pure: no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from nacl.encoding import RawEncoder
from nacl.hash import blake2b

FILE_ID_BYTES: Final = 16
DIGEST_BYTES: Final = 32
MAX_NAME_BYTES: Final = 255
_HEAD = struct.Struct(">16sIIQ32sB")
PART_HEAD_BYTES: Final = _HEAD.size + MAX_NAME_BYTES
"""The most a part adds to its data."""
PART_DATA: Final = 32 * 1024
"""File bytes per part: 16 onion packets, well inside one onion message."""
MAX_PARTS: Final = 512
MAX_FILE_BYTES: Final = MAX_PARTS * PART_DATA
"""16 MiB: the largest file sent (its parts take at most half of the
outbox a contact has by default)."""
_FILE = struct.Struct(">B")


@dataclass(frozen=True)
class FilePart:
    file: bytes
    index: int
    count: int
    size: int
    digest: bytes
    name: str
    data: bytes = field(repr=False)


def digest_of(data: bytes) -> bytes:
    return blake2b(data, digest_size=DIGEST_BYTES, encoder=RawEncoder)


def part_count(size: int) -> int:
    """Parts of a file of ``size`` bytes (an empty file takes one)."""
    return max(1, -(-size // PART_DATA))


def check_name(name: str) -> bytes:
    """The UTF-8 of a valid file name; ``ValueError`` otherwise: empty,
    longer than :data:`MAX_NAME_BYTES`, a path, or with control characters."""
    raw = name.encode("utf-8", errors="strict") if name.isprintable() else b""
    if not raw or len(raw) > MAX_NAME_BYTES or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"a file name is 1 to {MAX_NAME_BYTES} bytes of printable UTF-8, no path")
    return raw


def split(file: bytes, name: str, data: bytes) -> list[bytes]:
    """The part bodies of file ``data`` under the id ``file``; ``ValueError``
    for a bad id or name, or a file over :data:`MAX_FILE_BYTES`."""
    if len(file) != FILE_ID_BYTES:
        raise ValueError(f"a file id is {FILE_ID_BYTES} bytes")
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"a file is at most {MAX_FILE_BYTES} bytes")
    check_name(name)
    count, digest = part_count(len(data)), digest_of(data)
    return [
        encode_part(
            FilePart(
                file, i, count, len(data), digest, name, data[i * PART_DATA : (i + 1) * PART_DATA]
            )
        )
        for i in range(count)
    ]


def encode_part(part: FilePart) -> bytes:
    """A FILE_PART body; the inverse of :func:`decode_part`."""
    raw_name = check_name(part.name)
    head = _HEAD.pack(part.file, part.index, part.count, part.size, part.digest, len(raw_name))
    return head + raw_name + part.data


def decode_part(body: bytes) -> FilePart:
    """The part a FILE_PART body holds; ``ValueError`` on anything malformed."""
    if len(body) < _HEAD.size:
        raise ValueError("file part too short")
    file, index, count, size, digest, name_len = _HEAD.unpack_from(body)
    end = _HEAD.size + name_len
    try:
        name = body[_HEAD.size : end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("file name is not UTF-8") from exc
    check_name(name)
    data = body[end:]
    if size > MAX_FILE_BYTES or count != part_count(size) or index >= count:
        raise ValueError("file size, part count and index disagree")
    if len(data) != min(PART_DATA, size - index * PART_DATA):
        raise ValueError("file part of the wrong length")
    return FilePart(file, index, count, size, digest, name, data)


def join(parts: list[FilePart]) -> bytes:
    """The file of all its parts, in any order; ``ValueError`` if they are
    not one whole file or its digest is wrong."""
    if not parts:
        raise ValueError("no parts")
    first = parts[0]
    ordered = sorted(parts, key=lambda p: p.index)
    if [p.index for p in ordered] != list(range(first.count)) or any(
        (p.file, p.count, p.size, p.digest, p.name)
        != (first.file, first.count, first.size, first.digest, first.name)
        for p in parts
    ):
        raise ValueError("the parts are not one whole file")
    data = b"".join(p.data for p in ordered)
    if digest_of(data) != first.digest:
        raise ValueError("the file's digest does not match its contents")
    return data


def encode_file(name: str, data: bytes) -> bytes:
    """A whole received file as the inbox holds it: ``name_len(1) name data``."""
    raw = check_name(name)
    return _FILE.pack(len(raw)) + raw + data


def decode_file(body: bytes) -> tuple[str, bytes]:
    """``(name, data)`` of an inbox FILE body (written by :func:`encode_file`)."""
    end = 1 + body[0]
    return body[1:end].decode("utf-8"), body[end:]
