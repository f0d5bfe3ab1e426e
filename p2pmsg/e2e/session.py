"""The end-to-end session facade: X3DH start, then the Double Ratchet.

Theory of operation
-------------------
:func:`encrypt` and :func:`decrypt` take the session state (or ``None``) and
return the next one; the caller's objects are never changed, so a caller
stores what comes back only once the message has been handed on (or, for
:func:`decrypt`, accepted). Every failure on received bytes raises a
:class:`RemoteProtocolError` subclass and leaves everything as it was.

Starting (Signal's X3DH, with the X25519 image of the Ed25519 identity as
``IK``). The sender verifies the bundle's signed prekey, makes an ephemeral
key ``EK`` and, if the bundle has one-time keys, picks one at random::

    DH1 = DH(IK_A, SPK_B)  DH2 = DH(EK_A, IK_B)  DH3 = DH(EK_A, SPK_B)
    DH4 = DH(EK_A, OPK_B)  (only with a one-time key)
    SK || HKA || NHKB = HKDF(salt=0, 0xFF*32 || DH1 || DH2 || DH3 [|| DH4],
                             "p2pmsg e2e x3dh v1", 96)

``SK`` seeds the ratchet, whose first ratchet key on Bob's side is the signed
prekey, and ``HKA``/``NHKB`` are the specification's shared header keys.

Wire format, version 1::

    NORMAL:  version u8 | kind=2 u8 | ratchet message
    INITIAL: version u8 | kind=1 u8 | EK 32 | spk_id u32 | opk_id u32 (0: none)
             | ratchet message

The initiator sends INITIAL messages (the X3DH header repeated) until the
first reply decrypts, as Signal does, so a lost first message does not
break the session. The associated data of every message is
:data:`AD_CONTEXT` || sender's Ed25519 key || recipient's Ed25519 key ||
the message's own version, kind and X3DH header.

Two sessions at once. A peer may start a new session while we hold one (it
lost its state, or both sides started at the same moment). The state keeps
the previous session as ``RatchetState.previous`` (one level): a message
that the current session cannot open is tried on the previous one, and if
it opens there that session becomes current again. An INITIAL message for
the current or previous responder session (same ``EK``) is just its next
message; any other INITIAL message builds a new responder session from our
prekeys (see :mod:`p2pmsg.e2e.prekeys` for the one-time key policy and the
refusal of replays), which becomes current, the old current becoming
previous. So two peers that start at once each hold both sessions, every
message opens, and both settle on the session the other last used.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Final

from p2pmsg.e2e.prekeys import PrekeyBundle, PrekeySecrets, verify_bundle
from p2pmsg.e2e.primitives import (
    KEY_BYTES,
    DecryptError,
    ForgedPrekey,
    MalformedBundle,
    NoSession,
    dh,
    hkdf,
    keypair,
)
from p2pmsg.e2e.ratchet import RATCHET_OVERHEAD, RatchetState
from p2pmsg.keys import Identity, PublicIdentity

VERSION: Final = 1
AD_CONTEXT: Final = b"p2pmsg e2e v1\0"
_X3DH_INFO: Final = b"p2pmsg e2e x3dh v1"
_X3DH_HEADER: Final = struct.Struct(">32sII")
X3DH_HEADER_BYTES: Final = _X3DH_HEADER.size
NORMAL_OVERHEAD: Final = 2 + RATCHET_OVERHEAD
INITIAL_OVERHEAD: Final = NORMAL_OVERHEAD + X3DH_HEADER_BYTES
MAX_MESSAGE_BYTES: Final = 65536
_INITIATOR: Final = 1
_RESPONDER: Final = 2

Rng = Callable[[int], bytes]


class Kind(IntEnum):
    INITIAL = 1
    NORMAL = 2


def _x3dh_keys(dhs: list[bytes]) -> tuple[bytes, bytes, bytes]:
    out = hkdf(b"", b"\xff" * 32 + b"".join(dhs), _X3DH_INFO, 3 * KEY_BYTES)
    return out[:32], out[32:64], out[64:]


def _ad(sender: bytes, recipient: bytes, prefix: bytes) -> bytes:
    return AD_CONTEXT + sender + recipient + prefix


def start_session(me: Identity, peer_bundle: PrekeyBundle, rng: Rng) -> tuple[RatchetState, bytes]:
    """The initiator's X3DH: (state, the X3DH header its INITIAL messages carry).

    Raises :class:`ForgedPrekey` for a bad signature, :class:`MalformedBundle`
    for a low-order prekey.
    """
    verify_bundle(peer_bundle, peer_bundle.identity)
    peer = PublicIdentity(peer_bundle.identity)
    spk = peer_bundle.signed_prekey
    ek, ek_pub = keypair(rng(KEY_BYTES))
    otk_id, dhs = 0, []
    try:
        dhs = [dh(me.x25519_private, spk), dh(ek, peer.x25519), dh(ek, spk)]
        if peer_bundle.one_time:
            index = int.from_bytes(rng(4), "big") % len(peer_bundle.one_time)
            otk_id, otk = peer_bundle.one_time[index]
            dhs.append(dh(ek, otk))
        sk, hka, nhkb = _x3dh_keys(dhs)
        state = RatchetState.init_initiator(sk, spk, shared_hka=hka, shared_nhkb=nhkb, rng=rng)
    except DecryptError as exc:
        raise MalformedBundle("a prekey is a low-order point") from exc
    header = _X3DH_HEADER.pack(ek_pub, peer_bundle.signed_prekey_id, otk_id)
    state.extra = bytes([_INITIATOR]) + header
    return state, header


def encrypt(  # noqa: PLR0917 - the integrator codes against this signature
    me: Identity,
    peer: PublicIdentity,
    state: RatchetState | None,
    bundle: PrekeyBundle | None,
    plaintext: bytes,
    rng: Rng,
    *,
    restart: bool = False,
) -> tuple[RatchetState, bytes]:
    """Encrypt ``plaintext`` to ``peer``: (new state, E2E message).

    With ``state`` None, or ``restart``, a new session is started from
    ``bundle`` (raises :class:`NoSession` without one, :class:`ForgedPrekey`
    if it is not ``peer``'s); a restarted session keeps the one it replaces
    as ``previous``, so the peer's messages in flight still open.
    """
    if state is None or restart:
        if bundle is None:
            raise NoSession("no session and no prekey bundle")
        if bundle.identity != peer.key:
            raise ForgedPrekey("the bundle belongs to another identity")
        fresh, _ = start_session(me, bundle, rng)
        fresh.previous = _archived(state)
        state = fresh
    else:
        state = state.clone()
    if state.extra[:1] == bytes([_INITIATOR]) and not state.has_received:
        prefix = bytes([VERSION, Kind.INITIAL]) + state.extra[1:]
    else:
        prefix = bytes([VERSION, Kind.NORMAL])
    ad = _ad(me.public.key, peer.key, prefix)
    return state, prefix + state.encrypt(plaintext, ad, rng)


def decrypt(
    me: Identity,
    prekeys: PrekeySecrets,
    peer: PublicIdentity,
    state: RatchetState | None,
    message: bytes,
) -> tuple[RatchetState, PrekeySecrets, bytes]:
    """Decrypt an E2E message from ``peer``: (new state, new prekey secrets, plaintext).

    Raises :class:`DecryptError` (:class:`UnknownPrekey` for an initial
    message naming a prekey we no longer hold), a :class:`RemoteProtocolError`;
    the arguments are never changed.
    """
    message = bytes(message)
    if len(message) > MAX_MESSAGE_BYTES or len(message) < 2:
        raise DecryptError("not an E2E message")
    if message[0] != VERSION:
        raise DecryptError(f"unknown E2E version {message[0]}")
    if message[1] == Kind.NORMAL:
        if state is None:
            raise DecryptError("no session with this peer")
        ad = _ad(peer.key, me.public.key, message[:2])
        work, plaintext = _decrypt_in(state, message[2:], ad)
        return work, prekeys, plaintext
    if message[1] != Kind.INITIAL or len(message) < INITIAL_OVERHEAD:
        raise DecryptError("unknown kind or truncated")
    return _decrypt_initial(me, prekeys, peer, state, message)


def _decrypt_in(state: RatchetState, body: bytes, ad: bytes) -> tuple[RatchetState, bytes]:
    """Open with the current session, else the previous one (which then becomes current)."""
    work, previous = state.clone(), state.previous
    try:
        return work, work.decrypt(body, ad)
    except DecryptError:
        if previous is None:
            raise
    promoted = previous.clone()
    plaintext = promoted.decrypt(body, ad)
    promoted.previous = _archived(state)
    return promoted, plaintext


def _archived(state: RatchetState | None) -> RatchetState | None:
    if state is None:
        return None
    archived = state.clone()
    archived.previous = None
    return archived


def _decrypt_initial(
    me: Identity,
    prekeys: PrekeySecrets,
    peer: PublicIdentity,
    state: RatchetState | None,
    message: bytes,
) -> tuple[RatchetState, PrekeySecrets, bytes]:
    cut = 2 + X3DH_HEADER_BYTES
    header, body = message[2:cut], message[cut:]
    ad = _ad(peer.key, me.public.key, message[:cut])
    known = bytes([_RESPONDER]) + header
    if state is not None and known in {s.extra for s in (state, state.previous) if s}:
        work, plaintext = _decrypt_in(state, body, ad)
        return work, prekeys, plaintext
    base_key, spk_id, otk_id = _X3DH_HEADER.unpack(header)
    secrets = prekeys.copy()
    spk, otk = secrets.secrets_for(spk_id, otk_id, base_key)
    dhs = [dh(spk, peer.x25519), dh(me.x25519_private, base_key), dh(spk, base_key)]
    if otk is not None:
        dhs.append(dh(otk, base_key))
    sk, hka, nhkb = _x3dh_keys(dhs)
    fresh = RatchetState.init_responder(sk, keypair(spk), shared_hka=hka, shared_nhkb=nhkb)
    fresh.extra = known
    plaintext = fresh.decrypt(body, ad)
    secrets.mark_used(spk_id, otk_id, base_key)
    fresh.previous = _archived(state)
    return fresh, secrets, plaintext
