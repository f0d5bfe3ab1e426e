"""ReplayTags: unit tests and a hypothesis state machine.

The state machine checks on every call that a ``(epoch, tag)`` admitted once
is never admitted again, that nothing at or below the floor is admitted,
that the floor never falls, that every bound holds, and that a fresh tag
with room for it is admitted (the cache only refuses for a reason).
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pmsg.onion.replay import TAG_BYTES, ReplaySnapshot, ReplayTags

CAPACITY = 3
MAX_EPOCHS = 2


def tag(n: int) -> bytes:
    return n.to_bytes(TAG_BYTES, "big")


class ReplayTagsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cache = ReplayTags(CAPACITY, MAX_EPOCHS)
        self.admitted: set[tuple[int, bytes]] = set()
        self.calls = 0
        self.last_floor: int | None = None

    def _room(self, epoch: int) -> bool:
        """Must a fresh tag for ``epoch`` be admitted now?"""
        floor = self.cache.floor
        if floor is not None and epoch <= floor:
            return False
        if epoch in self.cache.epochs:
            return len(self.cache.tags(epoch)) < CAPACITY
        return len(self.cache.epochs) < MAX_EPOCHS or epoch > min(self.cache.epochs)

    @rule(epoch=st.integers(min_value=0, max_value=6), n=st.integers(min_value=0, max_value=6))
    def offer(self, epoch: int, n: int) -> None:
        fresh = (epoch, tag(n)) not in self.admitted
        must_admit = fresh and self._room(epoch)
        refused = self.cache.seen_or_add(epoch, tag(n))
        self.calls += 1
        if not refused:
            assert fresh, "a replay was admitted"
            assert self.last_floor is None or epoch > self.last_floor
            self.admitted.add((epoch, tag(n)))
        assert refused != must_admit

    @rule(epoch=st.integers(min_value=0, max_value=6), n=st.integers(min_value=0, max_value=6))
    def offer_anywhere(self, epoch: int, n: int) -> None:
        """As for a key that never rotates: a tag remembered in any epoch is refused."""
        remembered = any(tag(n) in self.cache.tags(e) for e in self.cache.epochs)
        fresh = (epoch, tag(n)) not in self.admitted
        must_admit = fresh and not remembered and self._room(epoch)
        refused = self.cache.seen_anywhere_or_add(epoch, tag(n))
        self.calls += 1
        if not refused:
            assert fresh and not remembered, "a replay was admitted"
            self.admitted.add((epoch, tag(n)))
        assert refused != must_admit

    @precondition(lambda self: self.admitted)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        epoch, old = data.draw(st.sampled_from(sorted(self.admitted)))
        assert self.cache.seen_or_add(epoch, old)
        self.calls += 1

    @rule(epoch=st.integers(min_value=0, max_value=7))
    def drop(self, epoch: int) -> None:
        self.cache.drop_epochs_before(epoch)
        assert all(e >= epoch for e in self.cache.epochs)

    @rule()
    def persist_and_restore(self) -> None:
        before = self.cache.counters()
        self.cache = ReplayTags.restore(self.cache.snapshot(), CAPACITY, MAX_EPOCHS)
        # counters are metrics, not state: a restored cache starts them at zero
        self.calls -= sum(before.values())

    @invariant()
    def bounded(self) -> None:
        assert len(self.cache.epochs) <= MAX_EPOCHS
        assert all(len(self.cache.tags(e)) <= CAPACITY for e in self.cache.epochs)
        assert len(self.cache) <= CAPACITY * MAX_EPOCHS

    @invariant()
    def floor_never_falls(self) -> None:
        floor = self.cache.floor
        if self.last_floor is not None:
            assert floor is not None and floor >= self.last_floor
        if floor is not None:
            assert all(e > floor for e in self.cache.epochs)
        self.last_floor = floor

    @invariant()
    def counted(self) -> None:
        assert sum(self.cache.counters().values()) == self.calls


ReplayTagsMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40)
TestReplayTags = ReplayTagsMachine.TestCase


def test_a_replay_is_refused_and_counted() -> None:
    cache = ReplayTags()
    assert not cache.seen_or_add(1, tag(1))
    assert cache.seen_or_add(1, tag(1))
    assert not cache.seen_or_add(2, tag(1))  # the same tag under another key is another packet
    assert len(cache) == 2
    assert cache.counters() == {"admitted": 2, "replays": 1, "refused_full": 0, "refused_stale": 0}


def test_a_full_epoch_fails_closed_without_evicting() -> None:
    cache = ReplayTags(capacity=2)
    assert not cache.seen_or_add(5, tag(1))
    assert not cache.seen_or_add(5, tag(2))
    assert cache.seen_or_add(5, tag(3))
    assert cache.tags(5) == {tag(1), tag(2)}
    assert cache.seen_or_add(5, tag(1))
    assert cache.refused_full == 1 and cache.replays == 1
    assert not cache.seen_or_add(6, tag(3))  # other epochs have their own room


def test_dropped_epochs_are_refused_from_then_on() -> None:
    cache = ReplayTags()
    for epoch in (3, 4, 5):
        assert not cache.seen_or_add(epoch, tag(epoch))
    cache.drop_epochs_before(5)
    assert cache.epochs == [5] and cache.floor == 4
    assert cache.seen_or_add(4, tag(99))
    assert cache.seen_or_add(1, tag(99))
    assert cache.refused_stale == 2
    cache.drop_epochs_before(2)  # the floor never falls
    assert cache.floor == 4


def test_a_new_epoch_beyond_max_epochs_pushes_out_the_oldest() -> None:
    cache = ReplayTags(max_epochs=2)
    assert not cache.seen_or_add(1, tag(1))
    assert not cache.seen_or_add(2, tag(2))
    assert not cache.seen_or_add(3, tag(3))
    assert cache.epochs == [2, 3] and cache.floor == 1
    assert cache.seen_or_add(1, tag(4))  # its history is gone: refuse
    cache2 = ReplayTags(max_epochs=2)
    cache2.seen_or_add(5, tag(1))
    cache2.seen_or_add(6, tag(1))
    assert cache2.seen_or_add(4, tag(1))  # older than every epoch kept, and no room
    assert cache2.epochs == [5, 6]


def test_snapshot_and_restore() -> None:
    cache = ReplayTags(capacity=10)
    for n in range(5):
        cache.seen_or_add(7 + n % 2, tag(n))
    cache.drop_epochs_before(7)
    snap = cache.snapshot()
    assert snap == ReplaySnapshot(6, {7: frozenset({tag(0), tag(2), tag(4)}), 8: {tag(1), tag(3)}})
    restored = ReplayTags.restore(snap, capacity=10)
    assert restored.snapshot() == snap
    assert all(restored.seen_or_add(7 + n % 2, tag(n)) for n in range(5))
    assert restored.seen_or_add(6, tag(99))


def test_restore_refuses_a_snapshot_beyond_its_bounds() -> None:
    big = ReplaySnapshot(None, {1: frozenset({tag(1), tag(2)})})
    with pytest.raises(ValueError, match="bounds"):
        ReplayTags.restore(big, capacity=1)
    many = ReplaySnapshot(None, {e: frozenset({tag(e)}) for e in range(4)})
    with pytest.raises(ValueError, match="bounds"):
        ReplayTags.restore(many, max_epochs=3)
    with pytest.raises(ValueError, match="floor"):
        ReplayTags.restore(ReplaySnapshot(5, {5: frozenset({tag(1)})}))
    with pytest.raises(ValueError, match="tag"):
        ReplayTags.restore(ReplaySnapshot(None, {5: frozenset({b"short"})}))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReplayTags(capacity=0)
    with pytest.raises(ValueError, match="positive"):
        ReplayTags(max_epochs=0)
    with pytest.raises(ValueError, match="32 bytes"):
        ReplayTags().seen_or_add(1, b"short")
    assert "ReplayTags(" in repr(ReplayTags())
