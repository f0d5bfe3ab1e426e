"""The secure link's replay tags in the store, so a restart forgets no first flight.

A listener refuses a first flight it has seen (:mod:`p2pmsg.link.replay`),
but a window kept only in memory is empty after a restart, and a censor that
recorded a flight less than a day old could replay it and get an answer.

Theory of operation. The node's :class:`ReplayWindow` journals what it
accepts. Before a responder writes a handshake frame (the answer, or under
load a price, whose flight's tag the window takes too), it awaits
:meth:`DurableReplay.before_reply`, which returns once every flight accepted
so far is committed (``synchronous=FULL``: on the disk) in the
``link_replay`` table. The window accepts the flight before the frame
exists, and its count of accepted flights only grows, so "accepted so far"
includes the flight answered. So a flight whose tag is not on disk was never
answered: a crash, ``kill -9`` included, can lose only unanswered flights,
and a replay of one of those is answered as the flight itself would have
been, once, showing nothing its first sending would not have. Handshakes
arriving together share one commit (one ``trio.Lock``, whoever holds it
writes everything pending). A failed commit refuses the handshake (no frame
goes out) and the tags stay pending.

The table is bounded like the window: a commit also deletes the rows the
window has forgotten (timestamps at or below its floor, or older than the
window) and raises the saved floor (``link_replay_floor``) over them, in the
same transaction; so the table never holds more than ``capacity`` rows. On
open, :meth:`DurableReplay.load` restores the rows still in the window and
the floor; rows beyond ``capacity`` (a smaller capacity than before) lift the
floor instead.

Damaged rows never stop the node: they are mended first, in SQL over the
whole table, and counted in an INFO line (never their bytes), and what can
still be read is kept conservatively: a readable tag is remembered as if its
flight were the newest possible, a readable timestamp raises the floor (not
past now: a damaged row is no clock), an unreadable floor becomes "now". A
saved floor more than a window ahead of our clock is lowered to that bound.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from p2pmsg.errors import HandshakeError, StoreError
from p2pmsg.keys import KEY_BYTES
from p2pmsg.link.replay import ReplayWindow

if TYPE_CHECKING:
    import sqlite3

    from p2pmsg.store import Store

log = logging.getLogger(__name__)

Entry = tuple[bytes, float]


@dataclass(frozen=True)
class LinkReplayState:
    """What a restart restores: the saved floor and the remembered flights."""

    floor: float
    entries: list[Entry] = field(repr=False)


def _number(value: object) -> float | None:
    """A finite float from a stored value, or None if it is not one."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _number_or(value: object, default: float) -> float:
    number = _number(value)
    return default if number is None else number


