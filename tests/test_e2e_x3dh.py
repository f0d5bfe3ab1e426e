"""Prekey bundles, the X3DH-style start and the session facade.

Pure functions in, states and bytes out: bundles round-trip and refuse
forgeries, initial messages repeat the X3DH header until the first reply,
the one-time prekey policy of :mod:`p2pmsg.e2e.prekeys` holds (racing
senders get through, a forgotten key is refused loudly), and a failed
decrypt never changes the caller's objects.
"""

from __future__ import annotations

import dataclasses

import pytest
from e2ehelpers import ALICE, BOB, CAROL, Rng, established, seeded_rng
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from p2pmsg.e2e import session
from p2pmsg.e2e.prekeys import (
    MAX_BUNDLE_BYTES,
    MAX_ONE_TIME,
    PrekeyBundle,
    PrekeySecrets,
    decode_bundle,
    encode_bundle,
    signed_message,
    verify_bundle,
)
from p2pmsg.e2e.primitives import (
    CorruptState,
    ForgedPrekey,
    MalformedBundle,
    NoSession,
    ReplayedStart,
    UnknownPrekey,
)
from p2pmsg.e2e.ratchet import RatchetState
from p2pmsg.e2e.session import INITIAL_OVERHEAD, NORMAL_OVERHEAD, Kind
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity


def bob_keys(rng: Rng, one_time: int = 4) -> PrekeySecrets:
    return PrekeySecrets.generate(BOB, rng, one_time=one_time)


def receive(
    me: Identity, secrets: PrekeySecrets, peer: Identity, state: RatchetState | None, m: bytes
) -> tuple[RatchetState, PrekeySecrets, bytes]:
    """session.decrypt, checking that a success leaves the arguments unchanged too."""
    before = (secrets.to_bytes(), state.to_bytes() if state else None)
    result = session.decrypt(me, secrets, peer.public, state, m)
    assert (secrets.to_bytes(), state.to_bytes() if state else None) == before
    return result


def refused(
    me: Identity, secrets: PrekeySecrets, peer: Identity, state: RatchetState | None, m: bytes
) -> RemoteProtocolError:
    before = (secrets.to_bytes(), state.to_bytes() if state else None)
    with pytest.raises(RemoteProtocolError) as info:
        session.decrypt(me, secrets, peer.public, state, m)
    assert (secrets.to_bytes(), state.to_bytes() if state else None) == before
    return info.value


# --- bundles -------------------------------------------------------------------


def test_a_full_bundle_round_trips_and_fits_a_dht_record() -> None:
    secrets = PrekeySecrets.generate(BOB, seeded_rng("b"), one_time=MAX_ONE_TIME)
    bundle = secrets.bundle(BOB)
    data = encode_bundle(bundle)
    assert len(data) == MAX_BUNDLE_BYTES <= 4096
    assert decode_bundle(data) == bundle
    verify_bundle(decode_bundle(data), BOB.public.key)


def test_forged_bundles_are_refused() -> None:
    bundle = bob_keys(seeded_rng("b")).bundle(BOB)
    with pytest.raises(ForgedPrekey):
        verify_bundle(bundle, ALICE.public.key)
    other_prekey = dataclasses.replace(bundle, signed_prekey=bytes(32))
    forged_sig = dataclasses.replace(bundle, signature=bytes(64))
    renumbered = dataclasses.replace(bundle, signed_prekey_id=bundle.signed_prekey_id + 1)
    for forged in (other_prekey, forged_sig, renumbered):
        with pytest.raises(ForgedPrekey):
            verify_bundle(forged, BOB.public.key)
        with pytest.raises(ForgedPrekey):
            session.start_session(ALICE, forged, seeded_rng("a"))
        with pytest.raises(ForgedPrekey):
            session.encrypt(ALICE, BOB.public, None, forged, b"x", seeded_rng("a"))
    # Carol re-signs Bob's prekey: a valid bundle, but not Bob's
    carols = PrekeySecrets.generate(CAROL, seeded_rng("c")).bundle(CAROL)
    with pytest.raises(ForgedPrekey):
        session.encrypt(ALICE, BOB.public, None, carols, b"x", seeded_rng("a"))


