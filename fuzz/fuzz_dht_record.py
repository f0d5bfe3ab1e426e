"""Fuzz target: untrusted bytes into the DHT record decoder, validator and store.

The input is what a peer puts in a STORE or a FIND_VALUE answer. It goes to
:func:`decode`; a decoded record must encode back to exactly the input, then
it is validated (fixed clock) and offered to a fresh :class:`RecordStore`.
Only :class:`RemoteProtocolError` may come out. The same bytes are also
parsed as a peer-record value, so the fuzzer reaches that parser without
having to forge a signature; a parsed value must encode back to the input.
Anything else is a bug.

A valid peer record (with onion keys) and a valid prekey record for the
fixed publisher (``seeds()``) show the fuzzer the layouts.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_dht_record.py fuzz/corpus/dht_record
"""

from __future__ import annotations

import contextlib

from p2pmsg.dht.record_store import Ignored, RecordStore, Replaced, Stored
from p2pmsg.dht.records import (
    PeerInfo,
    decode,
    decode_peer_info,
    encode,
    encode_peer_info,
    make_peer_record,
    make_prekey_record,
    validate,
)
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity

PUBLISHER = Identity(bytes(range(32)))
SOURCE = bytes(32)
NOW = 1_700_000_000.0


def _record(data: bytes) -> None:
    try:
        record = decode(data)
    except RemoteProtocolError:
        return
    assert encode(record) == data, "decode/encode does not round-trip"
    with contextlib.suppress(RemoteProtocolError):
        validate(record, NOW)
    try:
        result = RecordStore().put(record, NOW, source=SOURCE)
    except RemoteProtocolError:
        return
    assert isinstance(result, Stored | Replaced | Ignored), result


def _peer_value(data: bytes) -> None:
    try:
        info = decode_peer_info(data)
    except RemoteProtocolError:
        return
    assert encode_peer_info(info) == data, "peer value does not round-trip"


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    _record(data)
    _peer_value(data)


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: a valid peer record and its near misses."""
    info = PeerInfo(
        ("tcp:192.0.2.1:4001", "ws:198.51.100.7:443/chat"),
        frozenset({"relay"}),
        ((20833, bytes(range(32))), (20834, bytes(range(32, 64)))),
    )
    valid = encode(make_peer_record(PUBLISHER, info, 7, int(NOW) + 3600))
    value = encode_peer_info(info)
    flipped_value = bytearray(valid)
    flipped_value[90] ^= 0x01
    return {
        "valid_peer": valid,
        "peer_value": value,
        "truncated_header": valid[:40],
        "truncated_signature": valid[:-1],
        "trailing_byte": valid + b"\0",
        "flipped_signature": valid[:-1] + bytes([valid[-1] ^ 0x80]),
        "flipped_value": bytes(flipped_value),
        "bad_version": b"\x02" + valid[1:],
        "unknown_type": valid[:1] + b"\x7f" + valid[2:],
        "expired": encode(make_peer_record(PUBLISHER, info, 7, int(NOW) - 1)),
        "too_far_ahead": encode(make_peer_record(PUBLISHER, info, 7, int(NOW) + 9 * 86_400)),
        "prekeys": encode(make_prekey_record(PUBLISHER, b"bundle", 3, int(NOW) + 3600)),
        "peer_value_v1": b"\x01" + value[1:],
        "peer_value_no_onion_keys": value[: value.index(b"relay") + 5] + b"\x00",
        "empty": b"",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