def _is_tag(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == KEY_BYTES


_BAD_TAG = "(typeof(tag) != 'blob' OR length(tag) != 32)"
_BAD_TIME = "(typeof(timestamp) NOT IN ('real', 'integer') OR abs(timestamp) > 1e308)"


def _repair(conn: sqlite3.Connection, now: float, window: float) -> float:
    """Mend the damaged rows, in SQL over the whole table before anything reads
    it, and return the floor they call for (-inf for none).

    A row without a readable tag is deleted, and its timestamp, when readable,
    raises the floor (no higher than ``now``: a damaged row is no clock). A
    readable tag without a readable timestamp is kept as the newest flight
    there can be (``now + window``). Neither is logged with its bytes.
    """
    (lift,) = conn.execute(
        f"SELECT max(timestamp) FROM link_replay WHERE {_BAD_TAG} AND NOT {_BAD_TIME}"  # noqa: S608 - constants
    ).fetchone()
    dropped = conn.execute(f"DELETE FROM link_replay WHERE {_BAD_TAG}").rowcount  # noqa: S608
    kept = conn.execute(
        f"UPDATE link_replay SET timestamp = ? WHERE {_BAD_TIME}",  # noqa: S608 - constants
        (now + window,),
    ).rowcount
    if dropped or kept:
        log.info("link replay store: %d damaged rows with a readable tag kept as newest,"
                 " %d without one dropped", kept, dropped)  # fmt: skip
    return min(_number_or(lift, -math.inf), now)


def _check_entries(entries: Sequence[Entry]) -> None:
    for tag, timestamp in entries:
        if not _is_tag(tag) or _number(timestamp) is None:
            raise ValueError(f"a link replay entry is a {KEY_BYTES}-byte tag and a finite time")


def _forget(conn: sqlite3.Connection, floor: float, cutoff: float) -> float:
    """Delete the rows at or below ``floor`` or older than ``cutoff``; the new floor."""
    (oldest,) = conn.execute(
        "SELECT max(timestamp) FROM link_replay WHERE timestamp < ?", (cutoff,)
    ).fetchone()
    floor = max(floor, _number_or(oldest, floor))
    if math.isfinite(floor):
        conn.execute("DELETE FROM link_replay WHERE timestamp <= ?", (floor,))
        conn.execute(
            "INSERT INTO link_replay_floor (singleton, floor) VALUES (1, ?)"
            " ON CONFLICT (singleton) DO UPDATE SET floor = CASE WHEN typeof(floor) = 'real'"
            " THEN max(floor, excluded.floor) ELSE excluded.floor END",
            (floor,),
        )
    return floor


def _saved_floor(conn: sqlite3.Connection, now: float, window: float, capacity: int) -> float:
    """The saved floor, lifted over any row beyond the newest ``capacity``."""
    rows = conn.execute("SELECT floor FROM link_replay_floor").fetchall()
    floor = _number(rows[0][0]) if rows else -math.inf
    if floor is None:
        log.info("link replay store: the saved floor is damaged; refusing flights before now")
        floor = now
        # Mended here: the floor is only ever raised (max) after this, and a
        # damaged value such as inf would stay, and be read as "now" again.
        conn.execute("UPDATE link_replay_floor SET floor = ?", (floor,))
    beyond = conn.execute(
        "SELECT timestamp FROM link_replay ORDER BY timestamp DESC LIMIT 1 OFFSET ?", (capacity,)
    ).fetchall()
    if beyond:
        floor = max(floor, _number_or(beyond[0][0], now))
    if floor > now + window:
        # No flight we took is stamped that late (we take none more than a
        # window ahead of our clock): damage, or our clock was set back. Kept,
        # it would refuse every flight until our clock passed it; this bound
        # refuses them for at most a window.
        log.warning("link replay store: the saved floor is far ahead of our clock; lowered")
        floor = now + window
        conn.execute("UPDATE link_replay_floor SET floor = ?", (floor,))
    return floor


class LinkReplayTables:
    """Methods over ``link_replay``; :class:`p2pmsg.store.Database` provides the connection."""

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        raise NotImplementedError

    def add_link_replay_tags(
        self, entries: Sequence[Entry], *, floor: float, now: float, window: float
    ) -> None:
        """Commit accepted flights and forget, in the same transaction, what the
        window forgot (``floor``: the window's; rows older than ``now - window``).
        A tag seen again keeps its latest timestamp. ``ValueError`` for a bad entry."""
        _check_entries(entries)
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO link_replay (tag, timestamp) VALUES (?, ?) ON CONFLICT (tag)"
                " DO UPDATE SET timestamp = max(timestamp, excluded.timestamp)",
                entries,
            )
            _forget(conn, floor, now - window)

    def load_link_replay(self, now: float, window: float, capacity: int) -> LinkReplayState:
        """Trim the table to the window and ``capacity`` and return what it keeps.

        Damaged rows are repaired or dropped first (see :func:`_repair`), in
        the same transaction.
        """
        with self._write() as conn:
            lift = _repair(conn, now, window)
            floor = max(_saved_floor(conn, now, window, capacity), lift)
            floor = _forget(conn, floor, now - window)
            rows = conn.execute(
                "SELECT tag, timestamp FROM link_replay WHERE timestamp > ?"
                " ORDER BY timestamp DESC LIMIT ?",
                (floor, capacity),
            ).fetchall()
        return LinkReplayState(floor, [(bytes(tag), float(ts)) for tag, ts in rows])

    def count_link_replay(self) -> int:
        return int(self._rows("SELECT count(*) FROM link_replay")[0][0])


class DurableReplay:
    """The node's replay window, whose flights are committed before they are answered.

    ``window`` must journal (``ReplayWindow(..., journal=True)``).
    """

    def __init__(self, window: ReplayWindow, store: Store, wall_clock: Callable[[], float]) -> None:
        self.window = window
        self._store = store
        self._wall_clock = wall_clock
        self._lock = trio.Lock()

    async def load(self) -> int:
        """Restore the saved flights and floor (before listening); how many flights."""
        now = self._wall_clock()
        state = await self._store.load_link_replay(now, self.window.window, self.window.capacity)
        self.window.raise_floor(state.floor)
        for tag, timestamp in state.entries:
            self.window.restore(tag, timestamp, now)
        return len(state.entries)

    async def commit(self, count: int) -> None:
        """Return once the first ``count`` accepted flights are on disk.

        Raises :class:`StoreError` (those flights stay pending). Cancellation
        leaves them pending too, or committed if the write was under way.
        """
        async with self._lock:
            if self.window.durable >= count:
                return
            entries = self.window.unsaved()
            await self._store.add_link_replay_tags(
                entries, floor=self.window.floor, now=self._wall_clock(), window=self.window.window
            )
            self.window.saved(len(entries))

    async def before_reply(self) -> None:
        """Return once every flight accepted so far is on disk (for
        :func:`accept_secure`'s ``before_reply``: the node answers a flight
        only then). Raises :class:`HandshakeError` when they cannot be saved."""
        try:
            await self.commit(self.window.accepted)  # the count covers the flight to answer
        except StoreError as exc:
            log.warning("refused a handshake: its replay tag could not be saved (%s)", exc)
            raise HandshakeError("the replay tag could not be saved") from exc
