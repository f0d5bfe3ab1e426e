"""Sealed sender: only the recipient learns the sender, and cannot be lied to about it."""

from __future__ import annotations

import pytest
from e2ehelpers import ALICE, BOB, CAROL, established, seeded_rng
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmsg.e2e import sealed, session
from p2pmsg.e2e.primitives import KEY_BYTES, SealError, keypair, seal_once
from p2pmsg.e2e.sealed import SEAL_OVERHEAD, seal, unseal


def test_round_trip_and_exact_overhead() -> None:
    rng = seeded_rng("seal")
    for inner in (b"", b"x", bytes(range(256)) * 6):
        envelope = seal(ALICE, BOB.public, inner, rng)
        assert len(envelope) == len(inner) + SEAL_OVERHEAD
        sender, opened = unseal(BOB, envelope)
        assert sender == ALICE.public
        assert opened == inner


def test_the_envelope_names_no_sender_and_never_repeats() -> None:
    rng = seeded_rng("anon")
    one = seal(ALICE, BOB.public, b"same", rng)
    two = seal(ALICE, BOB.public, b"same", rng)
    assert len({one[:33], two[:33]}) == 2 and one[33:] != two[33:]
    for secret in (ALICE.public.key, ALICE.public.x25519, ALICE.node_id):
        assert secret not in one and secret[:8] not in one
    # nor does it name the recipient, beyond what a relay already knows
    assert BOB.public.key not in one and BOB.public.x25519 not in one


def test_only_the_recipient_opens_it() -> None:
    envelope = seal(ALICE, BOB.public, b"for bob", seeded_rng("x"))
    with pytest.raises(SealError):
        unseal(CAROL, envelope)
    with pytest.raises(SealError):
        unseal(ALICE, envelope)


@pytest.mark.parametrize("where", [0, 1, 32, 33, 80, 81, -1])
def test_every_part_is_authenticated(where: int) -> None:
    envelope = bytearray(seal(ALICE, BOB.public, b"payload", seeded_rng("t")))
    envelope[where] ^= 0x01
    with pytest.raises(SealError):
        unseal(BOB, bytes(envelope))


def test_a_forger_cannot_claim_another_sender() -> None:
    """Carol builds an envelope the way seal does, but names Alice as the sender."""
    rng = seeded_rng("forge")
    e, e_pub = keypair(rng(KEY_BYTES))
    head = bytes([sealed.VERSION]) + e_pub
    ck1, k1 = sealed._layer_one(sealed.dh(e, BOB.public.x25519), BOB.public.x25519, e_pub)
    enc_sender = seal_once(k1, ALICE.public.key, head)  # claims Alice...
    static = sealed.dh(CAROL.x25519_private, BOB.public.x25519)  # ...knowing only Carol's key
    k2 = sealed._layer_two(ck1, static, enc_sender)
    forged = head + enc_sender + seal_once(k2, b"trust me", head + enc_sender)
    with pytest.raises(SealError, match="not authenticated"):
        unseal(BOB, forged)


def test_structural_garbage_is_refused() -> None:
    envelope = seal(ALICE, BOB.public, b"x", seeded_rng("g"))
    for bad in (
        b"",
        envelope[: SEAL_OVERHEAD - 1],
        b"\x02" + envelope[1:],
        b"\x01" + bytes(32) + envelope[33:],  # a low-order ephemeral key
        bytes(sealed.MAX_ENVELOPE_BYTES + 1),
    ):
        with pytest.raises(SealError):
            unseal(BOB, bad)


def test_a_sender_key_that_is_not_a_point_is_refused() -> None:
    rng = seeded_rng("notapoint")
    e, e_pub = keypair(rng(KEY_BYTES))
    head = bytes([sealed.VERSION]) + e_pub
    _, k1 = sealed._layer_one(sealed.dh(e, BOB.public.x25519), BOB.public.x25519, e_pub)
    bogus = bytes([2]) + bytes(31)
    envelope = head + seal_once(k1, bogus, head) + bytes(16)
    with pytest.raises(SealError, match="not valid"):
        unseal(BOB, envelope)


def test_an_oversized_inner_message_is_a_local_error() -> None:
    with pytest.raises(ValueError, match="too long"):
        seal(ALICE, BOB.public, bytes(sealed.MAX_ENVELOPE_BYTES), seeded_rng("big"))


def test_a_sealed_e2e_message_fits_an_onion_payload() -> None:
    """The budget the integrator has: ~1.5 KB of payload per onion packet."""
    a, _, _, _, rng = established()
    text = bytes(1500 - SEAL_OVERHEAD - session.INITIAL_OVERHEAD)
    _, message = session.encrypt(ALICE, BOB.public, a, None, text, rng)
    assert len(seal(ALICE, BOB.public, message, rng)) <= 1500
    assert SEAL_OVERHEAD + session.INITIAL_OVERHEAD <= 240


@given(st.binary(max_size=300))
@settings(max_examples=100, deadline=None)
def test_unseal_raises_only_seal_errors(data: bytes) -> None:
    try:
        sender, _ = unseal(BOB, data)
    except SealError:
        return
    assert isinstance(sender.key, bytes)  # pragma: no cover - needs a forgery
