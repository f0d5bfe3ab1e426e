"""The store's file format: how a file is opened, its tables and migrations, its rows.

:func:`open_connection` creates the file owner-only (0600) before SQLite sees
it, sets the pragmas (see :mod:`p2pmsg.store` for why) and migrates. SQLite
gives the ``-wal`` and ``-shm`` files the database's mode; a wider mode left
by someone else on any of the three is tightened.

The schema version lives in ``PRAGMA user_version`` and the file is marked as
ours with ``PRAGMA application_id``. :data:`MIGRATIONS` is a table: entry
``i`` turns a version-``i`` database into version ``i + 1``. :func:`migrate`
runs the missing entries and bumps the version inside one ``BEGIN IMMEDIATE``
transaction, so two processes opening a fresh file at once (the node and the
CLI) cannot both create it, and a crash half-way leaves the old version.
A database from a newer p2pmsg is refused, never downgraded.

The row types are frozen dataclasses that check their own shape; a message's
``repr`` never shows its body.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from p2pmsg.delivery.frames import MessageKind, MsgFrame
from p2pmsg.endpoint import MAX_ENDPOINT_CHARS
from p2pmsg.errors import StoreError
from p2pmsg.keys import KEY_BYTES, NODE_ID_BYTES, node_id_of

APPLICATION_ID = 0x70326D73  # "p2ms"
MESSAGE_ID_BYTES = 16
MAX_CONTACT_ENDPOINTS = 64
MAX_NAME_CHARS = 256


class OutboxState(enum.StrEnum):
    """Where an outgoing message is: queued until delivered or expired, both final."""

    QUEUED = "queued"
    DELIVERED = "delivered"
    EXPIRED = "expired"


def _check_len(what: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")


def check_endpoints(endpoints: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``endpoints`` is a bounded tuple of strings."""
    if not isinstance(endpoints, tuple) or len(endpoints) > MAX_CONTACT_ENDPOINTS:
        raise ValueError(f"endpoints must be a tuple of at most {MAX_CONTACT_ENDPOINTS}")
    for ep in endpoints:
        if not isinstance(ep, str) or not 0 < len(ep) <= MAX_ENDPOINT_CHARS:
            raise ValueError("an endpoint must be a non-empty, bounded string")


@dataclass(frozen=True)
class Contact:
    """A person we can message: a name, a node id, and where to reach them.

    ``public_key`` is ``None`` for a contact added by bare node id; when it is
    present it must hash to ``node_id``. ``endpoints`` may be given as any
    iterable of strings and is kept as a tuple.
    """

    name: str
    node_id: bytes
    public_key: bytes | None
    endpoints: tuple[str, ...]
    added: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        if not isinstance(self.name, str) or not 0 < len(self.name) <= MAX_NAME_CHARS:
            raise ValueError(f"a contact name is 1 to {MAX_NAME_CHARS} characters")
        _check_len("node_id", self.node_id, NODE_ID_BYTES)
        if self.public_key is not None:
            _check_len("public_key", self.public_key, KEY_BYTES)
            if node_id_of(self.public_key) != self.node_id:
                raise ValueError("public_key does not match node_id")
        check_endpoints(self.endpoints)


@dataclass(frozen=True, kw_only=True)
class OutboxMessage:
    """An outgoing message and its delivery state. ``repr`` hides the body."""

    id: bytes
    peer: bytes
    kind: MessageKind
    body: bytes = field(repr=False)
    created: float
    expires: float
    state: OutboxState = OutboxState.QUEUED
    attempts: int = 0
    next_attempt: float
    delivered: float | None = None
    direct: bool = False
    seq: int = 0
    """Position in the conversation with ``peer`` (from 1), assigned by ``enqueue``."""

    def __post_init__(self) -> None:
        _check_len("id", self.id, MESSAGE_ID_BYTES)
        _check_len("peer", self.peer, NODE_ID_BYTES)
        object.__setattr__(self, "kind", MessageKind(self.kind))
        object.__setattr__(self, "state", OutboxState(self.state))
        object.__setattr__(self, "direct", bool(self.direct))


