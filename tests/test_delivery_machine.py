"""Delivery as a hypothesis state machine: exactly once, whatever the wire does.

A sender's outbox and a recipient's inbox are two real SQLite stores
(:class:`~p2pmsg.store.Database`); between them a wire that loses,
duplicates and reorders what it carries, both ways. The rules interleave
sends, (re)transmissions of what is due, deliveries in any order, losses,
duplications, and crashes of either side (the store closed and opened
again). The protocol is the node's: the recipient commits before it acks,
and acks again what it already has; the sender marks a message delivered
on its ack and retransmits what is queued. Invariants: the inbox holds only
messages that were sent, each once, with its body; nothing acked is missing
from it. Then :meth:`DeliveryMachine.drain` (a wire that works again)
must bring every message, exactly once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pmsg.store import Database, InboxMessage, MessageKind, OutboxMessage, OutboxState

ALICE = bytes([1]) * 32
BOB = bytes([2]) * 32
WIRE_CAP = 64
"""At most this many packets in flight each way (the wire is bounded too)."""


class DeliveryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.paths = (Path(self.dir.name) / "alice.db", Path(self.dir.name) / "bob.db")
        self.alice = Database.open(self.paths[0])
        self.bob = Database.open(self.paths[1])
        self.now = 1000.0
        self.sent: dict[bytes, bytes] = {}
        self.forward: list[bytes] = []  # message ids on the wire to bob
        self.back: list[bytes] = []  # acks on the wire to alice
        self.acked: set[bytes] = set()

    def teardown(self) -> None:
        self.alice.close()
        self.bob.close()
        self.dir.cleanup()

    @rule(body=st.binary(max_size=64))
    def send(self, body: bytes) -> None:
        message_id = len(self.sent).to_bytes(16, "big")
        self.alice.enqueue(
            OutboxMessage(
                id=message_id, peer=BOB, kind=MessageKind.BYTES, body=body,
                created=self.now, expires=self.now + 10**6, next_attempt=self.now,
            )
        )  # fmt: skip
        self.sent[message_id] = body

    @rule()
    def transmit(self) -> None:
        """Alice sends every message due, and backs each off a second."""
        for message in self.alice.due_messages(self.now):
            if len(self.forward) < WIRE_CAP:
                self.forward.append(message.id)
            assert self.alice.mark_attempt(message.id, self.now + 1.0)
        self.now += 1.0

    @precondition(lambda self: self.forward)
    @rule(data=st.data())
    def arrive(self, data: st.DataObject) -> None:
        """Any packet on the wire reaches bob: he commits, then acks."""
        message_id = self.forward.pop(data.draw(st.integers(0, len(self.forward) - 1)))
        self._bob_takes(message_id)

    def _bob_takes(self, message_id: bytes) -> None:
        self.bob.add_received(
            InboxMessage(
                peer=ALICE, id=message_id, kind=MessageKind.BYTES,
                body=self.sent[message_id], sent=self.now, received=self.now,
            )
        )  # fmt: skip
        if len(self.back) < WIRE_CAP:
            self.back.append(message_id)

    @precondition(lambda self: self.back)
    @rule(data=st.data())
    def ack_arrives(self, data: st.DataObject) -> None:
        message_id = self.back.pop(data.draw(st.integers(0, len(self.back) - 1)))
        self.alice.mark_delivered(message_id, self.now)
        self.acked.add(message_id)

    @precondition(lambda self: self.forward or self.back)
    @rule(data=st.data(), duplicate=st.booleans(), to_bob=st.booleans())
    def wire_misbehaves(self, data: st.DataObject, duplicate: bool, to_bob: bool) -> None:
        """A packet is lost, or sent twice."""
        wire = self.forward if (to_bob and self.forward) or not self.back else self.back
        i = data.draw(st.integers(0, len(wire) - 1))
        if duplicate and len(wire) < WIRE_CAP:
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

    @rule()
    def drain(self) -> None:
        """The wire works again: every message arrives, exactly once, and is acked."""
        self.forward.clear()
        self.back.clear()
        for _ in range(2):  # a retransmission round, then one more finds nothing due
            self.now += 1.0
            for message in self.alice.due_messages(self.now):
                self._bob_takes(message.id)
                self.alice.mark_delivered(message.id, self.now)
                self.acked.add(message.id)
            self.back.clear()
        assert {m.id for m in self.alice.list_outbox()} == set(self.sent)
        assert all(m.state is OutboxState.DELIVERED for m in self.alice.list_outbox())
        assert self.bob.count_inbox() == len(self.sent)

    @invariant()
    def each_message_shown_once_and_none_acked_is_missing(self) -> None:
        inbox = self.bob.list_inbox(1000)
        ids = [m.id for m in inbox]
        assert len(ids) == len(set(ids)), "a message is in the inbox twice"
        assert all(self.sent.get(m.id) == m.body for m in inbox), "a message never sent"
        assert self.acked <= set(ids), "a message acked but not kept"


TestDelivery = DeliveryMachine.TestCase
TestDelivery.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
