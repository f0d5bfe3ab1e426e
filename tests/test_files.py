"""Files in parts: the codec, the sender's window and the recipient's store."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmsg import store_schema
from p2pmsg.delivery import files
from p2pmsg.delivery.frames import MessageKind
from p2pmsg.errors import OutboxFull
from p2pmsg.store import (
    FILE_WINDOW,
    Database,
    FilesFull,
    InboxMessage,
    OutboxMessage,
    OutboxState,
)
from p2pmsg.store_files import MAX_FILES_PER_PEER, PART_TTL

FILE = bytes(range(16))
PEER = bytes(32)
OTHER = bytes([1]) * 32

names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="/\\"),
    min_size=1,
    max_size=60,
).filter(lambda n: n not in (".", "..") and n.isprintable())


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 3 * files.PART_DATA + 5), name=names, seed=st.randoms())
def test_parts_in_any_order_make_the_file(size: int, name: str, seed: random.Random) -> None:
    data = bytes((i * 7 + size) % 251 for i in range(size))
    bodies = files.split(FILE, name, data)
    assert len(bodies) == files.part_count(size)
    parts = [files.decode_part(b) for b in bodies]
    seed.shuffle(parts)
    assert files.join(parts) == data
    assert {(p.file, p.name, p.size) for p in parts} == {(FILE, name, size)}
    assert files.decode_file(files.encode_file(name, data)) == (name, data)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=400))
def test_a_malformed_part_is_a_value_error(body: bytes) -> None:
    with contextlib.suppress(ValueError):
        files.decode_part(body)


def test_a_part_that_disagrees_with_its_file_is_refused() -> None:
    data = bytes(files.PART_DATA + 10)
    first, last = files.split(FILE, "a.bin", data)
    with pytest.raises(ValueError, match="wrong length"):
        files.decode_part(first[:-1])
    with pytest.raises(ValueError, match="wrong length"):
        files.decode_part(last + b"x")
    bad_index = first[:16] + (2).to_bytes(4, "big") + first[20:]
    with pytest.raises(ValueError, match="disagree"):
        files.decode_part(bad_index)
    tampered = files.decode_part(last[:-1] + b"y")
    with pytest.raises(ValueError, match="digest"):
        files.join([files.decode_part(first), tampered])
    other = files.decode_part(files.split(FILE, "b.bin", data)[1])
    with pytest.raises(ValueError, match="not one whole file"):
        files.join([files.decode_part(first), other])
    with pytest.raises(ValueError, match="not one whole file"):
        files.join([files.decode_part(first)])


@pytest.mark.parametrize("name", ["", "a/b", "..", "a\\b", "tab\there", "x" * 256])
def test_a_file_name_is_a_plain_name(name: str) -> None:
    with pytest.raises(ValueError, match="file name"):
        files.split(FILE, name, b"data")


def test_a_file_over_the_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        files.split(FILE, "big", bytes(files.MAX_FILE_BYTES + 1))


# -- the sender's outbox ------------------------------------------------------


def part_messages(file: bytes, size: int, peer: bytes = PEER) -> list[OutboxMessage]:
    """The outbox messages of a file of ``size`` bytes for ``peer``."""
    bodies = files.split(file, "f.bin", bytes(size))
    return [
        OutboxMessage(
            id=file[:8] + i.to_bytes(8, "big"),
            peer=peer,
            kind=MessageKind.FILE_PART,
            body=body,
            created=1.0,
            expires=1e9,
            next_attempt=1.0,
        )
        for i, body in enumerate(bodies)
    ]


def parts_out(db: Database, file: bytes, size: int, *, peer: bytes = PEER) -> list[bytes]:
    """Enqueue a file of ``size`` bytes for ``peer``; its parts' message ids."""
    messages = part_messages(file, size, peer)
    db.enqueue_all(messages)
    return [m.id for m in messages]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database.open(tmp_path / "store.db") as database:
        yield database


def test_a_file_is_sent_a_window_of_parts_at_a_time(db: Database) -> None:
    ids = parts_out(db, FILE, (FILE_WINDOW + 3) * files.PART_DATA)
    other = parts_out(db, bytes(16), 2 * files.PART_DATA, peer=OTHER)
    due = [m.id for m in db.due_messages(5.0)]
    assert due == ids[:FILE_WINDOW] + other
    assert [m.id for m in db.pending_for_peer(PEER, due=5.0)] == ids[:FILE_WINDOW]
    assert all(m.seq == 0 for m in db.pending_for_peer(PEER))  # parts are unordered
    # Every part in the window waits for its retry: nothing is due, and the
    # parts past the window do not make the sender spin.
    db.mark_attempts([(i, 50.0) for i in ids[:FILE_WINDOW] + other])
    assert db.due_messages(5.0) == []
    assert db.next_due_time() == 50.0
    # An ack opens the window by one.
    assert db.mark_acked(ids[0], 6.0) is None
    assert [m.id for m in db.due_messages(6.0)] == [ids[FILE_WINDOW]]


