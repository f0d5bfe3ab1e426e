"""The store's onion tables: sessions, secrets, SURBs, replay tags, and migration 1 -> 2."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from p2pmsg import store_schema
from p2pmsg.delivery.frames import MessageKind
from p2pmsg.store import Database, InboxMessage, OutboxMessage, SurbRecord

PEER = bytes(range(32))


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database.open(tmp_path / "db.sqlite")


def inbox(message_id: bytes = b"m" * 16) -> InboxMessage:
    return InboxMessage(
        peer=PEER, id=message_id, kind=MessageKind.TEXT, body=b"hi", sent=1.0, received=2.0
    )


def test_a_received_message_commits_with_its_session_state(db: Database) -> None:
    assert db.get_session(PEER) is None
    assert db.commit_received_sealed(inbox(), b"state-1", ("prekeys", b"secrets-1"))
    assert db.get_session(PEER) == b"state-1"
    assert db.get_secret("prekeys") == b"secrets-1"
    # a duplicate still advances the session, and is reported as seen
    assert not db.commit_received_sealed(inbox(), b"state-2", None)
    assert db.get_session(PEER) == b"state-2"
    assert db.get_secret("prekeys") == b"secrets-1"
    assert db.count_inbox() == 1


def test_a_failed_commit_keeps_neither_message_nor_state(db: Database) -> None:
    db.save_session(PEER, b"old", 1.0)
    broken: bytes = None  # type: ignore[assignment]  # violates NOT NULL after the session write
    with pytest.raises(store_schema.StoreError):
        db.commit_received_sealed(inbox(), b"new", ("prekeys", broken))
    assert db.get_session(PEER) == b"old"
    assert db.get_secret("prekeys") is None
    assert db.count_inbox() == 0


def test_an_attempt_commits_its_session_with_its_surb_or_neither(db: Database) -> None:
    surb = SurbRecord(b"s" * 16, b"m" * 16, (b"r" * 32,), b"secret", 100.0)
    db.commit_attempt(PEER, b"state-1", 1.0, surb)
    assert db.get_session(PEER) == b"state-1"
    assert db.surb_routes(b"m" * 16) == [surb.relays]
    with pytest.raises(store_schema.StoreError):  # the same SURB id again, after the session
        db.commit_attempt(PEER, b"state-2", 2.0, surb)
    assert db.get_session(PEER) == b"state-1"
    assert db.count_surbs() == 1


def test_a_surb_is_taken_once(db: Database) -> None:
    relays = (b"a" * 32, b"b" * 32, b"c" * 32)
    surb = SurbRecord(b"s" * 16, b"m" * 16, relays, b"secret", 100.0)
    db.add_surb(surb)
    assert "secret" not in repr(surb)
    assert db.surb_routes(b"m" * 16) == [relays]
    assert db.take_surb(b"s" * 16) == surb
    assert db.take_surb(b"s" * 16) is None
    assert db.count_surbs() == 0


def test_surbs_expire(db: Database) -> None:
    db.add_surb(SurbRecord(b"1" * 16, b"m" * 16, (), b"k", 10.0))
    db.add_surb(SurbRecord(b"2" * 16, b"m" * 16, (), b"k", 20.0))
    assert db.expire_surbs(15.0) == 1
    assert db.take_surb(b"1" * 16) is None
    assert db.take_surb(b"2" * 16) is not None


def test_replay_tags_per_epoch(db: Database) -> None:
    db.add_replay_tags(5, [b"t1", b"t2"])
    db.add_replay_tags(5, [b"t2", b"t3"])
    db.add_replay_tags(6, [b"t4"])
    assert sorted(db.replay_tags(5, 10)) == [b"t1", b"t2", b"t3"]
    assert db.replay_tags(5, 2) != [] and len(db.replay_tags(5, 2)) == 2
    assert db.drop_replay_tags_before(6) == 3
    assert db.replay_tags(5, 10) == []
    assert db.replay_tags(6, 10) == [b"t4"]


def test_delivered_tags_are_kept_apart_from_relay_tags(db: Database) -> None:
    d1, d2 = bytes(32), bytes([1]) * 32
    db.add_replay_tags(5, [b"t1"])
    db.add_replay_tags(5, [d1, d2], "delivered_tags")
    assert db.replay_tags(5, 10) == [b"t1"]
    assert sorted(db.replay_tags(5, 10, "delivered_tags")) == [d1, d2]
    assert db.drop_replay_tags_before(6, "delivered_tags") == 2
    assert db.replay_tags(5, 10) == [b"t1"]
    with pytest.raises(ValueError, match="no replay table"):
        db.replay_tags(5, 10, "inbox")  # type: ignore[arg-type]


def test_version_1_database_migrates_keeping_its_outbox(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    store_schema.MIGRATIONS[0](conn)
    conn.execute(f"PRAGMA application_id = {store_schema.APPLICATION_ID:d}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO outbox (id, peer, kind, body, created, expires, state, attempts,"
        " next_attempt, delivered) VALUES (?, ?, 1, ?, 1.0, 9.0, 'queued', 0, 1.0, NULL)",
        (b"i" * 16, PEER, b"hello"),
    )
    conn.close()
    with Database.open(path) as db:
        (message,) = db.list_outbox()
        assert message.body == b"hello"
        assert message.direct is False
        db.enqueue(
            OutboxMessage(
                id=b"j" * 16,
                peer=PEER,
                kind=MessageKind.BYTES,
                body=b"x",
                created=2.0,
                expires=9.0,
                next_attempt=2.0,
                direct=True,
            )
        )
        assert [m.direct for m in db.list_outbox()] == [False, True]


def queued(n: int, peer: bytes = PEER) -> OutboxMessage:
    return OutboxMessage(
        id=bytes([n]) * 16,
        peer=peer,
        kind=MessageKind.TEXT,
        body=b"x",
        created=float(n),
        expires=99.0,
        next_attempt=0.0,
    )


def test_enqueue_numbers_each_conversation_and_tracks_its_low_water(db: Database) -> None:
    other = bytes(32)
    for n, peer in ((1, PEER), (2, other), (3, PEER), (4, PEER)):
        db.enqueue(queued(n, peer))
    assert [(m.peer, m.seq) for m in db.list_outbox()] == [
        (PEER, 1), (other, 1), (PEER, 2), (PEER, 3)
    ]  # fmt: skip
    assert db.low_water(PEER) == 1
    db.mark_delivered(bytes([1]) * 16, 5.0)
    assert db.low_water(PEER) == 2
    assert db.expire_due(100.0) and db.low_water(PEER) == 0  # nothing queued


def arrived(seq: int, n: int | None = None) -> InboxMessage:
    return InboxMessage(
        peer=PEER,
        id=bytes([n if n is not None else seq]) * 16,
        kind=MessageKind.TEXT,
        body=b"b",
        sent=1.0,
        received=2.0 + seq,
        seq=seq,
    )


def deliver(db: Database, message: InboxMessage, low: int = 1) -> list[int]:
    db.add_received(message)
    return [m.seq for m in db.release(PEER, low, 10.0)]


def test_a_conversation_is_shown_in_its_senders_order(db: Database) -> None:
    assert deliver(db, arrived(2)) == []  # held: 1 is missing
    assert deliver(db, arrived(3)) == []
    assert [m.seq for m in db.list_inbox()] == []
    assert deliver(db, arrived(1)) == [1, 2, 3]
    assert deliver(db, arrived(2)) == []  # a duplicate shows nothing
    assert [m.seq for m in db.list_inbox()] == [1, 2, 3]


def test_the_low_water_mark_skips_what_will_never_come(db: Database) -> None:
    assert deliver(db, arrived(3)) == []
    # message 1 expired and 2 was delivered at the sender: its next message says so
    assert deliver(db, arrived(4), low=4) == [3, 4]
    # a message that arrives after its number was skipped is shown late, never lost
    assert deliver(db, arrived(2)) == [2]
    assert sorted(m.seq for m in db.list_inbox()) == [2, 3, 4]


def test_a_message_held_past_the_wait_is_shown_with_all_before_it(db: Database) -> None:
    db.add_received(arrived(3))  # received at 5.0; 1 and 2 are missing
    db.add_received(arrived(5))  # received at 7.0; 4 is missing too
    assert db.oldest_held() == 5.0
    assert db.held_peers(4.9, 10) == [] and db.held_peers(5.0, 10) == [PEER]
    assert db.release(PEER, 1, 7.9, wait=3.0) == []  # 3 has waited 2.9 s
    assert [m.seq for m in db.release(PEER, 1, 8.0, wait=3.0)] == [3]  # 5 waits on
    assert db.oldest_held() == 7.0
    assert [m.seq for m in db.release(PEER, 1, 10.0, wait=3.0)] == [5]
    assert db.oldest_held() is None
    # what was skipped is shown when it comes, and the order holds after it
    assert deliver(db, arrived(1)) == [1]
    assert deliver(db, arrived(7)) == []
    assert deliver(db, arrived(6)) == [6, 7]


def test_an_overdue_message_releases_those_before_it_held_for_less(db: Database) -> None:
    late_first = InboxMessage(**{**vars(arrived(3)), "received": 1.0})
    db.add_received(arrived(2))  # received at 4.0, waited 1 s at 5.0
    db.add_received(late_first)  # received at 1.0, waited 4 s at 5.0
    assert [m.seq for m in db.release(PEER, 1, 5.0, wait=3.0)] == [2, 3]


def test_unordered_messages_are_shown_at_once(db: Database) -> None:
    assert db.add_received(arrived(0, n=9))
    assert [m.id for m in db.list_inbox()] == [bytes([9]) * 16]
    assert db.release(PEER, 0, 1.0) == []
