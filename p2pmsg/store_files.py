"""The store's file tables: parts received, whole files shown, parts acked.

A mixin of :class:`p2pmsg.store.Database`, like :mod:`p2pmsg.store_onion`.
A received FILE_PART (:mod:`p2pmsg.delivery.files`) is kept in
``file_parts`` in the transaction that commits it (so it is acked only once
kept); the part that completes its file turns all of them into one FILE
message in the inbox, held back (``released`` NULL) until
:meth:`FileTables.release_files` shows it, once. Parts are bounded per peer
and in all: a part of a new file beyond the bounds raises
:class:`FilesFull`, is not kept and so not acked, and its sender tries
again later. Parts of a file that never completes go after
:data:`PART_TTL` seconds.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import AbstractContextManager
from typing import Any, Final

from p2pmsg.delivery import files
from p2pmsg.delivery.frames import MessageKind
from p2pmsg.errors import StoreError
from p2pmsg.store_schema import SELECT_INBOX, InboxMessage, inbox_from_row

log = logging.getLogger(__name__)

MAX_FILES_PER_PEER: Final = 4
"""Files one contact may have partly sent at once."""
MAX_PART_BYTES: Final = 4 * files.MAX_FILE_BYTES
"""Bytes of parts kept in all, for files not yet whole."""
PART_TTL: Final = 7 * 86400.0
"""Seconds the parts of a file that never completes are kept (a message's lifetime)."""


class FilesFull(StoreError):
    """Too many files are partly received: the part was not kept (nor acked)."""


def insert_file_part(conn: sqlite3.Connection, message: InboxMessage) -> bool:
    """Keep a received FILE_PART; True if new. The part that completes its
    file puts the file in the inbox, held back for :meth:`FileTables.release_files`.

    Raises ``ValueError`` for a malformed part (the frame decoder refuses
    those first) and :class:`FilesFull` beyond the bounds."""
    part = files.decode_part(message.body)
    peer = message.peer
    if conn.execute("SELECT 1 FROM inbox WHERE peer = ? AND id = ?", (peer, part.file)).fetchall():
        return False  # the file is whole already: a late copy of one of its parts
    conn.execute("DELETE FROM file_parts WHERE received < ?", (message.received - PART_TTL,))
    started = conn.execute(
        "SELECT 1 FROM file_parts WHERE peer = ? AND file = ? LIMIT 1", (peer, part.file)
    ).fetchall()
    if not started:
        _check_room(conn, peer, part.size)
    inserted = conn.execute(
        "INSERT OR IGNORE INTO file_parts (peer, file, idx, body, received) VALUES (?, ?, ?, ?, ?)",
        (peer, part.file, part.index, message.body, message.received),
    ).rowcount
    if not inserted:
        return False
    have = conn.execute(
        "SELECT count(*) FROM file_parts WHERE peer = ? AND file = ?", (peer, part.file)
    ).fetchall()[0][0]
    if have == part.count:
        _complete(conn, message, part)
    return True


def _check_room(conn: sqlite3.Connection, peer: bytes, size: int) -> None:
    started = conn.execute(
        "SELECT count(DISTINCT file) FROM file_parts WHERE peer = ?", (peer,)
    ).fetchall()[0][0]
    if started >= MAX_FILES_PER_PEER:
        raise FilesFull(f"{started} files from this contact are partly received")
    kept = conn.execute("SELECT coalesce(sum(length(body)), 0) FROM file_parts").fetchall()[0][0]
    if kept + size > MAX_PART_BYTES:
        raise FilesFull(f"{kept} bytes of files are partly received")


def _complete(conn: sqlite3.Connection, message: InboxMessage, last: files.FilePart) -> None:
    rows = conn.execute(
        "DELETE FROM file_parts WHERE peer = ? AND file = ? RETURNING body",
        (message.peer, last.file),
    ).fetchall()
    try:
        data = files.join([files.decode_part(bytes(row[0])) for row in rows])
    except ValueError as exc:
        # Parts that each passed the decoder but do not make the file their
        # digest names: the sender's fault, and sending them again cannot help.
        log.warning("a received file was dropped: %s", exc)
        return
    conn.execute(
        "INSERT OR IGNORE INTO inbox (peer, id, kind, body, sent, received, seq, released)"
        " VALUES (?, ?, ?, ?, ?, ?, 0, NULL)",
        (
            message.peer,
            last.file,
            MessageKind.FILE,
            files.encode_file(last.name, data),
            message.sent,
            message.received,
        ),
    )


class FileTables:
    """Methods over the file tables; :class:`Database` provides the connection."""

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        raise NotImplementedError

    def release_files(self, peer: bytes, now: float) -> list[InboxMessage]:
        """Show the whole files of ``peer`` not shown yet: each is returned once."""
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE inbox SET released = ? WHERE peer = ? AND kind = ? AND released IS NULL"
                " RETURNING peer, id, kind, body, sent, received, seq",
                (now, peer, MessageKind.FILE),
            ).fetchall()
        return [inbox_from_row(row) for row in rows]

    def count_file_parts(self) -> int:
        """Parts kept for files not yet whole."""
        return int(self._rows("SELECT count(*) FROM file_parts")[0][0])

    def mark_acked(self, message_id: bytes, now: float) -> bytes | None:
        """:meth:`~p2pmsg.store.Database.mark_delivered`, and what the ack
        delivered, in one transaction (so that exactly one ack reports it):
        the message's id, or for a file's part the file's id once it was the
        last part acked; None for a message or part acked before, and a part
        that leaves others unacked."""
        with self._write() as conn:
            row = conn.execute(
                "UPDATE outbox SET state = 'delivered', delivered = ?"
                " WHERE id = ? AND state = 'queued' RETURNING peer, kind, substr(body, 1, ?)",
                (now, message_id, files.FILE_ID_BYTES),
            ).fetchone()
            if row is None or row[1] != MessageKind.FILE_PART:
                return None if row is None else message_id
            peer, file = bytes(row[0]), bytes(row[2])
            unacked = conn.execute(
                "SELECT 1 FROM outbox WHERE peer = ? AND kind = ? AND state != 'delivered'"
                " AND substr(body, 1, ?) = ? LIMIT 1",
                (peer, MessageKind.FILE_PART, files.FILE_ID_BYTES, file),
            ).fetchall()
            return None if unacked else file

    def file_progress(self, peer: bytes, file: bytes) -> tuple[int, int]:
        """Of the parts of a file we send ``peer``: how many are acked, of how many."""
        rows = self._rows(
            "SELECT count(*) FILTER (WHERE state = 'delivered'), count(*) FROM outbox"
            " WHERE peer = ? AND kind = ? AND substr(body, 1, ?) = ?",
            (peer, MessageKind.FILE_PART, files.FILE_ID_BYTES, file),
        )
        return int(rows[0][0]), int(rows[0][1])

    def get_file(self, file: bytes) -> InboxMessage | None:
        """A whole received file, by its id."""
        rows = self._rows(SELECT_INBOX + "WHERE id = ? AND kind = ?", (file, MessageKind.FILE))
        return inbox_from_row(rows[0]) if rows else None
