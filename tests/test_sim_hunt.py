"""S13's 30-day bridge hunt (p2pmsg.sim.hunt): the model and what it shows."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from p2pmsg.distributor import DAY
from p2pmsg.sim import hunt

S13 = hunt.Params(seed=1)


def test_honest_users_keep_a_bridge_for_30_days_where_keeping_their_first_ones_fails() -> None:
    f = hunt.measure(S13)
    assert f.open_at_end >= 0.9 * f.users  # S13's pass figure
    assert f.control_open_at_end < 0.7 * f.users  # the day-0 bridges alone do not last
    assert f.requests > 0 and f.blocked > 0
    assert f.days_to_half is not None and f.found <= f.bridges


def test_without_new_bridges_asking_for_more_cannot_save_the_users() -> None:
    f = hunt.measure(replace(S13, new_per_day=0, days=30))
    assert f.open_at_end < 0.9 * f.users


def test_a_censor_that_learns_nothing_blocks_nothing() -> None:
    f = hunt.measure(replace(S13, sybils_per_day=0, logging=0.0, days=5))
    assert (f.found, f.blocked, f.requests, f.days_to_half) == (0, 0, 0, None)
    assert f.open_at_end == f.control_open_at_end == f.fewest_open == f.users


def test_fewer_sybils_find_half_the_bridges_later() -> None:
    fast = hunt.measure(replace(S13, days=6, logging=0.0))
    slow = hunt.measure(replace(S13, days=6, logging=0.0, sybils_per_day=10))
    assert fast.days_to_half is not None and slow.days_to_half is not None
    assert fast.days_to_half < slow.days_to_half


@pytest.mark.parametrize("block_after", [(0.0, DAY), S13.block_after])
def test_checking_only_the_users_that_may_see_a_change_misses_none(
    block_after: tuple[float, float],
) -> None:
    p = replace(S13, users=300, days=12, block_after=block_after)
    assert hunt.measure(p) == hunt.run(p, every_user=True).figures


def test_a_run_is_reproducible_from_its_seed() -> None:
    p = replace(S13, users=200, days=8)
    assert hunt.measure(p) == hunt.measure(p)
    assert hunt.measure(p) != hunt.measure(replace(p, seed=2))


@pytest.mark.parametrize(
    "change",
    [
        {"days": 0},
        {"users": 0},
        {"logging": 1.5},
        {"new_per_day": -1},
        {"block_after": (5.0, 1.0)},
    ],
)
def test_a_model_that_cannot_run_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|negative|block_after"):
        hunt.measure(replace(S13, **change))
