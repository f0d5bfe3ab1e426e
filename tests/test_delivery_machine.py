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

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule
from wiremachine import ALICE, BOB, WireMachine

from p2pmsg.store import InboxMessage, MessageKind, OutboxMessage, OutboxState


class DeliveryMachine(WireMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[bytes, bytes] = {}
        self.acked: set[bytes] = set()

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

    def bob_takes(self, message_id: bytes) -> None:
        """Bob commits, then acks."""
        self.bob.add_received(
            InboxMessage(
                peer=ALICE, id=message_id, kind=MessageKind.BYTES,
                body=self.sent[message_id], sent=self.now, received=self.now,
            )
        )  # fmt: skip
        self.ack_back(message_id)

    def alice_acked(self, message_id: bytes) -> None:
        self.alice.mark_delivered(message_id, self.now)
        self.acked.add(message_id)

    @rule()
    def drain(self) -> None:
        """The wire works again: every message arrives, exactly once, and is acked."""
        self.deliver_all_due(2)  # a retransmission round, then one more finds nothing due
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
