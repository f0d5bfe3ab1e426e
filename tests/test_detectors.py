"""The censors' detectors: each rule with crafted bytes, never raising, calibrated.

S5 is Wu et al., USENIX Security 2023, Algorithm 1; S7 is Bock et al., FOCI
2020, section 4.3 (see :mod:`p2pmsg.sim.detectors`). Every random input comes
from a seeded ``random.Random``, so every count below is exact on every run.
"""

from __future__ import annotations

import math
import random
import ssl
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmsg.sim.detectors import (
    MSS,
    Exemption,
    allowed_protocol,
    exemption,
    first_segments,
    fully_encrypted,
)

NOT_PRINTABLE = bytes([*range(0x20), *range(0x7F, 0x100)])


def noise(n: int, seed: int = 0) -> bytes:
    """High-entropy bytes with no printable ones, so only Ex1 could exempt them."""
    rng = random.Random(seed)
    return bytes(rng.choice(NOT_PRINTABLE) for _ in range(n))


# --- S5: each exemption --------------------------------------------------------


def test_noise_is_flagged() -> None:
    for seed in range(20):
        assert exemption(noise(300, seed)) is None
        assert fully_encrypted(noise(300, seed))


def test_empty_payload_is_not_classified() -> None:
    assert exemption(b"") is Exemption.EMPTY
    assert not fully_encrypted(b"")


# bytes of known popcount and none printable: 0x0f, 0xf0 (4), 0x07, 0x0b, 0x0d (3),
# 0x1f, 0xf8, 0x8f (5). Each case repeats 5 bytes, so the average is exact.
@pytest.mark.parametrize(
    ("five", "average", "exempt"),
    [
        (b"\x0f\xf0\x07\x0b\x0d", 3.4, True),
        (b"\x0f\xf0\x0f\x0b\x0d", 3.6, False),
        (b"\x1f\xf8\x8f\xf0\x0f", 4.6, True),
        (b"\x1f\xf8\x0f\xf0\x0f", 4.4, False),
        (b"\x00" * 5, 0.0, True),
        (b"\xff" * 5, 8.0, True),
    ],
)
def test_ex1_popcount_band_is_inclusive(five: bytes, average: float, exempt: bool) -> None:
    payload = five * 40
    assert sum(b.bit_count() for b in payload) / len(payload) == pytest.approx(average)
    assert exemption(payload) is (Exemption.POPCOUNT if exempt else None)


def test_ex2_first_six_bytes_printable() -> None:
    assert exemption(b"abcdef" + noise(300)) is Exemption.FIRST_SIX_PRINTABLE
    assert exemption(b" ~ ~ ~" + noise(300)) is Exemption.FIRST_SIX_PRINTABLE  # 0x20, 0x7e
    assert exemption(b"abcde" + noise(300)) is None
    assert exemption(b"abcde\x7f" + noise(300)) is None  # DEL is not printable


def test_ex3_more_than_half_printable() -> None:
    # "W" (5 bits) and 0x83 (3 bits) keep the popcount at 4 and every run at 1
    half = b"W\x83" * 100
    assert exemption(half) is None  # exactly 50% is not more than 50%
    assert exemption(half + b"W") is Exemption.HALF_PRINTABLE


def test_ex4_more_than_twenty_contiguous_printable() -> None:
    assert exemption(noise(200) + b"W" * 21 + noise(200, 1)) is Exemption.PRINTABLE_RUN
    assert exemption(noise(200) + b"W" * 20 + noise(200, 1)) is None


@pytest.mark.parametrize("first", [0x16, 0x17])
@pytest.mark.parametrize("third", range(10))
def test_ex5_tls_record_prefixes(first: int, third: int) -> None:
    assert exemption(bytes([first, 0x03, third]) + noise(300)) is Exemption.PROTOCOL_PREFIX


