"""Per-source token buckets, bounded in the number of sources remembered.

Each source (a node id) earns ``rate`` tokens per second up to ``burst``;
a request spends one. At most ``max_sources`` buckets are kept: when full,
the least recently used is forgotten (a forgotten source starts again with a
full bucket, so the cap trades precision for memory, never blocks honest
sources forever). Pure: time is a parameter.
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate > 0, burst >= 1 and max_sources >= 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self.refused = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: bytes, now: float) -> bool:
        """Spend a token of ``source``; False (and counted) when it has none."""
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        else:
            self.refused += 1
        self._buckets[source] = (tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed
