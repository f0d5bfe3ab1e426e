"""The Kademlia routing table: buckets that split, ping-before-evict, diversity caps.

Theory of operation. The 256-bit id space is covered by a list of *buckets*,
each an aligned range ``[lo, lo + 2**(ID_BITS - depth))``. It starts as one
bucket; when a full bucket (``k`` entries) must take a newcomer and its range
contains our own id, it splits in two halves. Any other full bucket stays as it
is, so the buckets form one path down the tree towards the local id and the
table knows many nodes near itself and at most ``k`` in each farther range.

Inside a bucket, entries are ordered least-recently-seen first. Old contacts
are kept over newcomers (long-lived nodes tend to stay alive, and an attacker
cannot flush the table with fresh ids): a newcomer to a full bucket waits in a
small bounded *replacement cache* and :meth:`RoutingTable.offer` answers
:class:`PingNeeded` with the oldest entry. The caller pings it and reports
with :meth:`RoutingTable.ping_result`: alive refreshes the old entry, dead
evicts it and promotes the most recently seen replacement. RPC failures are
counted by :meth:`RoutingTable.on_failure`; an entry is evicted after
``failure_threshold`` consecutive failures, and only when a replacement can take
its place, so losing our own connectivity never empties the table.
:meth:`RoutingTable.unreachable` lists the peers that stopped answering:
entries with failures, and the last ``max_lost`` evicted for failing, until
they are seen again, which :attr:`RoutingTable.returned` counts (a cut
border heals, :mod:`p2pmsg.delivery.liveness`).

Diversity limits (against Sybil and eclipse attacks, SCENARIOS S14) bound how
many entries may share one network prefix (:attr:`Peer.prefix`), per bucket
and per table; ``None`` disables a limit. Pure: time (``now``) and randomness
(``rng``) are parameters.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from p2pmsg.dht.peer import ID_BITS, ID_BYTES, Peer, distance

OWN_ID = "own id"
PREFIX_BUCKET = "too many peers from this network prefix in the bucket"
PREFIX_TABLE = "too many peers from this network prefix in the table"
PING_PENDING = "bucket full and a ping is pending; kept as a replacement"


@dataclass(frozen=True)
class Added:
    """The peer is now in the table."""


@dataclass(frozen=True)
class Updated:
    """The peer was already in the table: refreshed (most recently seen), endpoints updated."""


@dataclass(frozen=True)
class Rejected:
    """The table did not take the peer as an entry; ``reason`` is one of the module's constants."""

    reason: str


@dataclass(frozen=True)
class PingNeeded:
    """The bucket is full: ping ``oldest``, report with ``ping_result``; the newcomer waits."""

    oldest: Peer


OfferResult = Added | Updated | Rejected | PingNeeded


@dataclass(frozen=True)
class Contact:
    """A read-only view of one entry: the peer, when it was last seen, consecutive failures."""

    peer: Peer
    last_seen: float
    failures: int


@dataclass(frozen=True)
class BucketView:
    """A read-only view of one bucket: ids in ``[lo, hi)``, entries least-recently-seen first."""

    lo: int
    hi: int
    depth: int
    entries: tuple[Contact, ...]
    replacements: tuple[Contact, ...]


@dataclass
class _Slot:
    peer: Peer
    last_seen: float
    failures: int = 0

    def view(self) -> Contact:
        return Contact(self.peer, self.last_seen, self.failures)


@dataclass
class _Bucket:
    lo: int
    depth: int
    entries: list[_Slot] = field(default_factory=list)
    replacements: list[_Slot] = field(default_factory=list)
    refreshed: float | None = None
    pending: tuple[bytes, float] | None = None  # (node id pinged, when)

    @property
    def hi(self) -> int:
        return self.lo + (1 << (ID_BITS - self.depth))

    def holds(self, node_id: bytes) -> bool:
        return self.lo <= int.from_bytes(node_id, "big") < self.hi

    def view(self) -> BucketView:
        entries = tuple(s.view() for s in self.entries)
        replacements = tuple(s.view() for s in self.replacements)
        return BucketView(self.lo, self.hi, self.depth, entries, replacements)


def _insert_by_time(slots: list[_Slot], slot: _Slot) -> None:
    """Insert keeping ``slots`` ordered by last-seen time, oldest first."""
    index = bisect_right(slots, slot.last_seen, key=lambda s: s.last_seen)
    slots.insert(index, slot)


