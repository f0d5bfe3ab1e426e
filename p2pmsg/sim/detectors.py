"""What two real censors looked at in a flow's first packets, as pure functions.

Theory of operation. A censor on the path sees TCP segments, not our
writes: a payload longer than one :data:`MSS` leaves as several segments, and
a classifier that "looks at the first packet" sees at most :data:`MSS` bytes
of it. :func:`first_segments` does that cut, so both detectors are bounded
(at most one or two segments are read, whatever the caller passes) and
neither can raise on any bytes.

* :func:`fully_encrypted` (scenario S5) is Algorithm 1 of Wu et al., "How the
  Great Firewall of China Detects and Blocks Fully Encrypted Traffic", USENIX
  Security 2023 (section 4), as in the authors' reference implementation
  ``artifacts/utils/detect.py`` of ``gfw-report/usenixsecurity23-artifact``:
  the first client-to-server data packet is *exempt* if any of Ex1-Ex5 holds
  (see :class:`Exemption`), and flagged otherwise. The GFW then blocked a
  flagged connection with probability 0.263 (section 6.3); that probability is
  the caller's, not this module's.
* :func:`allowed_protocol` (scenario S7) is Iran's protocol filter of February
  2020 after Bock et al., "Detecting and Evading Censorship-in-Depth: A Case
  Study of Iran's Protocol Filter", FOCI 2020 (sections 4.1-4.3): TCP ports
  53, 80 and 443 only, and there the first two client data packets together
  must match DNS, HTTP or TLS (any of the three on any of the three ports).

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Final

MSS: Final = 1460  # Ethernet MTU 1500 - 20 (IPv4) - 20 (TCP): the largest segment a path carries

# --- segments ----------------------------------------------------------------


def first_segments(payloads: Sequence[bytes], count: int, mss: int = MSS) -> list[bytes]:
    """The first ``count`` TCP segments that the client writes ``payloads`` make.

    Each write starts a new segment (no Nagle coalescing: that is what a
    client that writes one request and waits does) and is cut every ``mss``
    bytes; empty writes carry no data and make no segment.
    """
    segments: list[bytes] = []
    for payload in payloads:
        for start in range(0, len(payload), mss):
            if len(segments) == count:
                return segments
            segments.append(bytes(payload[start : start + mss]))
    return segments


# --- S5: the GFW's fully-encrypted-traffic detector (Wu et al. 2023) ---------------


class Exemption(Enum):
    """Why Algorithm 1 lets a first packet through (Wu et al. 2023, section 4)."""

    EMPTY = "no payload: nothing to classify"
    POPCOUNT = "Ex1: set bits per byte <= 3.4 or >= 4.6 (section 4.1)"
    FIRST_SIX_PRINTABLE = "Ex2: the first 6 bytes are printable ASCII (section 4.2)"
    HALF_PRINTABLE = "Ex3: more than 50% of the bytes are printable ASCII (section 4.2)"
    PRINTABLE_RUN = "Ex4: more than 20 contiguous printable ASCII bytes (section 4.2)"
    PROTOCOL_PREFIX = "Ex5: a TLS or HTTP fingerprint at the start (section 4.3)"


_PRINTABLE: Final = bytes(range(0x20, 0x7F))  # the paper's printable ASCII, [0x20, 0x7e]
_PRINTABLE_RUN: Final = re.compile(rb"[\x20-\x7e]{21}")
# Section 4.3: "[\x16-\x17]\x03[\x00-\x09]" (TLS handshake or application data record).
# The authors' detect.py accepts a third byte up to 0x0f; we keep the paper's
# narrower range, which flags more and so is the stricter oracle for our transports.
_TLS_RECORD_PREFIX: Final = re.compile(rb"[\x16\x17]\x03[\x00-\x09]")
# Section 4.3 and detect.py: exactly these four methods, upper case, with the space.
_HTTP_PREFIXES: Final = (b"GET ", b"PUT ", b"POST ", b"HEAD ")


def _popcount_exempt(packet: bytes) -> bool:
    # popcount/len <= 3.4 or >= 4.6, in integers so that 3.4 exactly is exempt
    ones = int.from_bytes(packet, "big").bit_count()
    return 5 * ones <= 17 * len(packet) or 5 * ones >= 23 * len(packet)


def _printable_count(packet: bytes) -> int:
    return len(packet) - len(packet.translate(None, _PRINTABLE))


_EXEMPTIONS: Final[tuple[tuple[Exemption, Callable[[bytes], bool]], ...]] = (
    (Exemption.POPCOUNT, _popcount_exempt),
    (
        Exemption.FIRST_SIX_PRINTABLE,
        lambda p: len(p) >= 6 and not p[:6].translate(None, _PRINTABLE),
    ),
    (Exemption.HALF_PRINTABLE, lambda p: 2 * _printable_count(p) > len(p)),
    (Exemption.PRINTABLE_RUN, lambda p: _PRINTABLE_RUN.search(p) is not None),
    (
        Exemption.PROTOCOL_PREFIX,
        lambda p: _TLS_RECORD_PREFIX.match(p) is not None or p.startswith(_HTTP_PREFIXES),
    ),
)


def exemption(first_payload: bytes) -> Exemption | None:
    """The first exemption the first packet of ``first_payload`` meets, or ``None``.

    Only the first :data:`MSS` bytes are read (the first segment). ``None``
    means Algorithm 1 flags the connection. Never raises.
    """
    packet = bytes(first_payload[:MSS])
    if not packet:
        return Exemption.EMPTY
    for name, holds in _EXEMPTIONS:
        if holds(packet):
            return name
    return None


def fully_encrypted(first_payload: bytes) -> bool:
    """True when the GFW's detector (Wu et al. 2023, Algorithm 1) flags this
    first client payload: it meets none of the exemptions Ex1-Ex5.

    The GFW blocked a flagged connection with probability p = 0.263 and then
    the server's (client IP, server IP, port) for 180 s; both are the caller's.
    An empty payload is not flagged. Reads at most :data:`MSS` bytes; never raises.
    """
    return exemption(first_payload) is None


# --- S7: Iran's protocol allowlist (Bock et al. 2020) --------------------------

ALLOWLIST_PORTS: Final = frozenset({53, 80, 443})

# Bock et al. 4.3: at least 8 bytes that begin with one of these methods and a
# space. We also ask for the whole request line, "METHOD SP target SP HTTP/1.x CRLF",
# within the two packets: stricter than Iran, so passing here passes there.
_REQUEST_LINE: Final = re.compile(
    rb"(?:GET|POST|HEAD|CONNECT|OPTIONS|DELETE|PUT) [\x21-\x7e]+ HTTP/1\.[0-9]\r\n"
)
_MIN_CLIENT_HELLO: Final = 2 + 32 + 1 + 2 + 2 + 1 + 1  # version random sid suites compression
_DNS_HEADER: Final = struct.Struct(">HHHHHH")  # id flags qdcount ancount nscount arcount
_DNS_CLASSES: Final = frozenset({1, 3, 4, 255})  # IN, CH, HS, ANY (RFC 1035 3.2.4-5)


def _is_http_request(data: bytes) -> bool:
    return _REQUEST_LINE.match(data) is not None


def _is_tls_client_hello(data: bytes) -> bool:
    """A TLS record carrying a ClientHello (RFC 8446 5.1, 4.1.2): ``16 03 0x``,
    a plausible length, handshake type 1, legacy_version ``03 0x``."""
    if len(data) < 11 or data[0] != 0x16 or data[1] != 0x03 or data[2] > 0x03:
        return False
    record_len = int.from_bytes(data[3:5], "big")
    hello_len = int.from_bytes(data[6:9], "big")
    return (
        4 + _MIN_CLIENT_HELLO <= record_len <= 2**14
        and data[5] == 0x01
        and hello_len >= _MIN_CLIENT_HELLO
        and data[9] == 0x03
        and data[10] <= 0x03
    )


def _dns_question_end(message: bytes) -> int | None:
    """Where the first question's QTYPE starts, or ``None`` if its name is bad."""
    offset, name_len = _DNS_HEADER.size, 0
    while offset < len(message):
        label = message[offset]
        if label == 0:
            return offset + 1
        if label > 63 or name_len + label + 1 > 255:  # no compression in a query's name
            return None
        name_len += label + 1
        offset += label + 1
    return None


