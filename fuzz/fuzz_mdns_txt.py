"""Fuzz target: a TXT record from the LAN into the mDNS advertisement decoder.

The input is read two ways. As TXT RDATA a device on the LAN could send, it
goes through ``parse_rdata`` and ``decode_txt``: only a payload or
:class:`RemoteProtocolError` may come out, and a record that decodes must hold
the canonical encoding of its payload (plus keys the decoder ignores). As a
payload we could advertise (when its size allows), it must encode within the
DNS limits and decode back to itself. Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_mdns_txt.py fuzz/corpus/mdns_txt
"""

from __future__ import annotations

from p2pmsg.discovery.txt import (
    CHUNK,
    MAX_PAYLOAD,
    MAX_TXT,
    build_rdata,
    decode_txt,
    encode_txt,
    parse_rdata,
)
from p2pmsg.errors import RemoteProtocolError


def _as_received(data: bytes) -> None:
    try:
        properties = parse_rdata(data)
        payload = decode_txt(properties)
    except RemoteProtocolError:
        return
    encoded = encode_txt(payload)
    assert {key: properties[key] for key in encoded} == encoded, "non-canonical record accepted"


def _as_advertised(data: bytes) -> None:
    if not 0 < len(data) <= MAX_PAYLOAD:
        return
    rdata = build_rdata(encode_txt(data))  # raises on a string over 255 bytes
    assert len(rdata) <= MAX_TXT, len(rdata)
    assert decode_txt(parse_rdata(rdata)) == data


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    _as_received(data)
    _as_advertised(data)


def _record(payload: bytes, **changes: bytes | None) -> bytes:
    """The RDATA advertising ``payload``, with properties replaced (``None``: a flag)
    or, for the value ``b"<drop>"``, removed."""
    properties: dict[bytes, bytes | None] = dict(encode_txt(payload))
    for key, value in changes.items():
        if value == b"<drop>":
            del properties[key.encode()]
        else:
            properties[key.encode()] = value
    return build_rdata(properties)


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: valid records of each shape and their neighbours."""
    full = bytes(range(256)) * 4 + bytes(range(176))  # MAX_PAYLOAD bytes
    assert len(full) == MAX_PAYLOAD
    two = full[: CHUNK + 1]
    valid_two = _record(two)
    return {
        "valid_one_byte": _record(b"\x00"),
        "valid_one_chunk": _record(full[:CHUNK]),
        "valid_two_chunks": valid_two,
        "valid_max_payload": _record(full),
        "valid_with_unknown_keys": valid_two + build_rdata({b"x": b"y", b"flag": None}),
        "valid_with_duplicate_count": valid_two + build_rdata({b"n": b"9"}),
        "cut_short": valid_two[:-1],
        "empty": b"",
        "bad_version": _record(two, v=b"2"),
        "version_flag": _record(two, v=None),
        "no_count": _record(two, n=b"<drop>"),
        "count_zero": _record(two, n=b"0"),
        "count_leading_zero": _record(two, n=b"02"),
        "count_too_high": _record(two, n=b"3"),
        "count_over_max": _record(full, n=b"6"),
        "missing_chunk": _record(two, r1=b"<drop>"),
        "empty_chunk": _record(two, r1=b""),
        "short_inner_chunk": _record(two, r0=two[: CHUNK - 1]),
        "stray_chunk": _record(two, r2=b"z"),
        "stray_chunk_leading_zero": _record(two, r01=b"z"),
        "oversize": _record(full) + build_rdata({b"pad": bytes(200)}),
        "payload_only": full[:300],
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
