"""The store's tables for onion delivery: e2e sessions, secrets, SURBs, replay tags.

A mixin of :class:`p2pmsg.store.Database` (same connection, same rules:
one committed ``BEGIN IMMEDIATE`` transaction per write, bounded reads, every
SQLite failure a :class:`StoreError`). The values are opaque blobs that the
pure cores (:mod:`p2pmsg.e2e`, :mod:`p2pmsg.onion`) serialise.

* ``sessions``: one Double Ratchet state per peer. A received message and the
  state that decrypted it commit in one transaction with the inbox row, so a
  crash can never keep one without the other.
* ``secrets``: named secret blobs (prekey secrets, onion keys per epoch).
* ``surbs``: the keys to open each single-use reply block we handed out, the
  message it acknowledges and the relays of its route (for scoring). Taking
  a SURB deletes it: a second reply through the same SURB finds nothing.
* ``replay_tags``: the Sphinx replay tags a relay has accepted, per key epoch,
  written before the packet is forwarded so that a replay is refused after a
  restart too; ``delivered_tags``: those of the layers we opened as the
  destination, per day of arrival, written before the packet is handled.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

from p2pmsg.delivery.frames import MessageKind
from p2pmsg.store_files import insert_file_part
from p2pmsg.store_schema import SELECT_INBOX, InboxMessage, inbox_from_row


@dataclass(frozen=True)
class SurbRecord:
    """What we keep for one reply block we handed out. ``repr`` hides the secret."""

    id: bytes
    message: bytes
    relays: tuple[bytes, ...]
    secret: bytes
    expires: float

    def __repr__(self) -> str:
        return f"SurbRecord(id={self.id.hex()[:8]}…, message={self.message.hex()[:8]}…)"


MAX_RELEASE = 1024
"""Held-back messages looked at per release (each new message triggers one)."""


def _join(ids: Iterable[bytes]) -> bytes:
    return b"".join(ids)


def _split(blob: bytes) -> tuple[bytes, ...]:
    return tuple(blob[i : i + 32] for i in range(0, len(blob), 32))


class OnionTables:
    """Methods over the onion tables; :class:`Database` provides the connection."""

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        raise NotImplementedError

    # sessions

    def get_session(self, peer: bytes) -> bytes | None:
        rows = self._rows("SELECT state FROM sessions WHERE peer = ?", (peer,))
        return bytes(rows[0][0]) if rows else None

    def save_session(self, peer: bytes, state: bytes, now: float) -> None:
        with self._write() as conn:
            _upsert_session(conn, peer, state, now)

    def commit_received_sealed(
        self,
        message: InboxMessage,
        state: bytes,
        secrets: tuple[str, bytes] | None,
    ) -> bool:
        """Commit an e2e message with the session state (and prekey secrets)
        that opened it, in one transaction; True if the message is new."""
        with self._write() as conn:
            _upsert_session(conn, message.peer, state, message.received)
            if secrets is not None:
                _upsert_secret(conn, *secrets)
            return insert_inbox(conn, message)

    # conversation order

    def low_water(self, peer: bytes) -> int:
        """The smallest ``seq`` still queued for ``peer`` (0 if none): every
        earlier message of the conversation is delivered or expired."""
        rows = self._rows(
            "SELECT min(seq) FROM outbox WHERE peer = ? AND state = 'queued' AND seq > 0",
            (peer,),
        )
        return int(rows[0][0] or 0)

    def release(
        self, peer: bytes, low: int, now: float, *, wait: float = math.inf
    ) -> list[InboxMessage]:
        """Show held-back messages of ``peer`` that are next in order; return them.

        ``low`` is the sender's low-water mark carried by its latest message:
        below it, a missing number was delivered earlier or expired at the
        sender, so waiting for it would be waiting forever. A message held
        back ``wait`` seconds (since it was received) is shown anyway, with
        everything before it, gaps and all. A message that arrives after its
        number was skipped is shown at once (late, never lost).
        """
        with self._write() as conn:
            return _release(conn, peer, low, now, now - wait)

    def oldest_held(self) -> float | None:
        """When the longest-held message was received (None if none is held)."""
        rows = self._rows("SELECT min(received) FROM inbox WHERE released IS NULL")
        return None if rows[0][0] is None else float(rows[0][0])

    def held_peers(self, received_by: float, limit: int) -> list[bytes]:
        """Peers with a message held back since ``received_by`` or earlier."""
        rows = self._rows(
            "SELECT DISTINCT peer FROM inbox WHERE released IS NULL AND received <= ? LIMIT ?",
            (received_by, limit),
        )
        return [bytes(row[0]) for row in rows]

    # named secrets

    def get_secret(self, name: str) -> bytes | None:
        rows = self._rows("SELECT value FROM secrets WHERE name = ?", (name,))
        return bytes(rows[0][0]) if rows else None

    def set_secret(self, name: str, value: bytes) -> None:
        with self._write() as conn:
            _upsert_secret(conn, name, value)

    def delete_secret(self, name: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM secrets WHERE name = ?", (name,))

    # reply blocks

    def add_surb(self, surb: SurbRecord) -> None:
        with self._write() as conn:
            _insert_surb(conn, surb)

    def commit_attempt(self, peer: bytes, state: bytes, now: float, surb: SurbRecord) -> None:
        """Commit an attempt's advanced session with the SURB its answer will
        use, in one transaction: both or neither."""
        with self._write() as conn:
            _upsert_session(conn, peer, state, now)
            _insert_surb(conn, surb)

    def take_surb(self, surb_id: bytes) -> SurbRecord | None:
        """Remove and return the SURB ``surb_id``: each is used at most once."""
        with self._write() as conn:
            rows = conn.execute(
                "DELETE FROM surbs WHERE id = ? RETURNING message, relays, secret, expires",
                (surb_id,),
            ).fetchall()
        if not rows:
            return None
        message, relays, secret, expires = rows[0]
        return SurbRecord(surb_id, bytes(message), _split(bytes(relays)), bytes(secret), expires)

    def surb_routes(self, message: bytes, limit: int = 64) -> list[tuple[bytes, ...]]:
        """The relays of the routes of ``message``'s unanswered SURBs."""
        rows = self._rows(
            "SELECT relays FROM surbs WHERE message = ? ORDER BY rowid DESC LIMIT ?",
            (message, limit),
        )
        return [_split(bytes(row[0])) for row in rows]

    def expire_surbs(self, now: float) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM surbs WHERE expires <= ?", (now,)).rowcount

    def count_surbs(self) -> int:
        return int(self._rows("SELECT count(*) FROM surbs")[0][0])

    # replay tags

    def add_replay_tags(
        self, epoch: int, tags: Iterable[bytes], table: ReplayTable = "replay_tags"
    ) -> None:
        """Persist accepted tags (one transaction for a batch of packets)."""
        with self._write() as conn:
            conn.executemany(
                f"INSERT OR IGNORE INTO {_table(table)} (epoch, tag) VALUES (?, ?)",  # noqa: S608
                [(epoch, tag) for tag in tags],
            )

    def replay_tags(
        self, epoch: int, limit: int, table: ReplayTable = "replay_tags"
    ) -> list[bytes]:
        rows = self._rows(
            f"SELECT tag FROM {_table(table)} WHERE epoch = ? LIMIT ?",  # noqa: S608
            (epoch, limit),
        )
        return [bytes(row[0]) for row in rows]

    def drop_replay_tags_before(self, epoch: int, table: ReplayTable = "replay_tags") -> int:
        with self._write() as conn:
            return conn.execute(
                f"DELETE FROM {_table(table)} WHERE epoch < ?",  # noqa: S608
                (epoch,),
            ).rowcount