def _is_dns_query(data: bytes) -> bool:
    """A DNS query over TCP (RFC 1035 4.2.2, RFC 7766): a 2-byte length, then a
    header with QR=0, opcode QUERY, RCODE 0, one question, no answers or
    authority, at most one additional record (EDNS), then a well-formed question."""
    if len(data) < 2 + _DNS_HEADER.size + 5:
        return False
    length = int.from_bytes(data[:2], "big")
    message = data[2 : 2 + length]
    if len(message) < _DNS_HEADER.size + 5:
        return False
    _, flags, qd, an, ns, ar = _DNS_HEADER.unpack_from(message)
    if flags & 0xF80F or (qd, an, ns) != (1, 0, 0) or ar > 1:  # QR, opcode, RCODE all 0
        return False
    end = _dns_question_end(message)
    if end is None or end + 4 > length or end + 4 > len(message):
        return False
    qtype, qclass = struct.unpack_from(">HH", message, end)
    return qtype != 0 and qclass in _DNS_CLASSES


def dns_query_name(data: bytes) -> str | None:
    """The name a DNS-over-TCP query asks for (lower case, no final dot), or
    ``None`` when ``data`` is not one (see :func:`_is_dns_query`). S3's
    injector reads it. Never raises."""
    if not _is_dns_query(data):
        return None
    message, offset, labels = data[2:], _DNS_HEADER.size, []
    while message[offset]:
        labels.append(message[offset + 1 : offset + 1 + message[offset]])
        offset += 1 + message[offset]
    return b".".join(labels).decode("ascii", errors="replace").lower()


