"""The SQLite store, on real files: durability, permissions, state machines, bounds."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from p2pmsg import store_schema
from p2pmsg.errors import OutboxFull, StoreError
from p2pmsg.keys import Identity
from p2pmsg.store import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    SCHEMA_VERSION,
    Contact,
    Database,
    InboxMessage,
    MessageKind,
    OutboxMessage,
    OutboxState,
    Store,
    run_inline,
)

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def public(i: int) -> bytes:
    return Identity(bytes([i]) * 32).public.key


def node(i: int) -> bytes:
    return Identity(bytes([i]) * 32).node_id


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


PEER = node(1)


def out(
    n: int,
    *,
    peer: bytes = PEER,
    created: float = 100.0,
    expires: float = 1000.0,
    next_attempt: float | None = None,
    body: bytes = b"attack at dawn",
) -> OutboxMessage:
    return OutboxMessage(
        id=mid(n),
        peer=peer,
        kind=MessageKind.TEXT,
        body=body,
        created=created,
        expires=expires,
        next_attempt=created if next_attempt is None else next_attempt,
    )


def inb(n: int, *, peer: bytes = PEER, received: float = 200.0) -> InboxMessage:
    return InboxMessage(
        peer=peer,
        id=mid(n),
        kind=MessageKind.BYTES,
        body=b"\x00secret",
        sent=150.0,
        received=received,
    )


def contact(name: str, i: int, *, with_key: bool = True) -> Contact:
    return Contact(name, node(i), public(i) if with_key else None, ("tcp:192.0.2.1:4001",), 10.0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "node.db"


@pytest.fixture
def db(path: Path) -> Iterator[Database]:
    with Database.open(path) as database:
        yield database


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# opening, files and pragmas


def test_database_and_wal_files_are_owner_only(path: Path) -> None:
    old = os.umask(0o022)
    try:
        with Database.open(path) as database:
            database.set_meta("k", "v")
            for suffix in ("", "-wal", "-shm"):
                mode = stat.S_IMODE(Path(f"{path}{suffix}").stat().st_mode)
                assert mode == 0o600, (suffix, oct(mode))
    finally:
        os.umask(old)


def test_an_existing_world_readable_database_is_tightened(path: Path) -> None:
    Database.open(path).close()
    path.chmod(0o644)
    Database.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_pragmas(db: Database) -> None:
    conn = db._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6


def test_reopen_persists_everything(path: Path) -> None:
    with Database.open(path) as database:
        database.set_identity(public(9), 1.0)
        database.add_contact(contact("bob", 2))
        database.enqueue(out(1))
        assert database.add_received(inb(1))
        database.set_meta("routing", "{}")
    with Database.open(path) as database:
        assert database.get_identity() == public(9)
        assert database.get_contact("bob") == contact("bob", 2)
        assert database.list_outbox() == [replace(out(1), seq=1)]
        assert database.list_inbox() == [inb(1)]
        assert database.get_meta("routing") == "{}"


def test_a_newer_schema_is_refused(path: Path) -> None:
    Database.open(path).close()
    conn = raw(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer") as info:
        Database.open(path)
    assert "\n" not in info.value.user_message()


def test_a_foreign_sqlite_database_is_refused(path: Path) -> None:
    conn = raw(path)
    conn.execute("CREATE TABLE photos (x)")
    conn.close()
    with pytest.raises(StoreError, match="not a p2pmsg database"):
        Database.open(path)


def test_a_foreign_application_id_is_refused(path: Path) -> None:
    conn = raw(path)
    conn.execute("PRAGMA application_id = 42")
    conn.close()
    with pytest.raises(StoreError, match="not a p2pmsg database"):
        Database.open(path)


def test_not_a_database(path: Path) -> None:
    path.write_bytes(b"this is not sqlite\n" * 100)
    with pytest.raises(StoreError, match="not a database") as info:
        Database.open(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("where", ["directory", "missing parent"])
def test_unopenable_paths(tmp_path: Path, where: str) -> None:
    target = tmp_path if where == "directory" else tmp_path / "nope" / "node.db"
    with pytest.raises(StoreError, match="cannot open"):
        Database.open(target)


def test_a_locked_database(path: Path) -> None:
    holder = raw(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            Database.open(path, busy_timeout=0.01)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_opening_a_current_database_does_not_wait_for_the_writer(path: Path) -> None:
    Database.open(path).close()
    writer = raw(path)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with Database.open(path, busy_timeout=0.01) as reader:
            assert reader.count_queued() == 0
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_migrations_run_in_order_from_the_stored_version(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Database.open(path).close()

    def add_column(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE contacts ADD COLUMN note TEXT")

    monkeypatch.setattr(store_schema, "MIGRATIONS", (*store_schema.MIGRATIONS, add_column))
    version = store_schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(store_schema, "SCHEMA_VERSION", version)
    Database.open(path).close()
    conn = raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == version
    assert "note" in {row[1] for row in conn.execute("PRAGMA table_info(contacts)")}
    conn.close()


def test_a_second_connection_sees_writes(path: Path, db: Database) -> None:
    """The CLI adds a contact while the node holds the database open."""
    with Database.open(path) as cli:
        cli.add_contact(contact("bob", 2))
    assert db.get_contact("bob") == contact("bob", 2)


def test_closed_database(path: Path) -> None:
    database = Database.open(path)
    database.close()
    database.close()
    with pytest.raises(StoreError, match="closed"):
        database.count_queued()
    with pytest.raises(StoreError, match="closed"):
        database.set_meta("k", "v")


# identity and meta


def test_identity(db: Database) -> None:
    assert db.get_identity() is None
    db.set_identity(public(1), 5.0)
    db.set_identity(public(1), 6.0)
    assert db.get_identity() == public(1)
    with pytest.raises(StoreError, match="belongs to another identity"):
        db.set_identity(public(2), 7.0)
    with pytest.raises(ValueError, match="32 bytes"):
        db.set_identity(b"short", 7.0)


def test_meta(db: Database) -> None:
    assert db.get_meta("k") is None
    db.set_meta("k", "one")
    db.set_meta("k", "two")
    assert db.get_meta("k") == "two"


# contacts


def test_contacts_crud(db: Database) -> None:
    bob, carol = contact("bob", 2), contact("carol", 3, with_key=False)
    db.add_contact(carol)
    db.add_contact(bob)
    assert db.list_contacts() == [bob, carol]
    assert db.get_contact("carol") == carol
    assert carol.public_key is None
    assert db.contact_by_node_id(node(2)) == bob
    assert db.get_contact("dave") is None
    assert db.contact_by_node_id(node(4)) is None
    assert db.update_contact_endpoints(node(2), ("ws:198.51.100.7:443/chat", "sim:h1"))
    assert db.get_contact("bob") == replace(bob, endpoints=("ws:198.51.100.7:443/chat", "sim:h1"))
    assert not db.update_contact_endpoints(node(4), ())
    assert db.remove_contact("bob")
    assert not db.remove_contact("bob")
    assert db.list_contacts() == [carol]


def test_duplicate_contacts(db: Database) -> None:
    db.add_contact(contact("bob", 2))
    with pytest.raises(StoreError, match="already a contact named 'bob'"):
        db.add_contact(contact("bob", 3))
    with pytest.raises(StoreError, match="already the contact 'bob'"):
        db.add_contact(contact("robert", 2))
    assert db.list_contacts() == [contact("bob", 2)]


def test_contact_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="does not match"):
        Contact("bob", node(2), public(3), (), 0.0)
    with pytest.raises(ValueError, match="node_id"):
        Contact("bob", b"short", None, (), 0.0)
    with pytest.raises(ValueError, match="name"):
        Contact("", node(2), None, (), 0.0)
    with pytest.raises(ValueError, match="endpoints"):
        Contact("bob", node(2), None, ("x",) * 65, 0.0)
    assert Contact("bob", node(2), None, ["tcp:a:1"], 0.0).endpoints == ("tcp:a:1",)  # type: ignore[arg-type]


def test_damaged_endpoints_are_a_store_error(path: Path, db: Database) -> None:
    db.add_contact(contact("bob", 2))
    conn = raw(path)
    conn.execute("UPDATE contacts SET endpoints = 'nope'")
    conn.close()
    with pytest.raises(StoreError, match="damaged"):
        db.get_contact("bob")


# outbox


def test_outbox_lifecycle(db: Database) -> None:
    db.enqueue(out(1, created=100.0, next_attempt=100.0, expires=1000.0))
    assert db.count_queued() == 1
    assert db.next_due_time() == 100.0
    assert db.next_expiry_time() == 1000.0
    assert db.due_messages(99.0) == []
    assert [m.id for m in db.due_messages(100.0)] == [mid(1)]
    assert db.mark_attempt(mid(1), 130.0)
    assert db.due_messages(129.0) == []
    (again,) = db.due_messages(130.0)
    assert again.attempts == 1
    assert again.next_attempt == 130.0
    assert db.mark_delivered(mid(1), 131.0)
    assert not db.mark_delivered(mid(1), 132.0)
    assert not db.mark_attempt(mid(1), 200.0)
    (done,) = db.list_outbox()
    assert (done.state, done.delivered, done.attempts) == (OutboxState.DELIVERED, 131.0, 1)
    assert db.count_queued() == 0
    assert db.next_due_time() is None
    assert db.due_messages(10_000.0) == []
    assert db.expire_due(10_000.0) == []


def test_outbox_expiry(db: Database) -> None:
    db.enqueue(out(1, expires=500.0))
    db.enqueue(out(2, expires=600.0))
    assert [m.id for m in db.due_messages(499.0)] == [mid(1), mid(2)]
    assert [m.id for m in db.due_messages(500.0)] == [mid(2)]  # never send past expiry
    assert db.expire_due(499.0) == []
    assert db.expire_due(500.0) == [mid(1)]
    assert db.expire_due(500.0) == []
    assert not db.mark_delivered(mid(1), 501.0)  # a late ack leaves it expired
    assert not db.mark_attempt(mid(1), 501.0)
    states = {m.id: m.state for m in db.list_outbox()}
    assert states == {mid(1): OutboxState.EXPIRED, mid(2): OutboxState.QUEUED}
    assert db.count_queued() == 1


def test_a_batch_of_attempts_is_marked_at_once(db: Database) -> None:
    for n in (1, 2, 3):
        db.enqueue(out(n, next_attempt=100.0))
    db.mark_delivered(mid(2), 101.0)
    assert db.mark_attempts([(mid(1), 150.0), (mid(2), 160.0), (mid(3), 170.0)]) == 2
    rows = {m.id: (m.attempts, m.next_attempt) for m in db.list_outbox()}
    assert rows == {mid(1): (1, 150.0), mid(2): (0, 100.0), mid(3): (1, 170.0)}


def test_enqueue_refuses_duplicates_and_non_queued(db: Database) -> None:
    db.enqueue(out(1))
    with pytest.raises(StoreError, match="already in the outbox"):
        db.enqueue(out(1, body=b"other"))
    with pytest.raises(ValueError, match="queued"):
        db.enqueue(replace(out(2), state=OutboxState.DELIVERED))
    assert db.list_outbox() == [replace(out(1), seq=1)]


def test_a_full_outbox_refuses_a_send_and_keeps_what_it_holds(db: Database) -> None:
    db.enqueue(out(1), max_for_peer=2, max_total=3)
    db.enqueue(out(2), max_for_peer=2, max_total=3)
    with pytest.raises(OutboxFull, match="2 for this contact"):
        db.enqueue(out(3), max_for_peer=2, max_total=3)
    db.enqueue(out(4, peer=node(2)), max_for_peer=2, max_total=3)  # another contact's room
    with pytest.raises(OutboxFull, match="3 in all"):
        db.enqueue(out(5, peer=node(3)), max_for_peer=2, max_total=3)
    assert [m.id for m in db.list_outbox()] == [mid(1), mid(2), mid(4)]
    db.mark_delivered(mid(1), 200.0)  # delivered messages make room
    db.enqueue(out(3), max_for_peer=2, max_total=3)
    assert db.count_queued() == 3
    assert "send again when some are" in OutboxFull("x").user_message()


def test_a_version_4_database_counts_what_it_has_queued(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for step in store_schema.MIGRATIONS[:4]:
        step(conn)
    conn.execute(f"PRAGMA application_id = {store_schema.APPLICATION_ID:d}")
    conn.execute("PRAGMA user_version = 4")
    rows = [(1, "queued"), (1, "queued"), (1, "delivered"), (2, "queued")]
    for n, (peer, state) in enumerate(rows):
        conn.execute(
            "INSERT INTO outbox (id, peer, kind, body, created, expires, state, next_attempt)"
            " VALUES (?, ?, 0, x'', 1, 1000, ?, 1)",
            (mid(n), node(peer), state),
        )
    conn.close()
    with Database.open(path) as database:
        assert [database.count_queued(node(p)) for p in (1, 2, 3)] == [2, 1, 0]
        assert database.count_queued() == 3
        with pytest.raises(OutboxFull, match="2 for this contact"):
            database.enqueue(out(9), max_for_peer=2)
        database.mark_delivered(mid(0), 5.0)
        database.enqueue(out(9), max_for_peer=2)
        assert [database.count_queued(node(p)) for p in (1, 2)] == [2, 1]


def test_pending_for_peer(db: Database) -> None:
    db.enqueue(out(1, created=3.0, next_attempt=50.0))
    db.enqueue(out(2, created=1.0, peer=node(2)))
    db.enqueue(out(3, created=2.0))
    db.mark_delivered(mid(3), 4.0)
    db.enqueue(out(4, created=2.0))
    assert [m.id for m in db.pending_for_peer(PEER)] == [mid(4), mid(1)]
    assert [m.id for m in db.pending_for_peer(PEER, limit=1)] == [mid(4)]
    # Due ones only: an older message waiting for its retry hides no newer one.
    db.mark_attempt(mid(4), 60.0)
    assert [m.id for m in db.pending_for_peer(PEER, limit=1, due=55.0)] == [mid(1)]
    assert [m.id for m in db.pending_for_peer(PEER, due=10.0)] == []


def test_message_reprs_hide_bodies() -> None:
    for message in (out(1, body=b"attack at dawn"), inb(1)):
        text = repr(message)
        assert "attack" not in text
        assert "secret" not in text
        assert "body" not in text


def test_message_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="id must be 16 bytes"):
        replace(out(1), id=b"short")
    with pytest.raises(ValueError, match="peer"):
        replace(inb(1), peer=b"short")
    with pytest.raises(ValueError, match="MessageKind"):
        replace(out(1), kind=7)  # type: ignore[arg-type]


# inbox


def test_inbox_dedup_survives_reopen(path: Path) -> None:
    with Database.open(path) as database:
        assert database.add_received(inb(1))
        assert not database.add_received(inb(1))
        assert database.add_received(inb(1, peer=node(2)))  # ids are per peer
    with Database.open(path) as database:
        assert not database.add_received(inb(1))
        assert database.count_inbox() == 2


def test_a_full_disk_refuses_each_write_loudly_and_loses_nothing(db: Database) -> None:
    """SQLite's own full condition (``max_page_count``, as a full disk gives):
    each write fails whole with advice, what was written stays, and writing
    works again once there is room. A refused receive is never acked, so its
    sender sends it again."""
    conn = db._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = replace(out(1), body=bytes(60_000))
    with pytest.raises(StoreError, match="disk is full; free some space") as refused:
        db.enqueue(big)
    assert len(str(refused.value).splitlines()) == 1
    with pytest.raises(StoreError, match="disk is full"):
        db.add_received(replace(inb(1), body=bytes(60_000)))
    assert db.count_queued() == 0 and db.count_inbox() == 0
    conn.execute(f"PRAGMA max_page_count = {2 * pages + 64}")
    db.enqueue(big)
    assert db.add_received(replace(inb(1), body=bytes(60_000)))
    assert (db.count_queued(), db.count_inbox()) == (1, 1)


def test_a_damaged_database_file_is_named_with_a_way_out(path: Path) -> None:
    with Database.open(path) as database:
        database.enqueue(out(1))
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the first page's b-tree, past its header
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged") as damaged, Database.open(path) as database:
        database.list_outbox()
    assert "move the file aside" in str(damaged.value) or "restore it" in str(damaged.value)


# bounds


def test_limits_are_respected(db: Database) -> None:
    for n in range(10):
        db.enqueue(out(n, created=float(n), expires=100.0 + n))
        db.add_received(inb(n, received=float(n)))
        db.add_contact(contact(f"c{n}", 10 + n))
    assert [m.id for m in db.list_outbox(3)] == [mid(7), mid(8), mid(9)]
    assert [m.id for m in db.list_inbox(3)] == [mid(7), mid(8), mid(9)]
    assert [m.id for m in db.due_messages(50.0, limit=2)] == [mid(0), mid(1)]
    assert len(db.list_contacts(4)) == 4
    assert len(db.pending_for_peer(PEER, 5)) == 5
    assert len(db.expire_due(1000.0, limit=4)) == 4
    assert len(db.expire_due(1000.0, limit=4)) == 4
    assert len(db.expire_due(1000.0, limit=4)) == 2
    assert db.list_outbox(0) == []
    assert DEFAULT_LIMIT <= MAX_LIMIT
    for call in (db.list_outbox, db.list_inbox, db.list_contacts):
        with pytest.raises(ValueError, match="limit"):
            call(MAX_LIMIT + 1)
        with pytest.raises(ValueError, match="limit"):
            call(-1)


# durability


@pytest.mark.system
def test_kill_9_after_commit_loses_nothing(path: Path) -> None:
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from tests.test_store import out, inb
from p2pmsg.store import Database
db = Database.open(sys.argv[1])
db.enqueue(out(1))
db.add_received(inb(1))
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", script, str(path)], check=False, cwd=ROOT)
    assert done.returncode == -signal.SIGKILL
    with Database.open(path) as database:
        assert database.list_outbox() == [replace(out(1), seq=1)]
        assert database.list_inbox() == [inb(1)]


# the async facade


def test_store_mirrors_every_database_method() -> None:
    methods = {name for name in vars(Database) if not name.startswith("_")} - {"open", "close"}
    assert methods <= set(vars(Store))


async def test_store_in_worker_threads(path: Path) -> None:
    async with await Store.open(path) as store:
        await store.set_identity(public(1), 1.0)
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(store.enqueue, out(n, created=float(n)))
        assert await store.count_queued() == 20
        assert [m.id for m in await store.due_messages(100.0, limit=3)] == [mid(0), mid(1), mid(2)]
        assert await store.add_received(inb(1))
        assert not await store.add_received(inb(1))
        with pytest.raises(StoreError, match="another identity"):
            await store.set_identity(public(2), 1.0)
    with pytest.raises(StoreError, match="closed"):
        await store.count_queued()


async def test_store_inline_under_autojump_clock(
    path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with await Store.open(path, offload=run_inline) as store:
        start = trio.current_time()
        await store.enqueue(out(1, created=start, next_attempt=start + 60, expires=start + 3600))
        assert await store.due_messages(trio.current_time()) == []
        await trio.sleep(60)
        assert [m.id for m in await store.due_messages(trio.current_time())] == [mid(1)]
        await trio.sleep(3600)
        assert await store.expire_due(trio.current_time()) == [mid(1)]
        assert await store.next_due_time() is None


async def test_store_serialises_calls(path: Path, autojump_clock: trio.testing.MockClock) -> None:
    active = peak = 0

    async def slow(fn: Callable[[*Ts], T], /, *args: *Ts) -> T:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await trio.sleep(1)
        try:
            return fn(*args)
        finally:
            active -= 1

    async with await Store.open(path, offload=slow) as store:
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(store.enqueue, out(n))
        assert await store.count_queued() == 5
    assert peak == 1


async def test_store_close_is_shielded(path: Path) -> None:
    store = await Store.open(path, offload=run_inline)
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.count_inbox()


# the outbox state machine against a model


@dataclass
class Model:
    created: float
    expires: float
    next_attempt: float
    state: OutboxState = OutboxState.QUEUED
    attempts: int = 0


times = st.integers(min_value=0, max_value=100).map(float)


class OutboxMachine(RuleBasedStateMachine):
    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.db = Database.open(Path(self.dir.name) / "node.db")
        self.now = 1000.0
        self.count = 0
        self.model: dict[bytes, Model] = {}
        self.final: dict[bytes, OutboxState] = {}
        self.model_peer: dict[bytes, bytes] = {}

    def teardown(self) -> None:
        self.db.close()
        self.dir.cleanup()

    @rule(target=ids, ttl=times, delay=times, peer=st.sampled_from([node(1), node(2)]))
    def enqueue(self, ttl: float, delay: float, peer: bytes) -> bytes:
        self.count += 1
        message = out(
            self.count,
            peer=peer,
            created=self.now,
            expires=self.now + ttl,
            next_attempt=self.now + delay,
        )
        self.db.enqueue(message)
        self.model[message.id] = Model(self.now, self.now + ttl, self.now + delay)
        self.model_peer[message.id] = peer
        return message.id

    @rule(dt=times)
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(id_=ids, delay=times)
    def attempt(self, id_: bytes, delay: float) -> None:
        entry = self.model[id_]
        queued = entry.state is OutboxState.QUEUED
        assert self.db.mark_attempt(id_, self.now + delay) == queued
        if queued:
            entry.attempts += 1
            entry.next_attempt = self.now + delay

    @rule(id_=ids)
    def deliver(self, id_: bytes) -> None:
        entry = self.model[id_]
        queued = entry.state is OutboxState.QUEUED
        assert self.db.mark_delivered(id_, self.now) == queued
        if queued:
            entry.state = self.final[id_] = OutboxState.DELIVERED

    @rule()
    def expire(self) -> None:
        expected = {
            k
            for k, v in self.model.items()
            if v.state is OutboxState.QUEUED and v.expires <= self.now
        }
        assert set(self.db.expire_due(self.now)) == expected
        for k in expected:
            self.model[k].state = self.final[k] = OutboxState.EXPIRED

    @invariant()
    def matches_the_model(self) -> None:
        rows = self.db.list_outbox(MAX_LIMIT)
        states = {m.id: m.state for m in rows}
        assert len(states) == len(rows)  # each id exactly once, so in exactly one state
        assert states == {k: v.state for k, v in self.model.items()}
        for k, state in self.final.items():
            assert states[k] is state  # delivered and expired are final
        assert {m.id: m.attempts for m in rows} == {k: v.attempts for k, v in self.model.items()}
        queued = {k: v for k, v in self.model.items() if v.state is OutboxState.QUEUED}
        assert self.db.count_queued() == len(queued)
        for peer in (node(1), node(2)):
            mine = [k for k, v in queued.items() if self.model_peer[k] == peer]
            assert self.db.count_queued(peer) == len(mine)
        due = [k for k, v in queued.items() if v.next_attempt <= self.now < v.expires]
        assert [m.id for m in self.db.due_messages(self.now)] == sorted(due)
        soonest = min((v.next_attempt for v in queued.values()), default=None)
        assert self.db.next_due_time() == soonest


TestOutboxStateMachine = OutboxMachine.TestCase
TestOutboxStateMachine.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
