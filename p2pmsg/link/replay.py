"""A bounded replay window for first handshake flights.

A listener accepts a first flight only when its timestamp lies within
``window`` seconds of its own clock and its tag (the sender's ephemeral key)
has not been seen. Tags are remembered until their timestamp leaves the
window, so memory is bounded by the rate of handshakes, and hard-capped by
``capacity``: when full, the entry with the oldest timestamp is evicted and
the *floor* rises to its timestamp, so a flight at or below the floor is
refused. Evicting can therefore refuse old-but-honest flights, never admit a
replay. Pure: time is a parameter.

Across restarts (see :mod:`p2pmsg.store_link`). A window made with
``journal=True`` also lists every flight it accepted that its owner has not
yet reported durable (:meth:`unsaved`, :meth:`saved`); :attr:`durable` is the
count of accepted flights that are. The node answers a flight only once its
count is durable. On the next start :meth:`restore` and :meth:`raise_floor`
rebuild the window from what was saved, with the same rule: whatever the
window forgets, the floor covers. The journal is bounded by ``capacity`` too;
while it is full (the owner cannot save), every flight is refused.
"""

from __future__ import annotations

import heapq
from typing import Protocol


class Replays(Protocol):
    """What a handshake core asks of its replay window."""

    def accept(self, tag: bytes, timestamp: float, now: float) -> bool: ...


class SavedReplay(Protocol):
    """A journaling window whose flights can be made durable before they are
    answered (the node's :class:`p2pmsg.store_link.DurableReplay`)."""

    @property
    def window(self) -> ReplayWindow: ...

    async def commit(self, count: int) -> None:
        """Return once the first ``count`` accepted flights are saved; raises
        :class:`~p2pmsg.errors.StoreError` when they cannot be."""


class ReplayWindow:
    """Remembers handshake tags; :meth:`accept` is the only question."""

    def __init__(self, window: float, capacity: int = 100_000, *, journal: bool = False) -> None:
        if window <= 0 or capacity <= 0:
            raise ValueError("window and capacity must be positive")
        self.window = window
        self.capacity = capacity
        self.floor = float("-inf")
        self.accepted = 0
        """Flights accepted since this window was made (a sequence number)."""
        self._journal = journal
        self._unsaved: list[tuple[bytes, float]] = []
        self._seen: set[bytes] = set()
        self._by_time: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def _evict_oldest(self) -> float:
        timestamp, tag = heapq.heappop(self._by_time)
        self._seen.discard(tag)
        return timestamp

    def fresh(self, tag: bytes, timestamp: float, now: float) -> bool:
        """Whether :meth:`accept` may take this flight (remembers nothing)."""
        if abs(timestamp - now) > self.window or timestamp <= self.floor:
            return False
        return tag not in self._seen and len(self._unsaved) < self.capacity

    def accept(self, tag: bytes, timestamp: float, now: float) -> bool:
        """True (and remember ``tag``) for a fresh flight; False for a replay or a stale one."""
        if not self.fresh(tag, timestamp, now):
            return False
        while self._by_time and self._by_time[0][0] < now - self.window:
            # Raise the floor too: if the clock steps back, the tag is not re-admitted.
            self.floor = max(self.floor, self._evict_oldest())
        if not self._remember(tag, timestamp):
            return False
        self.accepted += 1
        if self._journal:
            self._unsaved.append((tag, timestamp))
        return True

    def _remember(self, tag: bytes, timestamp: float) -> bool:
        if len(self._seen) >= self.capacity:
            self.floor = max(self.floor, self._evict_oldest())
            if timestamp <= self.floor:
                return False
        self._seen.add(tag)
        heapq.heappush(self._by_time, (timestamp, tag))
        return True

    # -- durability ----------------------------------------------------------

    @property
    def durable(self) -> int:
        """How many of the :attr:`accepted` flights are saved (all, without a journal)."""
        return self.accepted - len(self._unsaved)

    def unsaved(self) -> list[tuple[bytes, float]]:
        """The accepted ``(tag, timestamp)`` pairs not yet reported saved, oldest first."""
        return list(self._unsaved)

    def saved(self, count: int) -> None:
        """The first ``count`` entries of :meth:`unsaved` are durable now."""
        if not 0 <= count <= len(self._unsaved):
            raise ValueError("saved more entries than were unsaved")
        del self._unsaved[:count]

    def raise_floor(self, floor: float) -> None:
        """Refuse every flight at or below ``floor`` from now on (a saved floor)."""
        self.floor = max(self.floor, floor)

    def restore(self, tag: bytes, timestamp: float, now: float) -> None:
        """Remember a flight accepted before a restart, as :meth:`accept` would
        have (expired or evicted: the floor rises instead). Not journaled."""
        if timestamp < now - self.window:
            self.floor = max(self.floor, timestamp)
        elif timestamp > self.floor and tag not in self._seen:
            self._remember(tag, timestamp)
