"""The per-source token buckets: semantics at explicit times, counting, the LRU bound.

:class:`RateLimiter` is pure (time is the ``now`` argument), so every test
states the times it means. A hypothesis property checks the promise a
responder relies on (over any interval of length T a source gets at most
``burst + rate * T`` requests through) and a state machine checks the limiter
against an exact model, bucket by bucket and eviction by eviction.
"""

from __future__ import annotations

from collections import OrderedDict
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from p2pmsg.dht.ratelimit import RateLimiter

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32
T0 = 1_800_000_000.0  # a wall-clock time, as the DHT passes it


@pytest.mark.parametrize(
    ("rate", "burst", "max_sources"),
    [(0, 1, 1), (-1, 1, 1), (1, 0.5, 1), (1, 0, 1), (1, 1, 0), (1, 1, -1)],
)
def test_bad_parameters_are_refused(rate: float, burst: float, max_sources: int) -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate, burst, max_sources)


def test_a_new_source_starts_with_a_full_bucket() -> None:
    limiter = RateLimiter(rate=1, burst=3)
    assert [limiter.allow(A, T0) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.refused == 2


def test_tokens_come_back_at_the_rate() -> None:
    limiter = RateLimiter(rate=4, burst=2)
    assert limiter.allow(A, T0)
    assert limiter.allow(A, T0)
    assert not limiter.allow(A, T0 + 0.2)  # 0.8 of a token
    assert limiter.allow(A, T0 + 0.25)  # the refused request spent nothing: 1.0 now
    assert not limiter.allow(A, T0 + 0.25)
    assert limiter.allow(A, T0 + 0.5)
    assert limiter.refused == 2


def test_an_idle_source_saves_at_most_a_burst() -> None:
    limiter = RateLimiter(rate=10, burst=3)
    for _ in range(3):
        assert limiter.allow(A, T0)
    granted = [limiter.allow(A, T0 + 3600) for _ in range(10)]
    assert granted == [True] * 3 + [False] * 7


def test_a_fractional_burst_rounds_down() -> None:
    limiter = RateLimiter(rate=1, burst=2.5)
    assert [limiter.allow(A, T0) for _ in range(3)] == [True, True, False]
    assert limiter.allow(A, T0 + 0.5)  # 0.5 + 0.5 = 1 token
    assert not limiter.allow(A, T0 + 0.5)


def test_sources_have_their_own_buckets_and_one_refusal_counter() -> None:
    limiter = RateLimiter(rate=1, burst=1)
    assert limiter.allow(A, T0)
    assert not limiter.allow(A, T0)
    assert limiter.allow(B, T0)
    assert not limiter.allow(B, T0)
    assert not limiter.allow(A, T0)
    assert limiter.refused == 3
    assert len(limiter) == 2


def test_a_clock_that_steps_back_earns_nothing() -> None:
    """Wall clocks step; going back must not mint tokens (nor crash)."""
    limiter = RateLimiter(rate=1, burst=1)
    assert limiter.allow(A, T0)
    assert not limiter.allow(A, T0 - 100)
    assert not limiter.allow(A, T0 - 99.5)
    assert limiter.allow(A, T0 - 99)  # one second after the last time seen


def test_the_number_of_sources_is_bounded_least_recently_used_first() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_sources=2)
    assert limiter.allow(A, T0)
    assert limiter.allow(B, T0)
    assert not limiter.allow(A, T0)  # A is now the most recently used
    assert limiter.allow(C, T0)  # B is forgotten
    assert len(limiter) == 2
    assert not limiter.allow(A, T0)  # A was remembered: still empty
    assert limiter.allow(B, T0)  # forgotten, so a full bucket again (the documented trade)
    assert len(limiter) == 2


def test_many_sources_never_grow_the_limiter() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_sources=16)
    for i in range(1000):
        assert limiter.allow(i.to_bytes(32, "big"), T0 + i * 0.001)
        assert len(limiter) <= 16
    assert len(limiter) == 16
    assert limiter.refused == 0


