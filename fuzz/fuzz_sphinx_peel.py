"""Fuzz target: bytes into a relay's Sphinx ``peel`` with a fixed onion key.

Two legs per input:

1. the raw bytes, as a relay receives them: only a :class:`Peeled` or
   :class:`InvalidPacket` may come out, and a forwarded packet is exactly
   ``PACKET_BYTES``;
2. the bytes as *plaintext* ``alpha || routing slots || payload``, sealed
   here with the hop keys of ``alpha`` (stream-encrypted slots, a valid
   MAC, a LIONESS-encrypted payload), so the slot parser and the payload
   decoder behind the MAC are reachable; the MAC must then never fail.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_sphinx_peel.py -max_len=4096 fuzz/corpus/sphinx_peel
"""

from __future__ import annotations

import contextlib
import hashlib

from p2pmsg.onion import header, lioness, sphinx
from p2pmsg.onion.sphinx import Deliver, Forward, InvalidPacket, InvalidReason, Peeled

KEY = hashlib.blake2b(b"fuzz sphinx peel key", digest_size=32).digest()
NODE_ID = hashlib.blake2b(b"fuzz sphinx peel node", digest_size=32).digest()
ME = sphinx.Hop(NODE_ID, sphinx.public_key(KEY))
_BETA_END = 32 + header.BETA_BYTES


def _check(peeled: Peeled) -> None:
    assert isinstance(peeled, Peeled)
    assert len(peeled.replay_tag) == sphinx.REPLAY_TAG_BYTES
    result = peeled.result
    if isinstance(result, Forward):
        assert result.command in (sphinx.Command.RELAY, sphinx.Command.EXIT)
        assert len(result.next_hop) == sphinx.ID_BYTES
        assert len(result.packet) == sphinx.PACKET_BYTES
    else:
        assert isinstance(result, Deliver)
        if result.surb_id is None:
            assert len(result.message) <= sphinx.MAX_MESSAGE
        else:
            assert len(result.surb_id) == sphinx.SURB_ID_BYTES
            assert len(result.message) == sphinx.PAYLOAD_BYTES


def seal(data: bytes) -> bytes | None:
    """``data`` as plaintext alpha, slots and payload, sealed for :data:`KEY`."""
    alpha = data[:32].ljust(32, b"\x00")
    beta = data[32:_BETA_END].ljust(header.BETA_BYTES, b"\x00")
    payload = data[_BETA_END : _BETA_END + sphinx.PAYLOAD_BYTES]
    try:
        keys = header.hop_keys(alpha, header.x25519(KEY, alpha))
    except InvalidPacket:
        return None  # a low-order alpha: no keys to seal with
    beta = lioness.stream_xor(keys.stream, beta)
    payload = lioness.encrypt(keys.payload, payload.ljust(sphinx.PAYLOAD_BYTES, b"\x00"))
    return alpha + beta + header.mac(keys.mac, alpha, beta) + payload


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    with contextlib.suppress(InvalidPacket):
        _check(sphinx.peel(KEY, data))
    sealed = seal(data)
    if sealed is None:
        return
    reason = None
    try:
        _check(sphinx.peel(KEY, sealed))
    except InvalidPacket as exc:
        reason = exc.reason
    assert reason not in (InvalidReason.WRONG_SIZE, InvalidReason.BAD_MAC)


class _Rng:
    def __init__(self, seed: bytes) -> None:
        self.seed, self.counter = seed, 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.blake2b(self.counter.to_bytes(8, "little"), key=self.seed).digest()
            self.counter += 1
        return out[:n]


def _hops(count: int) -> list[sphinx.Hop]:
    rng = _Rng(b"fuzz hops")
    return [sphinx.Hop(rng(32), sphinx.public_key(rng(32))) for _ in range(count)]


def _plain(slot: bytes, payload: bytes) -> bytes:
    alpha = sphinx.public_key(bytes(range(32)))
    return alpha + slot.ljust(header.BETA_BYTES, b"\x00") + payload


def seeds() -> dict[str, bytes]:
    """Valid packets for :data:`KEY` in every role, their tampered neighbours, plaintexts."""
    others = _hops(5)
    _, deliver = sphinx.create_packet([ME], b"hello", _Rng(b"deliver"))
    _, relay = sphinx.create_packet([ME, *others[:2]], b"on", _Rng(b"relay"))
    _, exit_ = sphinx.create_packet([ME, others[0]], b"out", _Rng(b"exit"))
    _, longest = sphinx.create_packet([ME, *others], b"far", _Rng(b"longest"))
    to_me, _ = sphinx.create_surb([ME], bytes(16), _Rng(b"surb to me"))
    _, reply = sphinx.use_surb(to_me, b"reply")
    via_me, _ = sphinx.create_surb([ME, others[0]], bytes(16), _Rng(b"surb via me"))
    _, reply_relay = sphinx.use_surb(via_me, b"reply")
    message = bytes(16) + (5).to_bytes(2, "big") + b"hello"
    return {
        "deliver": deliver,
        "relay": relay,
        "exit": exit_,
        "relay_of_six": longest,
        "reply": reply,
        "reply_relay": reply_relay,
        "tampered_alpha": deliver[:5] + bytes([deliver[5] ^ 1]) + deliver[6:],
        "tampered_mac": deliver[:437] + bytes([deliver[437] ^ 0x80]) + deliver[438:],
        "tampered_payload": deliver[:-1] + bytes([deliver[-1] ^ 1]),
        "low_order_alpha": bytes(sphinx.PACKET_BYTES),
        "short": deliver[:-1],
        "long": deliver + b"\x00",
        "empty": b"",
        "plain_deliver": _plain(bytes([3]), message),
        "plain_reply": _plain(bytes([4]) + bytes(32) + bytes(range(16)), message),
        "plain_relay": _plain(bytes([1]) + NODE_ID + bytes(16) + bytes(16), message),
        "plain_exit": _plain(bytes([2]) + NODE_ID, b""),
        "plain_bad_command": _plain(bytes([9]), message),
        "plain_bad_length": _plain(bytes([3]), bytes(16) + b"\xff\xff"),
        "plain_tagged": _plain(bytes([3]), b"\x01" + message[1:]),
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
