"""A bounded store of validated DHT records.

Theory of operation
-------------------
A record's *slot* is (type, key, publisher): a slot holds one record, the one
with the highest sequence number seen, so an older or replayed record never
displaces a newer one. :meth:`RecordStore.put` validates first (an invalid
record raises :class:`InvalidRecord`), then either replaces the record in its
slot, takes a new slot, or ignores the record with a :class:`Refusal`.

Memory is bounded by counting slots, never bytes on trust: records from the
network are capped per type, per source (the node id that sent the STORE),
per publisher, per key and in total. When a new slot would exceed a cap,
expired records are evicted first (an expiry heap makes that cheap) and then,
if still full, the record is refused and the refusal counted in
:attr:`RecordStore.stats`; the store never grows past its caps and never
evicts a live record to make room. A replacement takes no new slot, so it is
never refused for quota; its slot is then counted against the new source.

The node's own records (publisher passed as ``own`` or to :meth:`mark_own`
before the put) are counted apart, under ``max_own``, so a flood of others'
records can never keep a node from storing, and so republishing, its own.
Time is a parameter (``now``, unix seconds); nothing here does I/O.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeAlias, TypeVar

from p2pmsg.dht.records import MAX_CLOCK_SKEW, InvalidRecord, Record, RecordType, validate

DEFAULT_MAX_PER_TYPE: Final = 10_000
DEFAULT_MAX_PER_SOURCE: Final = 256
DEFAULT_MAX_PER_PUBLISHER: Final = 64
DEFAULT_MAX_PER_KEY: Final = 64
DEFAULT_MAX_TOTAL: Final = 10_000
DEFAULT_MAX_OWN: Final = 1_024

_K = TypeVar("_K")


class Refusal(StrEnum):
    """Why a valid record was not stored."""

    NOT_NEWER = "not_newer"
    TYPE_QUOTA = "type_quota"
    SOURCE_QUOTA = "source_quota"
    PUBLISHER_QUOTA = "publisher_quota"
    KEY_QUOTA = "key_quota"
    TOTAL_QUOTA = "total_quota"
    OWN_QUOTA = "own_quota"


@dataclass(frozen=True)
class Stored:
    """The record took a new slot."""


@dataclass(frozen=True)
class Replaced:
    """The record replaced an older one of the same slot."""

    previous_seq: int


@dataclass(frozen=True)
class Ignored:
    """The record is valid but was not stored."""

    reason: Refusal


PutResult: TypeAlias = Stored | Replaced | Ignored


@dataclass
class _Entry:
    record: Record
    source: bytes
    own: bool


class RecordStore:
    """Validated records, newest per slot, bounded by quotas."""

    def __init__(
        self,
        *,
        max_per_type: Mapping[RecordType, int] | int = DEFAULT_MAX_PER_TYPE,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        max_per_publisher: int = DEFAULT_MAX_PER_PUBLISHER,
        max_per_key: int = DEFAULT_MAX_PER_KEY,
        max_total: int = DEFAULT_MAX_TOTAL,
        max_own: int = DEFAULT_MAX_OWN,
        own: Iterable[bytes] = (),
        skew: float = MAX_CLOCK_SKEW,
    ) -> None:
        if isinstance(max_per_type, int):
            max_per_type = dict.fromkeys(RecordType, max_per_type)
        self._max_per_type = {t: max_per_type.get(t, DEFAULT_MAX_PER_TYPE) for t in RecordType}
        self._max_per_source = max_per_source
        self._max_per_publisher = max_per_publisher
        self._max_per_key = max_per_key
        self._max_total = max_total
        self._max_own = max_own
        self._own: set[bytes] = set(own)
        self._skew = skew
        self._by_key: dict[tuple[RecordType, bytes], dict[bytes, _Entry]] = {}
        self._by_publisher: dict[bytes, set[tuple[RecordType, bytes]]] = {}
        self._per_type: Counter[RecordType] = Counter()
        self._per_source: Counter[bytes] = Counter()
        self._total = 0  # others' records
        self._own_total = 0
        self._heap: list[tuple[int, int, bytes, bytes]] = []  # expires, type, key, publisher
        self._stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return self._total + self._own_total

    @property
    def stats(self) -> dict[str, int]:
        """Refusals so far by reason: :class:`Refusal` and ``InvalidReason`` values."""
        return dict(self._stats)

    def mark_own(self, publisher: bytes) -> None:
        """Treat records later put by ``publisher`` as the node's own."""
        self._own.add(publisher)

    def put(self, record: Record, now: float, *, source: bytes) -> PutResult:
        """Validate and store ``record``, received from node ``source``.

        Raises :class:`InvalidRecord` (a ``RemoteProtocolError``) if invalid.
        """
        try:
            validate(record, now, skew=self._skew)
        except InvalidRecord as exc:
            self._stats[exc.reason.value] += 1
            raise
        existing = self._by_key.get((record.type, record.key), {}).get(record.publisher)
        if existing is not None:
            if record.seq <= existing.record.seq:
                return self._ignore(Refusal.NOT_NEWER)
            return self._replace(existing, record, source)
        own = record.publisher in self._own
        refusal = self._quota_refusal(record, source, own=own)
        if refusal is not None and self._heap and self._heap[0][0] <= now:
            self.expire(now)
            refusal = self._quota_refusal(record, source, own=own)
        if refusal is not None:
            return self._ignore(refusal)
        self._insert(_Entry(record, source, own))
        return Stored()

    def get(self, rtype: RecordType, key: bytes, now: float) -> list[Record]:
        """Unexpired records under ``key``, latest expiry (then highest seq) first."""
        entries = self._by_key.get((rtype, key), {}).values()
        live = [e.record for e in entries if e.record.expires > now]
        return sorted(live, key=lambda r: (-r.expires, -r.seq, r.publisher))

    def expire(self, now: float) -> int:
        """Drop every record with ``expires <= now``; returns how many."""
        removed = 0
        while self._heap and self._heap[0][0] <= now:
            _, rtype, key, publisher = heapq.heappop(self._heap)
            entry = self._by_key.get((RecordType(rtype), key), {}).get(publisher)
            # a replaced record leaves its old heap item behind: skip it
            if entry is not None and entry.record.expires <= now:
                self._remove(entry)
                removed += 1
        return removed

    def due_for_republish(self, now: float, before: float) -> list[Record]:
        """The node's own unexpired records expiring within ``before`` s, soonest first."""
        due = []
        for publisher in self._own:
            for rtype, key in self._by_publisher.get(publisher, ()):
                record = self._by_key[(rtype, key)][publisher].record
                if now < record.expires <= now + before:
                    due.append(record)
        return sorted(due, key=lambda r: (r.expires, r.type, r.key, r.publisher))

    def _ignore(self, reason: Refusal) -> Ignored:
        self._stats[reason.value] += 1
        return Ignored(reason)

    def _quota_refusal(self, record: Record, source: bytes, *, own: bool) -> Refusal | None:
        if own:
            return Refusal.OWN_QUOTA if self._own_total >= self._max_own else None
        checks = (
            (self._total >= self._max_total, Refusal.TOTAL_QUOTA),
            (self._per_type[record.type] >= self._max_per_type[record.type], Refusal.TYPE_QUOTA),
            (self._per_source[source] >= self._max_per_source, Refusal.SOURCE_QUOTA),
            (
                len(self._by_publisher.get(record.publisher, ())) >= self._max_per_publisher,
                Refusal.PUBLISHER_QUOTA,
            ),
            (
                len(self._by_key.get((record.type, record.key), ())) >= self._max_per_key,
                Refusal.KEY_QUOTA,
            ),
        )
        return next((reason for full, reason in checks if full), None)

    def _insert(self, entry: _Entry) -> None:
        r = entry.record
        self._by_key.setdefault((r.type, r.key), {})[r.publisher] = entry
        self._by_publisher.setdefault(r.publisher, set()).add((r.type, r.key))
        if entry.own:
            self._own_total += 1
        else:
            self._total += 1
            self._per_type[r.type] += 1
            self._per_source[entry.source] += 1
        self._push(r)

    def _remove(self, entry: _Entry) -> None:
        r = entry.record
        slots = self._by_key[(r.type, r.key)]
        del slots[r.publisher]
        if not slots:
            del self._by_key[(r.type, r.key)]
        keys = self._by_publisher[r.publisher]
        keys.discard((r.type, r.key))
        if not keys:
            del self._by_publisher[r.publisher]
        if entry.own:
            self._own_total -= 1
        else:
            self._total -= 1
            _decrement(self._per_type, r.type)
            _decrement(self._per_source, entry.source)

    def _replace(self, entry: _Entry, record: Record, source: bytes) -> Replaced:
        previous = entry.record.seq
        if not entry.own and source != entry.source:
            _decrement(self._per_source, entry.source)
            self._per_source[source] += 1
        entry.record, entry.source = record, source
        self._push(record)
        return Replaced(previous)

    def _push(self, record: Record) -> None:
        item = (record.expires, int(record.type), record.key, record.publisher)
        heapq.heappush(self._heap, item)
        if len(self._heap) > 2 * len(self) + 64:
            # replacements leave stale items behind; rebuild so the heap stays bounded
            self._heap = [
                (e.record.expires, int(e.record.type), e.record.key, e.record.publisher)
                for slots in self._by_key.values()
                for e in slots.values()
            ]
            heapq.heapify(self._heap)


def _decrement(counter: Counter[_K], key: _K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
