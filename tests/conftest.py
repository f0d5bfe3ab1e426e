"""Shared fixtures (and the simnet kit shipped to users, tested as they use it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from simworld import SimWorld

from p2pmsg.sim.world import seeded_scheduler

pytest_plugins = ["p2pmsg.testing.simnet"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests with a longer time budget than the suite's first, the longest
    first: xdist gives each worker a contiguous share and the idle one steals
    from the end of the other's, so a long test left to the end keeps one core
    idle for minutes (the reduced matrix, the DHT at scale, onion churn)."""

    def budget(item: pytest.Item) -> float:
        mark = item.get_closest_marker("timeout")
        return float(mark.args[0]) if mark is not None and mark.args else 0.0

    items.sort(key=budget, reverse=True)  # stable: the rest keep their order


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SimWorld]:
    """A simulated world; its tests also ask for ``autojump_clock`` (pytest-trio
    takes the clock from the test function's own arguments only).

    With ``P2PMSG_TEST_SEED=n`` (and a fixed ``PYTHONHASHSEED``) the world's
    identities, its nodes' randomness and trio's scheduling come from ``n``:
    a loop over seeds finds a failing topology, and the seed replays it
    (nearly always: sets of objects still iterate in address order)."""
    seed = os.environ.get("P2PMSG_TEST_SEED")
    if seed is None:
        yield SimWorld(tmp_path)
    else:
        with seeded_scheduler(int(seed)):
            yield SimWorld(tmp_path, int(seed))
