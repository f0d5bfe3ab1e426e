"""Shared pieces of the end-to-end tests: a seeded rng and two established peers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from p2pmsg.e2e import session
from p2pmsg.e2e.prekeys import PrekeySecrets
from p2pmsg.e2e.ratchet import RatchetState
from p2pmsg.keys import Identity

Rng = Callable[[int], bytes]

ALICE = Identity(bytes([1]) * 32)
BOB = Identity(bytes([2]) * 32)
CAROL = Identity(bytes([3]) * 32)


def seeded_rng(seed: bytes | str) -> Rng:
    """A deterministic byte stream: BLAKE2b of the seed and a counter."""
    key = seed.encode() if isinstance(seed, str) else seed
    counter = 0
    buffer = b""

    def rng(n: int) -> bytes:
        nonlocal counter, buffer
        while len(buffer) < n:
            buffer += hashlib.blake2b(counter.to_bytes(8, "big"), key=key[:64]).digest()
            counter += 1
        out, buffer = buffer[:n], buffer[n:]
        return out

    return rng


def established(
    seed: str = "established",
) -> tuple[RatchetState, RatchetState, PrekeySecrets, PrekeySecrets, Rng]:
    """Alice and Bob after one round trip: (alice, bob, alice's prekeys, bob's prekeys, rng)."""
    rng = seeded_rng(seed)
    alice_pk = PrekeySecrets.generate(ALICE, rng, one_time=4)
    bob_pk = PrekeySecrets.generate(BOB, rng, one_time=4)
    a, m = session.encrypt(ALICE, BOB.public, None, bob_pk.bundle(BOB), b"hi bob", rng)
    b, bob_pk, _ = session.decrypt(BOB, bob_pk, ALICE.public, None, m)
    b, m = session.encrypt(BOB, ALICE.public, b, None, b"hi alice", rng)
    a, alice_pk, _ = session.decrypt(ALICE, alice_pk, BOB.public, a, m)
    return a, b, alice_pk, bob_pk, rng
