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
