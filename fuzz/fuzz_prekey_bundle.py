"""Fuzz target: a DHT record value into decode_bundle and verify_bundle.

Only a :class:`PrekeyBundle` that re-encodes to exactly the input, or a
:class:`RemoteProtocolError` (``MalformedBundle``, ``ForgedPrekey``), may come
out; a bundle that verifies must carry a real signature by its identity.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_prekey_bundle.py fuzz/corpus/prekey_bundle
"""

from __future__ import annotations

import hashlib

from p2pmsg.e2e.prekeys import (
    MAX_ONE_TIME,
    PrekeySecrets,
    decode_bundle,
    encode_bundle,
    verify_bundle,
)
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity

OWNER = Identity(bytes([2]) * 32)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    try:
        bundle = decode_bundle(data)
    except RemoteProtocolError:
        return
    assert encode_bundle(bundle) == data
    assert len(bundle.one_time) <= MAX_ONE_TIME
    try:
        verify_bundle(bundle, bundle.identity)
    except RemoteProtocolError:
        return


def _bundle(one_time: int) -> bytes:
    counter = iter(range(10_000))

    def rng(n: int) -> bytes:
        return hashlib.blake2b(next(counter).to_bytes(4, "big"), digest_size=n).digest()

    return encode_bundle(PrekeySecrets.generate(OWNER, rng, one_time=one_time).bundle(OWNER))


def seeds() -> dict[str, bytes]:
    """Valid bundles and their tampered neighbours."""
    full, empty = _bundle(MAX_ONE_TIME), _bundle(0)
    return {
        "full": full,
        "no_one_time": empty,
        "bad_signature": empty[:-2] + bytes([empty[-2] ^ 1]) + empty[-1:],
        "truncated": full[:-1],
        "trailing": empty + b"\x00",
        "bad_version": b"\x02" + empty[1:],
        "too_many": empty[:-1] + bytes([MAX_ONE_TIME + 1]),
        "empty": b"",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
