"""Route selection and relay scoring (pure)."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmsg.onion.route import DEFAULT_HOPS, Candidate, NoRoute, RelayScores, select_route


def seeded(seed: int) -> Callable[[int], bytes]:
    counter = itertools.count()

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.blake2b(f"{seed}:{next(counter)}".encode()).digest()
        return out[:n]

    return rng


def relay(i: int, prefix: str | None = None, asn: int | None = None) -> Candidate:
    return Candidate(bytes([i]) * 32, bytes([i]) * 32, prefix or f"10.{i}", asn)


@given(
    n=st.integers(3, 30),
    hops=st.integers(1, 5),
    seed=st.integers(0, 10_000),
    prefixes=st.integers(1, 30),
)
def test_routes_are_distinct_diverse_and_exclude_the_ends(
    n: int, hops: int, seed: int, prefixes: int
) -> None:
    candidates = [relay(i, f"p{i % prefixes}", asn=i % (prefixes + 1)) for i in range(1, n + 1)]
    ends = {candidates[0].node_id, candidates[-1].node_id}
    try:
        route = select_route(candidates, hops=hops, exclude=ends, rng=seeded(seed))
    except NoRoute:
        return
    assert len(route) == hops
    assert not ends & {c.node_id for c in route}
    assert len({c.node_id for c in route}) == hops
    assert len({c.prefix for c in route}) == hops
    assert len({c.asn for c in route}) == hops


@given(n=st.integers(3, 30), hops=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_a_gateway_ends_the_route_and_counts_for_its_diversity(
    n: int, hops: int, seed: int
) -> None:
    candidates = [relay(i, f"p{i % 7}", asn=i % 5) for i in range(1, n + 1)]
    gateway = candidates[n // 2]
    try:
        route = select_route(candidates, hops=hops, rng=seeded(seed), last=gateway)
    except NoRoute:
        return
    assert route[-1] == gateway
    assert len(route) == hops
    assert len({c.node_id for c in route}) == hops
    assert len({c.prefix for c in route}) == hops
    assert len({c.asn for c in route}) == hops


def test_no_route_when_too_few_networks() -> None:
    same_net = [relay(i, "10.1") for i in range(1, 10)]
    with pytest.raises(NoRoute):
        select_route(same_net, hops=3, rng=seeded(1))
    assert len(select_route(same_net, hops=1, rng=seeded(1))) == 1


def test_hops_are_bounded() -> None:
    with pytest.raises(ValueError, match="1 to 5"):
        select_route([relay(i) for i in range(1, 10)], hops=6, rng=seeded(1))


def test_the_rng_alone_decides_the_route() -> None:
    candidates = [relay(i) for i in range(1, 20)]
    a = select_route(candidates, rng=seeded(7))
    b = select_route(list(reversed(candidates)), rng=seeded(7))
    assert a == b


def test_a_dropping_relay_sinks_out_of_routes() -> None:
    """One relay of 12 drops everything: after 200 messages it is rarely chosen."""
    candidates = [relay(i) for i in range(1, 13)]
    bad = candidates[4].node_id
    scores = RelayScores(half_life=10_000.0)
    rng = seeded(3)
    late: Counter[bytes] = Counter()
    for step in range(400):
        route = select_route(candidates, scores=scores, now=float(step), rng=rng)
        ids = [c.node_id for c in route]
        if bad in ids:
            scores.route_failed(ids, float(step))
        else:
            scores.route_succeeded(ids, float(step))
        if step >= 200:
            late.update(ids)
    assert late[bad] <= 5  # a fair share would be 200 * 3 / 12 = 50
    assert min(late[c.node_id] for c in candidates if c.node_id != bad) >= 20


@given(seed=st.integers(0, 10_000), cut=st.integers(0, 6))
def test_relays_we_cannot_reach_are_used_only_when_too_few_others_remain(
    seed: int, cut: int
) -> None:
    """Behind a border block, the relays cut off from us sit out of routes."""
    candidates = [replace(relay(i), unreachable=i <= cut) for i in range(1, 7)]
    route = select_route(candidates, rng=seeded(seed))
    if 6 - cut >= DEFAULT_HOPS:
        assert not any(c.unreachable for c in route)
    else:
        assert len(route) == DEFAULT_HOPS  # still a route: they may be reachable after all


@given(seed=st.integers(0, 10_000), poor=st.integers(0, 8), cut=st.integers(0, 8))
def test_a_relay_we_reach_with_a_poor_record_goes_before_one_we_cannot_reach(
    seed: int, poor: int, cut: int
) -> None:
    """Relays 1..poor share the lost routes of relays 1..cut (behind a border
    cut; poor >= cut, as lost routes blame every relay): while enough relays
    we reach remain, whatever their records, no route takes one cut off (S10)."""
    poor = max(poor, cut)
    candidates = [replace(relay(i), unreachable=i <= cut) for i in range(1, 9)]
    scores = RelayScores()
    for _ in range(10):
        scores.route_failed([bytes([i]) * 32 for i in range(1, poor + 1)], 0.0)
    route = select_route(candidates, scores=scores, rng=seeded(seed))
    reachable = [c for c in candidates if not c.unreachable]
    trusted = [c for c in reachable if c.node_id[0] > poor]
    assert len(route) == DEFAULT_HOPS
    if len(trusted) >= DEFAULT_HOPS:
        assert all(c in trusted for c in route)
    elif len(reachable) >= DEFAULT_HOPS:
        assert all(c in reachable for c in route)


@given(
    seed=st.integers(0, 10_000),
    avoided=st.sets(st.integers(1, 8), max_size=8),
    cut=st.integers(0, 8),
)
def test_avoided_relays_are_used_only_when_too_few_good_others_remain(
    seed: int, avoided: set[int], cut: int
) -> None:
    """A retry keeps out of the relays of its unanswered attempts, but never at
    the price of relays we cannot reach."""
    candidates = [replace(relay(i), unreachable=i <= cut) for i in range(1, 9)]
    avoid = {bytes([i]) * 32 for i in avoided}
    route = select_route(candidates, rng=seeded(seed), avoid=avoid)
    good = [c for c in candidates if not c.unreachable]
    assert len(route) == DEFAULT_HOPS
    if len([c for c in good if c.node_id not in avoid]) >= DEFAULT_HOPS:
        assert all(c in good and c.node_id not in avoid for c in route)
    elif len(good) >= DEFAULT_HOPS:
        assert all(c in good for c in route)


def test_failures_decay_and_the_table_is_bounded() -> None:
    scores = RelayScores(half_life=100.0, capacity=3)
    scores.route_failed([b"a" * 32], 0.0)
    assert scores.failures(b"a" * 32, 0.0) == pytest.approx(1.0)
    assert scores.failures(b"a" * 32, 100.0) == pytest.approx(0.5)
    assert scores.weight(b"z" * 32, 0.0) == 1.0
    scores.route_failed([bytes([i]) * 32 for i in range(5)], 0.0)
    assert len(scores) == 3
    scores.route_succeeded([bytes([4]) * 32], 0.0)
    assert scores.failures(bytes([4]) * 32, 0.0) == 0.0
