"""The secure link's replay tags across restarts: a real SQLite file per test.

The listener under test is the real one (:func:`accept_secure` over a
journaling :class:`ReplayWindow`, its transport link guarded by
:class:`DurableReplay`); the initiator is the pure :class:`LinkConnection`,
so a test holds the exact first-flight bytes a censor would record and
replay. The transport is a framed in-memory pair (not under test) that
records what the listener writes. "Restart" is closing the store and
opening it again with a new window; "crash" is dropping the window without
committing what it has not committed.
"""

from __future__ import annotations

import logging
import math
import random
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmsg import store_schema
from p2pmsg.errors import HandshakeError, StoreError
from p2pmsg.keys import Identity
from p2pmsg.link.connection import LinkConnection
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.link.secure import accept_secure
from p2pmsg.store import Database, Store, run_inline
from p2pmsg.store_link import DurableReplay

ALICE = Identity(bytes([1]) * 32)
BOB = Identity(bytes([2]) * 32)
NOW = 1_700_000_000.0
WINDOW = 3600.0
TIMEOUT = 30.0


def tag(n: int) -> bytes:
    return n.to_bytes(32, "big")


class RecordingLink:
    """The listener's end of a framed in-memory link; ``writes`` is all it wrote.

    ``on_first_write`` runs when the first write is made, before it is passed on.
    """

    def __init__(self, on_first_write: Callable[[], None] = lambda: None) -> None:
        self._to_peer, self.peer_receive = trio.open_memory_channel[bytes](8)
        self.peer_send, self._from_peer = trio.open_memory_channel[bytes](8)
        self.writes: list[bytes] = []
        self._on_first_write = on_first_write

    async def send(self, data: bytes) -> None:
        if not self.writes:
            self._on_first_write()
        self.writes.append(data)
        await self._to_peer.send(data)

    async def receive(self) -> bytes:
        return await self._from_peer.receive()

    async def aclose(self) -> None:
        await self._to_peer.aclose()
        await self._from_peer.aclose()


def first_flight(seed: int, now: float = NOW) -> bytes:
    conn = LinkConnection(ALICE, peer=BOB.public, now=now, rng=random.Random(seed).randbytes)
    conn.initiate()
    return conn.data_to_send()


def durable(store: Store, *, capacity: int = 1000, now: float = NOW) -> DurableReplay:
    return DurableReplay(ReplayWindow(WINDOW, capacity, journal=True), store, lambda: now)


def open_store(path: Path) -> Store:
    return Store(Database.open(path), offload=run_inline)


async def answered(replay: DurableReplay, flight: bytes, link: RecordingLink | None = None) -> bool:
    """Offer ``flight`` to the listener; True if it answered (False: refused, nothing written)."""
    link = link or RecordingLink()
    await link.peer_send.send(flight)
    try:
        secure = await accept_secure(
            link,
            BOB,
            replay.window,
            wall_clock=lambda: NOW,
            timeout=TIMEOUT,
            before_reply=replay.before_reply,
        )
    except HandshakeError:
        assert link.writes == []
        return False
    assert link.writes
    await secure.aclose()
    return True


async def test_a_flight_answered_before_a_restart_is_refused_after_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    flight = first_flight(1)
    async with open_store(tmp_path / "db") as store:
        replay = durable(store)
        assert await replay.load() == 0
        assert await answered(replay, flight)
        assert not await answered(replay, flight)  # the window in memory
    async with open_store(tmp_path / "db") as store:
        replay = durable(store)
        assert await replay.load() == 1
        assert not await answered(replay, flight)  # the window from the disk
        assert await answered(replay, first_flight(2))  # a fresh flight: no lockout


