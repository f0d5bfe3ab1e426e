"""The routing table: splitting, ping-before-evict, diversity caps, closest."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from p2pmsg.dht.peer import ID_BITS, ID_BYTES, Peer, distance
from p2pmsg.dht.table import (
    OWN_ID,
    PING_PENDING,
    PREFIX_BUCKET,
    PREFIX_TABLE,
    Added,
    PingNeeded,
    Rejected,
    RoutingTable,
    Updated,
)
from p2pmsg.keys import node_id_of

PREFIXES = [f"v4:10.{i}" for i in range(6)]
NO_CAPS: dict[str, Any] = {"max_per_prefix_bucket": None, "max_per_prefix_table": None}


def make_peer(key: bytes, prefix: str = "v4:10.0", endpoint: str = "sim:a") -> Peer:
    return Peer(node_id_of(key), key, (endpoint,), prefix)


def random_peers(count: int, seed: int, prefixes: list[str] | None = None) -> list[Peer]:
    rng = random.Random(seed)
    return [
        make_peer(rng.randbytes(32), rng.choice(prefixes or PREFIXES), f"sim:h{i}")
        for i in range(count)
    ]


def fill(table: RoutingTable, peers: list[Peer], now: float = 0.0) -> None:
    """Offer every peer; every ping asked for finds the old entry alive."""
    for peer in peers:
        result = table.offer(peer, now)
        if isinstance(result, PingNeeded):
            table.ping_result(result.oldest.node_id, True, now)


def id_int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def check_structure(table: RoutingTable) -> None:
    """Buckets tile the id space and form one path down the tree towards the local id."""
    buckets = table.buckets()
    assert buckets[0].lo == 0 and buckets[-1].hi == 1 << ID_BITS
    for left, right in itertools.pairwise(buckets):
        assert left.hi == right.lo
    local = id_int(table.local_id)
    own = [b for b in buckets if b.lo <= local < b.hi]
    assert len(own) == 1
    others = sorted(b.depth for b in buckets if b is not own[0])
    assert others == list(range(1, own[0].depth + 1))
    for bucket in buckets:
        assert bucket.hi - bucket.lo == 1 << (ID_BITS - bucket.depth)
        if bucket is own[0]:
            continue
        shift = ID_BITS - bucket.depth
        # the sibling of the local id's ancestor at this depth: same prefix but the last bit
        assert (bucket.lo >> shift) == (local >> shift) ^ 1
        assert all(bucket.lo <= id_int(c.peer.node_id) < bucket.hi for c in bucket.replacements)


def check_caps(table: RoutingTable) -> None:
    table_counts: Counter[str] = Counter()
    for bucket in table.buckets():
        counts = Counter(c.peer.prefix for c in bucket.entries)
        table_counts.update(counts)
        if table.max_per_prefix_bucket is not None:
            assert max(counts.values(), default=0) <= table.max_per_prefix_bucket
    if table.max_per_prefix_table is not None:
        assert max(table_counts.values(), default=0) <= table.max_per_prefix_table


# -- unit tests -----------------------------------------------------------------------


def test_own_id_and_caps_are_rejected() -> None:
    peers = random_peers(4, seed=1, prefixes=["v4:1.2"])
    table = RoutingTable(peers[0].node_id, max_per_prefix_bucket=2, max_per_prefix_table=3)
    assert table.offer(peers[0], 0.0) == Rejected(OWN_ID)
    assert len(table) == 0
    assert [table.offer(p, 0.0) for p in peers[1:3]] == [Added(), Added()]
    assert table.offer(peers[3], 0.0) == Rejected(PREFIX_BUCKET)
    assert peers[0].node_id not in table


def test_table_cap_counts_every_bucket() -> None:
    same = random_peers(10, seed=2, prefixes=["v4:1.2"])
    table = RoutingTable(bytes(ID_BYTES), max_per_prefix_bucket=None, max_per_prefix_table=3)
    results = [table.offer(p, 1.0) for p in same]
    assert results == [Added()] * 3 + [Rejected(PREFIX_TABLE)] * 7
    assert table.peers() == same[:3]
    assert all(not b.replacements for b in table.buckets())  # refused, not even cached
    check_caps(table)


def test_only_the_bucket_holding_the_local_id_splits() -> None:
    local = bytes(ID_BYTES)  # the far half is every id whose first bit is 1
    table = RoutingTable(local, k=4, **NO_CAPS)
    peers = random_peers(300, seed=3)
    fill(table, peers)
    check_structure(table)
    far = table.buckets()[-1]
    assert far.depth == 1 and len(far.entries) == 4
    assert len(table.buckets()) > 3
    for bucket in table.buckets()[1:]:
        if bucket.depth <= 4:  # wide ranges saw dozens of offers: full, and never split
            assert len(bucket.entries) == 4 and bucket.replacements
    newcomer = next(p for p in random_peers(50, seed=4) if p.node_id[0] >= 0x80)
    before = table.buckets()
    result = table.offer(newcomer, 1.0)
    assert result == PingNeeded(far.entries[0].peer)
    assert table.buckets()[-1].replacements[-1].peer == newcomer
    assert [b.lo for b in table.buckets()] == [b.lo for b in before]


def ping_setup() -> tuple[RoutingTable, list[Peer], Peer]:
    """A k=2 table whose far bucket (first bit 1) is full, and a third far peer."""
    far = [p for p in random_peers(100, seed=6) if p.node_id[0] >= 0x80][:3]
    table = RoutingTable(bytes(ID_BYTES), k=2, ping_timeout=10.0, **NO_CAPS)
    assert table.offer(far[0], 1.0) == Added()
    assert table.offer(far[1], 2.0) == Added()
    near = next(p for p in random_peers(100, seed=7) if p.node_id[0] < 0x80)
    assert table.offer(near, 2.0) == Added()  # splits the root: the far half is its own bucket
    assert table.buckets()[-1].depth == 1
    return table, far[:2], far[2]


def test_alive_old_contact_stays_and_the_newcomer_waits() -> None:
    table, (old, young), newcomer = ping_setup()
    assert table.offer(newcomer, 3.0) == PingNeeded(old)
    table.ping_result(old.node_id, True, 4.0)
    far = table.buckets()[-1]
    assert [c.peer for c in far.entries] == [young, old]  # refreshed: most recently seen last
    assert [c.peer for c in far.replacements] == [newcomer]
    assert newcomer.node_id not in table


def test_dead_old_contact_gives_way_to_the_newcomer() -> None:
    table, (old, young), newcomer = ping_setup()
    assert table.offer(newcomer, 3.0) == PingNeeded(old)
    table.ping_result(old.node_id, False, 4.0)
    assert old.node_id not in table
    assert table.get(newcomer.node_id) == newcomer
    assert [c.peer for c in table.buckets()[-1].entries] == [young, newcomer]


def test_one_ping_at_a_time_per_bucket_until_it_times_out() -> None:
    table, (old, _), newcomer = ping_setup()
    another = next(p for p in random_peers(200, seed=8) if p.node_id[0] >= 0x80)
    assert table.offer(newcomer, 3.0) == PingNeeded(old)
    assert table.offer(another, 4.0) == Rejected(PING_PENDING)
    assert {c.peer for c in table.buckets()[-1].replacements} == {newcomer, another}
    assert table.offer(another, 13.0) == PingNeeded(old)  # the first ping was never answered


def test_room_is_a_place_in_a_bucket_or_its_replacement_cache() -> None:
    table, _, newcomer = ping_setup()  # the far bucket is full and does not split
    table.max_replacements = 1
    near = next(p for p in random_peers(300, seed=9) if p.node_id[0] < 0x80)
    assert table.has_room(near.node_id)  # the bucket of the local id
    assert table.has_room(newcomer.node_id)  # an empty replacement cache
    table.offer(newcomer, 3.0)
    another = next(p for p in random_peers(200, seed=8) if p.node_id[0] >= 0x80)
    assert not table.has_room(another.node_id)
    table.remove(newcomer.node_id)
    assert table.has_room(another.node_id)


def test_failures_evict_only_with_a_replacement() -> None:
    table, (old, young), newcomer = ping_setup()
    for _ in range(5):
        assert table.on_failure(old.node_id) is False
    assert old.node_id in table  # nobody to take its place: kept
    assert table.failures(old.node_id) == 5 and table.failures(young.node_id) == 0
    assert table.offer(newcomer, 3.0) == PingNeeded(old)
    assert table.on_failure(old.node_id) is True  # already past the threshold
    assert old.node_id not in table and newcomer.node_id in table
    assert table.on_failure(young.node_id) is False
    assert young.node_id in table and table.failures(young.node_id) == 1
    assert table.failures(old.node_id) == 0  # gone


def test_peers_that_stopped_answering_are_listed_until_seen_again() -> None:
    """Failing entries, and those evicted for failing, are what a heal shows
    coming back (delivery.liveness); any contact takes a peer off the list."""
    table, (old, young), newcomer = ping_setup()
    assert table.unreachable() == []
    table.on_failure(young.node_id)
    assert table.unreachable() == [young]
    table.offer(newcomer, 3.0)
    table.ping_result(old.node_id, False, 4.0)  # evicted for the newcomer
    assert old.node_id not in table
    assert table.unreachable() == [young, old]  # failing entries, then evicted ones
    table.offer(old, 5.0)  # it answered: seen again
    table.offer(young, 5.0)
    assert table.unreachable() == []


def test_the_list_of_evicted_peers_is_bounded() -> None:
    table = RoutingTable(bytes(ID_BYTES), k=1, max_lost=2, **NO_CAPS)
    evicted: list[Peer] = []
    for peer in random_peers(50, seed=3):
        result = table.offer(peer, 1.0)
        if isinstance(result, PingNeeded):
            table.ping_result(result.oldest.node_id, False, 2.0)
            evicted.append(result.oldest)
    assert len(evicted) > 2 and not any(p.node_id in table for p in evicted)
    assert table.unreachable() == evicted[-2:]


def test_update_refreshes_and_changes_endpoints() -> None:
    table, (old, young), _ = ping_setup()
    moved = Peer(old.node_id, old.public_key, ("tcp:192.0.2.1:4001",), old.prefix)
    assert table.offer(moved, 5.0) == Updated()
    assert table.get(old.node_id) == moved
    assert [c.peer for c in table.buckets()[-1].entries] == [young, moved]


def test_remove_promotes_a_replacement() -> None:
    table, (_, young), newcomer = ping_setup()
    table.offer(newcomer, 3.0)
    assert table.remove(young.node_id) is True
    assert newcomer.node_id in table and young.node_id not in table
    assert table.remove(young.node_id) is False
    assert len(table.buckets()[-1].replacements) == 0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    target=st.binary(min_size=ID_BYTES, max_size=ID_BYTES),
    count=st.integers(0, 40),
    k=st.integers(1, 6),
)
def test_closest_matches_brute_force(seed: int, target: bytes, count: int, k: int) -> None:
    peers = random_peers(60, seed)
    table = RoutingTable(peers[0].node_id, k=k, **NO_CAPS)
    fill(table, peers[1:])
    ordered = sorted(table.peers(), key=lambda p: distance(p.node_id, target))
    assert table.closest(target, count) == ordered[:count]
    excluded = {p.node_id for p in ordered[:2]}
    kept = [p for p in ordered if p.node_id not in excluded]
    assert table.closest(target, count, exclude=excluded) == kept[:count]


def test_stale_buckets_name_an_id_in_each_stale_range() -> None:
    rng = random.Random(10)
    table = RoutingTable(bytes(ID_BYTES), k=2, **NO_CAPS)
    targets = table.stale_buckets(0.0, 60.0, rng.randbytes)
    assert len(targets) == 1  # one bucket, never refreshed
    assert table.stale_buckets(30.0, 60.0, rng.randbytes) == []
    fill(table, random_peers(40, seed=11), now=50.0)
    buckets = table.buckets()
    assert table.stale_buckets(100.0, 60.0, rng.randbytes) == []  # entries were seen at 50
    targets = table.stale_buckets(200.0, 60.0, rng.randbytes)
    assert len(targets) == len(buckets)
    for target, bucket in zip(targets, buckets, strict=True):
        assert bucket.lo <= id_int(target) < bucket.hi
    assert table.stale_buckets(200.0, 60.0, rng.randbytes) == []


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="node id"):
        RoutingTable(b"short")
    with pytest.raises(ValueError, match="positive"):
        RoutingTable(bytes(ID_BYTES), k=0)
    with pytest.raises(ValueError, match="prefix limit"):
        RoutingTable(bytes(ID_BYTES), max_per_prefix_table=0)


# -- the state machine ------------------------------------------------------------------

THRESHOLD = 3


class TableMachine(RuleBasedStateMachine):
    """Random offers, pings, failures and removals; the model remembers who may leave."""

    def __init__(self) -> None:
        super().__init__()
        self.table = RoutingTable(bytes(ID_BYTES))
        self.keys: list[bytes] = []
        self.now = 0.0
        self.failures: Counter[bytes] = Counter()  # consecutive failures since last seen alive
        self.pending: list[bytes] = []  # the oldest entries a PingNeeded named

    @initialize(
        seeds=st.lists(st.binary(min_size=8, max_size=8), min_size=12, max_size=40, unique=True),
        near=st.integers(0, ID_BITS - 1),
        caps=st.sampled_from([(2, 3), (1, 2), (None, 4), (2, None), (None, None)]),
        k=st.integers(1, 5),
    )
    def setup(
        self, seeds: list[bytes], near: int, caps: tuple[int | None, int | None], k: int
    ) -> None:
        self.keys = [hashlib.sha256(s).digest() for s in seeds]
        # the local id sits next to the first key's id, so the own bucket splits deep
        local = id_int(node_id_of(self.keys[0])) ^ (1 << near)
        self.table = RoutingTable(
            local.to_bytes(ID_BYTES, "big"),
            k=k,
            max_per_prefix_bucket=caps[0],
            max_per_prefix_table=caps[1],
            max_replacements=3,
            failure_threshold=THRESHOLD,
            ping_timeout=5.0,
        )

    def peer(self, index: int, prefix: int, endpoint: int = 0) -> Peer:
        return make_peer(self.keys[index % len(self.keys)], PREFIXES[prefix], f"sim:e{endpoint}")

    def guarded(self, op: str, node_id: bytes, action: Callable[[], object]) -> None:
        """Run ``action``; only the named op may take ``node_id`` out, nobody else."""
        before = {p.node_id for p in self.table.peers()}
        action()
        gone = before - {p.node_id for p in self.table.peers()}
        for left in gone:
            event(f"{op} evicted")
            assert left == node_id, f"{op} on another id evicted a live old contact"
            if op == "failure":
                assert self.failures[left] >= THRESHOLD
            assert op in {"remove", "dead", "failure"}, f"{op} evicted a contact"
            self.failures.pop(left, None)

    @rule(
        index=st.integers(0, 99),
        prefix=st.integers(0, 5),
        dt=st.integers(0, 3),
        e=st.integers(0, 2),
    )
    def offer(self, index: int, prefix: int, dt: int, e: int) -> None:
        self.now += dt
        peer = self.peer(index, prefix, e)
        result: list[object] = []
        self.guarded("offer", peer.node_id, lambda: result.append(self.table.offer(peer, self.now)))
        event(f"offer: {type(result[0]).__name__}")
        match result[0]:
            case Added() | Updated():
                self.failures.pop(peer.node_id, None)
                assert self.table.get(peer.node_id) == peer
            case PingNeeded(oldest):
                self.pending.append(oldest.node_id)
                bucket = next(
                    b for b in self.table.buckets() if b.lo <= id_int(oldest.node_id) < b.hi
                )
                assert bucket.entries[0].peer == oldest
                assert peer in [c.peer for c in bucket.replacements]
            case Rejected(reason):
                assert self.table.get(peer.node_id) != peer or reason == OWN_ID

    def answer(self, node_id: bytes, alive: bool) -> None:
        op = "ping" if alive else "dead"
        self.guarded(op, node_id, lambda: self.table.ping_result(node_id, alive, self.now))
        if alive:
            self.failures.pop(node_id, None)
        elif node_id in self.table:
            self.failures[node_id] += 1

    @precondition(lambda self: self.pending)
    @rule(alive=st.booleans())
    def answer_pending_ping(self, alive: bool) -> None:
        self.answer(self.pending.pop(0), alive)

    @rule(index=st.integers(0, 99), alive=st.booleans(), dt=st.integers(0, 3))
    def ping(self, index: int, alive: bool, dt: int) -> None:
        self.now += dt
        self.answer(self.peer(index, 0).node_id, alive)

    def fail(self, node_id: bytes) -> None:
        if node_id in self.table:
            self.failures[node_id] += 1
        self.guarded("failure", node_id, lambda: self.table.on_failure(node_id))

    @rule(index=st.integers(0, 99))
    def failure(self, index: int) -> None:
        self.fail(self.peer(index, 0).node_id)

    @precondition(lambda self: self.pending)
    @rule(times=st.integers(1, 4))
    def pending_fails(self, times: int) -> None:
        node_id = self.pending[0]
        for _ in range(times):
            self.fail(node_id)

    @rule(index=st.integers(0, 99))
    def remove(self, index: int) -> None:
        node_id = self.peer(index, 0).node_id
        self.guarded("remove", node_id, lambda: self.table.remove(node_id))

    @invariant()
    def buckets_are_bounded_and_in_range(self) -> None:
        table = self.table
        seen: set[bytes] = set()
        for bucket in table.buckets():
            assert len(bucket.entries) <= table.k
            assert len(bucket.replacements) <= table.max_replacements
            times = [c.last_seen for c in bucket.entries]
            assert times == sorted(times)
            for contact in bucket.entries + bucket.replacements:
                assert bucket.lo <= id_int(contact.peer.node_id) < bucket.hi
                assert contact.peer.node_id not in seen
                seen.add(contact.peer.node_id)
        assert len(table) == sum(len(b.entries) for b in table.buckets())
        assert table.local_id not in seen

    @invariant()
    def structure_and_caps_hold(self) -> None:
        check_structure(self.table)
        check_caps(self.table)


TableMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_table_machine = TableMachine.TestCase
