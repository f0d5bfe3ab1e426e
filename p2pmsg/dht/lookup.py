"""The iterative Kademlia lookup as a pure iterator: ``next(now)``, ``on_success``, ``on_failure``.

Theory of operation. A :class:`Lookup` owns no sockets and no clock. The
driver calls :meth:`Lookup.next` with the current time and gets one
:class:`Query` (send FIND_NODE for the target to this peer), :class:`Waiting`
(nothing to send until a reply arrives or ``until`` passes) or
:class:`Finished`. Each reply is reported with :meth:`Lookup.on_success` (with
the closer peers it carried) or :meth:`Lookup.on_failure`. A query not
answered within ``rpc_timeout`` counts as failed; a late answer is ignored.

Each *path* keeps its known peers sorted by XOR distance to the target and
queries, at most ``alpha`` at a time, the closest not yet contacted among its
``k`` closest peers that have not failed. A path is finished when those ``k``
have all answered, or when it has nothing left to ask (standard Kademlia).

Disjoint paths (S/Kademlia): with ``disjoint_paths = d > 1`` the seeds are dealt
round-robin (closest first) to ``d`` paths. A peer belongs to the first path
that learns of it and no other path ever tracks or queries it, so a path that
met a liar is poisoned alone: the liar's friends, once owned by that path, are
invisible to the others. Every peer among the ``k`` closest learned overall is
among its owner's ``k`` closest, so it is queried. The result is the ``k``
closest peers that answered, over all paths.

Everything is bounded: a path tracks at most ``max_tracked`` peers (dropping
the farthest that is not in flight), only the first ``k`` peers of a reply are
read, and a peer is queried at most once per lookup (the ids already learned
are remembered: at most the seeds plus ``k`` per answer). Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from p2pmsg.dht.peer import ID_BYTES, Peer, distance


@dataclass(frozen=True)
class Query:
    """Send one FIND_NODE for the target to ``peer``, then report the outcome."""

    peer: Peer
    path: int = 0


@dataclass(frozen=True)
class Waiting:
    """Nothing to send now: call ``next`` again on a reply, or at ``until`` (a query's timeout)."""

    until: float


@dataclass(frozen=True)
class Finished:
    """The lookup is over; :meth:`Lookup.result` holds the answer."""


Step = Query | Waiting | Finished


@dataclass(frozen=True)
class LookupStats:
    """Counters of one lookup: ``failures`` includes ``timeouts``."""

    queries: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    ignored: int = 0  # replies for peers not in flight (late, duplicate, unknown)


class _State(Enum):
    NEW = "new"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(order=True)
class _Candidate:
    distance: int
    peer: Peer = field(compare=False)
    state: _State = field(default=_State.NEW, compare=False)
    deadline: float = field(default=math.inf, compare=False)


class _Path:
    """One iteration over the peers this path owns, closest first."""

    def __init__(self, index: int, k: int, alpha: int, max_tracked: int) -> None:
        self.index = index
        self.k = k
        self.alpha = alpha
        self.max_tracked = max_tracked
        self.candidates: list[_Candidate] = []
        self.by_id: dict[bytes, _Candidate] = {}
        self.in_flight = 0
        self.finished = False

    def add(self, peer: Peer, target: bytes) -> None:
        candidate = _Candidate(distance(peer.node_id, target), peer)
        insort(self.candidates, candidate)
        self.by_id[peer.node_id] = candidate
        if len(self.candidates) > self.max_tracked:
            self._drop_farthest()

    def _drop_farthest(self) -> None:
        for index in range(len(self.candidates) - 1, -1, -1):
            if self.candidates[index].state is not _State.WAITING:
                dropped = self.candidates.pop(index)
                del self.by_id[dropped.peer.node_id]
                return

    def expire(self, now: float) -> int:
        """Fail the queries whose deadline passed; how many did."""
        expired = 0
        for candidate in self.candidates:
            if candidate.state is _State.WAITING and now >= candidate.deadline:
                self.settle(candidate, _State.FAILED)
                expired += 1
        return expired

    def settle(self, candidate: _Candidate, state: _State) -> None:
        candidate.state = state
        self.in_flight -= 1

    def step(self, now: float, rpc_timeout: float) -> Query | Waiting | None:
        """The next query of this path, ``Waiting``, or ``None`` once finished."""
        if self.finished:
            return None
        first_new: _Candidate | None = None
        busy = False
        live = (c for c in self.candidates if c.state is not _State.FAILED)
        for candidate in itertools.islice(live, self.k):
            if candidate.state is _State.NEW and first_new is None:
                first_new = candidate
            busy = busy or candidate.state is _State.WAITING
        if first_new is None and not busy:
            self.finished = True
            return None
        if first_new is not None and self.in_flight < self.alpha:
            first_new.state = _State.WAITING
            first_new.deadline = now + rpc_timeout
            self.in_flight += 1
            return Query(first_new.peer, self.index)
        return Waiting(self.earliest_deadline())

    def earliest_deadline(self) -> float:
        waiting = (c.deadline for c in self.candidates if c.state is _State.WAITING)
        return min(waiting, default=math.inf)


class Lookup:
    """One iterative lookup for the peers closest to ``target``.

    Raises ``ValueError`` for bad parameters; nothing else. Reporting an
    outcome for a peer that is not in flight is ignored (the methods return
    False), so a driver may report late or twice without harm.
    """

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[Peer],
        *,
        k: int = 20,
        alpha: int = 3,
        disjoint_paths: int = 1,
        rpc_timeout: float = 5.0,
        exclude: Iterable[bytes] = frozenset(),
        max_tracked: int | None = None,
    ) -> None:
        if len(target) != ID_BYTES:
            raise ValueError("the target must be a node id")
        if k < 1 or alpha < 1 or disjoint_paths < 1 or rpc_timeout <= 0:
            raise ValueError("k, alpha, disjoint_paths and rpc_timeout must be positive")
        cap = 10 * k if max_tracked is None else max_tracked
        if cap < k + alpha:
            raise ValueError("max_tracked must be at least k + alpha")
        self.target = target
        self.k = k
        self.alpha = alpha
        self.rpc_timeout = rpc_timeout
        self.exclude = frozenset(exclude)
        self._paths = [_Path(i, k, alpha, cap) for i in range(disjoint_paths)]
        self._owner: dict[bytes, int] = {}
        self._answered: dict[bytes, Peer] = {}
        self._turn = 0
        self._done = False
        self._stats = LookupStats()
        unique = {p.node_id: p for p in seeds if p.node_id not in self.exclude}
        ordered = sorted(unique.values(), key=lambda p: distance(p.node_id, target))
        for index, peer in enumerate(ordered):
            self._learn(peer, self._paths[index % disjoint_paths])

    # -- the iterator ---------------------------------------------------------------------

    def next(self, now: float) -> Step:
        """The next thing to do at ``now``: a :class:`Query`, :class:`Waiting` or :class:`Finished`.

        Queries in flight for ``rpc_timeout`` or longer count as failed first.
        Paths take turns, so they progress evenly; at most ``alpha`` queries
        are in flight per path.
        """
        if self._done:
            return Finished()
        for path in self._paths:
            expired = path.expire(now)
            self._count(failures=expired, timeouts=expired)
        until = math.inf
        count = len(self._paths)
        for offset in range(count):
            path = self._paths[(self._turn + offset) % count]
            step = path.step(now, self.rpc_timeout)
            if isinstance(step, Query):
                self._turn = (path.index + 1) % count
                self._count(queries=1)
                return step
            if isinstance(step, Waiting):
                until = min(until, step.until)
        if until == math.inf:
            self._done = True
            return Finished()
        return Waiting(until)

    def on_success(self, node_id: bytes, closer: Sequence[Peer], now: float) -> bool:
        """``node_id`` answered with ``closer``; True when the answer was taken.

        Only the first ``k`` peers of ``closer`` are read; peers in ``exclude``
        and peers any path already knows are skipped. An answer at or after the
        query's deadline counts as a timeout and is not taken.
        """
        found = self._in_flight(node_id)
        if found is None:
            return False
        path, candidate = found
        if now >= candidate.deadline:
            path.settle(candidate, _State.FAILED)
            self._count(failures=1, timeouts=1)
            return False
        path.settle(candidate, _State.SUCCEEDED)
        self._answered[node_id] = candidate.peer
        self._count(successes=1)
        if path.finished:
            return True  # a finished path must not hoard peers other paths could use
        for peer in itertools.islice(closer, self.k):
            if peer.node_id not in self.exclude and peer.node_id not in self._owner:
                self._learn(peer, path)
        return True

    def on_failure(self, node_id: bytes, now: float) -> bool:
        """The query to ``node_id`` failed; True when it was in flight."""
        del now  # a failure is a failure whenever it comes
        found = self._in_flight(node_id)
        if found is None:
            return False
        path, candidate = found
        path.settle(candidate, _State.FAILED)
        self._count(failures=1)
        return True

    def finish(self) -> None:
        """End the lookup now (e.g. a value was found); later replies are ignored."""
        self._done = True

    # -- results and inspection -------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once :meth:`next` has returned :class:`Finished` (or :meth:`finish` was called)."""
        return self._done

    @property
    def stats(self) -> LookupStats:
        """A frozen copy of the counters so far."""
        return self._stats

    @property
    def in_flight(self) -> int:
        """Queries sent and not yet settled (answered, failed or timed out)."""
        return sum(path.in_flight for path in self._paths)

    @property
    def tracked(self) -> int:
        """Peers the paths currently track (bounded by ``max_tracked`` per path)."""
        return sum(len(path.candidates) for path in self._paths)

    def waiting_for(self) -> list[bytes]:
        """The ids of the peers with a query in flight."""
        return [
            c.peer.node_id
            for path in self._paths
            for c in path.candidates
            if c.state is _State.WAITING
        ]

    def result(self) -> list[Peer]:
        """The ``k`` closest peers that answered, over all paths, closest first."""
        return heapq.nsmallest(
            self.k, self._answered.values(), key=lambda p: distance(p.node_id, self.target)
        )

    # -- internals ----------------------------------------------------------------------

    def _learn(self, peer: Peer, path: _Path) -> None:
        self._owner[peer.node_id] = path.index
        path.add(peer, self.target)

    def _in_flight(self, node_id: bytes) -> tuple[_Path, _Candidate] | None:
        if self._done or node_id not in self._owner:
            self._count(ignored=1)
            return None
        path = self._paths[self._owner[node_id]]
        candidate = path.by_id.get(node_id)
        if candidate is None or candidate.state is not _State.WAITING:
            self._count(ignored=1)
            return None
        return path, candidate

    def _count(
        self,
        *,
        queries: int = 0,
        successes: int = 0,
        failures: int = 0,
        timeouts: int = 0,
        ignored: int = 0,
    ) -> None:
        s = self._stats
        self._stats = LookupStats(
            s.queries + queries,
            s.successes + successes,
            s.failures + failures,
            s.timeouts + timeouts,
            s.ignored + ignored,
        )