ReplayTable = Literal["replay_tags", "delivered_tags"]
"""A relay's tags per onion-key epoch; a destination's per day of arrival."""


def _table(table: ReplayTable) -> str:
    if table not in ("replay_tags", "delivered_tags"):
        raise ValueError(f"no replay table {table!r}")
    return table


def insert_inbox(conn: sqlite3.Connection, message: InboxMessage) -> bool:
    """Insert a received message (held back if it has a ``seq``); True if new.
    A file's part goes to its file (:func:`p2pmsg.store_files.insert_file_part`)."""
    if message.kind is MessageKind.FILE_PART:
        return insert_file_part(conn, message)
    released = None if message.seq else message.received
    cur = conn.execute(
        "INSERT OR IGNORE INTO inbox (peer, id, kind, body, sent, received, seq, released)"
        " VALUES (:peer, :id, :kind, :body, :sent, :received, :seq, :released)",
        {**vars(message), "released": released},
    )
    return cur.rowcount == 1


def _release(
    conn: sqlite3.Connection, peer: bytes, low: int, now: float, overdue: float
) -> list[InboxMessage]:
    rows = conn.execute("SELECT next_seq FROM conversations WHERE peer = ?", (peer,)).fetchall()
    next_seq = max(rows[0][0] if rows else 1, low)
    # the last message held since ``overdue``: it and all before it are shown
    rows = conn.execute(
        "SELECT max(seq) FROM inbox WHERE peer = ? AND released IS NULL AND received <= ?",
        (peer, overdue),
    ).fetchall()
    next_seq = max(next_seq, rows[0][0] or 0)
    held = conn.execute(
        SELECT_INBOX + "WHERE peer = ? AND released IS NULL ORDER BY seq LIMIT ?",
        (peer, MAX_RELEASE),
    ).fetchall()
    shown: list[InboxMessage] = []
    for row in held:
        message = inbox_from_row(row)
        if message.seq > next_seq:
            break  # a gap: wait for the missing one (or the sender's low-water mark)
        shown.append(message)
        next_seq = max(next_seq, message.seq + 1)
    conn.executemany(
        "UPDATE inbox SET released = ? WHERE peer = ? AND id = ?",
        [(now, peer, m.id) for m in shown],
    )
    conn.execute(
        "INSERT INTO conversations (peer, next_seq) VALUES (?, ?)"
        " ON CONFLICT (peer) DO UPDATE SET next_seq = excluded.next_seq",
        (peer, next_seq),
    )
    return shown


def _upsert_session(conn: sqlite3.Connection, peer: bytes, state: bytes, now: float) -> None:
    conn.execute(
        "INSERT INTO sessions (peer, state, updated) VALUES (?, ?, ?)"
        " ON CONFLICT (peer) DO UPDATE SET state = excluded.state, updated = excluded.updated",
        (peer, state, now),
    )


def _insert_surb(conn: sqlite3.Connection, surb: SurbRecord) -> None:
    conn.execute(
        "INSERT INTO surbs (id, message, relays, secret, expires) VALUES (?, ?, ?, ?, ?)",
        (surb.id, surb.message, _join(surb.relays), surb.secret, surb.expires),
    )


def _upsert_secret(conn: sqlite3.Connection, name: str, value: bytes) -> None:
    conn.execute(
        "INSERT INTO secrets (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )
