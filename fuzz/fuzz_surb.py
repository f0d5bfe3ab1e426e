"""Fuzz target: bytes into ``decode_surb``, then a reply built with ``use_surb``.

A SURB arrives inside a forward message from an untrusted sender. Only a
:class:`Surb` or :class:`RemoteProtocolError` may come out of decoding; a
decoded SURB re-encodes to exactly the input, and ``use_surb`` builds a
packet of exactly ``PACKET_BYTES`` for its first hop whatever the header
holds. The packet is then peeled with the fixed key of ``fuzz_sphinx_peel``
(seeds include SURBs through that node), where only a :class:`Peeled` or
:class:`InvalidPacket` may come out.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_surb.py fuzz/corpus/surb
"""

from __future__ import annotations

import hashlib

from p2pmsg.errors import RemoteProtocolError
from p2pmsg.onion import sphinx

KEY = hashlib.blake2b(b"fuzz sphinx peel key", digest_size=32).digest()
NODE_ID = hashlib.blake2b(b"fuzz sphinx peel node", digest_size=32).digest()
ME = sphinx.Hop(NODE_ID, sphinx.public_key(KEY))
REPLY = b"a reply through a fuzzed SURB"


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    try:
        surb = sphinx.decode_surb(data)
    except RemoteProtocolError:
        return
    assert isinstance(surb, sphinx.Surb)
    assert sphinx.encode_surb(surb) == data
    first_hop, packet = sphinx.use_surb(surb, REPLY)
    assert first_hop == data[: sphinx.ID_BYTES]
    assert len(packet) == sphinx.PACKET_BYTES
    try:
        peeled = sphinx.peel(KEY, packet)
    except sphinx.InvalidPacket:
        return
    if isinstance(peeled.result, sphinx.Forward):
        assert len(peeled.result.packet) == sphinx.PACKET_BYTES


class _Rng:
    def __init__(self, seed: bytes) -> None:
        self.seed, self.counter = seed, 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.blake2b(self.counter.to_bytes(8, "little"), key=self.seed).digest()
            self.counter += 1
        return out[:n]


def seeds() -> dict[str, bytes]:
    """SURBs to and through the fixed node, and malformed neighbours."""
    rng = _Rng(b"fuzz surb hops")
    others = [sphinx.Hop(rng(32), sphinx.public_key(rng(32))) for _ in range(5)]
    to_me, _ = sphinx.create_surb([ME], bytes(16), _Rng(b"to me"))
    via_me, _ = sphinx.create_surb([ME, *others[:2]], bytes(range(16)), _Rng(b"via me"))
    longest, _ = sphinx.create_surb([*others, ME], b"\xff" * 16, _Rng(b"longest"))
    valid = sphinx.encode_surb(to_me)
    return {
        "to_me": valid,
        "via_me": sphinx.encode_surb(via_me),
        "six_hops_elsewhere": sphinx.encode_surb(longest),
        "zeros": bytes(sphinx.SURB_BYTES),
        "tampered_header": valid[:40] + bytes([valid[40] ^ 1]) + valid[41:],
        "short": valid[:-1],
        "long": valid + b"\x00",
        "empty": b"",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
