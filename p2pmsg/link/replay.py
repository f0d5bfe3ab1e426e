"""A bounded replay window for first handshake flights.

A listener accepts a first flight only when its timestamp lies within
``window`` seconds of its own clock and its tag (the sender's ephemeral key)
has not been seen. Tags are remembered until their timestamp leaves the
window, so memory is bounded by the rate of handshakes, and hard-capped by
``capacity``: when full, the entry with the oldest timestamp is evicted and
the *floor* rises to its timestamp, so a flight at or below the floor is
refused. Evicting can therefore refuse old-but-honest flights, never admit a
replay. Pure: time is a parameter.
"""

from __future__ import annotations

import heapq


class ReplayWindow:
    """Remembers handshake tags; :meth:`accept` is the only question."""

    def __init__(self, window: float, capacity: int = 100_000) -> None:
        if window <= 0 or capacity <= 0:
            raise ValueError("window and capacity must be positive")
        self.window = window
        self.capacity = capacity
        self.floor = float("-inf")
        self._seen: set[bytes] = set()
        self._by_time: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def _evict_oldest(self) -> float:
        timestamp, tag = heapq.heappop(self._by_time)
        self._seen.discard(tag)
        return timestamp

    def accept(self, tag: bytes, timestamp: float, now: float) -> bool:
        """True (and remember ``tag``) for a fresh flight; False for a replay or a stale one."""
        if abs(timestamp - now) > self.window or timestamp <= self.floor:
            return False
        if tag in self._seen:
            return False
        while self._by_time and self._by_time[0][0] < now - self.window:
            # Raise the floor too: if the clock steps back, the tag is not re-admitted.
            self.floor = max(self.floor, self._evict_oldest())
        if len(self._seen) >= self.capacity:
            self.floor = max(self.floor, self._evict_oldest())
            if timestamp <= self.floor:
                return False
        self._seen.add(tag)
        heapq.heappush(self._by_time, (timestamp, tag))
        return True
