"""The few primitives the end-to-end layer is built from, and its errors.

Theory of operation
-------------------
Everything comes from libsodium through pynacl:

* DH is X25519 (``crypto_scalarmult``); an all-zero result (a low-order
  public key sent by a peer) is refused, as X3DH and the Double Ratchet
  require.
* The key derivation function is HKDF (RFC 5869) with HMAC-BLAKE2b-512 from
  the standard library, used wherever the Signal specifications say HKDF
  (X3DH's KDF, the ratchet's ``KDF_RK``, sealed sender). The salt is the
  chaining input, ``info`` a purpose label, so no two uses share keys.
* The symmetric-key ratchet step ``KDF_CK`` is keyed BLAKE2b-256 with two
  distinct personalisations (message key, next chain key), the keyed-hash
  form of the specification's ``HMAC(ck, 0x01)`` / ``HMAC(ck, 0x02)``.
* The AEAD is XChaCha20-Poly1305 (24-byte nonces), for keys that encrypt more
  than once with random nonces (header keys), and ChaCha20-Poly1305 IETF with
  a zero nonce for keys that encrypt exactly once (message keys, sealed
  sender's per-envelope keys): a unique key makes a fixed nonce safe and
  saves the nonce's bytes on the wire.

Pure: nothing here draws randomness or reads a clock.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import nacl.bindings as sodium
import nacl.exceptions

from p2pmsg.errors import LocalProtocolError, P2PMsgError, RemoteProtocolError, StoreError

KEY_BYTES: Final = 32
TAG_BYTES: Final = 16
XNONCE_BYTES: Final = 24
_ZERO_NONCE: Final = bytes(12)
_HASH_BYTES: Final = 64


class DecryptError(RemoteProtocolError):
    """A message could not be decrypted (forged, damaged, replayed or out of reach)."""


class UnknownPrekey(DecryptError):
    """The message names a prekey we no longer hold: the sender must fetch our new prekeys."""


class ReplayedStart(DecryptError):
    """An initial message whose session we no longer hold: seen before, so refused."""


class ForgedPrekey(RemoteProtocolError):
    """A prekey bundle is not signed by the identity it claims."""


class MalformedBundle(RemoteProtocolError):
    """A prekey bundle is malformed."""


class SealError(RemoteProtocolError):
    """A sealed envelope could not be opened."""


class NoSession(P2PMsgError, ValueError):
    """There is no session with that peer and no prekey bundle to start one."""


class CorruptState(StoreError):
    """The stored end-to-end key state is damaged."""


def dh(private: bytes, public: bytes) -> bytes:
    """X25519. Raises :class:`DecryptError` for a low-order or malformed public key."""
    if len(public) != KEY_BYTES:
        raise DecryptError("an X25519 public key is 32 bytes")
    try:
        return sodium.crypto_scalarmult(private, public)
    except nacl.exceptions.RuntimeError as exc:
        raise DecryptError("low-order public key") from exc


def public_of(private: bytes) -> bytes:
    """The X25519 public key of ``private``."""
    return sodium.crypto_scalarmult_base(private)


def keypair(random32: bytes) -> tuple[bytes, bytes]:
    """An X25519 (private, public) pair from 32 random bytes."""
    if len(random32) != KEY_BYTES:
        raise LocalProtocolError("rng returned the wrong number of bytes")
    return random32, public_of(random32)


def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with HMAC-BLAKE2b-512."""
    prk = hmac.new(salt or bytes(_HASH_BYTES), ikm, hashlib.blake2b).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.blake2b).digest()
        out += block
        counter += 1
    return out[:length]


def kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    """The symmetric ratchet step: (next chain key, message key)."""
    mk = hashlib.blake2b(b"\x01", key=chain_key, digest_size=32, person=b"p2pmsg-e2e-mk").digest()
    ck = hashlib.blake2b(b"\x02", key=chain_key, digest_size=32, person=b"p2pmsg-e2e-ck").digest()
    return ck, mk


def seal_once(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD under a key used for exactly one message (zero nonce)."""
    return sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, _ZERO_NONCE, key)


def open_once(key: bytes, ciphertext: bytes, ad: bytes) -> bytes | None:
    """Inverse of :func:`seal_once`; ``None`` when authentication fails."""
    try:
        return sodium.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, ad, _ZERO_NONCE, key)
    except (nacl.exceptions.CryptoError, ValueError):
        return None


def seal_x(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305: nonce followed by the ciphertext."""
    ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)
    return nonce + ct


def open_x(key: bytes, sealed: bytes, ad: bytes) -> bytes | None:
    """Inverse of :func:`seal_x`; ``None`` when too short or not authentic."""
    if len(sealed) < XNONCE_BYTES + TAG_BYTES:
        return None
    nonce, ct = sealed[:XNONCE_BYTES], sealed[XNONCE_BYTES:]
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ct, ad, nonce, key)
    except (nacl.exceptions.CryptoError, ValueError):
        return None


class Reader:
    """A cursor over untrusted bytes; running off the end raises ``error``."""

    def __init__(self, data: bytes, error: type[P2PMsgError]) -> None:
        self._data, self._pos, self._error = bytes(data), 0, error

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise self._error("truncated")
        self._pos += n
        return self._data[self._pos - n : self._pos]

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def rest(self) -> bytes:
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return out

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise self._error("trailing bytes")
