"""Real nodes on the simulated internet, reproducible from one seed.

Theory of operation
-------------------
A :class:`World` owns a :class:`~p2pmsg.sim.net.SimNetwork` and a directory
of node homes. Every node is the real :class:`~p2pmsg.node.Node` over the
``sim`` transport, with its store called inline (no worker threads) and its
wall clock following trio's clock, so under
``trio.testing.MockClock(autojump_threshold=0)`` an hour of simulated time
costs seconds.

One seed reproduces a run: identities and every node's randomness come from
a ``random.Random`` seeded with it (one stream per node, so adding a node
does not change the others'), and :func:`seeded_scheduler` puts trio's
scheduler in its deterministic mode (the one trio's own Hypothesis plugin
uses) with its shuffling seeded too. Stores run inline and the clock is
trio's, so nothing else varies; runs in processes with different hash seeds
were checked to agree.

Nodes speak the ``transports`` the world was made with, each over the
simulated network: ``sim`` (plain frames, port 1), and any other for which
the world was given a :class:`SimWrapper` (``transports/simstack.py`` has
``ws`` and ``obfs``; the library never imports ``transports``). Every node
listens on each, and its invites carry them all, in that order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from p2pmsg.abc import Discovery, Transport
from p2pmsg.endpoint import Endpoint
from p2pmsg.home import Config, Home
from p2pmsg.keys import Identity
from p2pmsg.node import Node, NodeOptions
from p2pmsg.sim.net import SimHost, SimNetwork
from p2pmsg.sim.transport import SimTransport
from p2pmsg.store import Contact, run_inline

EPOCH = 1_800_000_000.0
"""The wall-clock time at which simulated time 0 falls."""

Rng = Callable[[int], bytes]


@dataclass(frozen=True)
class SimWrapper:
    """A transport over the simulated network, as the world builds it for a node
    (``transports/simstack.py`` has ws and obfs: the library cannot import them)."""

    endpoint: Callable[[str, Path, Rng], Endpoint]
    """(host, home, rng) -> what the node listens on; made once, with its home."""
    wrap: Callable[[Transport, Path, Rng, Callable[[], float]], Transport]
    """(the node's own SimTransport, home, rng, wall clock) -> the transport over it."""


def sim_wall_clock() -> float:
    """Wall-clock time that follows trio's (mock) clock."""
    return EPOCH + trio.current_time()


def byte_stream(seed: int, label: str) -> Rng:
    """A deterministic ``rng(n) -> n bytes`` for ``label`` under ``seed``."""
    digest = hashlib.blake2b(f"{seed}/{label}".encode(), digest_size=16).digest()
    generator = random.Random(digest)  # noqa: S311 - a reproducible simulation, not secrets
    return generator.randbytes


@contextmanager
def seeded_scheduler(seed: int) -> Iterator[None]:
    """Run trio's scheduler deterministically, shuffled from ``seed``; restored after."""
    from trio._core import _run  # noqa: PLC0415 - the one private hook trio offers for this

    saved = (_run._ALLOW_DETERMINISTIC_SCHEDULING, _run._r.getstate())
    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _run._r.seed(seed)
    try:
        yield
    finally:
        _run._ALLOW_DETERMINISTIC_SCHEDULING = saved[0]  # type: ignore[misc]
        _run._r.setstate(saved[1])


class World:
    """Homes and running nodes on one simulated network, drawn from ``seed``."""

    def __init__(
        self,
        root: Path,
        seed: int,
        net: SimNetwork | None = None,
        *,
        transports: Sequence[str] = ("sim",),
        wrappers: Mapping[str, SimWrapper] | None = None,
    ) -> None:
        self.wrappers = dict(wrappers or {})
        missing = [t for t in transports if t != "sim" and t not in self.wrappers]
        if missing or not transports:
            have = ", ".join(["sim", *self.wrappers])
            raise ValueError(f"transports: this world has only {have}, not {', '.join(missing)}")
        self.root = root
        self.seed = seed
        self.net = net or SimNetwork()
        self.transports = tuple(transports)
        self.homes: dict[str, Home] = {}
        self._runs: dict[str, int] = {}
        self._hosts: dict[str, str] = {}
        """Node -> the host it runs on, when it moved off its own."""

    def rng(self, label: str) -> Rng:
        return byte_stream(self.seed, label)

    def add_host(
        self, name: str, *, ip: str = "", asn: int = 0, country: str = "", isp: str = ""
    ) -> SimHost:
        return self.net.add_host(name, ip=ip, asn=asn, country=country, isp=isp)

    def home(
        self,
        name: str,
        *,
        listen: bool = True,
        bootstrap: Sequence[str] = (),
        publishers: Sequence[str] = (),
    ) -> Home:
        """The home of node ``name``, made (with its seeded identity) on first use."""
        if name not in self.homes:
            home = Home(self.root / name)
            endpoints = self._endpoints(name, home) if listen else ()
            config = Config(
                listen=endpoints, bootstrap=tuple(bootstrap), publishers=tuple(publishers)
            )
            home.init(config, Identity.generate(self.rng(f"identity/{name}")))
            self.homes[name] = home
        return self.homes[name]

    def _endpoints(self, name: str, home: Home) -> tuple[Endpoint, ...]:
        return tuple(
            Endpoint.parse(f"sim:{name}")
            if transport == "sim"
            else self.wrappers[transport].endpoint(name, home.path, self.rng(f"{transport}/{name}"))
            for transport in self.transports
        )

    def move(self, name: str, host: str) -> None:
        """Move node ``name`` (not running) to ``host``, a host of the network:
        it listens and dials there from its next start. Raises ``ValueError``
        for a world with transports other than ``sim``."""
        if self.transports != ("sim",):
            raise ValueError("only nodes on the sim transport alone can move")
        home = self.homes[name]
        home.save_config(replace(home.load_config(), listen=(Endpoint.parse(f"sim:{host}"),)))
        self._hosts[name] = host

    def _stack(self, name: str, runs: int, wall_clock: Callable[[], float]) -> list[Transport]:
        """Node ``name``'s transports, each over the simulated network."""
        home = self.homes[name].path
        host = self._hosts.get(name, name)
        return [
            SimTransport(self.net, host)
            if transport == "sim"
            else self.wrappers[transport].wrap(
                SimTransport(self.net, host),
                home,
                self.rng(f"{transport}/{name}/{runs}"),
                wall_clock,
            )
            for transport in self.transports
        ]

    @asynccontextmanager
    async def node(
        self,
        name: str,
        *,
        options: NodeOptions | None = None,
        skew: float = 0.0,
        lan: Callable[[], Discovery] | None = None,
    ) -> AsyncIterator[Node]:
        """Run node ``name`` (its home must exist) for the ``async with`` block,
        its wall clock ``skew`` seconds off, with ``lan`` its LAN discovery
        (a :class:`~p2pmsg.sim.lan.SimLan`'s) if it is on one.

        Each run draws from its own stream, so a restarted node does not
        repeat its earlier randomness."""
        home = self.homes[name]
        runs = self._runs[name] = self._runs.get(name, 0) + 1

        def wall_clock() -> float:
            return sim_wall_clock() + skew

        async with Node.open(
            home.path,
            self._stack(name, runs, wall_clock),
            options=options,
            offload=run_inline,
            wall_clock=wall_clock,
            rng=self.rng(f"node/{name}/{runs}"),
            network="sim",
            lan=lan,
        ) as node:
            yield node

    def invite(self, name: str) -> str:
        return str(self.homes[name].invite())

    def contact_of(self, name: str, as_name: str | None = None) -> Contact:
        invite = self.homes[name].invite()
        endpoints = tuple(str(e) for e in invite.endpoints)
        return Contact(
            as_name or name, invite.identity.node_id, invite.identity.key, endpoints, EPOCH
        )