async def test_the_tag_is_on_disk_before_the_answer_is_written(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[int] = []
    other = sqlite3.connect(tmp_path / "db")  # another process's view: committed rows only

    def look() -> None:
        seen.append(other.execute("SELECT count(*) FROM link_replay").fetchone()[0])

    async with open_store(tmp_path / "db") as store:
        replay = durable(store)
        assert await answered(replay, first_flight(1), RecordingLink(look))
        assert await answered(replay, first_flight(2), RecordingLink(look))
    other.close()
    assert seen == [1, 2]


async def test_flights_accepted_together_share_one_commit(tmp_path: Path) -> None:
    writes: list[str] = []

    async def counting(fn: Callable[..., object], /, *args: object) -> object:
        writes.append(getattr(fn, "func", fn).__name__)
        return fn(*args)

    store = Store(Database.open(tmp_path / "db"), offload=counting)  # type: ignore[arg-type]
    async with store:
        replay = durable(store)
        for n in range(3):
            assert replay.window.accept(tag(n), NOW, NOW)
        await replay.commit(1)  # the first one's answer: all three go to disk
        await replay.commit(3)
        assert writes == ["add_link_replay_tags"]
        assert replay.window.durable == 3
        assert await store.count_link_replay() == 3


async def test_a_failed_commit_sends_no_answer_and_keeps_the_flight_pending(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path / "db")
    replay = durable(store)
    await store.close()
    assert not await answered(replay, first_flight(1))
    assert replay.window.accepted == 1
    assert replay.window.durable == 0
    assert len(replay.window.unsaved()) == 1
    assert "could not be saved" in caplog.text
    with pytest.raises(StoreError):
        await replay.commit(1)


async def test_the_table_keeps_at_most_capacity_rows(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        replay = durable(store, capacity=3)
        for n in range(10):
            assert replay.window.accept(tag(n), NOW - 10 + n, NOW)
            await replay.commit(replay.window.accepted)
            assert await store.count_link_replay() <= 3
        assert replay.window.floor == NOW - 4  # the evicted flights lie at or below it
    async with open_store(tmp_path / "db") as store:
        replay = durable(store, capacity=3)
        assert await replay.load() == 3
        assert replay.window.floor == NOW - 4
        for n in range(10):
            assert not replay.window.accept(tag(n), NOW - 10 + n, NOW)


async def test_expired_rows_are_deleted_and_their_flights_stay_refused(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        replay = durable(store)
        assert replay.window.accept(tag(1), NOW, NOW)
        await replay.commit(1)
    later = NOW + WINDOW + 100
    async with open_store(tmp_path / "db") as store:
        replay = durable(store, now=later)
        assert await replay.load() == 0
        assert await store.count_link_replay() == 0
    # the wall clock is stepped back, and the old flight is in the window again
    async with open_store(tmp_path / "db") as store:
        replay = durable(store)
        assert await replay.load() == 0
        assert replay.window.floor == NOW
        assert not replay.window.accept(tag(1), NOW, NOW)
        assert replay.window.accept(tag(2), NOW + 1, NOW)


async def test_a_smaller_capacity_after_a_restart_lifts_the_floor(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        replay = durable(store)
        for n in range(5):
            assert replay.window.accept(tag(n), NOW + n, NOW)
        await replay.commit(5)
    async with open_store(tmp_path / "db") as store:
        replay = durable(store, capacity=2)
        assert await replay.load() == 2
        assert await store.count_link_replay() == 2
        assert replay.window.floor == NOW + 2
        for n in range(5):
            assert not replay.window.accept(tag(n), NOW + n, NOW)


def test_damaged_rows_are_skipped_and_logged_without_their_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "db"
    with Database.open(path) as db:
        db.add_link_replay_tags([(tag(1), NOW)], floor=-math.inf, now=NOW, window=WINDOW)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA ignore_check_constraints = ON")
    rows = [(b"\xab" * 5, NOW + 50), (tag(7), "garbage"), ("text tag", "garbage")]
    raw.executemany("INSERT INTO link_replay (tag, timestamp) VALUES (?, ?)", rows)
    raw.execute("INSERT INTO link_replay_floor (singleton, floor) VALUES (1, 'not a number')")
    raw.close()
    with caplog.at_level(logging.INFO, logger="p2pmsg.store_link"), Database.open(path) as db:
        state = db.load_link_replay(NOW, WINDOW, 100)
        # a damaged floor becomes "now"; a row without a readable tag lifts it
        # to its time, but no later than now: a damaged row is no clock
        assert state.floor == NOW
        # a readable tag without a readable time is remembered for as long as possible
        assert state.entries == [(tag(7), NOW + WINDOW)]
        assert db.count_link_replay() == 1
        assert db.load_link_replay(NOW, WINDOW, 100) == state  # repaired: reported once
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(messages) == 2
    assert "damaged" in messages[0] and "damaged" in messages[1]
    for secret in ("abab", "ab" * 5, tag(7).hex(), "text tag"):
        assert all(secret not in m for m in messages)


def test_bad_entries_are_refused_before_writing(tmp_path: Path) -> None:
    with Database.open(tmp_path / "db") as db:
        for entry in [(b"short", NOW), (tag(1), math.nan), (tag(1), math.inf)]:
            with pytest.raises(ValueError, match="32-byte tag"):
                db.add_link_replay_tags([entry], floor=-math.inf, now=NOW, window=WINDOW)
        assert db.count_link_replay() == 0


def test_a_version_2_database_migrates_keeping_its_onion_replay_tags(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for step in store_schema.MIGRATIONS[:2]:
        step(conn)
    conn.execute(f"PRAGMA application_id = {store_schema.APPLICATION_ID:d}")
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO replay_tags (epoch, tag) VALUES (5, x'01')")
    conn.close()
    with Database.open(path) as db:
        assert db.replay_tags(5, 10) == [b"\x01"]
        assert db.replay_tags(5, 10, "delivered_tags") == []  # migration 3 -> 4 ran too
        assert db.load_link_replay(NOW, WINDOW, 10).entries == []
        db.add_link_replay_tags([(tag(1), NOW)], floor=-math.inf, now=NOW, window=WINDOW)
        assert db.count_link_replay() == 1


# -- property: crashes at any point never admit an answered flight again ------

FLIGHT = st.tuples(
    st.integers(min_value=0, max_value=40),  # seconds the clock moves first
    st.integers(min_value=-30, max_value=30),  # the flight's offset from the clock
    st.booleans(),  # answered: its commit completes before the next step
)


@settings(max_examples=40, deadline=None)
@given(
    runs=st.lists(st.lists(FLIGHT, max_size=12), min_size=1, max_size=4),
    capacity=st.integers(min_value=1, max_value=5),
)
def test_no_answered_flight_is_accepted_after_any_crash(
    runs: list[list[tuple[int, int, bool]]], capacity: int
) -> None:
    """Each run is one incarnation that ends in a crash: what it accepted but
    did not commit is lost. Clock moves forward only, window 20 s."""
    window = 20.0
    answered_flights: list[tuple[bytes, float]] = []
    clock = [NOW]

    async def incarnation(path: Path, flights: list[tuple[int, int, bool]], first: int) -> None:
        async with open_store(path) as store:
            replay = DurableReplay(
                ReplayWindow(window, capacity, journal=True), store, lambda: clock[0]
            )
            await replay.load()
            for flight in answered_flights:
                assert not replay.window.accept(*flight, clock[0]), "an answered flight again"
            for n, (dt, offset, answer) in enumerate(flights, start=first):
                clock[0] += dt
                flight = (tag(n), clock[0] + offset)
                if replay.window.accept(*flight, clock[0]) and answer:
                    await replay.commit(replay.window.accepted)
                    answered_flights.append(flight)
                assert await store.count_link_replay() <= capacity

    with tempfile.TemporaryDirectory() as tmp:
        first = 0
        for flights in runs:
            trio.run(incarnation, Path(tmp) / "db", flights, first)
            first += len(flights)
        trio.run(incarnation, Path(tmp) / "db", [], first)
