"""The Double Ratchet with header encryption, driven as two pure peers in memory.

Every failure must be a :class:`DecryptError` that leaves the state exactly
as it was; the state machine at the end drops, reorders and duplicates
messages between two parties and checks that each message opens at most
once and every message not dropped opens.
"""

from __future__ import annotations

import pytest
from e2ehelpers import Rng, seeded_rng
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pmsg.e2e.primitives import CorruptState, DecryptError, keypair, public_of
from p2pmsg.e2e.ratchet import (
    ENC_HEADER_BYTES,
    MAX_SKIP,
    MAX_STORED_SKIPPED,
    RATCHET_OVERHEAD,
    RatchetState,
)
from p2pmsg.errors import LocalProtocolError, RemoteProtocolError

AD = b"associated data"


def pair(seed: str = "pair") -> tuple[RatchetState, RatchetState, Rng]:
    rng = seeded_rng(seed)
    sk, hka, nhkb = rng(32), rng(32), rng(32)
    bob_keys = keypair(rng(32))
    alice = RatchetState.init_initiator(sk, bob_keys[1], shared_hka=hka, shared_nhkb=nhkb, rng=rng)
    bob = RatchetState.init_responder(sk, bob_keys, shared_hka=hka, shared_nhkb=nhkb)
    return alice, bob, rng


def refused(state: RatchetState, message: bytes, ad: bytes = AD) -> None:
    """``message`` raises DecryptError and leaves ``state`` untouched."""
    before = state.to_bytes()
    with pytest.raises(DecryptError):
        state.decrypt(message, ad)
    assert state.to_bytes() == before


def test_round_trips_both_ways_over_many_ratchet_steps() -> None:
    alice, bob, rng = pair()
    for i in range(5):
        for j in range(3):
            text = f"a{i}.{j}".encode()
            message = alice.encrypt(text, AD, rng)
            assert len(message) == len(text) + RATCHET_OVERHEAD
            assert bob.decrypt(message, AD) == text
        assert alice.decrypt(bob.encrypt(b"b%d" % i, AD, rng), AD) == b"b%d" % i


def test_the_responder_cannot_send_first() -> None:
    _, bob, rng = pair()
    with pytest.raises(LocalProtocolError):
        bob.encrypt(b"x", AD, rng)


def test_out_of_order_within_a_chain_and_across_chains() -> None:
    alice, bob, rng = pair()
    first = [alice.encrypt(b"%d" % i, AD, rng) for i in range(10)]
    assert bob.decrypt(first[9], AD) == b"9"
    assert alice.decrypt(bob.encrypt(b"r", AD, rng), AD) == b"r"
    second = [alice.encrypt(b"s%d" % i, AD, rng) for i in range(3)]
    assert bob.decrypt(second[2], AD) == b"s2"
    for i in (3, 0, 8, 1, 2, 4, 7, 6, 5):  # the older chain's stragglers
        assert bob.decrypt(first[i], AD) == b"%d" % i
    assert bob.decrypt(second[0], AD) == b"s0"
    assert bob.decrypt(second[1], AD) == b"s1"
    assert bob.skipped == {}


def test_more_than_max_skip_is_refused_and_exactly_max_skip_is_not() -> None:
    alice, bob, rng = pair()
    messages = [alice.encrypt(b"%d" % i, AD, rng) for i in range(MAX_SKIP + 2)]
    refused(bob, messages[MAX_SKIP + 1])
    assert bob.decrypt(messages[MAX_SKIP], AD) == b"%d" % MAX_SKIP
    assert len(bob.skipped) == MAX_SKIP
    assert bob.decrypt(messages[MAX_SKIP + 1], AD) == b"%d" % (MAX_SKIP + 1)


def test_a_previous_chain_length_beyond_max_skip_is_refused() -> None:
    alice, bob, rng = pair()
    bob.decrypt(alice.encrypt(b"0", AD, rng), AD)
    alice.decrypt(bob.encrypt(b"r", AD, rng), AD)
    for _ in range(MAX_SKIP + 1):
        bob.encrypt(b"lost", AD, rng)  # the whole chain is lost...
    alice_reply = alice.encrypt(b"a", AD, rng)
    bob.decrypt(alice_reply, AD)
    lost_more = bob.encrypt(b"x", AD, rng)  # ...a new chain whose PN is too large
    refused(alice, lost_more)


def test_stored_skipped_keys_are_capped_and_the_oldest_go_first() -> None:
    alice, bob, rng = pair()
    oldest: list[bytes] = []
    newest: list[bytes] = []
    for _round in range(3):
        chain = [alice.encrypt(b"m", AD, rng) for _ in range(MAX_SKIP)]
        assert bob.decrypt(chain[-1], AD) == b"m"
        oldest = oldest or chain[:5]
        newest = chain[-6:-1]
        assert len(bob.skipped) <= MAX_STORED_SKIPPED
        alice.decrypt(bob.encrypt(b"r", AD, rng), AD)
    assert len(bob.skipped) == MAX_STORED_SKIPPED
    for message in oldest:  # evicted: they fail like replays
        refused(bob, message)
    for message in newest:
        assert bob.decrypt(message, AD) == b"m"


def test_replays_are_refused_in_the_current_chain_and_from_skipped_keys() -> None:
    alice, bob, rng = pair()
    m0, m1, m2 = (alice.encrypt(b"%d" % i, AD, rng) for i in range(3))
    bob.decrypt(m0, AD)
    refused(bob, m0)
    bob.decrypt(m2, AD)
    bob.decrypt(m1, AD)  # from a skipped key, which is then deleted
    refused(bob, m1)
    refused(bob, m2)
    alice.decrypt(bob.encrypt(b"r", AD, rng), AD)
    bob.decrypt(alice.encrypt(b"new chain", AD, rng), AD)
    refused(bob, m0)  # an old chain, no keys left


