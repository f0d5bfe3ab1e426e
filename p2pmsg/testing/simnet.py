"""Pytest fixtures for testing your own trio code against a censor.

Load them in your ``conftest.py``::

    pytest_plugins = ["p2pmsg.testing.simnet"]

and write a test (pytest-trio, ``trio_mode = true``) that runs real p2pmsg
nodes on a simulated internet, seeded, under the autojump clock::

    async def test_messages_get_through_while_the_seed_is_null_routed(
        simnet, censor, autojump_clock
    ):
        simnet.home("seed")
        for name in ("alice", "bob"):
            simnet.home(name, bootstrap=[simnet.invite("seed")])
        censor.drop("seed", after=120.0)  # also: match(b"..."), reset_every(20), ...
        async with simnet.node("seed"), simnet.node("alice") as alice, simnet.node("bob") as bob:
            await alice.joined.wait()
            await alice.store.add_contact(simnet.contact_of("bob"))
            await trio.sleep(300)
            sent = await alice.send("bob", "still here", direct=True)
            assert (await bob.messages().receive()).id == sent

``simnet`` is a :class:`~p2pmsg.sim.world.World` (homes, ``node()``,
``invite()``, ``contact_of()``, ``net``), seeded from ``--p2pmsg-seed``
(default 1) together with trio's scheduler, so a failing test fails the same
way again. ``censor`` is a :class:`CensorKit` installed as the network's
policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pmsg.sim.censor import (
    Censor,
    MatchPayload,
    ResetEvery,
    Rule,
    contains,
    fully_encrypted_first,
)
from p2pmsg.sim.censor import Police as _Police
from p2pmsg.sim.net import DROP, RESET, Packet, Verdict
from p2pmsg.sim.world import World, seeded_scheduler


class DropHost:
    """Drop every packet to or from ``host`` from ``after`` on (a null route)."""

    def __init__(self, host: str, after: float) -> None:
        self.host, self.after = host, after
        self.dropped = 0

    def judge(self, packet: Packet, flow: object, now: float) -> Verdict | None:
        del flow
        if now < self.after or self.host not in (packet.src_host, packet.dst_host):
            return None
        self.dropped += 1
        return DROP


class CensorKit:
    """Builds a censor rule by rule; every rule applies to every flow."""

    def __init__(self, world: World) -> None:
        self.rules: list[Rule] = []
        self.censor = Censor(self.rules)
        world.net.policy = self.censor

    def add(self, rule: Rule) -> None:
        """Add any :mod:`p2pmsg.sim.censor` rule (the builders below return theirs,
        for its counters)."""
        self.rules.append(rule)
        self.censor.rules = list(self.rules)

    def drop(self, host: str, *, after: float = 0.0) -> DropHost:
        """Null-route ``host`` from ``after`` seconds (trio time) on."""
        rule = DropHost(host, after)
        self.add(rule)
        return rule

    def match(self, pattern: bytes, *, reset: bool = True) -> MatchPayload:
        """Kill flows whose first client payloads contain ``pattern`` (DPI)."""
        rule = MatchPayload(contains(pattern), RESET if reset else DROP)
        self.add(rule)
        return rule

    def fully_encrypted(self, *, reset: bool = True) -> MatchPayload:
        """China's 2021 detector (SCENARIOS.md S5) on every flow's first payload."""
        rule = MatchPayload(fully_encrypted_first, RESET if reset else DROP)
        self.add(rule)
        return rule

    def reset_every(self, seconds: float) -> ResetEvery:
        """Reset every flow once it is ``seconds`` old (S19)."""
        rule = ResetEvery(seconds)
        self.add(rule)
        return rule

    def police(self, rate: float) -> None:
        """At most ``rate`` bytes per second per flow direction (S9)."""
        self.censor.police = _Police(rate)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--p2pmsg-seed", type=int, default=1, help="seed of p2pmsg.testing.simnet worlds"
    )


@pytest.fixture
def simnet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    """A seeded simulated world of real nodes; also ask for ``autojump_clock``."""
    seed = int(request.config.getoption("--p2pmsg-seed"))
    with seeded_scheduler(seed):
        yield World(tmp_path / "simnet", seed)


@pytest.fixture
def censor(simnet: World) -> CensorKit:
    """A censor on ``simnet``'s network, with no rules yet."""
    return CensorKit(simnet)


__all__ = ["CensorKit", "DropHost", "censor", "simnet"]
