"""The Double Ratchet with header encryption (Signal's specification, section 4).

Theory of operation
-------------------
A :class:`RatchetState` is one party's half of a session, with the
specification's fields (``DHRs``, ``DHRr``, ``RK``, ``CKs``, ``CKr``, ``Ns``,
``Nr``, ``PN``, ``HKs``, ``HKr``, ``NHKs``, ``NHKr``, ``MKSKIPPED``) and its
functions: ``RatchetInitAliceHE``/``RatchetInitBobHE`` are
:meth:`init_initiator`/:meth:`init_responder`, ``RatchetEncryptHE`` is
:meth:`encrypt`, ``RatchetDecryptHE`` is :meth:`decrypt`. Primitives are
those of :mod:`p2pmsg.e2e.primitives`: ``KDF_RK`` is HKDF-BLAKE2b(salt=RK,
ikm=DH output) giving RK, CK and the next header key; ``KDF_CK`` keyed BLAKE2b.

A message is ``enc_header || body``. The header (``DHRs`` public key, ``PN``
and ``N``, 40 bytes) is sealed with XChaCha20-Poly1305 under the sending
header key with a random nonce (80 bytes on the wire), so nobody without the
header key sees a ratchet key or a counter. The body is ChaCha20-Poly1305
under the one-time message key, with associated data ``ad || enc_header``.

One deliberate difference from the specification: the DH ratchet step on
receipt does only its receiving half (the new ``CKr`` and ``NHKr``); the new
sending key pair and ``CKs`` are made by the next :meth:`encrypt`, which is
given ``rng``. This keeps :meth:`decrypt` free of randomness and derives the
same keys as the specification, because the peer cannot start another
ratchet step before it has seen our new ratchet key; a message that claims to
(a new chain while ours is pending) is refused.

Bounds: at most :data:`MAX_SKIP` message keys are skipped in one chain for
one message, and at most :data:`MAX_STORED_SKIPPED` skipped keys are kept in
all, the oldest evicted first (their late messages then fail to decrypt, as
replays do). :meth:`decrypt` is transactional: it works on a copy and adopts
it only when the body authenticates, so a failed message changes nothing.
Message keys are deleted when used, which is what gives forward secrecy.

Pure: randomness arrives as ``rng``; every failure on received bytes raises
:class:`DecryptError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from p2pmsg.e2e.primitives import (
    KEY_BYTES,
    TAG_BYTES,
    XNONCE_BYTES,
    CorruptState,
    DecryptError,
    Reader,
    dh,
    hkdf,
    kdf_ck,
    keypair,
    open_once,
    open_x,
    public_of,
    seal_once,
    seal_x,
)
from p2pmsg.errors import LocalProtocolError

MAX_SKIP: Final = 1000
MAX_STORED_SKIPPED: Final = 2000
MAX_COUNTER: Final = 2**32 - 1
_HEADER: Final = struct.Struct(">32sII")
HEADER_BYTES: Final = _HEADER.size
ENC_HEADER_BYTES: Final = XNONCE_BYTES + HEADER_BYTES + TAG_BYTES
RATCHET_OVERHEAD: Final = ENC_HEADER_BYTES + TAG_BYTES
"""Bytes a ratchet message adds to its plaintext (encrypted header and tag)."""
_KDF_RK_INFO: Final = b"p2pmsg e2e kdf_rk v1"
_STATE_VERSION: Final = 1
_OPTIONAL: Final = ("dhr", "cks", "ckr", "hks", "hkr")

Rng = Callable[[int], bytes]


@dataclass(frozen=True)
class Header:
    dh: bytes
    pn: int
    n: int


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes, bytes]:
    """``KDF_RK_HE``: (root key, chain key, next header key)."""
    out = hkdf(rk, dh_out, _KDF_RK_INFO, 3 * KEY_BYTES)
    return out[:32], out[32:64], out[64:]


class RatchetState:
    """One party's Double Ratchet state. ``repr`` shows counters only.

    ``extra`` (opaque bytes) and ``previous`` (one archived state, itself
    without a ``previous``) are kept and persisted for the session layer.
    """

    __slots__ = (
        "ckr",
        "cks",
        "dhr",
        "dhs",
        "extra",
        "hkr",
        "hks",
        "nhkr",
        "nhks",
        "nr",
        "ns",
        "pn",
        "previous",
        "rk",
        "skipped",
    )

    def __init__(self, dhs: bytes, rk: bytes, nhks: bytes, nhkr: bytes) -> None:
        self.dhs = dhs  # our ratchet private key; the public key is derived
        self.dhr: bytes | None = None
        self.rk = rk
        self.cks: bytes | None = None
        self.ckr: bytes | None = None
        self.ns = self.nr = self.pn = 0
        self.hks: bytes | None = None
        self.hkr: bytes | None = None
        self.nhks = nhks
        self.nhkr = nhkr
        self.skipped: dict[tuple[bytes, int], bytes] = {}
        self.extra = b""
        self.previous: RatchetState | None = None

    def __repr__(self) -> str:
        return f"RatchetState(<keys>, ns={self.ns}, nr={self.nr}, skipped={len(self.skipped)})"

    @classmethod
    def init_initiator(
        cls,
        shared_secret: bytes,
        remote_ratchet_pub: bytes,
        *,
        shared_hka: bytes,
        shared_nhkb: bytes,
        rng: Rng,
    ) -> RatchetState:
        """``RatchetInitAliceHE``. Raises :class:`DecryptError` for a low-order key."""
        dhs, _ = keypair(rng(KEY_BYTES))
        rk, cks, nhks = kdf_rk(shared_secret, dh(dhs, remote_ratchet_pub))
        state = cls(dhs, rk, nhks, shared_nhkb)
        state.dhr, state.cks, state.hks = remote_ratchet_pub, cks, shared_hka
        return state

    @classmethod
    def init_responder(
        cls,
        shared_secret: bytes,
        own_ratchet_keypair: tuple[bytes, bytes],
        *,
        shared_hka: bytes,
        shared_nhkb: bytes,
    ) -> RatchetState:
        """``RatchetInitBobHE``; the key pair is (private, public)."""
        return cls(own_ratchet_keypair[0], shared_secret, shared_nhkb, shared_hka)

    @property
    def has_received(self) -> bool:
        """True once a message from the peer has been decrypted."""
        return self.ckr is not None

    def clone(self) -> RatchetState:
        twin = RatchetState.__new__(RatchetState)
        for name in self.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.skipped = dict(self.skipped)
        return twin

    # --- sending ---------------------------------------------------------------

    def encrypt(self, plaintext: bytes, ad: bytes, rng: Rng) -> bytes:
        """``RatchetEncryptHE``: ``enc_header || body``.

        Raises :class:`LocalProtocolError` if this (responder) state has not
        received yet, or the chain's counter is exhausted.
        """
        if self.cks is None:
            if self.dhr is None:
                raise LocalProtocolError("a responder sends only after its first message")
            self.dhs, _ = keypair(rng(KEY_BYTES))  # the deferred sending half
            self.rk, self.cks, self.nhks = kdf_rk(self.rk, dh(self.dhs, self.dhr))
        if self.ns >= MAX_COUNTER or self.hks is None:
            raise LocalProtocolError("this sending chain is exhausted")
        self.cks, mk = kdf_ck(self.cks)
        header = _HEADER.pack(public_of(self.dhs), self.pn, self.ns)
        enc_header = seal_x(self.hks, rng(XNONCE_BYTES), header, ad)
        self.ns += 1
        return enc_header + seal_once(mk, plaintext, ad + enc_header)

    # --- receiving -------------------------------------------------------------

    def decrypt(self, message: bytes, ad: bytes) -> bytes:
        """``RatchetDecryptHE``. Raises :class:`DecryptError`; then nothing changed."""
        message = bytes(message)
        if len(message) < RATCHET_OVERHEAD:
            raise DecryptError("shorter than a ratchet message")
        enc_header, body = message[:ENC_HEADER_BYTES], message[ENC_HEADER_BYTES:]
        work = self.clone()
        plaintext = work._decrypt(enc_header, body, ad)
        for name in self.__slots__:
            setattr(self, name, getattr(work, name))
        return plaintext

    def _decrypt(self, enc_header: bytes, body: bytes, ad: bytes) -> bytes:
        skipped = self._try_skipped(enc_header, body, ad)
        if skipped is not None:
            return skipped
        header, new_chain = self._decrypt_header(enc_header, ad)
        if new_chain:
            if self.cks is None and self.dhr is not None:
                raise DecryptError("a new chain before our reply to the last one")
            self._skip(header.pn)
            self._dh_ratchet(header.dh)
        elif header.n < self.nr:
            raise DecryptError("a replayed or already skipped message")
        self._skip(header.n)
        assert self.ckr is not None  # set by _dh_ratchet or an earlier one
        self.ckr, mk = kdf_ck(self.ckr)
        self.nr += 1
        return _open_body(mk, body, ad + enc_header)

    def _try_skipped(self, enc_header: bytes, body: bytes, ad: bytes) -> bytes | None:
        for hk in dict.fromkeys(hk for hk, _ in self.skipped):
            header = _open_header(hk, enc_header, ad)
            if header is None:
                continue
            mk = self.skipped.pop((hk, header.n), None)
            if mk is None:
                return None  # the current chain's header key, or a replay
            return _open_body(mk, body, ad + enc_header)
        return None

    def _decrypt_header(self, enc_header: bytes, ad: bytes) -> tuple[Header, bool]:
        if self.hkr is not None and (header := _open_header(self.hkr, enc_header, ad)):
            return header, False
        if header := _open_header(self.nhkr, enc_header, ad):
            return header, True
        raise DecryptError("no header key opens the header")

    def _skip(self, until: int) -> None:
        if until > self.nr + MAX_SKIP:
            raise DecryptError(f"skips more than {MAX_SKIP} messages")
        if self.ckr is None or self.hkr is None:
            return
        while self.nr < until:
            self.ckr, mk = kdf_ck(self.ckr)
            self.skipped[(self.hkr, self.nr)] = mk
            self.nr += 1
        while len(self.skipped) > MAX_STORED_SKIPPED:
            del self.skipped[next(iter(self.skipped))]  # the oldest

    def _dh_ratchet(self, remote: bytes) -> None:
        """The receiving half of ``DHRatchetHE`` (the sending half waits for encrypt)."""
        self.pn, self.ns, self.nr = self.ns, 0, 0
        self.hks, self.hkr = self.nhks, self.nhkr
        self.dhr = remote
        self.rk, self.ckr, self.nhkr = kdf_rk(self.rk, dh(self.dhs, remote))
        self.cks = None

    # --- persistence -----------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The whole state, for the session store (it holds secrets: store it privately)."""
        present = [getattr(self, name) for name in _OPTIONAL]
        flags = sum(1 << i for i, v in enumerate(present) if v is not None)
        out = bytearray([_STATE_VERSION, flags])
        out += self.dhs + self.rk + self.nhks + self.nhkr
        out += b"".join(v for v in present if v is not None)
        out += struct.pack(">III", self.ns, self.nr, self.pn)
        out += len(self.skipped).to_bytes(2, "big")
        for (hk, n), mk in self.skipped.items():
            out += hk + n.to_bytes(4, "big") + mk
        out += len(self.extra).to_bytes(2, "big") + self.extra
        archived = self.previous.to_bytes() if self.previous is not None else b""
        out += len(archived).to_bytes(4, "big") + archived
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetState:
        """Inverse of :meth:`to_bytes`. Raises :class:`CorruptState`."""
        r = Reader(data, CorruptState)
        if r.uint(1) != _STATE_VERSION:
            raise CorruptState("unknown ratchet state version")
        flags = r.uint(1)
        state = cls(r.take(32), r.take(32), r.take(32), r.take(32))
        for i, name in enumerate(_OPTIONAL):
            setattr(state, name, r.take(32) if flags >> i & 1 else None)
        state.ns, state.nr, state.pn = r.uint(4), r.uint(4), r.uint(4)
        for _ in range(r.uint(2)):
            hk, n = r.take(32), r.uint(4)
            state.skipped[(hk, n)] = r.take(32)
        state.extra = r.take(r.uint(2))
        if archived := r.take(r.uint(4)):
            state.previous = cls.from_bytes(archived)
            if state.previous.previous is not None:
                raise CorruptState("an archived state with its own archive")
        r.finish()
        if flags >> len(_OPTIONAL) or len(state.skipped) > MAX_STORED_SKIPPED:
            raise CorruptState("bad ratchet state")
        return state


def _open_header(hk: bytes, enc_header: bytes, ad: bytes) -> Header | None:
    plain = open_x(hk, enc_header, ad)
    if plain is None or len(plain) != HEADER_BYTES:
        return None
    return Header(*_HEADER.unpack(plain))


def _open_body(mk: bytes, body: bytes, ad: bytes) -> bytes:
    plaintext = open_once(mk, body, ad)
    if plaintext is None:
        raise DecryptError("the message does not authenticate")
    return plaintext
