"""ReplayWindow: unit tests and a hypothesis state machine.

The state machine drives one window with a clock that only moves forward
(the window's own contract) and checks, on every call:

* a tag is never accepted while the window still remembers it, and the same
  first flight (tag and timestamp) is never accepted twice;
* nothing at or below the floor is accepted, and the floor never falls;
* ``len(window) <= capacity``;
* a fresh tag with an in-window timestamp above the floor is accepted when
  the window is not full.

A clock that steps backwards is a separate test, below, and so is a window
restored after a restart from what its journal listed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
)

from p2pmsg.link.replay import ReplayWindow

WINDOW = 10
CAPACITY = 4
START = 1_000.0


class ReplayMachine(RuleBasedStateMachine):
    flights = Bundle("flights")

    def __init__(self) -> None:
        super().__init__()
        self.window = ReplayWindow(WINDOW, capacity=CAPACITY)
        self.now = START
        self.accepted: list[tuple[bytes, float]] = []
        self.ever_seen: set[bytes] = set()
        self.next_tag = 0
        self.last_floor = self.window.floor

    def _remembered(self, tag: bytes, floor: float) -> bool:
        """Must the window still know ``tag``? (Clock monotonic, see module doc.)

        An accepted flight is forgotten only by expiry (its timestamp fell
        below ``now - window`` at some call) or by a capacity eviction (which
        lifts the floor to at least its timestamp).
        """
        return any(t == tag and ts >= self.now - WINDOW and ts > floor for t, ts in self.accepted)

    def _accept(self, tag: bytes, timestamp: float) -> bool:
        floor = self.window.floor
        size = len(self.window)
        remembered = self._remembered(tag, floor)
        fresh = tag not in self.ever_seen
        result = self.window.accept(tag, timestamp, self.now)
        if result:
            assert not remembered, "accepted a tag the window must remember"
            assert (tag, timestamp) not in self.accepted, "accepted the same flight twice"
            assert timestamp > floor
            assert timestamp > self.window.floor
            assert abs(timestamp - self.now) <= WINDOW
            self.accepted.append((tag, timestamp))
        elif fresh and abs(timestamp - self.now) <= WINDOW and timestamp > floor:
            assert size >= CAPACITY, "refused a fresh in-window flight while not full"
        self.ever_seen.add(tag)
        return result

    @rule(dt=st.integers(min_value=0, max_value=3 * WINDOW))
    def advance_clock(self, dt: int) -> None:
        self.now += dt

    @rule(target=flights, offset=st.integers(min_value=-2 * WINDOW, max_value=2 * WINDOW))
    def fresh_flight(self, offset: int) -> tuple[bytes, float]:
        tag = self.next_tag.to_bytes(4, "big")
        self.next_tag += 1
        timestamp = self.now + offset
        self._accept(tag, timestamp)
        return tag, timestamp

    @rule(flight=flights)
    def replay_flight(self, flight: tuple[bytes, float]) -> None:
        self._accept(*flight)

    @rule(flight=flights, offset=st.integers(min_value=-WINDOW, max_value=WINDOW))
    def same_tag_new_timestamp(self, flight: tuple[bytes, float], offset: int) -> None:
        self._accept(flight[0], self.now + offset)

    @invariant()
    def bounded(self) -> None:
        assert len(self.window) <= CAPACITY

    @invariant()
    def floor_never_falls(self) -> None:
        assert self.window.floor >= self.last_floor
        self.last_floor = self.window.floor


ReplayMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestReplayWindow = ReplayMachine.TestCase


# -- examples --------------------------------------------------------------


@pytest.mark.parametrize(("window", "capacity"), [(0, 1), (-1, 1), (1, 0), (1, -5)])
def test_window_and_capacity_must_be_positive(window: float, capacity: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        ReplayWindow(window, capacity=capacity)


def test_accepts_once_and_refuses_the_replay() -> None:
    window = ReplayWindow(60)
    assert window.accept(b"a", 1000, 1000.5)
    assert not window.accept(b"a", 1000, 1000.5)
    assert not window.accept(b"a", 1010, 1010)
    assert window.accept(b"b", 1000, 1000.5)
    assert len(window) == 2


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [(940, True), (939, False), (1060, True), (1061, False), (0, False), (2**64 - 1, False)],
)
def test_time_window_edges(timestamp: int, expected: bool) -> None:
    assert ReplayWindow(60).accept(b"t", timestamp, 1000) is expected


def test_expired_tags_are_forgotten_but_their_flights_stay_refused() -> None:
    window = ReplayWindow(60)
    assert window.accept(b"old", 1000, 1000)
    assert window.accept(b"new", 1100, 1100)  # evicts "old", whose time has passed
    assert len(window) == 1
    assert not window.accept(b"old", 1000, 1100)  # outside the window anyway


def test_full_window_evicts_the_oldest_and_raises_the_floor() -> None:
    window = ReplayWindow(60, capacity=2)
    assert window.accept(b"a", 1000, 1000)
    assert window.accept(b"b", 1001, 1000)
    assert window.accept(b"c", 1002, 1000)  # evicts "a", floor := 1000
    assert window.floor == 1000
    assert len(window) == 2
    assert not window.accept(b"a", 1000, 1000)  # the evicted flight: at the floor
    assert not window.accept(b"d", 999, 1000)  # old but honest: refused, never admitted
    assert window.accept(b"e", 1003, 1000)


def test_an_eviction_that_lands_on_the_new_flight_refuses_it() -> None:
    window = ReplayWindow(60, capacity=1)
    assert window.accept(b"a", 1005, 1000)
    assert not window.accept(b"b", 1001, 1000)  # evicting "a" lifts the floor above it
    assert window.floor == 1005


def test_a_clock_stepping_back_never_readmits_a_replay() -> None:
    """A first flight accepted once must never be accepted again.

    The listener's ``now`` is the wall clock (``time.time``), which NTP or a
    person can step backwards. After the window forgets a tag by expiry, a
    backwards step brings the old flight's timestamp back into the window
    and the replay is accepted. Expiry should lift the floor the way
    capacity eviction does (``floor = max(floor, evicted timestamp)``).
    """
    window = ReplayWindow(60)
    assert window.accept(b"flight", 1000, 1000)
    assert window.accept(b"other", 1100, 1100)  # "flight" expires and is forgotten
    # the wall clock is stepped back by 100 s; the attacker replays the flight
    assert not window.accept(b"flight", 1000, 1000)


# -- the journal and restoring after a restart ---------------------------------


@settings(max_examples=300, deadline=None)
@given(
    flights=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3 * WINDOW),
            st.integers(min_value=-2 * WINDOW, max_value=2 * WINDOW),
        ),
        max_size=30,
    ),
    later=st.integers(min_value=-2 * WINDOW, max_value=3 * WINDOW),
)
def test_a_window_restored_from_its_journal_refuses_all_it_accepted(
    flights: list[tuple[int, int]], later: int
) -> None:
    """Whatever the old window accepted, the restored one refuses, even with the
    clock stepped back; and restoring lifts the floor only over expired flights."""
    old = ReplayWindow(WINDOW, capacity=CAPACITY, journal=True)
    now = START
    accepted: list[tuple[bytes, float]] = []
    for n, (dt, offset) in enumerate(flights):
        now += dt
        flight = (n.to_bytes(4, "big"), now + offset)
        if old.accept(*flight, now):
            accepted.append(flight)
    assert old.unsaved() == accepted
    assert (old.accepted, old.durable) == (len(accepted), 0)
    new = ReplayWindow(WINDOW, capacity=CAPACITY)
    new.raise_floor(old.floor)
    for entry in old.unsaved():
        new.restore(*entry, now)
    assert len(new) <= len(old)
    assert old.floor <= new.floor <= max(old.floor, now - WINDOW)
    for flight in accepted:
        assert not new.accept(*flight, now + later)


def test_restore_forgets_as_accept_would_and_journals_nothing() -> None:
    window = ReplayWindow(60, capacity=2, journal=True)
    window.restore(b"expired", 900, 1000)  # before now - window: only the floor keeps it
    assert (len(window), window.floor) == (0, 900)
    window.restore(b"a", 1001, 1000)
    window.restore(b"b", 1002, 1000)
    window.restore(b"c", 1003, 1000)  # full: "a" is evicted, floor := 1001
    window.restore(b"c", 1050, 1000)  # known already
    window.restore(b"d", 1001, 1000)  # at the floor
    assert (len(window), window.floor) == (2, 1001)
    assert (window.accepted, window.unsaved()) == (0, [])
    for tag, timestamp in [(b"a", 1001), (b"b", 1002), (b"c", 1003), (b"c", 1050)]:
        assert not window.accept(tag, timestamp, 1000)
    window.raise_floor(500)  # a floor never falls
    assert window.floor == 1001


def test_a_full_journal_refuses_until_its_entries_are_saved() -> None:
    window = ReplayWindow(60, capacity=2, journal=True)
    assert window.accept(b"a", 1000, 1000)
    assert window.accept(b"b", 1000, 1000)
    assert not window.accept(b"c", 1000, 1000)
    assert window.durable == 0
    window.saved(1)
    assert (window.durable, window.unsaved()) == (1, [(b"b", 1000)])
    assert window.accept(b"c", 1001, 1000)
    with pytest.raises(ValueError, match="saved more"):
        window.saved(3)


def test_without_a_journal_everything_counts_as_durable() -> None:
    window = ReplayWindow(60)
    assert window.accept(b"a", 1000, 1000)
    assert (window.accepted, window.durable, window.unsaved()) == (1, 1, [])
