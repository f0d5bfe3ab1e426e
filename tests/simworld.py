"""A world of homes and nodes on one simulated network, for tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import trio

from p2pmsg.endpoint import Endpoint, Invite
from p2pmsg.home import Config, Home
from p2pmsg.keys import Identity
from p2pmsg.node import Node, NodeOptions
from p2pmsg.sim.net import SimNetwork
from p2pmsg.sim.world import byte_stream
from p2pmsg.store import Contact, run_inline
from transports.sim import SimTransport

EPOCH = 1_800_000_000.0


def sim_wall_clock() -> float:
    """Wall-clock time that follows trio's (mock) clock."""
    return EPOCH + trio.current_time()


class SimWorld:
    """Homes and nodes on one simulated network, all on the autojump clock."""

    def __init__(self, root: Path, seed: int | None = None) -> None:
        self.root = root
        self.seed = seed
        self.net = SimNetwork()
        self.homes: dict[str, Home] = {}
        self._runs: dict[str, int] = {}
        self._hosts: dict[str, str] = {}

    def rng(self, label: str) -> Callable[[int], bytes]:
        return os.urandom if self.seed is None else byte_stream(self.seed, label)

    def home(
        self,
        name: str,
        *,
        listen: bool = True,
        bootstrap: Sequence[str] = (),
        bridge: bool = False,
        use_bridges: Sequence[str] = (),
        publishers: Sequence[str] = (),
    ) -> Home:
        if name not in self.homes:
            home = Home(self.root / name)
            endpoints = (Endpoint.parse(f"sim:{name}"),) if listen else ()
            config = Config(
                listen=endpoints,
                bootstrap=tuple(bootstrap),
                bridge=bridge,
                use_bridges=tuple(Invite.parse(b) for b in use_bridges),
                publishers=tuple(publishers),
            )
            home.init(config, Identity.generate(self.rng(f"identity/{name}")))
            self.homes[name] = home
        return self.homes[name]

    @asynccontextmanager
    async def node(
        self,
        name: str,
        *,
        options: NodeOptions | None = None,
        listen: bool = True,
        bootstrap: Sequence[str] = (),
        network: str | Callable[[], str] = "sim",
    ) -> AsyncIterator[Node]:
        home = self.home(name, listen=listen, bootstrap=bootstrap)
        runs = self._runs[name] = self._runs.get(name, 0) + 1
        async with Node.open(
            home.path,
            [SimTransport(self.net, self._hosts.get(name, name))],
            options=options,
            offload=run_inline,
            wall_clock=sim_wall_clock,
            rng=self.rng(f"node/{name}/{runs}"),
            network=network,
        ) as node:
            yield node

    def move(self, name: str, host: str) -> None:
        """Node ``name`` runs on ``host`` from its next start (a new address)."""
        home = self.homes[name]
        home.save_config(replace(home.load_config(), listen=(Endpoint.parse(f"sim:{host}"),)))
        self._hosts[name] = host

    def invite(self, name: str) -> str:
        return str(self.home(name).invite())

    def contact_of(self, name: str, endpoints: Sequence[str] | None = None) -> Contact:
        invite = self.home(name).invite()
        eps = tuple(str(e) for e in invite.endpoints) if endpoints is None else tuple(endpoints)
        return Contact(name, invite.identity.node_id, invite.identity.key, eps, EPOCH)
