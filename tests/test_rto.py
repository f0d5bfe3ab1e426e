"""The onion retransmission timer (RFC 6298) fed ack round trips (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmsg.delivery import frames
from p2pmsg.delivery.rto import INITIAL_RTO, MAX_RTO, MIN_RTO, RetransmitTimer


def test_before_any_ack_the_timeout_is_the_initial_one() -> None:
    assert RetransmitTimer().rto() == INITIAL_RTO


@given(st.lists(st.floats(0.0, 1000.0), max_size=50))
def test_the_timeout_stays_within_its_bounds(samples: list[float]) -> None:
    timer = RetransmitTimer()
    for rtt in samples:
        timer.sample(rtt)
    counted = [rtt for rtt in samples if rtt <= MAX_RTO]
    assert timer.samples == len(counted)
    assert MIN_RTO <= timer.rto() <= MAX_RTO or (not counted and timer.rto() == INITIAL_RTO)


@given(st.floats(0.1, MAX_RTO))
def test_steady_round_trips_converge_to_them(rtt: float) -> None:
    timer = RetransmitTimer()
    for _ in range(200):
        timer.sample(rtt)
    assert timer.srtt == pytest.approx(rtt)
    assert timer.rto() == pytest.approx(max(MIN_RTO, rtt), rel=1e-3)


def test_fast_acks_retry_sooner_and_a_slow_network_later() -> None:
    fast, slow = RetransmitTimer(), RetransmitTimer()
    for rtt in (1.2, 0.9, 1.1, 1.0):
        fast.sample(rtt)
    for rtt in (9.0, 14.0, 11.0, 20.0):
        slow.sample(rtt)
    assert fast.rto() == MIN_RTO < INITIAL_RTO < slow.rto() <= MAX_RTO


def test_an_ack_that_waited_in_a_mailbox_is_not_a_round_trip() -> None:
    timer = RetransmitTimer()
    timer.sample(2.0)
    before = timer.rto()
    timer.sample(900.0)  # the recipient was offline and fetched it later
    assert timer.rto() == before
    assert timer.samples == 1


def test_retries_double_from_the_timeout() -> None:
    assert frames.onion_retry_delay(0, 0.5, 4.0) == 4.0
    assert frames.onion_retry_delay(3, 0.5, 4.0) == 32.0
    assert frames.onion_retry_delay(0, 0.5) == 15.0  # no timer: the old first wait
    assert frames.onion_retry_delay(30, 0.5, 4.0) == 3600.0
