"""Which network we are on (:mod:`p2pmsg.network`), and path scores kept per
network across a change of network and a restart of the node."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from simworld import SimWorld
from trio.testing import MockClock

from p2pmsg.dialer import NETWORK_CHECK
from p2pmsg.network import OFFLINE, label_of, local_network_label
from p2pmsg.node import PATHS_KEY
from p2pmsg.store import Database

WORKING = ("sim", "sim:bob")
"""The path that works to Bob; his contact also lists one that never answers."""


def test_a_label_names_the_subnet_and_not_the_address() -> None:
    assert label_of("192.168.1.20") == label_of("192.168.1.77")  # a new lease, same network
    assert label_of("192.168.1.20") != label_of("192.168.2.20")
    assert label_of("2001:db8:1:2::5") == label_of("2001:db8:1:2::99")
    assert label_of("2001:db8:1:2::5") != label_of("2001:db8:1:3::5")
    assert "192" not in label_of("192.168.1.20")
    with pytest.raises(ValueError, match="does not appear to be"):
        label_of("not an address")


def test_the_local_label_is_a_label_or_offline() -> None:
    label = local_network_label()
    assert label == OFFLINE or (label.startswith("net-") and len(label) == 16)
    assert local_network_label() == label


async def _send_to_bob(world: SimWorld, network: Callable[[], str]) -> dict[str, object]:
    """Alice sends Bob one direct message; her dialer's view afterwards."""
    async with world.node("bob") as bob, world.node("alice", network=network) as alice:
        await alice.send("bob", "hi", direct=True)
        with trio.fail_after(60):
            await bob.messages().receive()
        status = await alice.status()
        dialer = alice._dialer
        return {
            "network": status["network"],
            "working": {n: dialer.scores.last_working(n) for n in ("home", "cafe", "sim")},
        }


async def test_the_last_working_path_is_remembered_per_network_and_across_a_restart(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    with Database.open(world.home("alice").db_file) as db:
        db.add_contact(world.contact_of("bob", ["sim:nowhere:1", "sim:bob"]))
    where = ["home"]

    first = await _send_to_bob(world, lambda: where[0])
    assert first["network"] == "home"
    assert first["working"] == {"home": WORKING, "cafe": None, "sim": None}

    # restarted on another network: home's path comes back from the database
    where[0] = "cafe"
    second = await _send_to_bob(world, lambda: where[0])
    assert second["network"] == "cafe"
    assert second["working"] == {"home": WORKING, "cafe": WORKING, "sim": None}


async def test_a_change_of_network_is_noticed_before_the_next_dial(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    with Database.open(world.home("alice").db_file) as db:
        db.add_contact(world.contact_of("bob"))
    where = ["home"]
    async with world.node("bob") as bob, world.node("alice", network=lambda: where[0]) as alice:
        await alice.send("bob", "at home", direct=True)
        await bob.messages().receive()
        where[0] = "cafe"
        await trio.sleep(NETWORK_CHECK)
        await alice.send("bob", "at the cafe", direct=True)
        await bob.messages().receive()
        assert (await alice.status())["network"] == "cafe"
        assert alice._dialer.scores.last_working("home") == WORKING
        assert alice._dialer.scores.last_working("cafe") == WORKING


@pytest.mark.parametrize(
    "saved",
    ["not json", "[]", '{"saved": "x", "scores": {}}', '{"saved": 0, "scores": {"version": 9}}'],
)
async def test_damaged_saved_scores_are_set_aside_and_the_node_runs(
    world: SimWorld, autojump_clock: MockClock, saved: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Database.open(world.home("alice").db_file) as db:
        db.add_contact(world.contact_of("bob", ["sim:nowhere:1", "sim:bob"]))
        db.set_meta(PATHS_KEY, saved)
    after = await _send_to_bob(world, lambda: "home")
    assert after["working"] == {"home": WORKING, "cafe": None, "sim": None}
    assert "path scores are unreadable" in caplog.text