def test_a_bundle_whose_identity_is_not_a_key_is_forged() -> None:
    bundle = bob_keys(seeded_rng("b")).bundle(BOB)
    bad = dataclasses.replace(bundle, identity=bytes([2]) + bytes(31))
    with pytest.raises(ForgedPrekey):
        verify_bundle(bad, bad.identity)


def _tampered_bundles() -> dict[str, bytes]:
    data = encode_bundle(bob_keys(seeded_rng("b"), one_time=2).bundle(BOB))
    spk_id_at, count_at = 33, 1 + 32 + 4 + 32 + 64
    first_id_at = count_at + 1
    return {
        "empty": b"",
        "truncated": data[:-1],
        "trailing": data + b"\x00",
        "version": b"\x02" + data[1:],
        "spk_id_zero": data[:spk_id_at] + bytes(4) + data[spk_id_at + 4 :],
        "one_time_id_zero": data[:first_id_at] + bytes(4) + data[first_id_at + 4 :],
        "too_many": data[:count_at] + bytes([MAX_ONE_TIME + 1]) + data[count_at + 1 :],
        "unsorted": data[:first_id_at] + data[first_id_at + 36 :] + data[first_id_at:][:36],
        "too_long": data + bytes(MAX_BUNDLE_BYTES),
    }


@pytest.mark.parametrize(("name", "data"), list(_tampered_bundles().items()))
def test_malformed_bundles_are_refused(name: str, data: bytes) -> None:
    with pytest.raises(MalformedBundle):
        decode_bundle(data)


@given(st.binary(max_size=600))
@settings(max_examples=100, deadline=None)
def test_decode_bundle_raises_only_malformed_bundle(data: bytes) -> None:
    try:
        bundle = decode_bundle(data)
    except MalformedBundle:
        return
    assert encode_bundle(bundle) == data


def test_bundle_shape_is_checked_on_construction() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PrekeyBundle(bytes(31), 1, bytes(32), bytes(64), ())


# --- starting sessions ---------------------------------------------------------


def test_initial_messages_until_the_first_reply_then_normal() -> None:
    rng = seeded_rng("start")
    secrets = bob_keys(rng)
    a, m1 = session.encrypt(ALICE, BOB.public, None, secrets.bundle(BOB), b"one", rng)
    a, m2 = session.encrypt(ALICE, BOB.public, a, None, b"two", rng)
    assert m1[1] == m2[1] == Kind.INITIAL
    assert len(m1) == 3 + INITIAL_OVERHEAD and m1[2:42] == m2[2:42]
    # the first message is lost: the second one still starts the session
    b, secrets, text = receive(BOB, secrets, ALICE, None, m2)
    assert text == b"two"
    b, secrets, text = receive(BOB, secrets, ALICE, b, m1)  # late, same session
    assert text == b"one"
    b, reply = session.encrypt(BOB, ALICE.public, b, None, b"reply", rng)
    assert reply[1] == Kind.NORMAL and len(reply) == 5 + NORMAL_OVERHEAD
    a, _, text = receive(ALICE, PrekeySecrets.generate(ALICE, rng), BOB, a, reply)
    a, m3 = session.encrypt(ALICE, BOB.public, a, None, b"three", rng)
    assert m3[1] == Kind.NORMAL
    assert receive(BOB, secrets, ALICE, b, m3)[2] == b"three"


def test_no_session_and_no_bundle() -> None:
    with pytest.raises(NoSession):
        session.encrypt(ALICE, BOB.public, None, None, b"x", seeded_rng("a"))
    with pytest.raises(ValueError, match="no session"):
        session.encrypt(ALICE, BOB.public, None, None, b"x", seeded_rng("a"))