@dataclass(frozen=True, kw_only=True)
class InboxMessage:
    """A received message, unique per (peer, id). ``repr`` hides the body."""

    peer: bytes
    id: bytes
    kind: MessageKind
    body: bytes = field(repr=False)
    sent: float
    received: float
    seq: int = 0
    """The sender's position of the message in the conversation; 0: unordered."""

    def __post_init__(self) -> None:
        _check_len("peer", self.peer, NODE_ID_BYTES)
        _check_len("id", self.id, MESSAGE_ID_BYTES)
        object.__setattr__(self, "kind", MessageKind(self.kind))

    @classmethod
    def of_frame(cls, peer: bytes, frame: MsgFrame, received: float) -> InboxMessage:
        """The inbox row of a message frame from node ``peer``."""
        return cls(
            peer=peer,
            id=frame.id,
            kind=frame.kind,
            body=frame.body,
            sent=frame.sent_ms / 1000,
            received=received,
            seq=frame.seq,
        )


# Field names equal column names, in the order of these SELECTs.
SELECT_OUTBOX = (
    "SELECT id, peer, kind, body, created, expires, state, attempts, next_attempt, delivered,"
    " direct, seq FROM outbox "
)
SELECT_INBOX = "SELECT peer, id, kind, body, sent, received, seq FROM inbox "
SELECT_CONTACT = "SELECT name, node_id, public_key, endpoints, added FROM contacts "
_OUTBOX_FIELDS = tuple(f.name for f in fields(OutboxMessage))
_INBOX_FIELDS = tuple(f.name for f in fields(InboxMessage))


def outbox_from_row(row: Any) -> OutboxMessage:
    # The dataclass coerces kind and state back into their enums.
    return OutboxMessage(**dict(zip(_OUTBOX_FIELDS, row, strict=True)))


def inbox_from_row(row: Any) -> InboxMessage:
    return InboxMessage(**dict(zip(_INBOX_FIELDS, row, strict=True)))


def endpoints_json(endpoints: tuple[str, ...]) -> str:
    return json.dumps(list(endpoints))


def contact_from_row(row: Any) -> Contact:
    name, node_id, public_key, endpoints, added = row
    try:
        value = json.loads(endpoints)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(ep, str) for ep in value):
        raise StoreError(f"the endpoints of contact {name!r} are damaged")
    return Contact(name, node_id, public_key, tuple(value), added)


