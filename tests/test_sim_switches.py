"""S12's transport switches: which dials switch, and which switches count."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pmsg.dialer import Dialled
from p2pmsg.sim.report import STABLE_AFTER, SWITCH_WINDOW, stable_switches
from p2pmsg.sim.result import transport_switches


def test_a_switch_is_a_change_of_the_transport_a_node_dials_first() -> None:
    dials = [
        (1.0, Dialled(0.1, "sim", "sim")),
        (2.0, Dialled(0.1, "ws", "sim")),  # one peer over ws: the node stays on sim
        (4.0, Dialled(30.0, None, None)),  # sim failed: no working path yet
        (5.0, Dialled(0.3, "ws", "ws")),  # switched
        (6.0, Dialled(0.1, "ws", "ws")),
        (7.0, Dialled(0.1, "sim", "sim")),  # switched back
    ]
    assert transport_switches(dials) == [5.0, 7.0]
    assert transport_switches(dials[:3]) == []


def test_a_node_joining_is_not_switching() -> None:
    dials = [(t, Dialled(0.1, w, w)) for t, w in ((95.0, "sim"), (130.0, "ws"), (200.0, "sim"))]
    assert transport_switches(dials, starts=[90.0]) == [200.0]  # 130 is within its first minute
    assert transport_switches(dials, starts=[0.0]) == [130.0, 200.0]


def test_switches_near_a_censor_event_do_not_count_and_a_window_holds_the_rest() -> None:
    user = [-30.0, 10.0, 70.0, 200.0, 420.0]  # 10.0 is within a minute of the event at 0
    other = [500.0]
    peak, made, stable = stable_switches([user, other], [0.0], -120.0, 600.0)
    assert (peak, made) == (3, 5)  # -30, 70 and 200 fall in one window of 300 s
    assert stable == 720.0 - STABLE_AFTER
    assert stable_switches([user], [0.0, 190.0], -120.0, 600.0)[:2] == (2, 3)


def test_no_stable_time_when_events_cover_the_run() -> None:
    events = [t * STABLE_AFTER for t in range(-2, 10)]
    assert stable_switches([[30.0]], events, -120.0, 540.0) == (0, 0, 0.0)


@given(
    st.lists(st.lists(st.integers(-200, 900), max_size=12), max_size=4),
    st.lists(st.integers(-300, 1000), max_size=8),
)
def test_stable_switches_agree_with_counting_second_by_second(
    switches: list[list[int]], events: list[int]
) -> None:
    start, end = -120, 900
    peak, made, stable = stable_switches(
        [[float(t) for t in ts] for ts in switches], [float(e) for e in events], start, end
    )

    def calm(t: int) -> bool:
        return all(not e <= t < e + STABLE_AFTER for e in events)

    assert stable == sum(calm(t) for t in range(start, end))
    kept = [[t for t in ts if calm(t)] for ts in switches]
    assert made == sum(map(len, kept))
    window = int(SWITCH_WINDOW)
    assert peak == max((sum(s <= t < s + window for t in ts) for ts in kept for s in ts), default=0)