def test_a_bundle_without_one_time_keys_still_starts_a_session() -> None:
    rng = seeded_rng("no-otk")
    secrets = bob_keys(rng, one_time=0)
    _, m = session.encrypt(ALICE, BOB.public, None, secrets.bundle(BOB), b"hi", rng)
    assert m[2 + 36 : 2 + 40] == bytes(4)
    assert receive(BOB, secrets, ALICE, None, m)[2] == b"hi"


def test_the_associated_data_binds_both_identities() -> None:
    rng = seeded_rng("ad")
    secrets = bob_keys(rng)
    _, m = session.encrypt(ALICE, BOB.public, None, secrets.bundle(BOB), b"hi", rng)
    refused(BOB, secrets, CAROL, None, m)  # Carol cannot claim Alice's message
    refused(CAROL, PrekeySecrets.generate(CAROL, rng), ALICE, None, m)
    a, b, _, bob_pk, rng = established()
    _, normal = session.encrypt(ALICE, BOB.public, a, None, b"n", rng)
    refused(BOB, bob_pk, CAROL, b, normal)


def test_used_one_time_key_leaves_the_bundle_but_a_racing_sender_gets_through() -> None:
    rng = seeded_rng("race")
    secrets = bob_keys(rng, one_time=1)
    bundle = secrets.bundle(BOB)
    _, from_alice = session.encrypt(ALICE, BOB.public, None, bundle, b"alice", rng)
    _, from_carol = session.encrypt(CAROL, BOB.public, None, bundle, b"carol", rng)
    assert from_alice[38:42] == from_carol[38:42] != bytes(4)  # the same one-time key
    _, secrets, _ = receive(BOB, secrets, ALICE, None, from_alice)
    assert secrets.bundle(BOB).one_time == ()
    _, secrets, text = receive(BOB, secrets, CAROL, None, from_carol)
    assert text == b"carol"
    secrets.replenish(rng, 1)  # the next bundle is published without the used key...
    _, late = session.encrypt(CAROL, BOB.public, None, bundle, b"late", rng)
    assert receive(BOB, secrets, CAROL, None, late)[2] == b"late"
    secrets.replenish(rng, 1)  # ...and a republish period later its secret is gone
    assert len(secrets.one_time) == 1
    _, too_late = session.encrypt(CAROL, BOB.public, None, bundle, b"too late", rng)
    assert isinstance(refused(BOB, secrets, CAROL, None, too_late), UnknownPrekey)


def test_the_previous_signed_prekey_works_for_one_rotation() -> None:
    rng = seeded_rng("rotate")
    secrets = bob_keys(rng, one_time=0)
    old_bundle = secrets.bundle(BOB)
    secrets.rotate_signed(BOB, rng)
    new_bundle = secrets.bundle(BOB)
    assert new_bundle.signed_prekey_id == old_bundle.signed_prekey_id + 1
    verify_bundle(new_bundle, BOB.public.key)
    _, m = session.encrypt(ALICE, BOB.public, None, old_bundle, b"in flight", rng)
    assert receive(BOB, secrets, ALICE, None, m)[2] == b"in flight"
    secrets.rotate_signed(BOB, rng)
    _, m = session.encrypt(ALICE, BOB.public, None, old_bundle, b"stale", rng)
    assert isinstance(refused(BOB, secrets, ALICE, None, m), UnknownPrekey)


def test_a_replayed_initial_message_does_not_start_a_second_session() -> None:
    rng = seeded_rng("replay")
    secrets = bob_keys(rng)
    a, m = session.encrypt(ALICE, BOB.public, None, secrets.bundle(BOB), b"hi", rng)
    b, secrets, _ = receive(BOB, secrets, ALICE, None, m)
    refused(BOB, secrets, ALICE, b, m)  # the ratchet refuses it
    refused(BOB, secrets, ALICE, None, m)  # with the session gone: the seen base key
    b, reply = session.encrypt(BOB, ALICE.public, b, None, b"r", rng)
    a, _, _ = receive(ALICE, PrekeySecrets.generate(ALICE, rng), BOB, a, reply)
    # Alice starts over (lost her state): Bob's session is replaced, the replay still refused
    fresh, m2 = session.encrypt(ALICE, BOB.public, None, secrets.bundle(BOB), b"again", rng)
    b, secrets, text = receive(BOB, secrets, ALICE, b, m2)
    assert text == b"again"
    refused(BOB, secrets, ALICE, b, m)
    b, reply = session.encrypt(BOB, ALICE.public, b, None, b"welcome back", rng)
    assert receive(ALICE, PrekeySecrets.generate(ALICE, rng), BOB, fresh, reply)[2] == (
        b"welcome back"
    )