@pytest.mark.parametrize(
    "prefix", [b"\x15\x03\x01", b"\x18\x03\x01", b"\x16\x02\x01", b"\x16\x03\x0a", b"\x17\x03\x0f"]
)
def test_ex5_other_record_prefixes_are_flagged(prefix: bytes) -> None:
    assert exemption(prefix + noise(300)) is None


@pytest.mark.parametrize("method", [b"GET ", b"PUT ", b"POST ", b"HEAD "])
def test_ex5_http_methods(method: bytes) -> None:
    assert exemption(method + noise(300)) is Exemption.PROTOCOL_PREFIX


@pytest.mark.parametrize("prefix", [b"get ", b"GET\x00", b"GETX", b"PUT\t", b"HEA "])
def test_ex5_near_misses_are_flagged(prefix: bytes) -> None:
    assert exemption(prefix + noise(300)) is None


def test_only_the_first_segment_is_read() -> None:
    # the rest would be exempt (Ex3, Ex4), but it is in the second packet
    assert exemption(noise(MSS) + b"W" * 2000) is None
    assert exemption(noise(MSS - 1) + b"W" * 2000) is None  # one printable byte is not enough
    assert exemption(noise(MSS - 21) + b"W" * 2000) is Exemption.PRINTABLE_RUN


# --- S5: calibration against uniformly random payloads -------------------------

CALIBRATION_SEED = 2023
CALIBRATION_COUNT = 10_000
SHORTEST, LONGEST = 50, 1000
# The exact number flagged for CALIBRATION_SEED: 9,964 of 10,000 (99.64%). The
# expectation below is 99.663% (9,966.3; binomial sd 5.8): random strings almost
# never meet an exemption, mostly Ex2 (p = (95/256)^6 = 0.26%) and Ex3 on short
# payloads (0.07% averaged over the lengths). With S5's p = 0.263, random bytes
# therefore lose 0.9966 * 26.3% = 26.2% of connections, the scenario's control.
CALIBRATION_FLAGGED = 9_964


def _binomial_pmf(n: int, k: int, p: float) -> float:
    log = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return math.exp(log + k * math.log(p) + (n - k) * math.log1p(-p))


def _binomial_sum(n: int, p: float, ks: range) -> float:
    return math.fsum(_binomial_pmf(n, k, p) for k in ks)


