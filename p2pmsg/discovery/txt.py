"""The advertised peer record, split into DNS-SD TXT properties and joined back.

Theory of operation. mDNS discovery advertises one opaque byte string (a
signed peer record; this module neither knows nor checks what is inside) in
the TXT record of a DNS-SD service. A TXT record is a sequence of strings of
at most 255 bytes each, ``key=value`` by convention (RFC 6763 section 6), so
the payload is cut into chunks::

    v=1   n=<count>   r0=<chunk 0>   r1=<chunk 1>   ...

``v`` comes first and names this layout. ``n`` is the number of chunks in
canonical decimal. Each ``rI`` value is raw bytes: RFC 6763 section 6.5 makes
TXT values opaque binary data, and raw chunks keep a 1200-byte payload under
the 1300-byte record cap where base64 would need about 1650. Every chunk but
the last is exactly :data:`CHUNK` bytes and none is empty, so each payload
has exactly one encoding.

What a peer on the LAN advertises is untrusted: :func:`decode_txt` returns
the payload or raises :class:`RemoteProtocolError` (too large, no or an
unknown version, a bad count, a missing, empty, oversize or stray chunk),
nothing else. Keys it does not know are ignored, as RFC 6763 section 6.4 asks,
so later versions can add properties.

:func:`encode_txt` and :func:`decode_txt` work on the properties mapping that
zeroconf hands over (``dict[bytes, bytes | None]``, a key without ``=`` has
the value ``None``). :func:`build_rdata` and :func:`parse_rdata` are the wire
form of the same record, for the size cap and for fuzzing; the mDNS adapter
never parses wire bytes itself.

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from p2pmsg.errors import LocalProtocolError, RemoteProtocolError

VERSION = b"1"
#: The largest payload that can be advertised.
MAX_PAYLOAD = 1200
#: Payload bytes per ``rI`` property.
CHUNK = 250
MAX_CHUNKS = math.ceil(MAX_PAYLOAD / CHUNK)
#: The largest TXT record (its RDATA: every string with its length byte).
MAX_TXT = 1300
#: The largest string in a TXT record (its length is one byte).
MAX_STRING = 255

_VERSION_KEY = b"v"
_COUNT_KEY = b"n"
_CHUNK_PREFIX = b"r"

Properties = Mapping[bytes, bytes | None]


def _chunk_key(index: int) -> bytes:
    return b"%s%d" % (_CHUNK_PREFIX, index)


# The layout must fit the DNS limits it exists for.
assert len(_chunk_key(MAX_CHUNKS - 1)) + 1 + CHUNK <= MAX_STRING
assert MAX_PAYLOAD + MAX_CHUNKS * (2 + len(_chunk_key(MAX_CHUNKS - 1))) + 2 * 8 <= MAX_TXT


def encode_txt(payload: bytes) -> dict[bytes, bytes]:
    """The TXT properties that advertise ``payload``, in the order to send them.

    Raises :class:`LocalProtocolError` when ``payload`` is empty or longer
    than :data:`MAX_PAYLOAD`: what we advertise is ours to keep in bounds.
    """
    if not payload:
        raise LocalProtocolError("nothing to advertise: the payload is empty")
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    chunks = [payload[pos : pos + CHUNK] for pos in range(0, len(payload), CHUNK)]
    properties = {_VERSION_KEY: VERSION, _COUNT_KEY: str(len(chunks)).encode()}
    properties.update((_chunk_key(index), chunk) for index, chunk in enumerate(chunks))
    return properties


def decode_txt(properties: Properties) -> bytes:
    """The payload advertised by ``properties`` (as received, untrusted).

    Raises :class:`RemoteProtocolError` on anything but one well-formed
    version-1 record no larger than :data:`MAX_TXT`.
    """
    if rdata_size(properties) > MAX_TXT:
        raise RemoteProtocolError(f"TXT record larger than {MAX_TXT} bytes")
    version = properties.get(_VERSION_KEY)
    if version != VERSION:
        raise RemoteProtocolError("TXT record has no or an unknown version")
    count = _count(properties.get(_COUNT_KEY))
    chunks = [_chunk(properties, index, last=index == count - 1) for index in range(count)]
    stray = [key for key in properties if _is_chunk_key(key) and key not in _expected(count)]
    if stray:
        raise RemoteProtocolError(f"TXT record has {len(stray)} chunks beyond its count")
    return b"".join(chunks)


def _count(value: bytes | None) -> int:
    # canonical decimal only: one encoding per payload, and int() alone would
    # accept b" 2", b"+2", b"02" and b"2_0"
    if value is None or not value.isdigit() or value.startswith(b"0"):
        raise RemoteProtocolError("TXT record has no valid chunk count")
    count = int(value)
    if count > MAX_CHUNKS:
        raise RemoteProtocolError(f"TXT record announces {count} chunks, over {MAX_CHUNKS}")
    return count


def _chunk(properties: Properties, index: int, *, last: bool) -> bytes:
    chunk = properties.get(_chunk_key(index))
    if chunk is None:
        raise RemoteProtocolError(f"TXT record lacks chunk {index}")
    if not chunk or len(chunk) > CHUNK or (not last and len(chunk) != CHUNK):
        raise RemoteProtocolError(f"TXT record chunk {index} has a bad length ({len(chunk)})")
    return chunk


def _is_chunk_key(key: bytes) -> bool:
    return key.startswith(_CHUNK_PREFIX) and key[1:].isdigit()


def _expected(count: int) -> set[bytes]:
    return {_chunk_key(index) for index in range(count)}


def rdata_size(properties: Properties) -> int:
    """The size of the TXT RDATA that carries ``properties``, length bytes included."""
    return sum(
        1 + len(key) + (0 if value is None else 1 + len(value)) for key, value in properties.items()
    )


def build_rdata(properties: Properties) -> bytes:
    """The TXT RDATA for ``properties``: length-prefixed ``key=value`` strings, in order.

    Raises :class:`LocalProtocolError` for a key that is empty or holds ``=``
    and for a string longer than :data:`MAX_STRING`.
    """
    out = bytearray()
    for key, value in properties.items():
        if not key or b"=" in key:
            raise LocalProtocolError(f"bad TXT key {key!r}")
        string = key if value is None else key + b"=" + value
        if len(string) > MAX_STRING:
            raise LocalProtocolError(f"TXT string of {len(string)} bytes exceeds {MAX_STRING}")
        out += bytes((len(string),)) + string
    return bytes(out)


def parse_rdata(rdata: bytes) -> dict[bytes, bytes | None]:
    """The properties in TXT RDATA (untrusted), by the rules of RFC 6763 section 6.4.

    Empty strings and strings with no key (starting with ``=``) are skipped;
    of a repeated key the first occurrence counts; a key without ``=`` maps to
    ``None``. Raises :class:`RemoteProtocolError` when the RDATA is larger than
    :data:`MAX_TXT` or its last string is cut short.
    """
    if len(rdata) > MAX_TXT:
        raise RemoteProtocolError(f"TXT record larger than {MAX_TXT} bytes")
    properties: dict[bytes, bytes | None] = {}
    pos = 0
    while pos < len(rdata):
        end = pos + 1 + rdata[pos]
        if end > len(rdata):
            raise RemoteProtocolError("TXT record string is cut short")
        key, sep, value = rdata[pos + 1 : end].partition(b"=")
        pos = end
        if key and key not in properties:
            properties[key] = value if sep else None
    return properties
