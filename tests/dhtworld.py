"""Many real DHT services on one simulated network, for tests.

Each host runs the real :class:`Dht`, real secure links and the real `sim`
transport; only the node around them is left out (no SQLite, no delivery),
so a thousand of them fit in one test.
"""

from __future__ import annotations

import os
import random
from functools import partial

import trio
from simworld import sim_wall_clock

from p2pmsg.abc import Link
from p2pmsg.dht.host import serve_dht
from p2pmsg.dht.peer import Peer
from p2pmsg.dht.service import Dht, DhtOptions
from p2pmsg.dialer import Dialer
from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import Identity
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.sim.net import SimNetwork
from transports.sim import SimTransport


class DhtWorld:
    def __init__(self, options: DhtOptions | None = None) -> None:
        self.net = SimNetwork()
        self.options = options or DhtOptions(max_per_prefix_bucket=None, max_per_prefix_table=None)
        self.nodes: list[Dht] = []

    async def add(
        self,
        nursery: trio.Nursery,
        host: str,
        *,
        options: DhtOptions | None = None,
        identity: Identity | None = None,
        cls: type[Dht] = Dht,
    ) -> Dht:
        """Start a node of class ``cls`` (a :class:`Dht` or a lying subclass) on ``host``."""
        identity = identity or Identity.generate()
        transport = SimTransport(self.net, host)
        dialer = Dialer(
            identity,
            [transport],
            wall_clock=sim_wall_clock,
            dial_timeout=5.0,
            handshake_timeout=5.0,
        )
        dht = cls(
            identity,
            dialer.connect,
            options=options or self.options,
            wall_clock=sim_wall_clock,
            rng=os.urandom,
        )
        replay = ReplayWindow(86400)
        bound = await nursery.start(
            transport.serve, Endpoint.parse(f"sim:{host}"), partial(serve_rpc, dht, replay)
        )
        dht.publish_local([str(bound)], frozenset())
        await nursery.start(dht.run)
        self.nodes.append(dht)
        return dht

    async def build(
        self,
        nursery: trio.Nursery,
        count: int,
        *,
        options: DhtOptions | None = None,
        rng: random.Random | None = None,
    ) -> list[Dht]:
        """``count`` nodes on hosts 10.<i>.0.1, each joining through the first;
        with ``rng``, their identities come from it (a test that places other
        identities near a key must know where the honest ones are)."""
        built = [
            await self.add(
                nursery,
                f"10.{i + 1}.0.1",
                options=options,
                identity=Identity(rng.randbytes(32)) if rng is not None else None,
            )
            for i in range(count)
        ]
        for dht in built[1:]:
            assert await dht.join([as_seed(built[0])])
        return built


def as_seed(dht: Dht) -> Peer:
    """What an invite to ``dht``'s node gives: its key and endpoints."""
    return dht.as_peer()


async def serve_rpc(dht: Dht, replay: ReplayWindow, link: Link) -> None:
    """What a node does with an inbound link, reduced to the DHT's part."""
    await serve_dht(dht, replay, link, wall_clock=sim_wall_clock, handshake_timeout=5.0)