def flag_probability(n: int) -> float:
    """P(a uniformly random n-byte payload meets no exemption).

    Ex1: the set bits are Binomial(8n, 1/2); Ex2: (95/256)^6; Ex3: the printable
    bytes are Binomial(n, 95/256); Ex4: at most n * (95/256)^21 < 1e-6 (union
    bound); Ex5: 20 TLS prefixes of 3 bytes, 2 methods of 4 and 2 of 5. They are
    treated as independent, which is accurate to far below the sampling error.
    The binomial tails are summed over the 200 terms nearest the threshold; the
    rest are below double precision.
    """
    printable = 95 / 256
    low, high = 17 * n // 5, -(-23 * n // 5)  # 5k <= 17n, 5k >= 23n
    ex1 = _binomial_sum(8 * n, 0.5, range(max(0, low - 200), low + 1))
    ex1 += _binomial_sum(8 * n, 0.5, range(high, min(8 * n, high + 200) + 1))
    ex2 = printable**6
    ex3 = _binomial_sum(n, printable, range(n // 2 + 1, min(n, n // 2 + 200) + 1))
    ex4 = n * printable**21
    ex5 = 20 / 256**3 + 2 / 256**4 + 2 / 256**5
    return (1 - ex1) * (1 - ex2) * (1 - ex3) * (1 - ex4) * (1 - ex5)


def test_random_payloads_are_flagged_at_the_rate_the_rules_imply() -> None:
    rng = random.Random(CALIBRATION_SEED)
    lengths = [rng.randint(SHORTEST, LONGEST) for _ in range(CALIBRATION_COUNT)]
    flagged = sum(fully_encrypted(rng.randbytes(n)) for n in lengths)
    rates = [flag_probability(n) for n in range(SHORTEST, LONGEST + 1)]
    expected = CALIBRATION_COUNT * math.fsum(rates) / len(rates)
    sd = math.sqrt(expected * (1 - expected / CALIBRATION_COUNT))
    assert expected == pytest.approx(9966.3, abs=0.1)
    assert abs(flagged - expected) <= 4 * sd  # deterministic: the count is exact
    assert flagged == CALIBRATION_FLAGGED


# --- S7: ports and the first two packets ----------------------------------------

REQUEST = b"GET /chat HTTP/1.1\r\nHost: example.org\r\n\r\n"


def client_hello() -> bytes:
    """A real TLS ClientHello, from the standard library's TLS client."""
    context = ssl.create_default_context()
    tls = context.wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="a.example"
    )
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def dns_query(
    name: bytes = b"\x07example\x03org\x00",
    *,
    flags: int = 0x0100,
    counts: tuple[int, int, int, int] = (1, 0, 0, 0),
    qtype_qclass: bytes = b"\x00\x01\x00\x01",
    extra: bytes = b"",
) -> bytes:
    """A DNS message over TCP: 2-byte length, header, question (RFC 1035 4.2.2)."""
    message = struct.pack(">HH4H", 0x1234, flags, *counts) + name + qtype_qclass + extra
    return struct.pack(">H", len(message)) + message


@pytest.mark.parametrize("port", [53, 80, 443])
def test_any_allowed_protocol_on_any_allowed_port(port: int) -> None:
    assert allowed_protocol([REQUEST], port) == "http"
    assert allowed_protocol([client_hello()], port) == "tls"
    assert allowed_protocol([dns_query()], port) == "dns"


@pytest.mark.parametrize("port", [0, 22, 8080, 8443, 65535, -1, 1 << 20])
def test_other_ports_allow_nothing(port: int) -> None:
    assert allowed_protocol([REQUEST], port) is None


def test_two_packets_are_joined_and_a_third_is_not_read() -> None:
    hello = client_hello()
    assert allowed_protocol([REQUEST[:3], REQUEST[3:]], 80) == "http"
    assert (
        allowed_protocol([b"", REQUEST[:3], b"", REQUEST[3:]], 80) == "http"
    )  # no data, no packet
    assert allowed_protocol([hello[:5], hello[5:]], 443) == "tls"
    assert allowed_protocol([hello[:1], hello[1:2], hello[2:]], 443) is None
    assert allowed_protocol([REQUEST[:4], REQUEST[4:9], REQUEST[9:]], 80) is None
    assert allowed_protocol([], 80) is None


def test_segments_are_cut_at_the_mss() -> None:
    assert first_segments([b"a" * (MSS + 1), b"b"], 3) == [b"a" * MSS, b"a", b"b"]
    assert first_segments([b"", b"ab"], 2, mss=1) == [b"a", b"b"]
    # a request line that ends in the third segment is not seen
    long_line = b"GET /" + b"x" * (2 * MSS) + b" HTTP/1.1\r\n\r\n"
    assert allowed_protocol([long_line], 80) is None


# --- S7: HTTP ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", [b"GET", b"POST", b"HEAD", b"CONNECT", b"OPTIONS", b"DELETE", b"PUT"]
)
def test_http_methods(method: bytes) -> None:
    assert allowed_protocol([method + b" / HTTP/1.0\r\n"], 80) == "http"


@pytest.mark.parametrize(
    "line",
    [
        b"get / HTTP/1.1\r\n",
        b"PATCH / HTTP/1.1\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"GET / HTTP/2.0\r\n",
        b"GET / HTTP/1.1",
        b"GET /a b HTTP/1.1\r\n",
        b"GET / HTTP/1.1\n",
        b" GET / HTTP/1.1\r\n",
        b"GET ",
    ],
)
def test_http_near_misses(line: bytes) -> None:
    assert allowed_protocol([line], 80) is None


