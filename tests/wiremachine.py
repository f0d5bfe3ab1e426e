"""The wire between two stores, for the delivery and file state machines.

Alice's outbox and bob's inbox are two real SQLite stores
(:class:`~p2pmsg.store.Database`); between them a bounded wire that loses,
duplicates and reorders what it carries, both ways, and either side may
crash (its store closed and opened again). A subclass says what bob does
with a packet (:meth:`WireMachine.bob_takes`: commit, then ack) and what
alice does with an ack (:meth:`WireMachine.alice_acked`), and adds its own
sends, drain and invariants.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from p2pmsg.store import Database

ALICE = bytes([1]) * 32
BOB = bytes([2]) * 32


class WireMachine(RuleBasedStateMachine):
    wire_cap = 64
    """At most this many packets in flight each way (the wire is bounded too)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.paths = (Path(self.dir.name) / "alice.db", Path(self.dir.name) / "bob.db")
        self.alice = Database.open(self.paths[0])
        self.bob = Database.open(self.paths[1])
        self.now = 1000.0
        self.forward: list[bytes] = []  # message ids on the wire to bob
        self.back: list[bytes] = []  # acks on the wire to alice

    def teardown(self) -> None:
        self.alice.close()
        self.bob.close()
        self.dir.cleanup()

    def bob_takes(self, message_id: bytes) -> None:
        raise NotImplementedError

    def alice_acked(self, message_id: bytes) -> None:
        raise NotImplementedError

    def ack_back(self, message_id: bytes) -> None:
        """Bob's ack goes on the wire, unless it is full."""
        if len(self.back) < self.wire_cap:
            self.back.append(message_id)

    @rule()
    def transmit(self) -> None:
        """Alice sends everything due, and backs each off a second."""
        for message in self.alice.due_messages(self.now):
            if len(self.forward) < self.wire_cap:
                self.forward.append(message.id)
            assert self.alice.mark_attempt(message.id, self.now + 1.0)
        self.now += 1.0

    @precondition(lambda self: self.forward)
    @rule(data=st.data())
    def arrive(self, data: st.DataObject) -> None:
        """Any packet on the wire reaches bob."""
        self.bob_takes(self.forward.pop(data.draw(st.integers(0, len(self.forward) - 1))))

    @precondition(lambda self: self.back)
    @rule(data=st.data())
    def ack_arrives(self, data: st.DataObject) -> None:
        self.alice_acked(self.back.pop(data.draw(st.integers(0, len(self.back) - 1))))

    @precondition(lambda self: self.forward or self.back)
    @rule(data=st.data(), duplicate=st.booleans(), to_bob=st.booleans())
    def wire_misbehaves(self, data: st.DataObject, duplicate: bool, to_bob: bool) -> None:
        """A packet is lost, or sent twice."""
        wire = self.forward if (to_bob and self.forward) or not self.back else self.back
        i = data.draw(st.integers(0, len(wire) - 1))
        if duplicate and len(wire) < self.wire_cap:
            wire.append(wire[i])
        elif not duplicate:
            del wire[i]

    @rule(alice=st.booleans())
    def crash(self, alice: bool) -> None:
        """One side stops and starts again from its database."""
        if alice:
            self.alice.close()
            self.alice = Database.open(self.paths[0])
        else:
            self.bob.close()
            self.bob = Database.open(self.paths[1])

    def deliver_all_due(self, rounds: int) -> None:
        """The wire works again: ``rounds`` times, everything due reaches bob
        and its ack reaches alice."""
        self.forward.clear()
        self.back.clear()
        for _ in range(rounds):
            self.now += 1.0
            for message in self.alice.due_messages(self.now):
                self.bob_takes(message.id)
                self.alice_acked(message.id)
            self.back.clear()
