"""Regenerate tests/vectors/sphinx.json and tests/vectors/lioness.json.

    PYTHONPATH=. python3 tests/vectors/make_sphinx_vectors.py

Every random byte comes from :class:`Drbg`, BLAKE2b-512 in counter mode
under a fixed seed, so the output is a pure function of the implementation:
tests/test_sphinx.py and tests/test_lioness.py recompute every vector and
fail if the code's output changes. Regenerate only for a deliberate format
change (and bump the version in ``sphinx.PERSONALISATION``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from p2pmsg.onion import lioness, sphinx

HERE = Path(__file__).resolve().parent


class Drbg:
    """Deterministic bytes: block ``i`` is BLAKE2b-512(u64le(i), key=seed)."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0
        self.buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self.buffer) < n:
            block = self.counter.to_bytes(8, "little")
            self.buffer += hashlib.blake2b(block, key=self.seed).digest()
            self.counter += 1
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def make_route(seed: bytes, hops: int) -> tuple[list[bytes], list[sphinx.Hop]]:
    rng = Drbg(b"route " + seed)
    keys = [rng(32) for _ in range(hops)]
    return keys, [sphinx.Hop(rng(32), sphinx.public_key(k)) for k in keys]


def walk(keys: list[bytes], packet: bytes) -> tuple[list[dict[str, str]], sphinx.Deliver]:
    """Peel ``packet`` through every hop, recording what each hop sees."""
    steps: list[dict[str, str]] = []
    for key in keys:
        peeled = sphinx.peel(key, packet)
        result = peeled.result
        step = {"replay_tag": peeled.replay_tag.hex()}
        if isinstance(result, sphinx.Deliver):
            steps.append(step)
            return steps, result
        step |= {
            "command": result.command.name,
            "next_hop": result.next_hop.hex(),
            "forwarded_blake2b": digest(result.packet),
        }
        steps.append(step)
        packet = result.packet
    raise AssertionError("the packet was not delivered")


def forward_case(name: str, hops: int, message: bytes) -> dict[str, Any]:
    seed = name.encode()
    keys, route = make_route(seed, hops)
    first_hop, packet = sphinx.create_packet(route, message, Drbg(seed))
    steps, delivered = walk(keys, packet)
    assert delivered.message == message and delivered.surb_id is None
    return {
        "name": name,
        "seed": seed.hex(),
        "private_keys": [k.hex() for k in keys],
        "node_ids": [h.node_id.hex() for h in route],
        "message": message.hex(),
        "first_hop": first_hop.hex(),
        "packet": packet.hex(),
        "hops": steps,
    }


def surb_case(name: str, hops: int, message: bytes) -> dict[str, Any]:
    seed = name.encode()
    keys, route = make_route(seed, hops)
    surb_id = hashlib.blake2b(seed, digest_size=sphinx.SURB_ID_BYTES).digest()
    surb, secret = sphinx.create_surb(route, surb_id, Drbg(seed))
    first_hop, packet = sphinx.use_surb(surb, message)
    steps, delivered = walk(keys, packet)
    assert delivered.surb_id == surb_id
    assert sphinx.open_reply(secret, delivered.message) == message
    return {
        "name": name,
        "seed": seed.hex(),
        "private_keys": [k.hex() for k in keys],
        "node_ids": [h.node_id.hex() for h in route],
        "surb_id": surb_id.hex(),
        "surb": sphinx.encode_surb(surb).hex(),
        "secret": secret.to_bytes().hex(),
        "message": message.hex(),
        "first_hop": first_hop.hex(),
        "packet": packet.hex(),
        "hops": steps,
        "reply_payload_blake2b": digest(delivered.message),
    }


def sphinx_vectors() -> dict[str, Any]:
    return {
        "geometry": {
            "MAX_HOPS": sphinx.MAX_HOPS,
            "HEADER_BYTES": sphinx.HEADER_BYTES,
            "PAYLOAD_BYTES": sphinx.PAYLOAD_BYTES,
            "PACKET_BYTES": sphinx.PACKET_BYTES,
            "MAX_MESSAGE": sphinx.MAX_MESSAGE,
            "SURB_BYTES": sphinx.SURB_BYTES,
        },
        "forward": [
            forward_case("forward 1 hop", 1, b"direct to the destination"),
            forward_case("forward 3 hops", 3, b"two relays, then the destination"),
            forward_case("forward 6 hops empty", 6, b""),
            forward_case("forward 6 hops full", 6, bytes(range(256)) * 7 + bytes(238)),
        ],
        "surb": [
            surb_case("surb 1 hop", 1, b"a reply"),
            surb_case("surb 4 hops", 4, b"a reply over three relays"),
            surb_case("surb 6 hops", 6, b"x" * sphinx.MAX_MESSAGE),
        ],
    }


def lioness_vectors() -> list[dict[str, str]]:
    cases = []
    for size in (lioness.MIN_BLOCK, 64, 1000, sphinx.PAYLOAD_BYTES):
        rng = Drbg(f"lioness {size}".encode())
        key, block = rng(lioness.KEY_BYTES), rng(size)
        cases.append(
            {
                "key": key.hex(),
                "plaintext": block.hex(),
                "ciphertext": lioness.encrypt(key, block).hex(),
            }
        )
    return cases


def main() -> None:
    for name, data in (("sphinx.json", sphinx_vectors()), ("lioness.json", lioness_vectors())):
        (HERE / name).write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