# --- the promise: at most burst + rate * T per interval T -------------------------------

events = st.lists(
    st.tuples(
        st.sampled_from([A, B, C]),
        st.one_of(st.just(0.0), st.floats(min_value=0, max_value=2, allow_nan=False)),
    ),
    max_size=200,
)


@settings(max_examples=300)
@given(
    rate=st.floats(min_value=0.1, max_value=50),
    burst=st.floats(min_value=1, max_value=20),
    events=events,
)
def test_no_source_gets_more_than_burst_plus_rate_times_t(
    rate: float, burst: float, events: list[tuple[bytes, float]]
) -> None:
    limiter = RateLimiter(rate, burst, max_sources=3)
    now = T0
    granted: dict[bytes, list[float]] = {A: [], B: [], C: []}
    for source, step in events:
        now += step
        if limiter.allow(source, now):
            granted[source].append(now)
    for times in granted.values():
        for first in range(len(times)):
            for last in range(first, len(times)):
                span = times[last] - times[first]
                count = last - first + 1
                assert count <= burst + rate * span + 1e-6, (count, span)


@settings(max_examples=200)
@given(
    rate=st.integers(min_value=1, max_value=50),
    burst=st.integers(min_value=1, max_value=20),
    requests=st.integers(min_value=1, max_value=100),
)
def test_a_source_within_its_rate_is_never_refused(rate: int, burst: int, requests: int) -> None:
    """One microsecond of slack per request: at wall-clock magnitudes (1.8e9 s) a float
    holds time to ~2.4e-7 s, so a source pacing at exactly ``1 / rate`` can lose a
    request to rounding (e.g. rate 3, burst 1: the second request is refused)."""
    limiter = RateLimiter(rate, burst)
    step = 1 / rate + 1e-6
    assert all(limiter.allow(A, T0 + i * step) for i in range(requests))
    assert limiter.refused == 0


# --- an exact model --------------------------------------------------------------------

SOURCES = [bytes([i]) * 32 for i in range(5)]


class LimiterMachine(RuleBasedStateMachine):
    """The limiter against a model in exact arithmetic.

    Rates, bursts and time steps are multiples of 1/8, so the limiter's floats
    are exact too and every answer must match the model's.
    """

    @initialize(
        rate=st.integers(min_value=1, max_value=80).map(lambda n: n / 8),
        burst=st.integers(min_value=8, max_value=80).map(lambda n: n / 8),
        max_sources=st.integers(min_value=1, max_value=4),
    )
    def start(self, rate: float, burst: float, max_sources: int) -> None:
        self.limiter = RateLimiter(rate, burst, max_sources)
        self.rate, self.burst = Fraction(rate), Fraction(burst)
        self.max_sources = max_sources
        self.now = Fraction(0)
        self.model: OrderedDict[bytes, tuple[Fraction, Fraction]] = OrderedDict()
        self.refused = 0

    @rule(eighths=st.integers(min_value=0, max_value=40))
    def wait(self, eighths: int) -> None:
        self.now += Fraction(eighths, 8)

    @rule(source=st.sampled_from(SOURCES))
    def request(self, source: bytes) -> None:
        tokens, last = self.model.pop(source, (self.burst, self.now))
        tokens = min(self.burst, tokens + (self.now - last) * self.rate)
        expected = tokens >= 1
        if expected:
            tokens -= 1
        else:
            self.refused += 1
        self.model[source] = (tokens, self.now)
        while len(self.model) > self.max_sources:
            self.model.popitem(last=False)
        assert self.limiter.allow(source, float(self.now)) == expected

    @invariant()
    def agrees(self) -> None:
        assert self.limiter.refused == self.refused
        assert len(self.limiter) == len(self.model) <= self.max_sources


TestLimiterMachine = LimiterMachine.TestCase
TestLimiterMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