def test_a_restart_keeps_the_replaced_session_for_messages_in_flight() -> None:
    rng = seeded_rng("restart")
    a, b, _, bob_pk, _ = established()
    b, late = session.encrypt(BOB, ALICE.public, b, None, b"in flight", rng)
    with pytest.raises(NoSession):
        session.encrypt(ALICE, BOB.public, a, None, b"x", rng, restart=True)
    a2, start = session.encrypt(
        ALICE, BOB.public, a, bob_pk.bundle(BOB), b"anew", rng, restart=True
    )
    assert start[1] == Kind.INITIAL
    assert receive(ALICE, PrekeySecrets.generate(ALICE, rng), BOB, a2, late)[2] == b"in flight"
    assert receive(BOB, bob_pk, ALICE, b, start)[2] == b"anew"


def test_starts_of_three_sessions_out_of_order_refuse_the_oldest_as_a_replay() -> None:
    """Bob holds one session besides the current: a start whose session fell
    out of both is refused as a replay (ReplayedStart), which is what the node
    answers with a request for a new session (onion_frames.Unreadable)."""
    rng = seeded_rng("three starts")
    secrets = bob_keys(rng, one_time=0)
    starts = []
    for i in range(3):
        a, m = session.encrypt(ALICE, BOB.public, None, secrets.bundle(BOB), b"s%d" % i, rng)
        _, again = session.encrypt(ALICE, BOB.public, a, None, b"t%d" % i, rng)
        starts.append((m, again))
    b = None
    for first, _ in starts:
        b, secrets, _text = receive(BOB, secrets, ALICE, b, first)
    assert receive(BOB, secrets, ALICE, b, starts[1][1])[2] == b"t1"  # the previous session
    assert isinstance(refused(BOB, secrets, ALICE, b, starts[0][1]), ReplayedStart)


def test_sessions_started_by_both_sides_at_once_converge() -> None:
    rng = seeded_rng("simultaneous")
    keys = {ALICE: PrekeySecrets.generate(ALICE, rng), BOB: bob_keys(rng)}
    states: dict[Identity, RatchetState | None] = {}
    states[ALICE], a1 = session.encrypt(ALICE, BOB.public, None, keys[BOB].bundle(BOB), b"a1", rng)
    states[BOB], b1 = session.encrypt(
        BOB, ALICE.public, None, keys[ALICE].bundle(ALICE), b"b1", rng
    )

    def deliver(to: Identity, frm: Identity, m: bytes) -> bytes:
        states[to], keys[to], text = receive(to, keys[to], frm, states[to], m)
        return text

    def send(frm: Identity, to: Identity, text: bytes) -> bytes:
        states[frm], m = session.encrypt(frm, to.public, states[frm], None, text, rng)
        return m

    assert deliver(ALICE, BOB, b1) == b"b1"
    a2 = send(ALICE, BOB, b"a2")  # Alice now answers in Bob's session
    assert deliver(BOB, ALICE, a2) == b"a2"
    assert deliver(BOB, ALICE, a1) == b"a1"  # Alice's late start: both sessions kept
    for i in range(3):
        b_msg = send(BOB, ALICE, b"b%d" % i)
        a_msg = send(ALICE, BOB, b"a%d" % i)
        assert deliver(ALICE, BOB, b_msg) == b"b%d" % i
        assert deliver(BOB, ALICE, a_msg) == b"a%d" % i
    for _ in range(2):
        assert deliver(BOB, ALICE, send(ALICE, BOB, b"x")) == b"x"
        assert deliver(ALICE, BOB, send(BOB, ALICE, b"y")) == b"y"


