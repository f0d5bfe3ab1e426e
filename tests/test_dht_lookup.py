"""The pure lookup iterator, alone and against a simulated network of routing tables.

The network is plain Python: each node has its own :class:`RoutingTable`, filled
from a random half of the others, and answers FIND_NODE with its ``k``
closest entries. A driver plays the event loop: it sends what ``next`` asks,
delivers replies after a random latency, and lets silent peers time out. The
oracle is a brute-force sort of every node by distance.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmsg.dht.lookup import Finished, Lookup, LookupStats, Query, Waiting
from p2pmsg.dht.peer import ID_BYTES, Peer, distance
from p2pmsg.dht.table import PingNeeded, RoutingTable
from p2pmsg.keys import node_id_of

K = 20
Answer = Callable[[bytes, bytes], Sequence[Peer] | None]  # (responder, target) -> closer | refuse


def make_peer(key: bytes, index: int = 0) -> Peer:
    return Peer(node_id_of(key), key, (f"sim:h{index}",), f"v4:10.{index % 250}")


def peers_from(seed: int, count: int) -> list[Peer]:
    rng = random.Random(seed)
    return [make_peer(rng.randbytes(32), i) for i in range(count)]


def by_distance(peers: Sequence[Peer], target: bytes) -> list[Peer]:
    return sorted(peers, key=lambda p: distance(p.node_id, target))


def ids(peers: Sequence[Peer]) -> list[bytes]:
    return [p.node_id for p in peers]


@dataclass
class Trace:
    queries: list[tuple[int, bytes]] = field(default_factory=list)  # (path, peer id)
    max_in_flight: int = 0


def drive(
    lookup: Lookup, answer: Answer, rng: random.Random, silent: frozenset[bytes] = frozenset()
) -> Trace:
    """Run ``lookup`` to the end on simulated time; ``silent`` peers never answer."""
    trace, now, order = Trace(), 0.0, 0
    replies: list[tuple[float, int, bytes]] = []
    while True:
        step = lookup.next(now)
        trace.max_in_flight = max(trace.max_in_flight, lookup.in_flight)
        match step:
            case Query(peer, path):
                trace.queries.append((path, peer.node_id))
                if peer.node_id not in silent:
                    heapq.heappush(replies, (now + rng.uniform(0.01, 1.0), order, peer.node_id))
                    order += 1
            case Finished():
                return trace
            case Waiting(until) if replies and replies[0][0] < until:
                now, _, node_id = heapq.heappop(replies)
                closer = answer(node_id, lookup.target)
                if closer is None:
                    lookup.on_failure(node_id, now)
                else:
                    lookup.on_success(node_id, closer, now)
            case Waiting(until):
                now = until


class Network:
    """``size`` nodes, each knowing a random ``fraction`` of the others."""

    def __init__(self, size: int, fraction: float, seed: int, k: int = K) -> None:
        rng = random.Random(seed)
        self.k = k
        self.peers = peers_from(seed, size)
        self.tables: dict[bytes, RoutingTable] = {}
        for peer in self.peers:
            table = RoutingTable(
                peer.node_id, k=k, max_per_prefix_bucket=None, max_per_prefix_table=None
            )
            for other in rng.sample(self.peers, int(size * fraction)):
                result = table.offer(other, 0.0)
                if isinstance(result, PingNeeded):
                    table.ping_result(result.oldest.node_id, True, 0.0)
            self.tables[peer.node_id] = table

    def honest(self, node_id: bytes, target: bytes) -> Sequence[Peer]:
        return self.tables[node_id].closest(target, self.k)

    def lookup(self, source: Peer, target: bytes, **options: int) -> Lookup:
        seeds = self.tables[source.node_id].closest(target, self.k)
        return Lookup(target, seeds, k=self.k, exclude={source.node_id}, **options)

    def truth(
        self, source: Peer, target: bytes, skip: frozenset[bytes] = frozenset()
    ) -> list[Peer]:
        others = [p for p in self.peers if p.node_id != source.node_id and p.node_id not in skip]
        return by_distance(others, target)[: self.k]


@pytest.fixture(scope="module")
def net() -> Network:
    return Network(500, 0.5, seed=1)


def check_trace(trace: Trace, lookup: Lookup, bound: int) -> None:
    queried = [node_id for _, node_id in trace.queries]
    assert len(queried) == len(set(queried)), "a peer was queried twice"
    assert trace.max_in_flight <= bound
    assert lookup.finished
    result = lookup.result()
    assert result == by_distance(result, lookup.target) and len(result) <= lookup.k


# -- against the simulated network -----------------------------------------------------------


def test_lookups_find_exactly_the_true_k_closest(net: Network) -> None:
    rng, misses = random.Random(101), 0
    for _ in range(1000):
        source, target = rng.choice(net.peers), rng.randbytes(ID_BYTES)
        lookup = net.lookup(source, target)
        check_trace(drive(lookup, net.honest, rng), lookup, bound=3)
        misses += ids(lookup.result()) != ids(net.truth(source, target))
    assert misses <= 1  # >= 99.9%


def test_disjoint_paths_never_share_a_peer(net: Network) -> None:
    rng, misses = random.Random(102), 0
    for _ in range(300):
        source, target = rng.choice(net.peers), rng.randbytes(ID_BYTES)
        lookup = net.lookup(source, target, disjoint_paths=3)
        trace = drive(lookup, net.honest, rng)
        check_trace(trace, lookup, bound=3 * 3)
        paths_of: dict[bytes, set[int]] = {}
        for path, node_id in trace.queries:
            paths_of.setdefault(node_id, set()).add(path)
        assert all(len(paths) == 1 for paths in paths_of.values())
        assert {path for path, _ in trace.queries} == {0, 1, 2}
        misses += ids(lookup.result()) != ids(net.truth(source, target))
    assert misses == 0


@pytest.mark.parametrize("paths", [1, 3])
def test_lookups_route_around_dead_nodes(net: Network, paths: int) -> None:
    rng = random.Random(103)
    dead = rng.sample(net.peers, 75)  # 15%: half time out, half refuse at once
    silent = frozenset(ids(dead[:37]))
    refusing = frozenset(ids(dead[37:]))
    alive = [p for p in net.peers if p.node_id not in silent | refusing]

    def answer(node_id: bytes, target: bytes) -> Sequence[Peer] | None:
        return None if node_id in refusing else net.honest(node_id, target)

    exact, overlap, lookups = 0, 0.0, 200
    for _ in range(lookups):
        source, target = rng.choice(alive), rng.randbytes(ID_BYTES)
        lookup = net.lookup(source, target, disjoint_paths=paths)
        check_trace(drive(lookup, answer, rng, silent), lookup, bound=3 * paths)
        found = ids(lookup.result())
        assert not set(found) & (silent | refusing), "a dead peer in the result"
        truth = ids(net.truth(source, target, skip=silent | refusing))
        exact += found == truth
        overlap += len(set(found) & set(truth)) / K
        assert lookup.stats.timeouts <= lookup.stats.failures
    assert exact >= 0.95 * lookups
    assert overlap >= 0.99 * lookups


def closest_honest_found(net: Network, share: float, paths: int, lookups: int) -> float:
    """How often a lookup from an honest node finds the closest honest node, when
    ``share`` of the nodes collude: they answer with the liars closest to the target."""
    rng = random.Random(104)
    liars = rng.sample(net.peers, int(len(net.peers) * share))
    liar_ids = frozenset(ids(liars))
    honest = [p for p in net.peers if p.node_id not in liar_ids]

    def answer(node_id: bytes, target: bytes) -> Sequence[Peer]:
        if node_id in liar_ids:
            return by_distance(liars, target)[: net.k]
        return net.honest(node_id, target)

    found = 0
    for _ in range(lookups):
        source, target = rng.choice(honest), rng.randbytes(ID_BYTES)
        lookup = net.lookup(source, target, disjoint_paths=paths)
        check_trace(drive(lookup, answer, rng), lookup, bound=3 * paths)
        best = net.truth(source, target, skip=liar_ids)[0]
        found += best.node_id in ids(lookup.result())
    return found / lookups


def test_disjoint_lookups_find_the_closest_honest_node(net: Network) -> None:
    assert closest_honest_found(net, 0.2, paths=3, lookups=300) >= 0.95


def test_disjoint_paths_help_when_buckets_are_small() -> None:
    small = Network(500, 0.3, seed=2, k=8)
    alone = closest_honest_found(small, 0.2, paths=1, lookups=300)
    disjoint = closest_honest_found(small, 0.2, paths=3, lookups=300)
    assert disjoint >= 0.95
    assert disjoint > alone  # measured: about 0.91 alone, 1.0 with three paths


# -- the iterator alone ----------------------------------------------------------------------

TARGET = bytes(ID_BYTES)


def test_alpha_bounds_the_queries_in_flight() -> None:
    seeds = by_distance(peers_from(3, 10), TARGET)
    lookup = Lookup(TARGET, seeds, alpha=2, rpc_timeout=5.0)
    assert lookup.next(0.0) == Query(seeds[0])
    assert lookup.next(0.5) == Query(seeds[1])
    assert lookup.next(1.0) == Waiting(until=5.0)
    assert lookup.in_flight == 2 and set(lookup.waiting_for()) == set(ids(seeds[:2]))
    assert lookup.on_success(seeds[1].node_id, [], 2.0)
    assert lookup.next(2.0) == Query(seeds[2])


def test_silent_peers_time_out_through_next() -> None:
    seeds = by_distance(peers_from(4, 3), TARGET)
    lookup = Lookup(TARGET, seeds, rpc_timeout=5.0)
    assert [lookup.next(t) for t in (0.0, 1.0, 2.0)] == [Query(p) for p in seeds]
    assert lookup.next(4.9) == Waiting(until=5.0)
    assert lookup.next(5.0) == Waiting(until=6.0)  # the first query timed out
    assert lookup.next(7.0) == Finished()
    assert lookup.stats == LookupStats(queries=3, failures=3, timeouts=3)
    assert lookup.on_success(seeds[0].node_id, [], 8.0) is False  # too late
    assert lookup.result() == [] and lookup.next(9.0) == Finished()


def test_a_reply_at_the_deadline_counts_as_a_timeout() -> None:
    seeds = peers_from(5, 1)
    lookup = Lookup(TARGET, seeds, rpc_timeout=5.0)
    lookup.next(0.0)
    assert lookup.on_success(seeds[0].node_id, [], 5.0) is False
    assert lookup.stats.timeouts == 1 and lookup.next(5.0) == Finished()


def test_finishes_once_the_k_closest_answered() -> None:
    seeds = by_distance(peers_from(6, 10), TARGET)
    lookup = Lookup(TARGET, reversed(seeds), k=3, alpha=3)
    queries = [lookup.next(0.0) for _ in range(3)]
    assert queries == [Query(p) for p in seeds[:3]]
    assert lookup.on_failure(seeds[1].node_id, 1.0)
    assert lookup.next(1.0) == Query(seeds[3])  # a failure makes room for the next closest
    for peer in (seeds[0], seeds[2], seeds[3]):
        assert lookup.on_success(peer.node_id, [], 2.0)
    assert lookup.next(2.0) == Finished() and lookup.finished
    assert lookup.result() == [seeds[0], seeds[2], seeds[3]]
    assert lookup.stats == LookupStats(queries=4, successes=3, failures=1)


def test_replies_bring_closer_peers_and_skip_excluded_ones() -> None:
    pool = by_distance(peers_from(7, 6), TARGET)
    local, far, closer = pool[0], pool[5], pool[1:3]
    lookup = Lookup(TARGET, [far, local], k=4, exclude={local.node_id})
    assert lookup.next(0.0) == Query(far)
    assert lookup.next(0.0) == Waiting(until=5.0)  # the local id is not a seed
    assert lookup.on_success(far.node_id, [local, *closer, far], 1.0)
    assert [lookup.next(1.0) for _ in range(2)] == [Query(p) for p in closer]
    assert lookup.tracked == 3


def test_a_reply_is_read_up_to_k_and_tracking_is_bounded() -> None:
    pool = by_distance(peers_from(8, 200), TARGET)
    lookup = Lookup(TARGET, [pool[-1]], k=4, alpha=1, max_tracked=10)
    lookup.next(0.0)
    assert lookup.on_success(pool[-1].node_id, pool[100:199], 1.0)
    assert lookup.tracked == 1 + 4
    now = 1.0
    for batch in range(20):
        step = lookup.next(now)
        if not isinstance(step, Query):
            break
        lookup.on_success(step.peer.node_id, pool[batch * 5 : batch * 5 + 5], now)
        assert lookup.tracked <= 10
    assert lookup.tracked == 10
    with pytest.raises(ValueError, match="max_tracked"):
        Lookup(TARGET, [], k=4, alpha=3, max_tracked=6)


def test_seeds_are_dealt_round_robin_and_owned_by_one_path() -> None:
    pool = by_distance(peers_from(9, 8), TARGET)
    near, dealt = pool[:2], pool[2:]
    lookup = Lookup(TARGET, dealt, k=4, alpha=1, disjoint_paths=3)
    first = [lookup.next(0.0) for _ in range(3)]
    assert first == [Query(dealt[0], 0), Query(dealt[1], 1), Query(dealt[2], 2)]
    # path 0 hears of near[0]; path 1 then hears of it too, and must leave it alone
    assert lookup.on_success(dealt[0].node_id, [near[0]], 1.0)
    assert lookup.on_success(dealt[1].node_id, [near[0], near[1]], 1.0)
    later = [lookup.next(1.0) for _ in range(2)]
    assert later == [Query(near[0], 0), Query(near[1], 1)]


def test_finish_ends_the_lookup() -> None:
    seeds = peers_from(10, 2)
    lookup = Lookup(TARGET, seeds)
    step = lookup.next(0.0)
    assert isinstance(step, Query)
    lookup.finish()
    assert lookup.finished and lookup.next(1.0) == Finished()
    assert lookup.on_success(step.peer.node_id, [], 1.0) is False
    assert Lookup(TARGET, []).next(0.0) == Finished()


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="node id"):
        Lookup(b"short", [])
    with pytest.raises(ValueError, match="positive"):
        Lookup(TARGET, [], disjoint_paths=0)


POOL = peers_from(11, 40)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    k=st.integers(1, 6),
    alpha=st.integers(1, 3),
    paths=st.integers(1, 3),
    target=st.binary(min_size=ID_BYTES, max_size=ID_BYTES),
    seeds=st.lists(st.sampled_from(POOL), max_size=12),
)
def test_any_reply_sequence_keeps_the_promises(
    *, data: st.DataObject, k: int, alpha: int, paths: int, target: bytes, seeds: list[Peer]
) -> None:
    """Arbitrary replies, failures, silence and time: bounded, once per peer, terminating."""
    lookup = Lookup(target, seeds, k=k, alpha=alpha, disjoint_paths=paths, rpc_timeout=3.0)
    now, queried, answered, in_flight = 0.0, set[bytes](), set[bytes](), list[bytes]()
    for _ in range(500):
        step = lookup.next(now)
        assert lookup.in_flight <= alpha * paths
        if isinstance(step, Finished):
            break
        if isinstance(step, Query):
            assert step.peer.node_id not in queried
            queried.add(step.peer.node_id)
            in_flight.append(step.peer.node_id)
            continue
        now += data.draw(st.floats(0.0, 4.0))
        if data.draw(st.booleans()) and in_flight:
            node_id = in_flight.pop(data.draw(st.integers(0, len(in_flight) - 1)))
            if data.draw(st.booleans()):
                closer = data.draw(st.lists(st.sampled_from(POOL), max_size=8))
                if lookup.on_success(node_id, closer, now):
                    answered.add(node_id)
            else:
                lookup.on_failure(node_id, now)
    while not lookup.finished:  # whatever is left in flight times out
        now += 10.0
        step = lookup.next(now)
        assert not isinstance(step, Query) or step.peer.node_id not in queried
        if isinstance(step, Query):
            queried.add(step.peer.node_id)
    expected = by_distance([p for p in POOL if p.node_id in answered], target)[:k]
    assert ids(lookup.result()) == ids(expected)
    stats = lookup.stats
    assert stats.queries == len(queried) and stats.successes == len(answered)
