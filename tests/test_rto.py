"""The onion retransmission timer: a quantile of recent ack round trips (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pmsg.delivery import frames
from p2pmsg.delivery.rto import (
    INITIAL_RTO,
    MAX_AGE,
    MAX_RTO,
    MIN_RTO,
    MIN_SAMPLES,
    WINDOW,
    RetransmitTimer,
)


def fed(*rtts: float, at: float = 0.0) -> RetransmitTimer:
    timer = RetransmitTimer()
    for rtt in rtts:
        timer.sample(rtt, at)
    return timer


def test_before_enough_acks_the_timeout_is_the_initial_one() -> None:
    assert RetransmitTimer().rto(0.0) == INITIAL_RTO
    assert fed(*[30.0] * (MIN_SAMPLES - 1)).rto(0.0) == INITIAL_RTO
    assert fed(*[30.0] * MIN_SAMPLES).rto(0.0) == 30.0


@given(st.lists(st.floats(0.0, 1000.0), max_size=2 * WINDOW))
def test_the_timeout_stays_within_its_bounds(samples: list[float]) -> None:
    timer = fed(*samples)
    counted = [rtt for rtt in samples if rtt <= MAX_RTO]
    assert timer.samples == len(counted)
    rto = timer.rto(0.0)
    assert MIN_RTO <= rto <= MAX_RTO or (len(counted) < MIN_SAMPLES and rto == INITIAL_RTO)


@given(st.lists(st.floats(0.0, MAX_RTO), min_size=MIN_SAMPLES, max_size=WINDOW))
def test_at_least_nine_acks_in_ten_come_before_the_timeout(samples: list[float]) -> None:
    rto = fed(*samples).rto(0.0)
    sooner = sum(rtt <= rto for rtt in samples)
    assert sooner >= 0.9 * len(samples)
    assert rto == MIN_RTO or rto in samples  # a round trip seen, not a guess


def test_a_long_tail_does_not_hold_back_the_retry() -> None:
    """Round trips of random routes (S18: 6 s at the median, a few of 50 s):
    RFC 6298's SRTT + 4 RTTVAR would wait 25 s and more here."""
    timer = fed(*[5.0, 6.0, 7.0, 8.0, 9.0] * 10, 12.0, 14.0, 50.0, 55.0)
    assert timer.rto(0.0) == 9.0


def test_fast_acks_retry_sooner_and_a_slow_network_later() -> None:
    fast, slow = fed(1.2, 0.9, 1.1, 1.0), fed(9.0, 14.0, 11.0, 20.0)
    assert fast.rto(0.0) == MIN_RTO < INITIAL_RTO < slow.rto(0.0) <= MAX_RTO


def test_the_timeout_follows_the_newest_acks() -> None:
    timer = fed(*[40.0] * WINDOW)
    for _ in range(WINDOW):
        timer.sample(5.0, 0.0)
    assert timer.rto(0.0) == 5.0


def test_a_bad_spell_long_over_is_forgotten() -> None:
    timer = fed(*[40.0] * MIN_SAMPLES, at=0.0)
    assert timer.rto(MAX_AGE) == 40.0
    assert timer.rto(MAX_AGE + 1) == INITIAL_RTO
    for _ in range(MIN_SAMPLES):
        timer.sample(5.0, MAX_AGE + 1)
    assert timer.rto(MAX_AGE + 1) == 5.0


def test_an_ack_that_waited_in_a_mailbox_is_not_a_round_trip() -> None:
    timer = fed(2.0, 2.0, 2.0, 2.0)
    before = timer.rto(0.0)
    timer.sample(900.0, 0.0)  # the recipient was offline and fetched it later
    assert timer.rto(0.0) == before
    assert timer.samples == MIN_SAMPLES


def test_retries_double_from_the_timeout() -> None:
    assert frames.onion_retry_delay(1, 0.5, 4.0) == 8.0
    assert frames.onion_retry_delay(3, 0.5, 4.0) == 32.0
    assert frames.onion_retry_delay(30, 0.5, 4.0) == 3600.0
    assert frames.onion_retry_delay(3, 0.0, 4.0) == 24.0  # +-25%
    assert frames.onion_retry_delay(3, 1.0, 4.0) == 40.0


def test_the_first_retry_comes_no_later_than_the_timeout() -> None:
    """The timeout is already the 90th percentile of recent acks: jitter
    past it only made a lost first attempt miss S18's 30 s (23.5 s -> 29 s)."""
    assert frames.onion_retry_delay(0, 0.0, 20.0) == 15.0
    assert frames.onion_retry_delay(0, 1.0, 20.0) == 20.0
    assert frames.onion_retry_delay(0, 1.0) == 15.0  # no timer: the old first wait
