"""Fuzz target: an envelope into sealed.unseal for a fixed recipient.

Only (sender, inner) or a :class:`RemoteProtocolError` (``SealError``) may
come out. Seeds are real envelopes from a known sender, so mutations reach
the second (sender-authenticating) layer.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_sealed.py fuzz/corpus/sealed
"""

from __future__ import annotations

import hashlib

from p2pmsg.e2e.sealed import SEAL_OVERHEAD, seal, unseal
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity, PublicIdentity

SENDER = Identity(bytes([1]) * 32)
RECIPIENT = Identity(bytes([2]) * 32)


def _rng(n: int) -> bytes:
    return hashlib.blake2b(b"fuzz sealed", digest_size=n).digest()


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    try:
        sender, inner = unseal(RECIPIENT, data)
    except RemoteProtocolError:
        return
    assert isinstance(sender, PublicIdentity)
    assert len(inner) == len(data) - SEAL_OVERHEAD


def seeds() -> dict[str, bytes]:
    """Real envelopes and their tampered neighbours."""
    text = seal(SENDER, RECIPIENT.public, b"hello", _rng)
    empty = seal(SENDER, RECIPIENT.public, b"", _rng)
    return {
        "envelope": text,
        "envelope_empty": empty,
        "sender_flipped": text[:40] + bytes([text[40] ^ 1]) + text[41:],
        "inner_flipped": text[:-1] + bytes([text[-1] ^ 1]),
        "to_someone_else": seal(SENDER, SENDER.public, b"hello", _rng),
        "truncated": empty[:-1],
        "bad_version": b"\x02" + text[1:],
        "low_order_ephemeral": text[:1] + bytes(32) + text[33:],
        "empty": b"",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