@pytest.mark.parametrize(
    "message",
    [b"", b"\x01", b"\x02\x02" + bytes(200), b"\x01\x03" + bytes(200), b"\x01\x01" + bytes(100)],
)
def test_garbage_is_refused_without_changing_anything(message: bytes) -> None:
    _, b, _, bob_pk, _ = established()
    refused(BOB, bob_pk, ALICE, b, message)
    refused(BOB, bob_pk, ALICE, None, message)


def test_a_normal_message_without_a_session_is_refused() -> None:
    a, _, _, bob_pk, rng = established()
    _, normal = session.encrypt(ALICE, BOB.public, a, None, b"n", rng)
    refused(BOB, bob_pk, ALICE, None, normal)


def test_a_low_order_prekey_is_a_malformed_bundle() -> None:
    zero = bytes(32)  # X25519 of anything with it is all zeros
    signature = BOB.sign(signed_message(BOB.public.key, 1, zero))
    low_order = PrekeyBundle(BOB.public.key, 1, zero, signature, ())
    verify_bundle(low_order, BOB.public.key)  # properly signed...
    with pytest.raises(MalformedBundle):  # ...and still refused
        session.start_session(ALICE, low_order, seeded_rng("a"))


def test_prekey_secrets_round_trip_and_refuse_damage() -> None:
    rng = seeded_rng("secrets")
    secrets = bob_keys(rng)
    _, m = session.encrypt(ALICE, BOB.public, None, secrets.bundle(BOB), b"hi", rng)
    _, secrets, _ = receive(BOB, secrets, ALICE, None, m)
    secrets.rotate_signed(BOB, rng)
    copy = PrekeySecrets.from_bytes(secrets.to_bytes())
    assert copy.to_bytes() == secrets.to_bytes()
    assert copy.bundle(BOB) == secrets.bundle(BOB)
    assert "secret" in repr(copy) and copy.spk.hex() not in repr(copy)
    for damaged in (b"", b"\x02" + secrets.to_bytes()[1:], secrets.to_bytes() + b"\x00"):
        with pytest.raises(CorruptState):
            PrekeySecrets.from_bytes(damaged)
    with pytest.raises(ValueError, match="at most"):
        secrets.replenish(rng, MAX_ONE_TIME + 1)


class SessionPair(RuleBasedStateMachine):
    """The facade over a network that drops, reorders and duplicates messages."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = seeded_rng("session machine")
        self.keys = {ALICE: PrekeySecrets.generate(ALICE, self.rng), BOB: bob_keys(self.rng)}
        self.states: dict[Identity, RatchetState | None] = {ALICE: None, BOB: None}
        self.in_flight: list[tuple[Identity, Identity, bytes, bytes]] = []
        self.delivered: list[tuple[Identity, Identity, bytes, bytes]] = []
        self.counter = 0

    @rule(alice_sends=st.booleans())
    def send(self, alice_sends: bool) -> None:
        frm, to = (ALICE, BOB) if alice_sends else (BOB, ALICE)
        if frm is BOB and self.states[BOB] is None:
            return
        self.counter += 1
        text = b"%d" % self.counter
        bundle = self.keys[to].bundle(to)
        self.states[frm], m = session.encrypt(
            frm, to.public, self.states[frm], bundle, text, self.rng
        )
        self.in_flight.append((frm, to, m, text))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        item = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        frm, to, m, text = item
        self.states[to], self.keys[to], got = receive(to, self.keys[to], frm, self.states[to], m)
        assert got == text
        self.delivered.append(item)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        frm, to, m, _ = data.draw(st.sampled_from(self.delivered))
        refused(to, self.keys[to], frm, self.states[to], m)


SessionPair.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
test_session_pair = SessionPair.TestCase
