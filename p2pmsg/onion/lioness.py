"""LIONESS, the wide-block cipher (SPRP) that protects Sphinx payloads.

Theory of operation
-------------------
Anderson and Biham's LIONESS ("Two practical and provably secure block
ciphers: BEAR and LION", 1996) turns a stream cipher ``S`` and a keyed hash
``H`` into a block cipher over a block of any length: a four-round
unbalanced Feistel network over the split ``block = L || R`` with
``|L| = 32`` (one ChaCha20 key) and ``R`` the rest::

    encrypt:  R ^= S(L ^ K1);  L ^= H_K2(R);  R ^= S(L ^ K3);  L ^= H_K4(R)
    decrypt:  L ^= H_K4(R);  R ^= S(L ^ K3);  L ^= H_K2(R);  R ^= S(L ^ K1)

``S(k)`` is the ChaCha20 keystream under key ``k`` and an all-zero nonce
(each ``L ^ K`` is a fresh key, so the nonce never repeats under one key),
taken from libsodium's IETF ChaCha20-Poly1305 with the tag dropped: that
ciphertext *is* ``R ^ keystream``. ``H_K`` is BLAKE2b-256 keyed with ``K``.
The four subkeys are BLAKE2b outputs of the 32-byte cipher key, each
personalised by its role, so one key names one permutation.

Because every output bit depends on every input bit, changing any byte of a
ciphertext turns the whole decrypted block into noise: this is what lets a
Sphinx destination detect a tagged payload from a 16-byte zero prefix. Pure
functions, no state; a wrong key or block size is a ``ValueError`` (local
misuse, never untrusted input).
"""

from __future__ import annotations

import hashlib
from typing import Final

import nacl.bindings as sodium

KEY_BYTES: Final = 32
MIN_BLOCK: Final = KEY_BYTES + 1

_NONCE: Final = bytes(12)
_PERSONS: Final = tuple(f"p2pmsg lioness{i}".encode() for i in range(1, 5))


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def stream_xor(key: bytes, data: bytes) -> bytes:
    """``data`` XOR the ChaCha20 keystream of ``key`` (zero nonce)."""
    return sodium.crypto_aead_chacha20poly1305_ietf_encrypt(data, None, _NONCE, key)[:-16]


def _hash(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=KEY_BYTES).digest()


def _subkeys(key: bytes) -> tuple[bytes, ...]:
    if len(key) != KEY_BYTES:
        raise ValueError(f"a LIONESS key is {KEY_BYTES} bytes")
    return tuple(
        hashlib.blake2b(key=key, person=person, digest_size=KEY_BYTES).digest()
        for person in _PERSONS
    )


def _split(block: bytes) -> tuple[bytes, bytes]:
    if len(block) < MIN_BLOCK:
        raise ValueError(f"a LIONESS block is at least {MIN_BLOCK} bytes")
    return block[:KEY_BYTES], block[KEY_BYTES:]


def encrypt(key: bytes, block: bytes) -> bytes:
    """The LIONESS encryption of ``block`` (same length) under ``key``."""
    k1, k2, k3, k4 = _subkeys(key)
    left, right = _split(block)
    right = stream_xor(_xor(left, k1), right)
    left = _xor(left, _hash(k2, right))
    right = stream_xor(_xor(left, k3), right)
    left = _xor(left, _hash(k4, right))
    return left + right


def decrypt(key: bytes, block: bytes) -> bytes:
    """The inverse of :func:`encrypt`."""
    k1, k2, k3, k4 = _subkeys(key)
    left, right = _split(block)
    left = _xor(left, _hash(k4, right))
    right = stream_xor(_xor(left, k3), right)
    left = _xor(left, _hash(k2, right))
    right = stream_xor(_xor(left, k1), right)
    return left + right
