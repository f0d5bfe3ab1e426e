"""Noticing that peers we had lost answer again, and retrying what waits.

A message whose attempts keep failing backs off, up to an hour between
onion attempts (:func:`p2pmsg.delivery.frames.onion_retry_delay`). That is
right for a recipient who is offline, whose mailbox keeps every copy, and
wrong for a network that was cut and is whole again: after a border
shutdown heals (SCENARIOS S10: >= 99% within 5 minutes of the heal), what
was queued during it would trickle out over the next hour. Signal and Briar
retry at once when the device's network comes back, but a cut border is no
change the device sees. So :class:`NetworkWatch` looks for it: while a
message waits more than a tick for its next attempt, it pings, each tick, a
few of the peers that stopped answering (``RoutingTable.unreachable``), or
those it has heard from least lately, which a cut may hide. When
``quorum`` peers that had stopped answering are seen again within a tick
(``RoutingTable.returned``: through these pings or any other traffic), or
the only one that had, the network we see has changed, and every waiting
message becomes due now. One peer back out of several lost is not enough: a
peer back from being offline is everyday churn; several at once is a path
that came back.

Costs: nothing while no message waits; then at most ``pings`` small RPCs a
tick, and a hurry re-sends each waiting message once, as its next retry
would have.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from p2pmsg.dht.service import Dht
from p2pmsg.store import Store

log = logging.getLogger(__name__)

TICK = 60.0
PINGS = 3
QUORUM = 2


class NetworkWatch:
    """Pings lost peers while messages wait; makes them due when enough answer.

    ``on_hurry`` is called after a hurry (the node wakes its sender).
    """

    def __init__(
        self,
        dht: Dht,
        store: Store,
        on_hurry: Callable[[], None],
        *,
        wall_clock: Callable[[], float],
        rng: Callable[[int], bytes],
        tick: float = TICK,
        pings: int = PINGS,
        quorum: int = QUORUM,
    ) -> None:
        self._dht = dht
        self._store = store
        self._on_hurry = on_hurry
        self._wall_clock = wall_clock
        self._random = random.Random(rng(16))  # noqa: S311 - picks peers to ping, no secret
        self.tick = tick
        self.pings = pings
        self.quorum = quorum
        self.hurries = 0
        """Times the waiting messages were made due (shown in status)."""
        self._returned = dht.table.returned

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.tick)
            await self.check()

    async def check(self) -> int:
        """One tick: how many messages it made due (0 when none waits or too few came back)."""
        table = self._dht.table
        if not await self._store.waiting(self._wall_clock() + self.tick):
            self._returned = table.returned  # what came back while nothing waited is old news
            return 0
        lost = table.unreachable()
        picks = self._random.sample(lost, min(self.pings, len(lost)))
        stale = [p for p in table.least_recently_seen(self.pings) if p not in picks]
        picks += stale[: self.pings - len(picks)]
        async with trio.open_nursery() as nursery:
            for peer in picks:
                nursery.start_soon(self._dht.ping, peer)
        back, self._returned = table.returned - self._returned, table.returned
        if back < min(self.quorum, max(1, len(lost))):
            return 0
        moved = await self._store.retry_all_sooner(self._wall_clock())
        self.hurries += 1
        log.info("%d peers answer again: %d waiting messages retried now", back, moved)
        self._on_hurry()
        return moved
