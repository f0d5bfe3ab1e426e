"""Fuzz target: an E2E message into session.decrypt, for a fixed established session.

Bob holds a session with Alice (one round trip done) and his prekey secrets;
the input is what arrives from Alice after unsealing. Only a plaintext or a
:class:`RemoteProtocolError` may come out, and a failure must leave Bob's
state and secrets unchanged. The seeds include Alice's real next messages
(NORMAL and INITIAL), so the parsers behind the header AEAD are reachable by
mutation of the fields around it.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_ratchet_header.py fuzz/corpus/ratchet_header
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from p2pmsg.e2e import session
from p2pmsg.e2e.prekeys import PrekeySecrets
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity

ALICE = Identity(bytes([1]) * 32)
BOB = Identity(bytes([2]) * 32)


def _rng(seed: bytes) -> Callable[[int], bytes]:
    counter, buffer = 0, b""

    def rng(n: int) -> bytes:
        nonlocal counter, buffer
        while len(buffer) < n:
            buffer += hashlib.blake2b(counter.to_bytes(8, "big"), key=seed).digest()
            counter += 1
        out, buffer = buffer[:n], buffer[n:]
        return out

    return rng


RNG = _rng(b"fuzz ratchet header")
BOB_KEYS = PrekeySecrets.generate(BOB, RNG, one_time=2)
_A, FIRST = session.encrypt(ALICE, BOB.public, None, BOB_KEYS.bundle(BOB), b"first", RNG)
_A, SECOND_INITIAL = session.encrypt(ALICE, BOB.public, _A, None, b"second", RNG)
BOB_STATE, BOB_KEYS, _ = session.decrypt(BOB, BOB_KEYS, ALICE.public, None, FIRST)
BOB_STATE, REPLY = session.encrypt(BOB, ALICE.public, BOB_STATE, None, b"reply", RNG)
_A, _alice_keys, _ = session.decrypt(
    ALICE, PrekeySecrets.generate(ALICE, RNG), BOB.public, _A, REPLY
)
_A, NORMAL = session.encrypt(ALICE, BOB.public, _A, None, b"normal", RNG)
_A, LATER = session.encrypt(ALICE, BOB.public, _A, None, b"later", RNG)
BOB_STATE_BYTES = BOB_STATE.to_bytes()
BOB_KEYS_BYTES = BOB_KEYS.to_bytes()


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    for state in (BOB_STATE, None):
        try:
            _, _, plaintext = session.decrypt(BOB, BOB_KEYS, ALICE.public, state, data)
        except RemoteProtocolError:
            continue
        assert isinstance(plaintext, bytes)
    assert BOB_STATE.to_bytes() == BOB_STATE_BYTES
    assert BOB_KEYS.to_bytes() == BOB_KEYS_BYTES


def seeds() -> dict[str, bytes]:
    """Alice's real messages and their tampered neighbours."""
    return {
        "normal": NORMAL,
        "normal_skipping_one": LATER,
        "initial_repeated": SECOND_INITIAL,
        "initial_replayed": FIRST,
        "normal_header_flipped": NORMAL[:10] + bytes([NORMAL[10] ^ 1]) + NORMAL[11:],
        "normal_body_flipped": NORMAL[:-1] + bytes([NORMAL[-1] ^ 1]),
        "normal_truncated": NORMAL[:-17],
        "normal_as_initial": NORMAL[:1] + b"\x01" + NORMAL[2:],
        "bad_version": b"\x02" + NORMAL[1:],
        "bad_kind": NORMAL[:1] + b"\x07" + NORMAL[2:],
        "initial_unknown_prekey": SECOND_INITIAL[:34] + b"\x00\x00\x00\x63" + SECOND_INITIAL[38:],
        "empty": b"",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
