"""The node's SQLite store: identity, contacts, outbox, inbox and small metadata.

Theory of operation. :class:`Database` is synchronous: plain methods over one
``sqlite3.Connection``, used directly by the CLI for quick commands and, through
:class:`Store`, by the node. :class:`Store` runs each call through an
injectable *offload* function (``trio.to_thread.run_sync`` by default, so the
event loop never blocks on disk; :func:`run_inline` for tests under an
autojump clock) and serialises the calls with one ``trio.Lock``: the single
connection is shared between worker threads (``check_same_thread=False``) and
the lock keeps each call's transaction whole and at most one thread busy.

Durability: every write is one ``BEGIN IMMEDIATE`` transaction committed
before the method returns. ``synchronous=FULL`` makes that commit reach the
disk, so the outbox row exists before a message leaves the host and an inbox
row exists before the sender is acked: kill -9 or power loss loses nothing.
WAL lets the CLI read while the node writes, and ``busy_timeout`` (5 s) lets
the CLI's occasional write (``contacts add``) wait for the node's instead of
failing. The files are owner-only (0600); see :mod:`p2pmsg.store_schema`.

Bounds: every list method takes a ``limit`` (default :data:`DEFAULT_LIMIT`, at
most :data:`MAX_LIMIT`, else ``ValueError``) enforced in SQL. Errors: any
SQLite failure becomes :class:`StoreError` with a one-line message; malformed
arguments are ``ValueError``. The store never reads the clock: times are
float unix seconds from the caller.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, Final, ParamSpec, Protocol, Self, TypeVar, TypeVarTuple

import trio

from p2pmsg.delivery.frames import MessageKind
from p2pmsg.errors import OutboxFull, StoreError
from p2pmsg.keys import KEY_BYTES, node_id_of
from p2pmsg.store_files import FilesFull, FileTables
from p2pmsg.store_link import LinkReplayTables
from p2pmsg.store_onion import OnionTables, SurbRecord, insert_inbox
from p2pmsg.store_schema import (
    ALL_QUEUED,
    SCHEMA_VERSION,
    SELECT_CONTACT,
    SELECT_INBOX,
    SELECT_OUTBOX,
    Contact,
    InboxMessage,
    OutboxMessage,
    OutboxState,
    check_endpoints,
    contact_from_row,
    endpoints_json,
    inbox_from_row,
    open_connection,
    outbox_from_row,
    translated,
)

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "SCHEMA_VERSION",
    "Contact",
    "Database",
    "FilesFull",
    "InboxMessage",
    "MessageKind",
    "Offload",
    "OutboxMessage",
    "OutboxState",
    "Store",
    "SurbRecord",
    "run_inline",
]

DEFAULT_LIMIT = 1000
MAX_QUEUED_PER_PEER = 1000
"""Messages that may wait for one contact; a send beyond is refused (OutboxFull)."""
MAX_QUEUED = 20_000
"""Messages that may wait in all."""
MAX_LIMIT = 10_000
BUSY_TIMEOUT = 5.0

T = TypeVar("T")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")


COUNT_QUEUED: Final = "SELECT n FROM queued_counts WHERE peer = ?"
FILE_WINDOW: Final = 8
"""Queued file parts sent to one peer at once (the rest wait for their acks):
a quarter MiB in flight, so a transfer neither floods its routes nor the
recipient's reassembly, and one lost part delays only itself."""
_WAITING_PARTS: Final = (
    "WITH waiting_parts AS (SELECT rowid FROM (SELECT rowid, row_number() OVER"
    " (PARTITION BY peer ORDER BY created, rowid) AS n FROM outbox WHERE state = 'queued'"
    " AND kind = ?) WHERE n > ?) "
)
"""The queued file parts past each peer's window, as ``waiting_parts``; its
parameters are :data:`_WAITING_PARAMS`."""
_WAITING_PARAMS: Final = (int(MessageKind.FILE_PART), FILE_WINDOW)


def _count(rows: list[Any]) -> int:
    """The count a :data:`COUNT_QUEUED` query found: no row is none queued."""
    return int(rows[0][0]) if rows else 0


def _check_limit(limit: int) -> int:
    if not 0 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 0 and {MAX_LIMIT}")
    return limit