_V1 = (
    """CREATE TABLE identity (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        public_key BLOB NOT NULL CHECK (length(public_key) = 32),
        created REAL NOT NULL)""",
    """CREATE TABLE contacts (
        name TEXT PRIMARY KEY,
        node_id BLOB UNIQUE NOT NULL CHECK (length(node_id) = 32),
        public_key BLOB NULL CHECK (public_key IS NULL OR length(public_key) = 32),
        endpoints TEXT NOT NULL,
        added REAL NOT NULL)""",
    """CREATE TABLE outbox (
        id BLOB PRIMARY KEY CHECK (length(id) = 16),
        peer BLOB NOT NULL,
        kind INTEGER NOT NULL CHECK (kind IN (0, 1)),
        body BLOB NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'expired')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        delivered REAL NULL)""",
    "CREATE INDEX outbox_due ON outbox (state, next_attempt)",
    "CREATE INDEX outbox_expiry ON outbox (state, expires)",
    "CREATE INDEX outbox_peer ON outbox (peer, state, created)",
    "CREATE INDEX outbox_created ON outbox (created)",
    """CREATE TABLE inbox (
        peer BLOB NOT NULL,
        id BLOB NOT NULL,
        kind INTEGER NOT NULL CHECK (kind IN (0, 1)),
        body BLOB NOT NULL,
        sent REAL NOT NULL,
        received REAL NOT NULL,
        PRIMARY KEY (peer, id))""",
    "CREATE INDEX inbox_received ON inbox (received)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


def _create_v1(conn: sqlite3.Connection) -> None:
    for statement in _V1:
        conn.execute(statement)


_V2 = (
    "ALTER TABLE outbox ADD COLUMN direct INTEGER NOT NULL DEFAULT 0 CHECK (direct IN (0, 1))",
    "ALTER TABLE outbox ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX outbox_peer_seq ON outbox (peer, seq)",
    "ALTER TABLE inbox ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
    # when the message was shown to the application; NULL while held back for
    # an earlier one of the same conversation (rows before v2 were all shown)
    "ALTER TABLE inbox ADD COLUMN released REAL NULL",
    "UPDATE inbox SET released = received",
    "CREATE INDEX inbox_released ON inbox (released)",
    "CREATE INDEX inbox_peer_seq ON inbox (peer, seq)",
    """CREATE TABLE conversations (
        peer BLOB PRIMARY KEY CHECK (length(peer) = 32),
        next_seq INTEGER NOT NULL)""",
    """CREATE TABLE sessions (
        peer BLOB PRIMARY KEY CHECK (length(peer) = 32),
        state BLOB NOT NULL,
        updated REAL NOT NULL)""",
    "CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    """CREATE TABLE surbs (
        id BLOB PRIMARY KEY,
        message BLOB NOT NULL,
        relays BLOB NOT NULL,
        secret BLOB NOT NULL,
        expires REAL NOT NULL)""",
    "CREATE INDEX surbs_message ON surbs (message)",
    "CREATE INDEX surbs_expires ON surbs (expires)",
    """CREATE TABLE replay_tags (
        epoch INTEGER NOT NULL,
        tag BLOB NOT NULL,
        PRIMARY KEY (epoch, tag)) WITHOUT ROWID""",
)


def _create_v2(conn: sqlite3.Connection) -> None:
    """Migration 1 -> 2: the onion tables and the outbox's ``direct`` flag."""
    for statement in _V2:
        conn.execute(statement)


_V3 = (
    # the secure link's accepted first flights (tag: the initiator's ephemeral
    # key), committed before the handshake is answered; see p2pmsg.store_link
    """CREATE TABLE link_replay (
        tag BLOB PRIMARY KEY CHECK (length(tag) = 32),
        timestamp REAL NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX link_replay_timestamp ON link_replay (timestamp)",
    """CREATE TABLE link_replay_floor (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        floor REAL NOT NULL)""",
)


def _create_v3(conn: sqlite3.Connection) -> None:
    """Migration 2 -> 3: the link layer's replay tags, kept across restarts."""
    for statement in _V3:
        conn.execute(statement)


def _create_v4(conn: sqlite3.Connection) -> None:
    """Migration 3 -> 4: the replay tags of onion layers we opened as their
    destination (with our identity key), by the day they arrived."""
    conn.execute(
        """CREATE TABLE delivered_tags (
        epoch INTEGER NOT NULL,
        tag BLOB NOT NULL CHECK (length(tag) = 32),
        PRIMARY KEY (epoch, tag)) WITHOUT ROWID"""
    )


ALL_QUEUED: Final = b""
"""The key of :data:`_V5`'s row that counts every queued message (a peer's is 32 bytes)."""

_COUNT_UP = (
    "INSERT INTO queued_counts (peer, n) VALUES ({row}.peer, 1), (x'', 1)"
    " ON CONFLICT (peer) DO UPDATE SET n = n + 1;"
)
_COUNT_DOWN = (
    "DELETE FROM queued_counts WHERE peer IN ({row}.peer, x'') AND n = 1;"
    " UPDATE queued_counts SET n = n - 1 WHERE peer IN ({row}.peer, x'');"
)
_V5 = (
    # the queued messages per peer, and in all (key x''), kept by triggers so
    # that enqueue checks its caps without counting the outbox
    """CREATE TABLE queued_counts (
        peer BLOB PRIMARY KEY,
        n INTEGER NOT NULL CHECK (n > 0)) WITHOUT ROWID""",
    "INSERT INTO queued_counts (peer, n)"
    " SELECT peer, count(*) FROM outbox WHERE state = 'queued' GROUP BY peer",
    "INSERT INTO queued_counts (peer, n)"
    " SELECT x'', count(*) FROM outbox WHERE state = 'queued' HAVING count(*) > 0",
    "CREATE TRIGGER outbox_queued_insert AFTER INSERT ON outbox"
    f" WHEN NEW.state = 'queued' BEGIN {_COUNT_UP.format(row='NEW')} END",
    "CREATE TRIGGER outbox_queued_leave AFTER UPDATE OF state, peer ON outbox"
    f" WHEN OLD.state = 'queued' BEGIN {_COUNT_DOWN.format(row='OLD')} END",
    "CREATE TRIGGER outbox_queued_enter AFTER UPDATE OF state, peer ON outbox"
    f" WHEN NEW.state = 'queued' BEGIN {_COUNT_UP.format(row='NEW')} END",
    "CREATE TRIGGER outbox_queued_delete AFTER DELETE ON outbox"
    f" WHEN OLD.state = 'queued' BEGIN {_COUNT_DOWN.format(row='OLD')} END",
)


def _create_v5(conn: sqlite3.Connection) -> None:
    """Migration 4 -> 5: the outbox's queued counts, kept by triggers."""
    for statement in _V5:
        conn.execute(statement)


_V6 = (
    # SQLite cannot widen a CHECK: each table is rebuilt (its indexes and
    # triggers go with the old one and are made again), as its ALTER TABLE
    # documentation prescribes, so that ``kind`` admits files
    """CREATE TABLE outbox_v6 (
        id BLOB PRIMARY KEY CHECK (length(id) = 16),
        peer BLOB NOT NULL,
        kind INTEGER NOT NULL CHECK (kind IN (0, 1, 2)),
        body BLOB NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'expired')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        delivered REAL NULL,
        direct INTEGER NOT NULL DEFAULT 0 CHECK (direct IN (0, 1)),
        seq INTEGER NOT NULL DEFAULT 0)""",
    "INSERT INTO outbox_v6 SELECT id, peer, kind, body, created, expires, state, attempts,"
    " next_attempt, delivered, direct, seq FROM outbox ORDER BY rowid",
    "DROP TABLE outbox",
    "ALTER TABLE outbox_v6 RENAME TO outbox",
    "CREATE INDEX outbox_due ON outbox (state, next_attempt)",
    "CREATE INDEX outbox_expiry ON outbox (state, expires)",
    "CREATE INDEX outbox_peer ON outbox (peer, state, created)",
    "CREATE INDEX outbox_created ON outbox (created)",
    "CREATE INDEX outbox_peer_seq ON outbox (peer, seq)",
    *_V5[3:],  # the queued counts' triggers (the counts themselves are unchanged)
    """CREATE TABLE inbox_v6 (
        peer BLOB NOT NULL,
        id BLOB NOT NULL,
        kind INTEGER NOT NULL CHECK (kind IN (0, 1, 3)),
        body BLOB NOT NULL,
        sent REAL NOT NULL,
        received REAL NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0,
        released REAL NULL,
        PRIMARY KEY (peer, id))""",
    "INSERT INTO inbox_v6 SELECT peer, id, kind, body, sent, received, seq, released FROM inbox"
    " ORDER BY rowid",
    "DROP TABLE inbox",
    "ALTER TABLE inbox_v6 RENAME TO inbox",
    "CREATE INDEX inbox_received ON inbox (received)",
    "CREATE INDEX inbox_released ON inbox (released)",
    "CREATE INDEX inbox_peer_seq ON inbox (peer, seq)",
    # the parts of files being received, until the last comes (p2pmsg.delivery.files)
    """CREATE TABLE file_parts (
        peer BLOB NOT NULL,
        file BLOB NOT NULL,
        idx INTEGER NOT NULL,
        body BLOB NOT NULL,
        received REAL NOT NULL,
        PRIMARY KEY (peer, file, idx))""",
    "CREATE INDEX file_parts_received ON file_parts (received)",
)


def _create_v6(conn: sqlite3.Connection) -> None:
    """Migration 5 -> 6: files (the outbox's and inbox's kinds, and the parts received)."""
    for statement in _V6:
        conn.execute(statement)


Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[Migration, ...] = (
    _create_v1,
    _create_v2,
    _create_v3,
    _create_v4,
    _create_v5,
    _create_v6,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _checked_version(conn: sqlite3.Connection) -> int:
    """The schema version, after refusing foreign and newer databases."""
    app_id = conn.execute("PRAGMA application_id").fetchall()[0][0]
    version: int = conn.execute("PRAGMA user_version").fetchall()[0][0]
    if app_id not in (0, APPLICATION_ID):
        raise StoreError("not a p2pmsg database")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"schema version {version} is newer than this p2pmsg's {SCHEMA_VERSION}; upgrade p2pmsg"
        )
    return version


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database to :data:`SCHEMA_VERSION` in one transaction.

    A current database is only read, so opening never waits for the writer.
    Raises :class:`StoreError` for a newer version or a foreign database;
    ``sqlite3.Error`` passes through for the caller to translate.
    """
    if _checked_version(conn) == SCHEMA_VERSION:
        return
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        version = _checked_version(conn)  # again: another process may have just migrated
        if version == SCHEMA_VERSION:
            return
        if version == 0 and conn.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall():
            raise StoreError("not a p2pmsg database")
        for step in MIGRATIONS[version:]:
            step(conn)
        # PRAGMAs take no parameters; both values are our own integers.
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


_ADVICE: Final = {
    "SQLITE_FULL": "the disk is full; free some space and try again (nothing of this"
    " write was kept, nothing before it was lost)",
    "SQLITE_IOERR": "the disk failed to read or write; check it, then try again",
    "SQLITE_CORRUPT": "the database file is damaged; stop the node and move the file"
    " aside to start afresh (identity.key keeps the node's identity and invite), or"
    " restore it from a backup",
    "SQLITE_NOTADB": "the database file is not a p2pmsg database or is damaged beyond"
    " reading; move it aside, or restore it from a backup",
}
"""What to tell the person about the SQLite errors they can do something about."""


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn any SQLite error into a one-line :class:`StoreError`, with advice
    for a full disk, a failing one and a damaged file."""
    try:
        yield
    except sqlite3.Error as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        name = getattr(exc, "sqlite_errorname", "")  # or extended: SQLITE_IOERR_WRITE
        advice = next(
            (text for code, text in _ADVICE.items() if name == code or name.startswith(code + "_")),
            "",
        )
        raise StoreError(f"{what}: {detail}" + (f": {advice}" if advice else "")) from exc


def _create_private(path: Path) -> None:
    """Create the file owner-only before SQLite sees it (an existing file is kept)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open {path}: {exc.strerror}") from exc
    os.close(fd)


def _tighten(path: Path) -> None:
    """Make the database and its WAL files owner-only if someone widened them."""
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                file.chmod(0o600)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"cannot make {file} private: {exc.strerror}") from exc


def _configure(conn: sqlite3.Connection, busy_timeout: float) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000):d}")
    if conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0] != "wal":
        raise StoreError("cannot use write-ahead logging here")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn)


def open_connection(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A configured, migrated connection in autocommit mode. Raises :class:`StoreError`."""
    _create_private(path)
    with translated(f"cannot open {path}"):
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    try:
        with translated(f"cannot open {path}"):
            _configure(conn, busy_timeout)
        _tighten(path)
    except BaseException:
        conn.close()
        raise
    return conn
