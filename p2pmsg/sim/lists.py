"""S20's signed bootstrap lists: a publisher users trust, and a censor that
serves them old ones.

With a ``stale_lists`` censor rule, the run has a publisher
(:mod:`p2pmsg.bootstrap`) whose key every user trusts (``config.json``'s
``publishers``). Each user's node starts holding the list the app shipped
with (number 2, signed ten days before the run, valid thirty). At t0 the
publisher signs a new list (number 3) and stores it in the DHT through a
bootstrap node; each user looks its publishers' lists up once, at a random
time while the traffic runs. From the rule's ``at``, the censor serves each
user, at a random time, an expired list (number 4, the newest number, but
expired three days ago), a rolled-back one (number 1, older than the
shipped list, still valid) and one it signed itself (an untrusted key), as
a poisoned download would: each must be refused. At the end the report
counts the users holding list 3.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import trio

from p2pmsg import bootstrap
from p2pmsg.bootstrap import BootstrapRefused
from p2pmsg.dht import records
from p2pmsg.keys import Identity
from p2pmsg.node import Node
from p2pmsg.sim.result import SeedResult
from p2pmsg.sim.world import World, sim_wall_clock

DAY = float(records.DAY)
SHIPPED, FRESH, EXPIRED, ROLLED_BACK = 2, 3, 4, 1
"""The lists' numbers (sequence numbers)."""


class Lists:
    """The publisher, its lists, and the censor's stale ones, for one run."""

    def __init__(self, world: World, result: SeedResult, rng: random.Random) -> None:
        self.result, self.rng = result, rng
        self.invites: list[str] = []
        """What the lists carry: the bootstrap nodes' invites, once they exist."""
        self.publisher = Identity.generate(world.rng("publisher"))
        self.censor = Identity.generate(world.rng("publisher/censor"))
        self.lines: dict[int, str] = {}

    @property
    def key(self) -> str:
        """The publisher's key as users put it in their config."""
        return self.publisher.public.encoded()

    def _line(self, seq: int, signed: float, days: float, by: Identity | None = None) -> str:
        record = records.make_bootstrap_record(
            by or self.publisher, self.invites, seq, int(signed + days * DAY)
        )
        return bootstrap.to_line(record)

    async def ship(self, node: Node) -> None:
        """The list the app came with, before the run."""
        if SHIPPED not in self.lines:
            self.lines[SHIPPED] = self._line(SHIPPED, sim_wall_clock() - 10 * DAY, 30)
        await node.import_bootstrap(self.lines[SHIPPED])

    async def run(
        self,
        nodes: Mapping[str, Node],
        publish_at: str,
        users: Sequence[str],
        start: float,
        end: float,
    ) -> None:
        """At ``start`` (t0) the publisher stores list 3 in the DHT through
        ``publish_at``; each user looks it up once before ``end``."""
        await trio.sleep_until(start)
        record = bootstrap.from_line(self._line(FRESH, sim_wall_clock(), 30))
        await nodes[publish_at].dht.put(record)
        async with trio.open_nursery() as nursery:
            for user in users:
                when = self.rng.uniform(trio.current_time() + 60, end)
                nursery.start_soon(self._look_up, nodes, user, when)

    async def _look_up(self, nodes: Mapping[str, Node], user: str, when: float) -> None:
        await trio.sleep_until(when)
        await nodes[user].refresh_bootstrap()

    async def serve_stale(
        self, nodes: Mapping[str, Node], users: Sequence[str], end: float
    ) -> None:
        """From now, serve each user the expired, rolled-back and forged lists."""
        now = sim_wall_clock()
        stale = [
            self._line(EXPIRED, now - 33 * DAY, 30),
            self._line(ROLLED_BACK, now - 20 * DAY, 30),
            self._line(FRESH + 10, now, 30, by=self.censor),
        ]
        async with trio.open_nursery() as nursery:
            for user in users:
                when = self.rng.uniform(trio.current_time(), end)
                nursery.start_soon(self._serve, nodes, user, when, stale)

    async def _serve(
        self, nodes: Mapping[str, Node], user: str, when: float, stale: list[str]
    ) -> None:
        await trio.sleep_until(when)
        for line in stale:
            self.result.stale_lists += 1
            try:
                await nodes[user].import_bootstrap(line)
            except BootstrapRefused:
                self.result.stale_lists_refused += 1

    async def collect(self, nodes: Mapping[str, Node], users: Sequence[str]) -> None:
        """Which users hold the publisher's newest list."""
        for user in users:
            held = await nodes[user].bootstrap.held(self.publisher.public.key)
            self.result.lists_current.append(held is not None and held.seq == FRESH)