class Database(OnionTables, FileTables, LinkReplayTables):
    """The store over one SQLite connection; see the module docstring.

    Not thread-safe by itself: one caller at a time (:class:`Store` ensures it).
    Every method raises :class:`StoreError` when SQLite fails or the database
    is closed.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, busy_timeout: float = BUSY_TIMEOUT) -> Self:
        """Open (creating owner-only) and migrate the database at ``path``.

        Raises :class:`StoreError` when the file cannot be opened, is not a
        p2pmsg database, stays locked past ``busy_timeout`` seconds, or comes
        from a newer p2pmsg.
        """
        return cls(open_connection(Path(path), busy_timeout))

    def close(self) -> None:
        """Close the connection; closing twice is harmless."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the database is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on exit, rolled back on any error."""
        conn = self._live()
        with translated("write failed"), conn:
            conn.execute("BEGIN IMMEDIATE")
            yield conn

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        """Run a query whose size the SQL bounds (LIMIT, key lookup or aggregate)."""
        conn = self._live()
        with translated("read failed"):
            return conn.execute(sql, params).fetchall()

    # identity

    def set_identity(self, public_key: bytes, created: float) -> None:
        """Record this node's public key; again with the same key is a no-op.

        Raises :class:`StoreError` when the database holds a different key.
        """
        if len(public_key) != KEY_BYTES:
            raise ValueError(f"a public key is {KEY_BYTES} bytes")
        with self._write() as conn:
            row = conn.execute("SELECT public_key FROM identity").fetchall()
            if row and row[0][0] != public_key:
                raise StoreError("this database belongs to another identity")
            if not row:
                conn.execute(
                    "INSERT INTO identity (singleton, public_key, created) VALUES (1, ?, ?)",
                    (public_key, created),
                )

    def get_identity(self) -> bytes | None:
        rows = self._rows("SELECT public_key FROM identity")
        return bytes(rows[0][0]) if rows else None

    # contacts

    def add_contact(self, contact: Contact) -> None:
        """Add a contact. Raises :class:`StoreError` if the name or node id is taken."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM contacts WHERE name = ?", (contact.name,)).fetchall():
                raise StoreError(f"there is already a contact named {contact.name!r}")
            other = conn.execute(
                "SELECT name FROM contacts WHERE node_id = ?", (contact.node_id,)
            ).fetchall()
            if other:
                raise StoreError(f"that node is already the contact {other[0][0]!r}")
            conn.execute(
                "INSERT INTO contacts (name, node_id, public_key, endpoints, added)"
                " VALUES (:name, :node_id, :public_key, :endpoints, :added)",
                {**vars(contact), "endpoints": endpoints_json(contact.endpoints)},
            )

    def update_contact_endpoints(self, node_id: bytes, endpoints: tuple[str, ...]) -> bool:
        """Replace a contact's endpoints; False when no contact has that node id."""
        endpoints = tuple(endpoints)
        check_endpoints(endpoints)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE contacts SET endpoints = ? WHERE node_id = ?",
                (endpoints_json(endpoints), node_id),
            )
            return cur.rowcount == 1

    def set_contact_key(self, node_id: bytes, public_key: bytes) -> bool:
        """Fill in the key of a contact added by bare node id; False when no
        such contact lacks it. Raises ``ValueError`` if the key is not the id's."""
        if len(public_key) != KEY_BYTES or node_id_of(public_key) != node_id:
            raise ValueError("the public key does not hash to the node id")
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE contacts SET public_key = ? WHERE node_id = ? AND public_key IS NULL",
                (public_key, node_id),
            )
            return cur.rowcount == 1

    def get_contact(self, name: str) -> Contact | None:
        rows = self._rows(SELECT_CONTACT + "WHERE name = ?", (name,))
        return contact_from_row(rows[0]) if rows else None

    def contact_by_node_id(self, node_id: bytes) -> Contact | None:
        rows = self._rows(SELECT_CONTACT + "WHERE node_id = ?", (node_id,))
        return contact_from_row(rows[0]) if rows else None

    def list_contacts(self, limit: int = DEFAULT_LIMIT) -> list[Contact]:
        """Contacts by name, at most ``limit``."""
        rows = self._rows(SELECT_CONTACT + "ORDER BY name LIMIT ?", (_check_limit(limit),))
        return [contact_from_row(row) for row in rows]

    def remove_contact(self, name: str) -> bool:
        """Remove a contact (its queued messages stay); False if there was none."""
        with self._write() as conn:
            return conn.execute("DELETE FROM contacts WHERE name = ?", (name,)).rowcount == 1

    # outbox

    def enqueue(
        self,
        message: OutboxMessage,
        *,
        max_for_peer: int = MAX_QUEUED_PER_PEER,
        max_total: int = MAX_QUEUED,
    ) -> None:
        """Commit a new queued message, numbered next in its conversation
        (``message.seq`` is ignored). Raises :class:`StoreError` on a duplicate
        id, :class:`OutboxFull` when ``max_for_peer`` messages for its peer, or
        ``max_total`` in all, are queued already (checked in the same
        transaction, so concurrent sends cannot overshoot)."""
        self.enqueue_all([message], max_for_peer=max_for_peer, max_total=max_total)

    def enqueue_all(
        self,
        messages: Sequence[OutboxMessage],
        *,
        max_for_peer: int = MAX_QUEUED_PER_PEER,
        max_total: int = MAX_QUEUED,
    ) -> None:
        """:meth:`enqueue` for messages to one peer, all or none: the parts of
        a file (unnumbered, sent :data:`FILE_WINDOW` at a time) or messages."""
        if not messages:
            return
        peer = messages[0].peer
        for message in messages:
            if message.state is not OutboxState.QUEUED or message.delivered is not None:
                raise ValueError("only a queued, undelivered message can be enqueued")
            if message.peer != peer:
                raise ValueError("messages enqueued together go to one peer")
        with self._write() as conn:
            for message in messages:
                if conn.execute("SELECT 1 FROM outbox WHERE id = ?", (message.id,)).fetchall():
                    raise StoreError("a message with that id is already in the outbox")
            for_peer, total = (
                _count(conn.execute(COUNT_QUEUED, (key,)).fetchall()) for key in (peer, ALL_QUEUED)
            )
            if for_peer + len(messages) > max_for_peer:
                raise OutboxFull(f"{for_peer} for this contact")
            if total + len(messages) > max_total:
                raise OutboxFull(f"{total} in all")
            seq = conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM outbox WHERE peer = ?", (peer,)
            ).fetchall()[0][0]
            for message in messages:
                numbered = message.kind is not MessageKind.FILE_PART
                conn.execute(
                    "INSERT INTO outbox (id, peer, kind, body, created, expires, state, attempts,"
                    " next_attempt, delivered, direct, seq) VALUES (:id, :peer, :kind, :body,"
                    " :created, :expires, 'queued', :attempts, :next_attempt, NULL, :direct,"
                    " :seq)",
                    {**vars(message), "seq": seq if numbered else 0},
                )
                seq += numbered

    def due_messages(self, now: float, limit: int = DEFAULT_LIMIT) -> list[OutboxMessage]:
        """Queued messages to try now, oldest first: due, and not past their expiry."""
        rows = self._rows(
            _WAITING_PARTS + SELECT_OUTBOX + "WHERE state = 'queued' AND next_attempt <= ?"
            " AND expires > ? AND rowid NOT IN waiting_parts ORDER BY created, rowid LIMIT ?",
            (*_WAITING_PARAMS, now, now, _check_limit(limit)),
        )
        return [outbox_from_row(row) for row in rows]

    def next_due_time(self) -> float | None:
        """The earliest ``next_attempt`` of a queued message that may be sent
        (a file's parts past :data:`FILE_WINDOW` may not), None if none is queued."""
        value = self._rows(
            _WAITING_PARTS + "SELECT min(next_attempt) FROM outbox"  # noqa: S608 - constants
            " WHERE state = 'queued' AND rowid NOT IN waiting_parts",
            _WAITING_PARAMS,
        )[0][0]
        return None if value is None else float(value)

    def next_expiry_time(self) -> float | None:
        """The earliest ``expires`` of a queued message, None if none is queued."""
        value = self._rows("SELECT min(expires) FROM outbox WHERE state = 'queued'")[0][0]
        return None if value is None else float(value)

    def pending_for_peer(
        self, peer: bytes, limit: int = DEFAULT_LIMIT, *, due: float | None = None
    ) -> list[OutboxMessage]:
        """Queued messages for ``peer``, oldest first: whether due or not, or
        with ``due`` only those sent direct or due by then (so that older
        messages waiting for a retry never hide newer ones past ``limit``) and
        of a file's parts only the first :data:`FILE_WINDOW` queued.

        Includes messages past their expiry until :meth:`expire_due` runs.
        """
        where = "WHERE peer = ? AND state = 'queued'"
        params: tuple[object, ...] = (*_WAITING_PARAMS, peer)
        if due is not None:
            where += " AND (direct OR next_attempt <= ?) AND rowid NOT IN waiting_parts"
            params += (due,)
        rows = self._rows(
            _WAITING_PARTS + SELECT_OUTBOX + where + " ORDER BY created, rowid LIMIT ?",
            (*params, _check_limit(limit)),
        )
        return [outbox_from_row(row) for row in rows]

    def mark_attempt(self, id: bytes, next_attempt: float) -> bool:
        """Count one send attempt and reschedule; False unless the message is queued."""
        return self.mark_attempts([(id, next_attempt)]) == 1

    def mark_attempts(self, schedule: Sequence[tuple[bytes, float]]) -> int:
        """:meth:`mark_attempt` for each ``(id, next_attempt)``, in one
        transaction; how many were queued."""
        with self._write() as conn:
            cur = conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?"
                " WHERE id = ? AND state = 'queued'",
                [(when, id) for id, when in schedule],
            )
            return cur.rowcount

    def retry_sooner(self, id: bytes, when: float) -> bytes | None:
        """Bring a queued message's next attempt forward to ``when`` (never
        later); its peer, or None unless the message is queued."""
        with self._write() as conn:
            row = conn.execute(
                "UPDATE outbox SET next_attempt = min(next_attempt, ?)"
                " WHERE id = ? AND state = 'queued' RETURNING peer",
                (when, id),
            ).fetchone()
            return bytes(row[0]) if row else None

    def waiting(self, after: float) -> bool:
        """Whether a queued message's next attempt is later than ``after``."""
        query = "SELECT 1 FROM outbox WHERE state = 'queued' AND next_attempt > ? LIMIT 1"
        return bool(self._rows(query, (after,)))

    def retry_all_sooner(self, when: float) -> int:
        """Bring every queued message's next attempt forward to ``when`` (never later); how many."""
        with self._write() as conn:
            return conn.execute(
                "UPDATE outbox SET next_attempt = ? WHERE state = 'queued' AND next_attempt > ?",
                (when, when),
            ).rowcount

    def mark_delivered(self, id: bytes, now: float) -> bool:
        """Mark an acked message delivered; True only if it was queued (idempotent).

        A late ack for an expired message leaves it expired.
        """
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET state = 'delivered', delivered = ?"
                " WHERE id = ? AND state = 'queued'",
                (now, id),
            )
            return cur.rowcount == 1

    def expire_due(self, now: float, limit: int = DEFAULT_LIMIT) -> list[bytes]:
        """Expire up to ``limit`` queued messages with ``expires <= now``; their ids.

        Call again while it returns ``limit`` ids.
        """
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE outbox SET state = 'expired' WHERE id IN (SELECT id FROM outbox"
                " WHERE state = 'queued' AND expires <= ? ORDER BY expires, rowid LIMIT ?)"
                " RETURNING id",
                (now, _check_limit(limit)),
            ).fetchall()
        return [bytes(row[0]) for row in rows]

    def list_outbox(self, limit: int = DEFAULT_LIMIT) -> list[OutboxMessage]:
        """The newest ``limit`` outbox messages in any state, newest last."""
        rows = self._rows(
            SELECT_OUTBOX + "ORDER BY created DESC, rowid DESC LIMIT ?", (_check_limit(limit),)
        )
        return [outbox_from_row(row) for row in reversed(rows)]

    def count_queued(self, peer: bytes = ALL_QUEUED) -> int:
        """Queued messages for ``peer``, or in all."""
        return _count(self._rows(COUNT_QUEUED, (peer,)))

    # inbox

    def add_received(self, message: InboxMessage) -> bool:
        """Commit a received message; True if new, False if (peer, id) was seen.

        Returns only after the commit, so the caller may ack on either answer.
        A message with a ``seq`` is held back until :meth:`release` shows it.
        """
        with self._write() as conn:
            return insert_inbox(conn, message)

    def list_inbox(self, limit: int = DEFAULT_LIMIT) -> list[InboxMessage]:
        """The newest ``limit`` messages shown to the application, newest last,
        each conversation in its sender's order (held-back ones are not listed)."""
        rows = self._rows(
            SELECT_INBOX + "WHERE released IS NOT NULL ORDER BY released DESC, seq DESC,"
            " rowid DESC LIMIT ?",
            (_check_limit(limit),),
        )
        return [inbox_from_row(row) for row in reversed(rows)]

    def count_inbox(self) -> int:
        return int(self._rows("SELECT count(*) FROM inbox")[0][0])

    # meta

    def get_meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