@pytest.mark.parametrize("where", [0, 30, ENC_HEADER_BYTES - 1, ENC_HEADER_BYTES, -1])
def test_any_flipped_bit_is_refused(where: int) -> None:
    alice, bob, rng = pair()
    message = bytearray(alice.encrypt(b"payload", AD, rng))
    message[where] ^= 0x01
    refused(bob, bytes(message))


def test_wrong_associated_data_and_short_input_are_refused() -> None:
    alice, bob, rng = pair()
    message = alice.encrypt(b"payload", AD, rng)
    refused(bob, message, b"other")
    refused(bob, message[: RATCHET_OVERHEAD - 1])
    refused(bob, b"")
    assert bob.decrypt(message, AD) == b"payload"


def test_forward_secrecy_a_stolen_state_opens_no_earlier_message() -> None:
    alice, bob, rng = pair()
    past = []
    for _ in range(3):
        chain = [alice.encrypt(b"secret", AD, rng) for _ in range(3)]
        for message in chain:
            bob.decrypt(message, AD)
        past += chain
        alice.decrypt(bob.encrypt(b"ack", AD, rng), AD)
    stolen = RatchetState.from_bytes(bob.to_bytes())
    for message in past:
        with pytest.raises(DecryptError):
            stolen.clone().decrypt(message, AD)


def test_post_compromise_an_attacker_with_a_snapshot_is_locked_out_after_a_round_trip() -> None:
    alice, bob, rng = pair()
    bob.decrypt(alice.encrypt(b"hello", AD, rng), AD)
    stolen = alice.clone()  # the attacker copies Alice's whole state
    before = bob.encrypt(b"still readable", AD, rng)
    assert stolen.decrypt(before, AD) == b"still readable"  # the theft is real
    alice.decrypt(before, AD)
    bob.decrypt(alice.encrypt(b"fresh ratchet key", AD, rng), AD)  # Alice's new DH key
    after = bob.encrypt(b"private again", AD, rng)
    assert alice.decrypt(after, AD) == b"private again"
    with pytest.raises(DecryptError):
        stolen.clone().decrypt(after, AD)
    attacker = stolen.clone()  # even if the attacker ratchets with its own key
    attacker.encrypt(b"x", AD, seeded_rng("attacker"))
    with pytest.raises(DecryptError):
        attacker.decrypt(after, AD)


def test_headers_hide_the_ratchet_key_and_counters() -> None:
    alice, bob, rng = pair()
    messages = [alice.encrypt(b"same", AD, rng) for _ in range(4)]
    headers = {m[:ENC_HEADER_BYTES] for m in messages}
    assert len(headers) == 4
    ratchet_key = public_of(alice.dhs)
    assert all(ratchet_key not in m for m in messages)
    bob.decrypt(messages[0], AD)
    reply = bob.encrypt(b"r", AD, rng)
    assert public_of(bob.dhs) not in reply
    assert bob.dhr is not None and bob.dhr not in reply


def test_state_round_trips_through_bytes_mid_conversation() -> None:
    alice, bob, rng = pair()
    chain = [alice.encrypt(b"%d" % i, AD, rng) for i in range(4)]
    bob.decrypt(chain[3], AD)
    bob.extra = b"session data"
    bob.previous = alice.clone()
    copy = RatchetState.from_bytes(bob.to_bytes())
    assert copy.to_bytes() == bob.to_bytes()
    assert copy.decrypt(chain[1], AD) == b"1"
    assert repr(copy).startswith("RatchetState(<keys>")


@pytest.mark.parametrize("cut", [0, 1, 50, -1])
def test_damaged_state_bytes_raise_corrupt_state(cut: int) -> None:
    alice, _, _ = pair()
    data = alice.to_bytes()
    with pytest.raises(CorruptState):
        RatchetState.from_bytes(data[:cut] if cut else b"\x09" + data[1:])
    with pytest.raises(CorruptState):
        RatchetState.from_bytes(data + b"\x00")


class TwoParties(RuleBasedStateMachine):
    """Alice and Bob over a network that drops, reorders and duplicates."""

    def __init__(self) -> None:
        super().__init__()
        self.alice, self.bob, self.rng = pair("machine")
        self.states = {"a": self.alice, "b": self.bob}
        self.in_flight: list[tuple[str, bytes, bytes]] = []  # (to, message, plaintext)
        self.delivered: list[tuple[str, bytes, bytes]] = []
        self.counter = 0
        self.bob_can_send = False

    @rule(sender=st.sampled_from("ab"))
    def send(self, sender: str) -> None:
        if sender == "b" and not self.bob_can_send:
            return
        self.counter += 1
        text = b"%s%d" % (sender.encode(), self.counter)
        message = self.states[sender].encrypt(text, AD, self.rng)
        self.in_flight.append(("b" if sender == "a" else "a", message, text))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.in_flight) - 1))
        to, message, text = self.in_flight.pop(index)
        assert self.states[to].decrypt(message, AD) == text
        self.delivered.append((to, message, text))
        self.bob_can_send = self.bob_can_send or to == "b"

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        to, message, _ = data.draw(st.sampled_from(self.delivered))
        refused(self.states[to], message)

    @invariant()
    def skipped_keys_are_bounded(self) -> None:
        assert len(self.alice.skipped) <= MAX_STORED_SKIPPED
        assert len(self.bob.skipped) <= MAX_STORED_SKIPPED


TwoParties.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_two_parties = TwoParties.TestCase


def test_decrypt_errors_are_remote_protocol_errors() -> None:
    assert issubclass(DecryptError, RemoteProtocolError)
