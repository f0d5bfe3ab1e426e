"""LIONESS: round trip, diffusion, sizes and known answers (tests/vectors/lioness.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmsg.onion import lioness

VECTORS = Path(__file__).resolve().parent / "vectors" / "lioness.json"

keys = st.binary(min_size=lioness.KEY_BYTES, max_size=lioness.KEY_BYTES)
blocks = st.binary(min_size=lioness.MIN_BLOCK, max_size=2048)


def windows_all_differ(a: bytes, b: bytes, width: int = 32) -> bool:
    """Every ``width``-byte window differs: for random blocks, a match is a 2**-256 event."""
    return all(a[i : i + width] != b[i : i + width] for i in range(0, len(a), width))


@settings(max_examples=50)
@given(key=keys, block=blocks)
def test_round_trip(key: bytes, block: bytes) -> None:
    ciphertext = lioness.encrypt(key, block)
    assert len(ciphertext) == len(block)
    assert lioness.decrypt(key, ciphertext) == block
    assert lioness.encrypt(key, lioness.decrypt(key, block)) == block


@settings(max_examples=50)
@given(
    key=keys,
    block=st.binary(min_size=64, max_size=2048),
    position=st.integers(min_value=0),
    mask=st.integers(min_value=1, max_value=255),
)
def test_one_changed_byte_spreads_over_the_whole_block(
    key: bytes, block: bytes, position: int, mask: int
) -> None:
    position %= len(block)
    changed = bytearray(block)
    changed[position] ^= mask
    # both ways: a tampered ciphertext decrypts to noise, a changed plaintext encrypts to noise
    assert windows_all_differ(lioness.decrypt(key, block), lioness.decrypt(key, bytes(changed)))
    assert windows_all_differ(lioness.encrypt(key, block), lioness.encrypt(key, bytes(changed)))


def test_the_key_matters() -> None:
    block = bytes(100)
    one = lioness.encrypt(bytes(32), block)
    other = lioness.encrypt(bytes(31) + b"\x01", block)
    assert windows_all_differ(one, other)
    assert lioness.decrypt(bytes(31) + b"\x01", one) != block


def test_the_smallest_block_works() -> None:
    block = bytes(range(lioness.MIN_BLOCK))
    assert lioness.decrypt(bytes(32), lioness.encrypt(bytes(32), block)) == block


@pytest.mark.parametrize("size", [0, 1, lioness.KEY_BYTES])
def test_blocks_too_short_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        lioness.encrypt(bytes(32), bytes(size))
    with pytest.raises(ValueError, match="at least"):
        lioness.decrypt(bytes(32), bytes(size))


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_keys_of_the_wrong_size_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="key"):
        lioness.encrypt(bytes(size), bytes(64))


def test_stream_xor_is_chacha20_keystream() -> None:
    """The AEAD ciphertext minus its tag is data XOR keystream, so XOR twice is identity."""
    data = bytes(range(200))
    once = lioness.stream_xor(bytes(32), data)
    assert once != data
    assert lioness.stream_xor(bytes(32), once) == data
    keystream = lioness.stream_xor(bytes(32), bytes(200))
    assert bytes(a ^ b for a, b in zip(data, keystream, strict=True)) == once


def test_known_answers() -> None:
    cases = json.loads(VECTORS.read_text())
    assert len(cases) >= 4
    for case in cases:
        key, plaintext = bytes.fromhex(case["key"]), bytes.fromhex(case["plaintext"])
        ciphertext = bytes.fromhex(case["ciphertext"])
        assert lioness.encrypt(key, plaintext) == ciphertext
        assert lioness.decrypt(key, ciphertext) == plaintext
