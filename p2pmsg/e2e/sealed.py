"""Sealed sender: an envelope whose sender only the recipient learns.

Theory of operation
-------------------
Modelled on Signal's sealed sender v1, without a server certificate (the
inner E2E message already binds both identity keys in its associated data).
The sender makes an ephemeral X25519 key ``e`` and uses the recipient's
identity X25519 key ``R`` (the image of its Ed25519 key)::

    ck1 || k1 = HKDF(salt="p2pmsg sealed v1 eph", DH(e, R), info=R || e_pub, 64)
    enc_sender = AEAD(k1, sender's Ed25519 key, ad=version || e_pub)
    k2 = HKDF(salt=ck1, DH(S, R), info="p2pmsg sealed v1 static" || enc_sender, 32)
    enc_inner = AEAD(k2, inner, ad=version || e_pub || enc_sender)

    envelope = version u8 | e_pub 32 | enc_sender 48 | enc_inner (len + 16)

A relay or mailbox holder sees a random-looking key and ciphertexts: nothing
names the sender. Only the holder of ``R``'s secret opens ``enc_sender``; the
second layer needs ``DH(S, R)``, which only the sender and the recipient can
compute, so the recipient knows the sender is who ``enc_sender`` claims (a
forger without ``S``'s secret cannot make ``k2``). As in Signal, the proof
convinces the recipient only (it is deniable towards third parties), and a
thief of the recipient's key could forge envelopes to that recipient.
Both keys are fresh per envelope (``e`` is), so the AEAD (ChaCha20-Poly1305
IETF) uses a zero nonce. The envelope does not hide the inner length: pad
the inner message if lengths matter.

Pure: the ephemeral key comes from ``rng``; every failure to open raises
:class:`SealError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from p2pmsg.e2e.primitives import (
    KEY_BYTES,
    TAG_BYTES,
    DecryptError,
    SealError,
    dh,
    hkdf,
    keypair,
    open_once,
    seal_once,
)
from p2pmsg.errors import BadKey
from p2pmsg.keys import Identity, PublicIdentity

VERSION: Final = 1
_EPH_SALT: Final = b"p2pmsg sealed v1 eph"
_STATIC_INFO: Final = b"p2pmsg sealed v1 static"
_SENDER_END: Final = 1 + KEY_BYTES + KEY_BYTES + TAG_BYTES
SEAL_OVERHEAD: Final = _SENDER_END + TAG_BYTES
"""Bytes :func:`seal` adds to the inner message."""
MAX_ENVELOPE_BYTES: Final = 65536 + SEAL_OVERHEAD


def _layer_one(shared: bytes, recipient_x: bytes, e_pub: bytes) -> tuple[bytes, bytes]:
    out = hkdf(_EPH_SALT, shared, recipient_x + e_pub, 2 * KEY_BYTES)
    return out[:KEY_BYTES], out[KEY_BYTES:]


def _layer_two(ck1: bytes, shared: bytes, enc_sender: bytes) -> bytes:
    return hkdf(ck1, shared, _STATIC_INFO + enc_sender, KEY_BYTES)


def seal(
    me: Identity, recipient: PublicIdentity, inner: bytes, rng: Callable[[int], bytes]
) -> bytes:
    """Seal ``inner`` from ``me`` to ``recipient`` (adds :data:`SEAL_OVERHEAD` bytes).

    Raises ``ValueError`` if ``inner`` is longer than the envelope allows.
    """
    if len(inner) + SEAL_OVERHEAD > MAX_ENVELOPE_BYTES:
        raise ValueError("the inner message is too long to seal")
    e, e_pub = keypair(rng(KEY_BYTES))
    head = bytes([VERSION]) + e_pub
    try:
        ck1, k1 = _layer_one(dh(e, recipient.x25519), recipient.x25519, e_pub)
        static = dh(me.x25519_private, recipient.x25519)
    except DecryptError as exc:  # only a low-order recipient key; PublicIdentity rules it out
        raise ValueError("the recipient's key cannot receive") from exc
    enc_sender = seal_once(k1, me.public.key, head)
    k2 = _layer_two(ck1, static, enc_sender)
    return head + enc_sender + seal_once(k2, inner, head + enc_sender)


def unseal(me: Identity, envelope: bytes) -> tuple[PublicIdentity, bytes]:
    """Open an envelope addressed to ``me``: (sender, inner). Raises :class:`SealError`."""
    envelope = bytes(envelope)
    if not SEAL_OVERHEAD <= len(envelope) <= MAX_ENVELOPE_BYTES:
        raise SealError("not a sealed envelope")
    if envelope[0] != VERSION:
        raise SealError(f"unknown envelope version {envelope[0]}")
    head, e_pub = envelope[: 1 + KEY_BYTES], envelope[1 : 1 + KEY_BYTES]
    enc_sender = envelope[len(head) : _SENDER_END]
    try:
        ck1, k1 = _layer_one(dh(me.x25519_private, e_pub), me.public.x25519, e_pub)
    except DecryptError as exc:
        raise SealError("low-order ephemeral key") from exc
    sender_key = open_once(k1, enc_sender, head)
    if sender_key is None:
        raise SealError("not addressed to us, or damaged")
    try:
        sender = PublicIdentity(sender_key)
        static = dh(me.x25519_private, sender.x25519)
    except (BadKey, DecryptError) as exc:
        raise SealError("the sender's key is not valid") from exc
    inner = open_once(
        _layer_two(ck1, static, enc_sender), envelope[_SENDER_END:], head + enc_sender
    )
    if inner is None:
        raise SealError("the sender's identity is not authenticated")
    return sender, inner