# --- S7: TLS -----------------------------------------------------------------------


def test_tls_client_hello_fields() -> None:
    hello = client_hello()
    assert allowed_protocol([hello], 443) == "tls"
    for at, value in [(0, 0x17), (1, 0x02), (2, 0x04), (5, 0x02), (9, 0x02), (10, 0x04)]:
        changed = bytearray(hello)
        changed[at] = value
        assert allowed_protocol([bytes(changed)], 443) is None, at
    assert allowed_protocol([hello[:3] + b"\x40\x01" + hello[5:]], 443) is None  # > 2^14
    assert allowed_protocol([hello[:3] + b"\x00\x10" + hello[5:]], 443) is None  # too short
    assert allowed_protocol([hello[:6] + b"\x00\x00\x10" + hello[9:]], 443) is None
    assert allowed_protocol([hello[:10]], 443) is None


# --- S7: DNS -----------------------------------------------------------------------


def test_dns_queries() -> None:
    assert allowed_protocol([dns_query(flags=0)], 53) == "dns"
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"  # EDNS OPT record
    assert allowed_protocol([dns_query(counts=(1, 0, 0, 1), extra=opt)], 53) == "dns"
    assert allowed_protocol([dns_query(b"\x00")], 53) == "dns"  # the root
    query = dns_query()
    assert allowed_protocol([query[:2], query[2:]], 53) == "dns"  # length, then message


@pytest.mark.parametrize(
    "query",
    [
        dns_query(flags=0x8180),  # a response
        dns_query(flags=0x2800),  # opcode UPDATE
        dns_query(flags=0x0103),  # RCODE set
        dns_query(counts=(2, 0, 0, 0)),
        dns_query(counts=(0, 0, 0, 0)),
        dns_query(counts=(1, 1, 0, 0)),
        dns_query(counts=(1, 0, 1, 0)),
        dns_query(counts=(1, 0, 0, 2)),
        dns_query(b"\x40" + b"a" * 64 + b"\x00"),  # a label over 63 bytes
        dns_query(b"\x3fa" + b"\x3f" + b"b" * 63 * 4 + b"\x00"),  # a name over 255 bytes
        dns_query(b"\xc0\x0c"),  # a compression pointer
        dns_query(b"\x07example"),  # no end of name
        dns_query(qtype_qclass=b"\x00\x00\x00\x01"),
        dns_query(qtype_qclass=b"\x00\x01\x00\x02"),
        dns_query(qtype_qclass=b"\x00\x01"),
        b"\x00\x05" + dns_query()[2:],  # the length field is shorter than the question
        b"\x00\x1b" + dns_query()[2:],  # the question ends before its class
    ],
)
def test_dns_near_misses(query: bytes) -> None:
    assert allowed_protocol([query], 53) is None


def test_random_flows_match_no_protocol() -> None:
    rng = random.Random(7)
    flows = [[rng.randbytes(rng.randint(1, 600)) for _ in range(2)] for _ in range(2_000)]
    assert [allowed_protocol(flow, 443) for flow in flows] == [None] * len(flows)


# --- never raising -------------------------------------------------------------------

PREFIXES = [b"", b"\x16\x03\x01", b"\x16\x03\x01\x02\x00\x01", b"GET ", b"\x00\x1d\x12\x34\x01\x00"]
shaped = st.builds(bytes.__add__, st.sampled_from(PREFIXES), st.binary(max_size=3000))


@given(shaped)
def test_s5_never_raises(payload: bytes) -> None:
    assert fully_encrypted(payload) in (True, False)
    assert exemption(payload) is None or isinstance(exemption(payload), Exemption)


@given(st.lists(shaped, max_size=4), st.integers())
def test_s7_never_raises(packets: list[bytes], port: int) -> None:
    assert allowed_protocol(packets, port) in (None, "dns", "http", "tls")
