"""Noise_IK_25519_ChaChaPoly_BLAKE2b, written from the Noise spec (rev. 34).

Theory of operation: a :class:`HandshakeState` walks the two IK message
patterns (``-> e, es, s, ss`` and ``<- e, ee, se``, after the pre-message
``<- s``) over a :class:`SymmetricState` (chaining key, handshake hash and a
:class:`CipherState`). After the second message :meth:`HandshakeState.split`
returns the two transport ciphers. The code follows the spec's names so it
can be read against it; ``tests/test_noise.py`` cross-checks it against the
independent ``noiseprotocol`` package in both roles.

Pure: the ephemeral key comes from the ``rng`` parameter. Every failure on
received bytes raises :class:`HandshakeError`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import nacl.bindings as sodium
import nacl.exceptions

from p2pmsg.errors import HandshakeError, LocalProtocolError

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2b"
DHLEN = 32
HASHLEN = 64
TAGLEN = 16
MAX_NONCE = 2**64 - 1


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """The spec's HKDF with HMAC-BLAKE2b, returning 2 or 3 outputs."""
    temp_key = _hmac(chaining_key, ikm)
    out: list[bytes] = []
    prev = b""
    for i in range(1, outputs + 1):
        prev = _hmac(temp_key, prev + bytes([i]))
        out.append(prev)
    return tuple(out)


def dh(private: bytes, public: bytes) -> bytes:
    """X25519; a low-order peer key (all-zero result) is a handshake error."""
    try:
        return sodium.crypto_scalarmult(private, public)
    except nacl.exceptions.RuntimeError as exc:
        raise HandshakeError("low-order public key") from exc


def _nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


class CipherState:
    """ChaCha20-Poly1305 with a 64-bit counter nonce."""

    __slots__ = ("k", "n")

    def __init__(self, k: bytes | None = None) -> None:
        self.k = k
        self.n = 0

    def __repr__(self) -> str:
        return f"CipherState(<key>, n={self.n})"

    def _next_nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted; rekey the link")
        nonce = _nonce(self.n)
        self.n += 1
        return nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        return sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, ad, self._next_nonce(), self.k
        )

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        try:
            plaintext = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, _nonce(self.n), self.k
            )
        except nacl.exceptions.CryptoError as exc:
            raise HandshakeError("authentication failed") from exc
        self.n += 1
        return plaintext


class SymmetricState:
    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(k1[:32]), CipherState(k2[:32])


class HandshakeState:
    """One side of an IK handshake.

    ``s_private`` is our X25519 static key; ``rs`` the responder's static
    public key (required for the initiator, learned by the responder).
    """

    def __init__(
        self,
        *,
        initiator: bool,
        prologue: bytes,
        s_private: bytes,
        rs: bytes | None,
        rng: Callable[[int], bytes],
    ) -> None:
        if initiator and (rs is None or len(rs) != DHLEN):
            raise LocalProtocolError("the initiator must know the responder's static key")
        self.initiator = initiator
        self.s_private = s_private
        self.s_public = sodium.crypto_scalarmult_base(s_private)
        self.rs = rs
        self.re: bytes | None = None
        self.e_private = rng(DHLEN)
        self.e_public = sodium.crypto_scalarmult_base(self.e_private)
        self.ss = SymmetricState(PROTOCOL_NAME)
        self.ss.mix_hash(prologue)
        self.ss.mix_hash(rs if initiator else self.s_public)  # type: ignore[arg-type]
        self._step = 0

    @property
    def handshake_hash(self) -> bytes:
        return self.ss.h

    @property
    def finished(self) -> bool:
        return self._step == 2

    def _expect(self, step: int, writing: bool) -> None:
        if self._step != step or writing != (self.initiator == (step == 0)):
            raise LocalProtocolError("handshake message out of order")
        self._step += 1

    def write_message(self, payload: bytes) -> bytes:
        """Produce our next handshake message carrying ``payload``."""
        if self.initiator:
            self._expect(0, writing=True)
            assert self.rs is not None
            self.ss.mix_hash(self.e_public)
            self.ss.mix_key(dh(self.e_private, self.rs))  # es
            enc_s = self.ss.encrypt_and_hash(self.s_public)  # s
            self.ss.mix_key(dh(self.s_private, self.rs))  # ss
            return self.e_public + enc_s + self.ss.encrypt_and_hash(payload)
        self._expect(1, writing=True)
        assert self.re is not None and self.rs is not None
        self.ss.mix_hash(self.e_public)
        self.ss.mix_key(dh(self.e_private, self.re))  # ee
        self.ss.mix_key(dh(self.e_private, self.rs))  # se
        return self.e_public + self.ss.encrypt_and_hash(payload)

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's handshake message; return its payload."""
        message = bytes(message)
        if self.initiator:
            self._expect(1, writing=False)
            if len(message) < DHLEN + TAGLEN:
                raise HandshakeError("handshake message too short")
            self.re = message[:DHLEN]
            self.ss.mix_hash(self.re)
            self.ss.mix_key(dh(self.e_private, self.re))  # ee
            self.ss.mix_key(dh(self.s_private, self.re))  # se
            return self.ss.decrypt_and_hash(message[DHLEN:])
        self._expect(0, writing=False)
        if len(message) < DHLEN + DHLEN + 2 * TAGLEN:
            raise HandshakeError("handshake message too short")
        self.re = message[:DHLEN]
        self.ss.mix_hash(self.re)
        self.ss.mix_key(dh(self.s_private, self.re))  # es
        self.rs = self.ss.decrypt_and_hash(message[DHLEN : 2 * DHLEN + TAGLEN])  # s
        self.ss.mix_key(dh(self.s_private, self.rs))  # ss
        return self.ss.decrypt_and_hash(message[2 * DHLEN + TAGLEN :])

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) transport ciphers for our role."""
        if not self.finished:
            raise LocalProtocolError("the handshake is not finished")
        c1, c2 = self.ss.split()
        return (c1, c2) if self.initiator else (c2, c1)
