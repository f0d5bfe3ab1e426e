"""S11's mule: a device carried from one LAN to another during a blackout.

With ``topology.mule``, one more node, the mule, runs on the first ISP's
LAN (``isp0``): a device that takes part in the DHT like any node and is
nobody's contact. ``traffic.mule_pairs`` users of that LAN each have a
contact on the second one (``isp1``); each pair greets once in the warm-up,
while the networks still reach each other (so that they share a session,
as contacts who met do), then, while only LANs work, the user on ``isp0``
writes :data:`CARRIED` messages to the other, in the first half of the
run. Halfway through, the mule is carried to ``isp1``: its host joins that
network (its old flows are black-holed, as a phone's are when it leaves a
Wi-Fi) and its mDNS leaves one LAN and announces on the other, without the
node restarting. What the mule must do is carry those messages: each must
reach its recipient within 10 s of the mule's arrival, and none may be
readable at the mule (its home files and the mailbox entries it holds are
searched for every carried text at the end).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import trio

from p2pmsg.abc import Discovery
from p2pmsg.node import Node
from p2pmsg.sim.lan import SimLan, SimLanDiscovery
from p2pmsg.sim.net import SimHost
from p2pmsg.sim.result import SeedResult
from p2pmsg.sim.topology import MULE
from p2pmsg.sim.world import World

CARRIED = 2
"""Messages each mule pair's first user writes while only LANs work."""
GREETING_BEFORE = 120.0
"""Seconds before t0 that each mule pair greets: inside the warm-up."""


class Mule:
    """The mule of one seed; see the module docstring."""

    def __init__(
        self,
        world: World,
        result: SeedResult,
        *,
        lans: Mapping[str, SimLan],
        users: list[str],
        count: int,
        rng: random.Random,
    ) -> None:
        self.world, self.result, self.lans, self.rng = world, result, lans, rng
        hosts = world.net.hosts
        here = [u for u in users if hosts[u].isp == "isp0"]
        there = [u for u in users if hosts[u].isp == "isp1"]
        self.pairs = list(
            zip(rng.sample(here, min(count, len(here), len(there))), there, strict=False)
        )
        """Users of the first LAN and their contacts on the second."""
        self.host: SimHost = world.net.host(MULE)
        self._discoveries: list[SimLanDiscovery] = []
        self.texts: dict[str, bytes] = {}
        """Each carried message's text, by id."""

    def discovery(self) -> Callable[[], Discovery]:
        """The mule's discovery factory: on the LAN its host is on now."""

        def make() -> Discovery:
            found = self.lans[self.host.isp].discovery()
            self._discoveries.append(found)
            return found

        return make

    async def run(self, nodes: Mapping[str, Node], t0: float, end: float) -> None:
        """Greet, write while the LANs are cut off, then carry the mule over."""
        for a, b in self.pairs:
            await nodes[a].store.add_contact(self.world.contact_of(b))
            await nodes[b].store.add_contact(self.world.contact_of(a))
        await trio.sleep_until(t0 - GREETING_BEFORE)
        for a, b in self.pairs:
            await nodes[a].send(b, f"{a} greets {b}")
        half = t0 + (end - t0) / 2
        times = sorted(
            (self.rng.uniform(t0 + 60.0, half - 60.0), a, b)
            for a, b in self.pairs
            for _ in range(CARRIED)
        )
        for when, a, b in times:
            await trio.sleep_until(when)
            text = f"{a} to {b} by the mule at {when:.0f}"
            message_id = (await nodes[a].send(b, text)).hex()
            self.result.carried[message_id] = trio.current_time()
            self.texts[message_id] = text.encode()
        await trio.sleep_until(half)
        self.carry("isp1")

    def carry(self, isp: str) -> None:
        """The mule's host joins ``isp``'s network and its mDNS that LAN."""
        a, _, c, d = self.host.ip.split(".")
        self.host.isp, self.host.ip = isp, f"{a}.{isp.removeprefix('isp')}.{c}.{d}"
        self.host.asn = 64_500 + int(isp.removeprefix("isp"))
        for found in self._discoveries:
            found.move(self.lans[isp])
        self.result.mule_arrived = trio.current_time()

    def collect(self, node: Node) -> None:
        """Count the carried texts readable at the mule: in its files or its mailbox entries."""
        held = node.dht.mailboxes.store.blobs()
        files = [f.read_bytes() for f in self.world.home(MULE).path.rglob("*") if f.is_file()]
        self.result.mule_plaintext = sum(
            any(text in blob for blob in held + files) for text in self.texts.values()
        )
        self.result.mule_held = len(held)