class Offload(Protocol):
    """Runs ``fn(*args)`` somewhere and returns its result, like ``trio.to_thread.run_sync``."""

    def __call__(self, fn: Callable[[*Ts], T], /, *args: *Ts) -> Awaitable[T]: ...


async def run_inline(fn: Callable[[*Ts], T], /, *args: *Ts) -> T:
    """An :class:`Offload` that calls ``fn`` in the calling task.

    For tests under trio's autojump clock, which would jump simulated time
    while a worker thread runs.
    """
    return fn(*args)


def _offloaded(
    method: Callable[Concatenate[Database, P], T],
) -> Callable[Concatenate[Store, P], Coroutine[Any, Any, T]]:
    """The async form of a :class:`Database` method, run under the store's lock."""

    async def call(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(functools.partial(method, self._db, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


class Store:
    """The async facade over :class:`Database` that the node uses.

    Each method is the same-named :class:`Database` method, run through the
    offload function while holding one ``trio.Lock``. Cancellation: waiting
    for the lock is cancellable; a call already handed to the default
    offload runs to completion (a write is committed or not, never half),
    and the cancellation is delivered afterwards.
    """

    def __init__(self, db: Database, *, offload: Offload = trio.to_thread.run_sync) -> None:
        self._db = db
        self._offload = offload
        self._lock = trio.Lock()

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, offload: Offload = trio.to_thread.run_sync
    ) -> Self:
        """Open the database as :meth:`Database.open` does, through ``offload``."""
        db = await offload(Database.open, path)
        return cls(db, offload=offload)

    async def close(self) -> None:
        """Close after any call in flight; shielded, so the connection never leaks."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                await self._offload(self._db.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, fn: Callable[[], T]) -> T:
        async with self._lock:
            return await self._offload(fn)

    set_identity = _offloaded(Database.set_identity)
    get_identity = _offloaded(Database.get_identity)
    add_contact = _offloaded(Database.add_contact)
    update_contact_endpoints = _offloaded(Database.update_contact_endpoints)
    set_contact_key = _offloaded(Database.set_contact_key)
    get_contact = _offloaded(Database.get_contact)
    contact_by_node_id = _offloaded(Database.contact_by_node_id)
    list_contacts = _offloaded(Database.list_contacts)
    remove_contact = _offloaded(Database.remove_contact)
    enqueue = _offloaded(Database.enqueue)
    enqueue_all = _offloaded(Database.enqueue_all)
    due_messages = _offloaded(Database.due_messages)
    next_due_time = _offloaded(Database.next_due_time)
    next_expiry_time = _offloaded(Database.next_expiry_time)
    pending_for_peer = _offloaded(Database.pending_for_peer)
    mark_attempt = _offloaded(Database.mark_attempt)
    mark_attempts = _offloaded(Database.mark_attempts)
    mark_delivered = _offloaded(Database.mark_delivered)
    retry_sooner = _offloaded(Database.retry_sooner)
    waiting = _offloaded(Database.waiting)
    retry_all_sooner = _offloaded(Database.retry_all_sooner)
    expire_due = _offloaded(Database.expire_due)
    list_outbox = _offloaded(Database.list_outbox)
    count_queued = _offloaded(Database.count_queued)
    add_received = _offloaded(Database.add_received)
    list_inbox = _offloaded(Database.list_inbox)
    count_inbox = _offloaded(Database.count_inbox)
    get_meta = _offloaded(Database.get_meta)
    set_meta = _offloaded(Database.set_meta)
    get_session = _offloaded(Database.get_session)
    save_session = _offloaded(Database.save_session)
    commit_received_sealed = _offloaded(Database.commit_received_sealed)
    get_secret = _offloaded(Database.get_secret)
    set_secret = _offloaded(Database.set_secret)
    delete_secret = _offloaded(Database.delete_secret)
    add_surb = _offloaded(Database.add_surb)
    commit_attempt = _offloaded(Database.commit_attempt)
    take_surb = _offloaded(Database.take_surb)
    surb_routes = _offloaded(Database.surb_routes)
    expire_surbs = _offloaded(Database.expire_surbs)
    count_surbs = _offloaded(Database.count_surbs)
    add_replay_tags = _offloaded(Database.add_replay_tags)
    replay_tags = _offloaded(Database.replay_tags)
    drop_replay_tags_before = _offloaded(Database.drop_replay_tags_before)
    add_link_replay_tags = _offloaded(Database.add_link_replay_tags)
    load_link_replay = _offloaded(Database.load_link_replay)
    count_link_replay = _offloaded(Database.count_link_replay)
    low_water = _offloaded(Database.low_water)
    release = _offloaded(Database.release)
    oldest_held = _offloaded(Database.oldest_held)
    held_peers = _offloaded(Database.held_peers)
    release_files = _offloaded(Database.release_files)
    count_file_parts = _offloaded(Database.count_file_parts)
    mark_acked = _offloaded(Database.mark_acked)
    get_file = _offloaded(Database.get_file)
    file_progress = _offloaded(Database.file_progress)
