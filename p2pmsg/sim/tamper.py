"""Relays that tamper with the onion packets they forward, and the count of
onion layers accepted twice (S17).

Theory of operation
-------------------
Nobody on the wire can duplicate, reorder or replay an onion packet inside a
secure link: TCP absorbs duplicated and reordered segments, and the link's
AEAD refuses injected or replayed records (a replayed *connection* is
refused at the handshake: S8). What reaches a node's Sphinx layer twice
comes from inside the route: a relay that forwards a packet twice, holds
packets back so that later ones overtake them, or keeps packets and sends
them again after their next hop restarted and lost whatever it kept only in
memory.

:class:`Insiders` plays ``topology.tampering`` such relays (users' nodes):
their relay's :class:`~p2pmsg.relay.PacketSender` becomes a
:class:`Tampering` that holds each packet back U(0, ``reorder``) seconds,
forwards a ``duplicate`` share of them twice, and keeps the latest
:data:`KEPT_PER_HOP` packets per next hop, all sent again once that hop has
restarted. Beside them it watches every node's relay
(:attr:`~p2pmsg.relay.Relay.observers`): a node that accepts the same packet
twice, across its own restarts too, has accepted a replayed layer.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from p2pmsg.dht.peer import Peer
from p2pmsg.dialer import DIAL_ERRORS
from p2pmsg.node import Node
from p2pmsg.relay import PacketSender
from p2pmsg.sim.result import SeedResult

KEPT_PER_HOP = 16
"""Packets a tampering relay keeps per next hop, to send again after that
hop restarts (the latest ones)."""


@dataclass
class Kept:
    """What one tampering relay keeps, across its own node's restarts."""

    packets: dict[bytes, deque[tuple[Peer, bytes]]] = field(default_factory=dict)
    """Next hop's node id -> the latest packets forwarded to it."""


class Tampering:
    """A relay's :class:`~p2pmsg.relay.PacketSender` that holds packets back,
    sends some twice, and keeps them to send again."""

    def __init__(
        self,
        links: PacketSender,
        kept: Kept,
        result: SeedResult,
        rng: random.Random,
        *,
        duplicate: float,
        reorder: float,
    ) -> None:
        self.links, self.kept, self.result, self.rng = links, kept, result, rng
        self.duplicate, self.reorder = duplicate, reorder

    async def send(self, peer: Peer, data: bytes) -> None:
        if self.reorder:
            await trio.sleep(self.rng.uniform(0, self.reorder))
        await self.links.send(peer, data)
        hop = self.kept.packets.setdefault(peer.node_id, deque(maxlen=KEPT_PER_HOP))
        hop.append((peer, data))
        if self.rng.random() < self.duplicate:
            await self.links.send(peer, data)
            self.result.tampered_twice += 1


class Insiders:
    """The tampering relays of one run, and the watch on every relay."""

    def __init__(
        self,
        result: SeedResult,
        tampering: Iterable[str],
        seed: int,
        *,
        duplicate: float,
        reorder: float,
    ) -> None:
        self.result, self.seed = result, seed
        self.duplicate, self.reorder = duplicate, reorder
        self.kept: dict[str, Kept] = {name: Kept() for name in tampering}
        self.nodes: dict[str, Node] = {}
        self.accepted: dict[str, set[bytes]] = {}
        """Per node, a digest of every packet whose layer it accepted."""
        self._runs: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        """Host the replays after restarts (the run's lifetime)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await trio.sleep_forever()

    def opened(self, name: str, node: Node) -> None:
        """``name``'s node (again): watch its relay; tamper if it is an insider;
        after a restart, its packets kept by insiders are sent again."""
        self.nodes[name] = node
        runs = self._runs[name] = self._runs.get(name, 0) + 1
        node.onion.relay.observers.append(lambda packet: self._accepted(name, packet))
        kept = self.kept.get(name)
        if kept is not None:
            rng = random.Random(f"{self.seed}/tamper/{name}/{runs}")  # noqa: S311 - a reproducible simulation
            node.onion.relay.links = Tampering(
                node.onion.links, kept, self.result, rng,
                duplicate=self.duplicate, reorder=self.reorder,
            )  # fmt: skip
        if runs > 1 and self._nursery is not None:
            for insider in self.kept:
                self._nursery.start_soon(self._send_again, insider, node.identity.node_id)

    def closed(self, name: str) -> None:
        """``name``'s node is stopping: it sends nothing again until it is back."""
        del self.nodes[name]

    def _accepted(self, name: str, packet: bytes) -> None:
        digest = hashlib.blake2b(packet, digest_size=16).digest()
        seen = self.accepted.setdefault(name, set())
        if digest in seen:
            self.result.layers_accepted_twice += 1
        seen.add(digest)

    async def _send_again(self, insider: str, hop: bytes) -> None:
        """``insider`` sends again what it kept for ``hop``, which restarted."""
        for peer, data in list(self.kept[insider].packets.get(hop, ())):
            node = self.nodes.get(insider)
            if node is None:
                return
            try:
                await node.onion.links.send(peer, data)
            except DIAL_ERRORS:
                continue
            self.result.tampered_replays += 1