def client_hello_sni(data: bytes) -> str | None:
    """The server name (SNI, RFC 6066 section 3) of the TLS ClientHello that
    starts ``data``, or ``None``: not a ClientHello, no name, or a malformed
    one. Reads one record of at most :data:`MSS` bytes; never raises."""
    data = data[:MSS]
    if not _is_tls_client_hello(data):
        return None
    hello = data[9 : 5 + int.from_bytes(data[3:5], "big")]
    offset = 2 + 32
    for size in (1, 2, 1):  # session id, cipher suites, compression methods
        if offset + size > len(hello):
            return None
        offset += size + int.from_bytes(hello[offset : offset + size], "big")
    end = offset + 2 + int.from_bytes(hello[offset : offset + 2], "big")
    offset += 2
    while offset + 4 <= min(end, len(hello)):
        kind = int.from_bytes(hello[offset : offset + 2], "big")
        size = int.from_bytes(hello[offset + 2 : offset + 4], "big")
        body = hello[offset + 4 : offset + 4 + size]
        offset += 4 + size
        if kind == 0 and len(body) >= 5 and body[2] == 0:  # server_name list, host_name
            name = body[5 : 5 + int.from_bytes(body[3:5], "big")]
            return name.decode("ascii", errors="replace").lower() or None
    return None


_FINGERPRINTS: Final[tuple[tuple[str, Callable[[bytes], bool]], ...]] = (
    ("dns", _is_dns_query),
    ("http", _is_http_request),
    ("tls", _is_tls_client_hello),
)


def allowed_protocol(first_packets: Sequence[bytes], port: int) -> str | None:
    """The protocol (``"dns"``, ``"http"`` or ``"tls"``) that Iran's 2020 protocol
    filter would see in this client flow to ``port``, or ``None``: blocked.

    "The first two packets" are the first two data-carrying client-to-server
    TCP segments, concatenated, as Bock et al. found (section 4): the filter is
    unidirectional (it never looks at the server's bytes) and does no further
    reassembly. ``first_packets`` are the client's payloads in the order it
    wrote them; :func:`first_segments` turns them into segments, so at most
    ``2 * MSS`` bytes are read. Only ports 53, 80 and 443 pass, and any of the
    three protocols may use any of them. Never raises.
    """
    if port not in ALLOWLIST_PORTS:
        return None
    data = b"".join(first_segments(first_packets, 2))
    for name, matches in _FINGERPRINTS:
        if matches(data):
            return name
    return None