def test_the_ack_of_a_files_last_part_names_the_file_once(db: Database) -> None:
    ids = parts_out(db, FILE, 3 * files.PART_DATA)
    assert [db.mark_acked(i, 2.0) for i in (ids[2], ids[0])] == [None, None]
    assert db.mark_acked(ids[1], 3.0) == FILE
    assert db.mark_acked(ids[1], 4.0) is None  # a second ack reports nothing
    assert [m.state for m in db.list_outbox()] == [OutboxState.DELIVERED] * 3


def test_the_ack_of_a_message_names_the_message_once(db: Database) -> None:
    message = replace(part_messages(FILE, 1)[0], kind=MessageKind.TEXT, body=b"hi")
    db.enqueue(message)
    assert db.mark_acked(message.id, 2.0) == message.id
    assert db.mark_acked(message.id, 3.0) is None


def test_an_expired_part_keeps_the_file_from_being_reported(db: Database) -> None:
    ids = parts_out(db, FILE, 2 * files.PART_DATA)
    db._conn.execute("UPDATE outbox SET state = 'expired' WHERE id = ?", (ids[0],))
    assert db.mark_acked(ids[1], 2.0) is None


def test_a_files_parts_are_queued_all_or_none(db: Database) -> None:
    with pytest.raises(OutboxFull):
        db.enqueue_all(part_messages(FILE, 3 * files.PART_DATA), max_for_peer=2)
    assert db.count_queued() == 0


# -- the recipient's store ----------------------------------------------------


def part_in(body: bytes, n: int, *, peer: bytes = PEER, received: float = 10.0) -> InboxMessage:
    return InboxMessage(
        peer=peer,
        id=n.to_bytes(16, "big"),
        kind=MessageKind.FILE_PART,
        body=body,
        sent=1.0,
        received=received,
    )


def test_the_last_part_makes_the_file_shown_once(db: Database) -> None:
    data = bytes(range(256)) * 300  # 76,800 bytes: three parts
    bodies = files.split(FILE, "photo.jpg", data)
    assert [db.add_received(part_in(bodies[i], i)) for i in (2, 0)] == [True, True]
    assert db.add_received(part_in(bodies[0], 7)) is False  # the same part again
    assert db.release_files(PEER, 11.0) == []
    assert db.count_file_parts() == 2
    assert db.add_received(part_in(bodies[1], 1)) is True
    (shown,) = db.release_files(PEER, 12.0)
    assert db.release_files(PEER, 13.0) == []
    assert (shown.id, shown.kind) == (FILE, MessageKind.FILE)
    assert files.decode_file(shown.body) == ("photo.jpg", data)
    assert db.count_file_parts() == 0
    # a late copy of a part of a whole file starts nothing
    assert db.add_received(part_in(bodies[2], 9)) is False
    assert db.count_file_parts() == 0
    assert db.get_file(FILE) == shown


def test_a_peer_may_send_only_so_many_files_at_once(db: Database) -> None:
    for n in range(MAX_FILES_PER_PEER):
        first = files.split(bytes([n]) * 16, "f", bytes(2 * files.PART_DATA))[0]
        assert db.add_received(part_in(first, n))
    extra = files.split(bytes([99]) * 16, "f", bytes(2 * files.PART_DATA))
    with pytest.raises(FilesFull, match="partly received"):
        db.add_received(part_in(extra[0], 50))
    assert db.count_file_parts() == MAX_FILES_PER_PEER  # nothing kept, so not acked
    assert db.add_received(part_in(extra[0], 50, peer=OTHER))  # another peer's is taken
    # parts of files that never complete go after PART_TTL
    assert db.add_received(part_in(extra[1], 51, received=10.0 + PART_TTL + 1))
    assert db.count_file_parts() == 1


def test_a_version_5_database_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for step in store_schema.MIGRATIONS[:5]:
        step(conn)
    conn.execute(f"PRAGMA application_id = {store_schema.APPLICATION_ID:d}")
    conn.execute("PRAGMA user_version = 5")
    conn.execute(
        "INSERT INTO outbox (id, peer, kind, body, created, expires, state, next_attempt, seq)"
        " VALUES (?, ?, 1, CAST('hi' AS BLOB), 1, 1000, 'queued', 1, 1)",
        (bytes(16), PEER),
    )
    conn.execute(
        "INSERT INTO inbox (peer, id, kind, body, sent, received, seq, released)"
        " VALUES (?, ?, 0, x'00', 1, 2, 1, 2)",
        (PEER, bytes(16)),
    )
    conn.close()
    with Database.open(path) as database:
        (queued,) = database.pending_for_peer(PEER)
        assert (queued.body, queued.seq, database.count_queued(PEER)) == (b"hi", 1, 1)
        (shown,) = database.list_inbox()
        assert shown.body == b"\0"
        database.mark_delivered(bytes(16), 3.0)  # the counting triggers are back
        assert database.count_queued() == 0
