"""Files as a hypothesis state machine: whole, once, whatever the wire does.

As :mod:`test_delivery_machine`, with files: alice's outbox sends their
parts a window at a time, a wire loses, duplicates and reorders parts and
acks, either side crashes (its store closed and opened again). Bob keeps
each new part, and shows what :meth:`~p2pmsg.store.Database.release_files`
gives him; alice reports what :meth:`~p2pmsg.store.Database.mark_acked`
names. Invariants: no more than :data:`~p2pmsg.store.FILE_WINDOW` parts are
ever due at once; bob shows each file once, exactly as sent; alice reports
each file once, and only once bob has it. Then a wire that works again
must bring every file and report it.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule
from wiremachine import ALICE, BOB, WireMachine

from p2pmsg.delivery import files
from p2pmsg.store import FILE_WINDOW, InboxMessage, MessageKind, OutboxMessage


class FilesMachine(WireMachine):
    wire_cap = 32

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[bytes, tuple[str, bytes]] = {}
        self.bodies: dict[bytes, bytes] = {}  # a part's message id -> its body
        self.shown: list[bytes] = []
        self.reported: list[bytes] = []

    @precondition(lambda self: len(self.files) < 4)
    @rule(parts=st.integers(1, FILE_WINDOW + 2), tail=st.integers(0, 99), seed=st.integers(0, 9))
    def send_file(self, parts: int, tail: int, seed: int) -> None:
        file_id = len(self.files).to_bytes(16, "big")
        data = random.Random(seed).randbytes((parts - 1) * files.PART_DATA + tail)
        name = f"f{len(self.files)}.bin"
        messages = []
        for index, body in enumerate(files.split(file_id, name, data)):
            message_id = file_id[-4:] + index.to_bytes(12, "big")
            self.bodies[message_id] = body
            messages.append(
                OutboxMessage(
                    id=message_id,
                    peer=BOB,
                    kind=MessageKind.FILE_PART,
                    body=body,
                    created=self.now,
                    expires=self.now + 10**6,
                    next_attempt=self.now,
                )
            )
        self.alice.enqueue_all(messages)
        self.files[file_id] = (name, data)

    def bob_takes(self, message_id: bytes) -> None:
        """Bob keeps the part (and acks it), then shows any file it completed."""
        part = InboxMessage(
            peer=ALICE, id=message_id, kind=MessageKind.FILE_PART,
            body=self.bodies[message_id], sent=self.now, received=self.now,
        )  # fmt: skip
        self.bob.add_received(part)
        self.ack_back(message_id)
        self.shown += [m.id for m in self._check_shown(self.bob.release_files(ALICE, self.now))]

    def _check_shown(self, shown: list[InboxMessage]) -> list[InboxMessage]:
        for m in shown:
            assert m.kind is MessageKind.FILE
            assert files.decode_file(m.body) == self.files[m.id], "a file not as sent"
        return shown

    def alice_acked(self, message_id: bytes) -> None:
        if (file_id := self.alice.mark_acked(message_id, self.now)) is not None:
            self.reported.append(file_id)

    @rule()
    def drain(self) -> None:
        """The wire works again: every file arrives whole and is reported, once."""
        self.deliver_all_due(len(self.bodies) + 2)  # a window opens per round at least
        assert sorted(self.shown) == sorted(self.files)
        assert sorted(self.reported) == sorted(self.files)
        assert self.bob.count_file_parts() == 0

    @invariant()
    def a_window_at_most_is_due(self) -> None:
        assert len(self.alice.pending_for_peer(BOB, due=self.now + 10**7)) <= FILE_WINDOW

    @invariant()
    def each_file_shown_and_reported_once_and_only_once_whole(self) -> None:
        assert len(self.shown) == len(set(self.shown)), "a file shown twice"
        assert len(self.reported) == len(set(self.reported)), "a file reported twice"
        assert set(self.reported) <= set(self.shown), "a file reported before bob had it"


TestFiles = FilesMachine.TestCase
TestFiles.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
