"""The clock check (SCENARIOS S20): peers' clocks from PING replies, silent handshakes.

The pure check first, then real nodes on the simulated network whose wall
clocks are set off: one a couple of hours off is warned and told by how
much; one two days off, whose every handshake meets silence, gets the error.
"""

from __future__ import annotations

import logging

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from p2pmsg.clock import (
    BROKEN,
    MAX_AGE,
    MIN_PEERS,
    MIN_SILENT,
    WARN,
    WINDOW,
    ClockCheck,
    ClockVerdict,
)
from p2pmsg.node import Node
from p2pmsg.sim.world import World

HOUR = 3600.0


def peer(i: int) -> bytes:
    return i.to_bytes(32, "big")


def offsets(check: ClockCheck, values: list[float]) -> None:
    for i, value in enumerate(values):
        check.sample(peer(i), 1000.0, 1000.2, 1000.1 + value)


def test_too_few_peers_say_nothing_and_then_the_median_does() -> None:
    check = ClockCheck(monotonic=lambda: 0.0)
    offsets(check, [2 * HOUR] * (MIN_PEERS - 1))
    assert check.verdict().offset is None
    assert check.verdict().warning is None
    offsets(check, [2 * HOUR] * MIN_PEERS)
    v = check.verdict()
    assert v.offset == pytest.approx(2 * HOUR)
    assert v.warning is not None
    assert "2.0 h behind" in v.warning
    assert v.error is None


@given(st.lists(st.floats(-1e9, 1e9), min_size=0, max_size=WINDOW // 2 - 1))
def test_a_minority_of_liars_cannot_move_the_verdict(lies: list[float]) -> None:
    check = ClockCheck(monotonic=lambda: 0.0)
    offsets(check, [float(i) for i in range(WINDOW - len(lies))])  # honest: within a minute
    for j, lie in enumerate(lies):
        check.sample(peer(1000 + j), 0.0, 0.0, lie)
    v = check.verdict()
    assert v.offset is not None
    assert abs(v.offset) < WINDOW
    assert (v.error, v.warning) == (None, None)


@pytest.mark.parametrize(
    ("offset", "level"),
    [(0.5 * HOUR, None), (WARN + 60, "warning"), (-(BROKEN + 60), "error"), (BROKEN + 60, "error")],
)
def test_how_far_off_decides_warning_or_error(offset: float, level: str | None) -> None:
    check = ClockCheck(monotonic=lambda: 0.0)
    offsets(check, [offset] * MIN_PEERS)
    v = check.verdict()
    assert (v.error is not None, v.warning is not None) == (level == "error", level == "warning")
    if v.error is not None:
        assert "ahead of" in v.error if offset < 0 else "behind" in v.error


def test_silent_handshakes_with_none_completed_are_the_error() -> None:
    check = ClockCheck(monotonic=lambda: 0.0)
    for i in range(MIN_SILENT - 1):
        check.handshake(peer(i), completed=False)
    assert check.verdict().error is None
    check.handshake(peer(99), completed=False)
    error = check.verdict().error
    assert error is not None
    assert "clock" in error
    assert "more than a day off" in error
    check.handshake(peer(98), completed=True)
    assert check.verdict().error is None


def test_a_peer_that_completed_stays_so_and_the_window_is_bounded() -> None:
    check = ClockCheck(monotonic=lambda: 0.0)
    check.handshake(peer(0), completed=True)
    check.handshake(peer(0), completed=False)  # a race's cancelled loser
    for i in range(1, MIN_SILENT + 1):
        check.handshake(peer(i), completed=False)
    assert check.verdict().error is None
    for i in range(MIN_SILENT + 1, WINDOW + 1):
        check.handshake(peer(i), completed=False)  # peer 0 leaves the window
    assert check.verdict().error is not None
    assert len(check._handshakes) == WINDOW


def test_old_readings_are_forgotten_so_a_clock_set_right_is_seen_to_be() -> None:
    now = [0.0]
    check = ClockCheck(monotonic=lambda: now[0])
    offsets(check, [2 * BROKEN] * MIN_PEERS)
    for i in range(MIN_SILENT):
        check.handshake(peer(100 + i), completed=False)
    assert check.verdict().error is not None
    assert check.read(peer(0))
    now[0] = MAX_AGE + 1
    assert not check.read(peer(0))
    assert check.verdict() == ClockVerdict(None, 0, None, None)
    offsets(check, [1.0] * MIN_PEERS)  # read again, after the clock was set
    assert check.verdict().offset == pytest.approx(1.0)


def test_the_verdict_is_logged_when_it_changes_not_per_sample(
    caplog: pytest.LogCaptureFixture,
) -> None:
    check = ClockCheck(monotonic=lambda: 0.0)
    with caplog.at_level(logging.INFO, logger="p2pmsg.clock"):
        offsets(check, [2 * HOUR] * (3 * MIN_PEERS))
        offsets(check, [0.0] * WINDOW)
    levels = [r.levelname for r in caplog.records]
    assert levels == ["WARNING", "INFO"]


async def test_nodes_whose_clocks_are_off_say_so(simnet: World, autojump_clock: MockClock) -> None:
    simnet.home("seed")
    names = [f"n{i}" for i in range(MIN_PEERS + 1)]
    for name in [*names, "slow"]:
        simnet.home(name, bootstrap=[simnet.invite("seed")])
    simnet.home("lost", bootstrap=[simnet.invite(n) for n in ["seed", *names[:MIN_SILENT]]])
    async with simnet.node("seed"), trio.open_nursery() as nursery:
        nodes: dict[str, Node] = {}
        for name in names:
            nodes[name] = await nursery_node(simnet, nursery, name, 0.0)
        nodes["slow"] = await nursery_node(simnet, nursery, "slow", -2 * HOUR)
        nodes["lost"] = await nursery_node(simnet, nursery, "lost", 2 * BROKEN)
        await trio.sleep(1800)  # pings: joins, verifications, refreshes
        slow, lost = (nodes[n].dht.clock.verdict() for n in ("slow", "lost"))
        assert slow.offset == pytest.approx(2 * HOUR, abs=5)
        assert slow.warning is not None
        assert slow.error is None
        assert lost.error is not None
        assert "more than a day off" in lost.error
        for name in names:
            assert nodes[name].dht.clock.verdict().error is None
        status = await nodes["lost"].status()
        assert status["clock"]["error"] == lost.error
        nursery.cancel_scope.cancel()


async def nursery_node(world: World, nursery: trio.Nursery, name: str, skew: float) -> Node:
    """Run node ``name`` with its clock ``skew`` seconds off in ``nursery``."""

    async def run(task_status: trio.TaskStatus[Node]) -> None:
        async with world.node(name, skew=skew) as node:
            task_status.started(node)
            await trio.sleep_forever()

    node: Node = await nursery.start(run)
    return node
