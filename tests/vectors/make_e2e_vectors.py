"""Known-answer vectors for p2pmsg.e2e, from a deterministic rng.

``python tests/vectors/make_e2e_vectors.py > tests/vectors/e2e.json`` writes
them; ``tests/test_e2e_vectors.py`` recomputes and compares, so any change to
a wire format or key schedule shows up as a changed vector (and then needs a
version bump, not a regenerated file).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from p2pmsg.e2e import sealed, session
from p2pmsg.e2e.prekeys import PrekeySecrets, encode_bundle
from p2pmsg.keys import Identity


def counter_rng(seed: bytes) -> Callable[[int], bytes]:
    """BLAKE2b-512(counter, key=seed) blocks, consumed in order."""
    counter, buffer = 0, b""

    def rng(n: int) -> bytes:
        nonlocal counter, buffer
        while len(buffer) < n:
            buffer += hashlib.blake2b(counter.to_bytes(8, "big"), key=seed).digest()
            counter += 1
        out, buffer = buffer[:n], buffer[n:]
        return out

    return rng


def build() -> dict[str, str]:
    """Every value of the vector file, as hex."""
    rng = counter_rng(b"p2pmsg e2e vectors v1")
    alice, bob = Identity(bytes([0xA1]) * 32), Identity(bytes([0xB0]) * 32)
    bob_keys = PrekeySecrets.generate(bob, rng, one_time=2)
    alice_keys = PrekeySecrets.generate(alice, rng, one_time=0)
    bundle = bob_keys.bundle(bob)
    a, initial = session.encrypt(alice, bob.public, None, bundle, b"hello bob", rng)
    b, bob_keys, _ = session.decrypt(bob, bob_keys, alice.public, None, initial)
    b, reply = session.encrypt(bob, alice.public, b, None, b"hello alice", rng)
    a, alice_keys, _ = session.decrypt(alice, alice_keys, bob.public, a, reply)
    a, normal = session.encrypt(alice, bob.public, a, None, b"third", rng)
    b, bob_keys, _ = session.decrypt(bob, bob_keys, alice.public, b, normal)
    envelope = sealed.seal(alice, bob.public, normal, rng)
    values = {
        "bundle": encode_bundle(bundle),
        "initial": initial,
        "reply": reply,
        "normal": normal,
        "sealed": envelope,
        "alice_state_sha": hashlib.blake2b(a.to_bytes()).digest(),
        "bob_state_sha": hashlib.blake2b(b.to_bytes()).digest(),
        "bob_prekeys_sha": hashlib.blake2b(bob_keys.to_bytes()).digest(),
    }
    return {name: value.hex() for name, value in values.items()}


if __name__ == "__main__":
    print(json.dumps(build(), indent=2, sort_keys=True))
