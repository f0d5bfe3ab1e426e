"""The active prober of S8: probes the servers of flows the censor cannot
classify, with noise beside each probe, and replays after restarts.

:class:`p2pmsg.sim.rules.Probe` judges who is suspect; :meth:`Prober.run`
probes them, up to :data:`~p2pmsg.sim.topology.PROBES_AT_ONCE` at a time.
Each probe (the recorded first payload, the same with a byte changed, random
bytes: :func:`p2pmsg.sim.rules.probes`) goes beside as much noise on a
second connection opened at the same instant: the reference, what the
server shows anyone who does not speak its protocol. A server that answers
any of them is condemned (the runner blocks it); for a p2pmsg node, a
reaction unlike its noise twin's is counted. With node restarts, what was
recorded of a node that stayed silent is replayed after each of its restarts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container
from dataclasses import dataclass, field

import trio

from p2pmsg.sim import rules
from p2pmsg.sim.net import SimNetwork
from p2pmsg.sim.result import SeedResult
from p2pmsg.sim.topology import PROBE_EVERY, PROBES_AT_ONCE, Reaction, reaction


@dataclass
class Prober:
    net: SimNetwork
    nodes: Container[str]
    """The hosts of p2pmsg nodes (the rest are the control's servers)."""
    result: SeedResult
    condemn: Callable[[str], None]
    """Block a server: it answered."""
    replays: bool = False
    """Record what a silent node was sent, to replay it after its restarts."""
    recorded: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    """Per p2pmsg node probed: (port, first payload), replayed after each restart."""
    restarted: list[str] = field(default_factory=list)
    """Recorded nodes started again since the prober last looked."""

    def node_restarted(self, name: str) -> None:
        if name in self.recorded:
            self.restarted.append(name)

    async def run(self, suspects: rules.Probe, rng: random.Random, end: float) -> None:
        limit = trio.CapacityLimiter(PROBES_AT_ONCE)
        async with trio.open_nursery() as nursery:
            while trio.current_time() < end:
                for server in self.restarted:
                    for port, first in self.recorded.get(server, []):
                        nursery.start_soon(self.replay_after_restart, server, port, first)
                self.restarted.clear()
                suspect = suspects.next_suspect()
                if suspect is None:
                    await trio.sleep(PROBE_EVERY)
                    continue
                await limit.acquire_on_behalf_of(suspect)
                probes = rules.probes(suspect[2], rng)
                noise = [rng.randbytes(len(p)) for p in probes]
                nursery.start_soon(self.probe_one, suspect, probes, noise, limit)
            nursery.cancel_scope.cancel()

    async def probe_one(
        self,
        suspect: tuple[str, int, bytes],
        probes: list[bytes],
        noise: list[bytes],
        limit: trio.CapacityLimiter,
    ) -> None:
        """Send each probe, and beside it as much noise (the reference)."""
        server, port, first = suspect
        hits = 0
        try:
            for probe, reference in zip(probes, noise, strict=True):
                self.result.probes += 1
                seen: list[Reaction] = []
                async with trio.open_nursery() as both:
                    for payload in (probe, reference):
                        both.start_soon(self.watch, server, port, payload, seen)
                hits += any(r.answered for r in seen)
                if server in self.nodes:
                    self.result.node_probes += 1
                    self.result.node_probes_unlike_noise += seen[0] != seen[1]
        finally:
            limit.release_on_behalf_of(suspect)
        if hits:
            self.result.probed_nodes_answering += server in self.nodes
            self.condemn(server)
        elif server in self.nodes and self.replays:
            self.recorded.setdefault(server, []).append((port, first))

    async def watch(self, server: str, port: int, payload: bytes, seen: list[Reaction]) -> None:
        seen.append(await reaction(self.net, server, port, payload))

    async def replay_after_restart(self, server: str, port: int, first: bytes) -> None:
        """Replay ``first``, recorded before ``server`` restarted (GFW: up to 570 h later)."""
        self.result.restart_replays += 1
        if (await reaction(self.net, server, port, first)).answered:
            self.result.restart_replays_answered += 1
            self.condemn(server)