class RoutingTable:
    """Buckets of peers around ``local_id``. Raises ``ValueError`` on bad parameters only."""

    def __init__(
        self,
        local_id: bytes,
        *,
        k: int = 20,
        max_per_prefix_bucket: int | None = 2,
        max_per_prefix_table: int | None = 3,
        max_replacements: int = 8,
        failure_threshold: int = 3,
        ping_timeout: float = 30.0,
        max_lost: int = 32,
    ) -> None:
        if len(local_id) != ID_BYTES:
            raise ValueError("the local id must be a node id")
        if k < 1 or max_replacements < 0 or failure_threshold < 1 or max_lost < 0:
            raise ValueError("k and failure_threshold are positive, the other bounds not negative")
        if any(
            cap is not None and cap < 1 for cap in (max_per_prefix_bucket, max_per_prefix_table)
        ):
            raise ValueError("a prefix limit must be positive or None")
        self.local_id = local_id
        self.k = k
        self.max_per_prefix_bucket = max_per_prefix_bucket
        self.max_per_prefix_table = max_per_prefix_table
        self.max_replacements = max_replacements
        self.failure_threshold = failure_threshold
        self.ping_timeout = ping_timeout
        self.max_lost = max_lost
        self._lost: OrderedDict[bytes, Peer] = OrderedDict()
        self.returned = 0
        """Times a peer that had stopped answering was seen again."""
        self._buckets: list[_Bucket] = [_Bucket(lo=0, depth=0)]
        self._slots: dict[bytes, _Slot] = {}
        self._prefixes: Counter[str] = Counter()

    # -- inspection -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._slots

    def get(self, node_id: bytes) -> Peer | None:
        """The entry's peer, or ``None`` (replacements are not entries)."""
        slot = self._slots.get(node_id)
        return None if slot is None else slot.peer

    def failures(self, node_id: bytes) -> int:
        """Consecutive failed RPCs of the entry since it was last seen (0 if none or absent)."""
        slot = self._slots.get(node_id)
        return 0 if slot is None else slot.failures

    def unreachable(self) -> list[Peer]:
        """Peers that stopped answering: entries with failures, and those
        evicted for failing (the last ``max_lost``), until seen again."""
        failing = [slot.peer for slot in self._slots.values() if slot.failures]
        return failing + list(self._lost.values())

    def has_room(self, node_id: bytes) -> bool:
        """Whether an offer of ``node_id`` now could place it at all, as an entry
        or a replacement: its bucket is not full or would split, or the
        bucket's replacement cache is not full. (The prefix limits are not
        asked: they need the prefix an offer brings.)"""
        bucket = self._bucket_for(node_id)
        if len(bucket.entries) < self.k or self._splittable(bucket):
            return True
        return len(bucket.replacements) < self.max_replacements

    def least_recently_seen(self, count: int) -> list[Peer]:
        """The ``count`` entries seen longest ago."""
        oldest = heapq.nsmallest(count, self._slots.values(), key=lambda slot: slot.last_seen)
        return [slot.peer for slot in oldest]

    def peers(self) -> list[Peer]:
        """Every entry, bucket by bucket, least-recently-seen first within a bucket."""
        return [s.peer for b in self._buckets for s in b.entries]

    def buckets(self) -> tuple[BucketView, ...]:
        """Read-only views of the buckets in id order."""
        return tuple(b.view() for b in self._buckets)

    def closest(self, target: bytes, count: int, *, exclude: Collection[bytes] = ()) -> list[Peer]:
        """The ``count`` entries closest to ``target`` by XOR distance, closest first.

        Buckets are disjoint aligned ranges, so the distances of two buckets never
        interleave: walking buckets by their smallest distance to ``target`` and
        stopping once ``count`` peers are gathered is exact.
        """
        t = int.from_bytes(target, "big")
        order = sorted(self._buckets, key=lambda b: (b.lo ^ t) & -(b.hi - b.lo))
        found: list[Peer] = []
        for bucket in order:
            if len(found) >= count:
                break
            found.extend(s.peer for s in bucket.entries if s.peer.node_id not in exclude)
        return heapq.nsmallest(count, found, key=lambda p: distance(p.node_id, target))

    # -- offers, pings and failures ---------------------------------------------------

    def offer(self, peer: Peer, now: float) -> OfferResult:
        """Tell the table ``peer`` was seen alive at ``now`` (an authenticated contact)."""
        node_id = peer.node_id
        if node_id == self.local_id:
            return Rejected(OWN_ID)
        if self._lost.pop(node_id, None) is not None:
            self.returned += 1
        slot = self._slots.get(node_id)
        if slot is not None:
            return self._update(slot, peer, now)
        bucket = self._bucket_for(node_id)
        while len(bucket.entries) >= self.k and self._splittable(bucket):
            self._split(bucket)
            bucket = self._bucket_for(node_id)
        self._drop_replacement(bucket, node_id)
        reason = self._cap_violation(bucket, peer.prefix)
        if reason is not None:
            return Rejected(reason)
        if len(bucket.entries) < self.k:
            self._admit(bucket, _Slot(peer, now))
            bucket.refreshed = now
            return Added()
        return self._queue(bucket, peer, now)

    def ping_result(self, node_id: bytes, alive: bool, now: float) -> None:
        """Report the ping a :class:`PingNeeded` asked for (or any other liveness check).

        Alive refreshes the entry (the newcomers stay replacements); dead evicts it
        and promotes the best replacement. With no replacement able to take the
        place, a dead entry stays and the failure is counted instead.
        """
        bucket = self._bucket_for(node_id)
        if bucket.pending is not None and bucket.pending[0] == node_id:
            bucket.pending = None
        slot = self._slots.get(node_id)
        if slot is None:
            return
        if alive:
            self._touch(bucket, slot, now)
        elif not self._replace(bucket, slot):
            slot.failures += 1

    def on_failure(self, node_id: bytes) -> bool:
        """Count one failed RPC; True when this evicted the entry (or dropped a replacement).

        After ``failure_threshold`` consecutive failures the entry is replaced by
        the best replacement, if there is one; live contacts are never replaced.
        """
        bucket = self._bucket_for(node_id)
        if self._drop_replacement(bucket, node_id):
            return True
        slot = self._slots.get(node_id)
        if slot is None:
            return False
        slot.failures += 1
        return slot.failures >= self.failure_threshold and self._replace(bucket, slot)

    def remove(self, node_id: bytes) -> bool:
        """Forget ``node_id`` (entry or replacement); True when it was known.

        A removed entry's place goes to the best replacement.
        """
        bucket = self._bucket_for(node_id)
        if self._drop_replacement(bucket, node_id):
            return True
        slot = self._slots.get(node_id)
        if slot is None:
            return False
        self._evict(bucket, slot)
        self._promote(bucket)
        return True

    # -- refresh ---------------------------------------------------------------------

    def stale_buckets(
        self, now: float, refresh_interval: float, rng: Callable[[int], bytes]
    ) -> list[bytes]:
        """A random id in the range of each bucket not refreshed for ``refresh_interval``.

        The caller is expected to look each id up now, so the buckets returned
        count as refreshed at ``now``; any entry added or seen refreshes its bucket.
        """
        targets = []
        for bucket in self._buckets:
            if bucket.refreshed is not None and now - bucket.refreshed < refresh_interval:
                continue
            bucket.refreshed = now
            span = bucket.hi - bucket.lo
            noise = int.from_bytes(rng(ID_BYTES), "big") & (span - 1)
            targets.append((bucket.lo | noise).to_bytes(ID_BYTES, "big"))
        return targets

    # -- internals ----------------------------------------------------------------------

    def _bucket_for(self, node_id: bytes) -> _Bucket:
        index = bisect_right(self._buckets, int.from_bytes(node_id, "big"), key=lambda b: b.lo)
        return self._buckets[index - 1]

    def _drop_replacement(self, bucket: _Bucket, node_id: bytes) -> bool:
        before = len(bucket.replacements)
        bucket.replacements = [s for s in bucket.replacements if s.peer.node_id != node_id]
        return len(bucket.replacements) < before

    def _splittable(self, bucket: _Bucket) -> bool:
        return bucket.depth < ID_BITS and bucket.holds(self.local_id)

    def _split(self, bucket: _Bucket) -> None:
        depth = bucket.depth + 1
        middle = bucket.lo + (1 << (ID_BITS - depth))
        low, high = (_Bucket(lo, depth, refreshed=bucket.refreshed) for lo in (bucket.lo, middle))
        for half in (low, high):
            half.entries = [s for s in bucket.entries if half.holds(s.peer.node_id)]
            half.replacements = [s for s in bucket.replacements if half.holds(s.peer.node_id)]
            if bucket.pending is not None and half.holds(bucket.pending[0]):
                half.pending = bucket.pending
        index = self._buckets.index(bucket)
        self._buckets[index : index + 1] = [low, high]

    def _cap_violation(
        self, bucket: _Bucket, prefix: str, leaving: _Slot | None = None
    ) -> str | None:
        """Which prefix limit admitting ``prefix`` would break, counting ``leaving`` as gone."""
        cap = self.max_per_prefix_bucket
        same = sum(1 for s in bucket.entries if s.peer.prefix == prefix and s is not leaving)
        if cap is not None and same >= cap:
            return PREFIX_BUCKET
        cap = self.max_per_prefix_table
        gone = 1 if leaving is not None and leaving.peer.prefix == prefix else 0
        if cap is not None and self._prefixes[prefix] - gone >= cap:
            return PREFIX_TABLE
        return None

    def _update(self, slot: _Slot, peer: Peer, now: float) -> OfferResult:
        bucket = self._bucket_for(peer.node_id)
        if peer.prefix != slot.peer.prefix:
            reason = self._cap_violation(bucket, peer.prefix, slot)
            if reason is not None:
                return Rejected(reason)
            self._prefixes[slot.peer.prefix] -= 1
            self._prefixes[peer.prefix] += 1
        slot.peer = peer
        self._touch(bucket, slot, now)
        return Updated()

    def _touch(self, bucket: _Bucket, slot: _Slot, now: float) -> None:
        """Mark ``slot`` seen at ``now``: most recently seen, no failures."""
        bucket.entries.remove(slot)
        slot.last_seen = max(now, slot.last_seen)
        self.returned += slot.failures > 0
        slot.failures = 0
        _insert_by_time(bucket.entries, slot)
        bucket.refreshed = now

    def _queue(self, bucket: _Bucket, peer: Peer, now: float) -> OfferResult:
        """Cache a newcomer to a full bucket and ask for a ping of the oldest entry."""
        bucket.replacements.append(_Slot(peer, now))
        bucket.replacements.sort(key=lambda s: s.last_seen)
        del bucket.replacements[: max(0, len(bucket.replacements) - self.max_replacements)]
        if bucket.pending is not None and now - bucket.pending[1] < self.ping_timeout:
            return Rejected(PING_PENDING)
        oldest = bucket.entries[0]
        bucket.pending = (oldest.peer.node_id, now)
        return PingNeeded(oldest.peer)

    def _admit(self, bucket: _Bucket, slot: _Slot) -> None:
        _insert_by_time(bucket.entries, slot)
        self._slots[slot.peer.node_id] = slot
        self._prefixes[slot.peer.prefix] += 1

    def _evict(self, bucket: _Bucket, slot: _Slot) -> None:
        bucket.entries.remove(slot)
        del self._slots[slot.peer.node_id]
        self._prefixes[slot.peer.prefix] -= 1
        if self._prefixes[slot.peer.prefix] <= 0:
            del self._prefixes[slot.peer.prefix]
        if bucket.pending is not None and bucket.pending[0] == slot.peer.node_id:
            bucket.pending = None

    def _replace(self, bucket: _Bucket, slot: _Slot) -> bool:
        """Evict ``slot`` for the best replacement; False (nothing changed) without one."""
        if self._best_replacement(bucket, slot) is None:
            return False
        self._lost[slot.peer.node_id] = slot.peer
        while len(self._lost) > self.max_lost:
            self._lost.popitem(last=False)
        self._evict(bucket, slot)
        self._promote(bucket)
        return True

    def _best_replacement(self, bucket: _Bucket, leaving: _Slot | None) -> _Slot | None:
        """The most recently seen replacement the prefix limits admit once ``leaving`` is gone."""
        for candidate in reversed(bucket.replacements):
            if self._cap_violation(bucket, candidate.peer.prefix, leaving) is None:
                return candidate
        return None

    def _promote(self, bucket: _Bucket) -> None:
        if len(bucket.entries) >= self.k:
            return
        best = self._best_replacement(bucket, None)
        if best is not None:
            bucket.replacements.remove(best)
            self._admit(bucket, best)
