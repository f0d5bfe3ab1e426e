"""S16's flood: a flooder's many ids, on a few addresses, against a few users.

The flooder (a ``flood`` rule) has ``ids`` real identities on ``addresses``
hosts, each in a /24 of its own, so that the per-address limits
(:mod:`p2pmsg.admission`), not the per-network ones, are what stands in its
way. From every address, tries of each attack run at once (one per id for
``links``, :data:`PARALLEL` for the others), each against one of the
``victims`` users picked at random, one try after another:

* ``links``: a full handshake under one of the address's ids, then the link
  is held, silent, until the node ends it;
* ``frames``: a handshake, then the largest message a link carries, of
  garbage, again and again until the node drops the link;
* ``stores``: a handshake, then STOREs of valid, signed peer records of the
  address's ids, each sent as soon as the last was answered;
* ``slowloris``: a raw connection that sends one byte every 10 s;
* ``half_open``: a raw connection that sends a first flight's worth of
  random bytes, then nothing.

A try that fails (refused, reset, timed out) is followed by the next after
:data:`PAUSE`. Everything a try sends goes through the simulated network to
the real node code; the flooder counts its tries per attack in the seed's
result, and the runner reads each node's admission counts at the end.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import trio

from p2pmsg.dht import records, rpc
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import HandshakeError
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.link import wire
from p2pmsg.link.secure import SecureLink, connect_secure
from p2pmsg.node import Node
from p2pmsg.sim.net import SimNetwork, SimStream
from p2pmsg.sim.result import SeedResult
from p2pmsg.sim.scenario import CensorRule, Scenario
from p2pmsg.sim.transport import parse_sim_endpoint
from p2pmsg.sim.world import World, sim_wall_clock

ATTACKS = ("links", "frames", "stores", "slowloris", "half_open")
PARALLEL = 4
"""Tries of each attack under way at once from each address."""
PAUSE = 0.5
"""Seconds between a try's end and the next (``links``: :data:`LINKS_PAUSE`)."""
LINKS_PAUSE = 5.0
"""For ``links``, whose tries are one per id: the flood stays at 200 a second."""
DRIP = 10.0
"""Seconds between the bytes of a slowloris connection."""
_ERRORS = (
    OSError, HandshakeError, trio.BrokenResourceError, trio.ClosedResourceError,
    trio.EndOfChannel, trio.TooSlowError,
)  # fmt: skip

Target = tuple[str, int, PublicIdentity]
"""A user's node: its host, its port, its public identity."""


class Flood:
    """The flooder of one seed: :meth:`run` it for each ``flood`` rule. A
    ``calm`` one floods nothing, and marks the same messages, for the baseline."""

    def __init__(
        self,
        world: World,
        result: SeedResult,
        scenario: Scenario,
        users: Sequence[str],
        t0: float,
        *,
        calm: bool,
    ) -> None:
        self.world, self.result, self.calm = world, result, calm
        self.country = scenario.topology.country
        self.rng = random.Random(f"{result.seed}/flood")  # noqa: S311 - a reproducible simulation
        rules = [rule for rule in scenario.censor if rule.action == "flood"]
        self.victims = {user for rule in rules for user in users[: rule.victims]}
        """The users it hits (the first ``victims`` of each rule)."""
        self.windows = [(t0 + rule.at, t0 + rule.until) for rule in rules]

    def marks(self, frm: str, to: str, now: float) -> bool:
        """Is a message sent now from ``frm`` to ``to`` one whose latency counts?"""
        return bool({frm, to} & self.victims) and any(a <= now < b for a, b in self.windows)

    async def run(self, nodes: Mapping[str, Node], rule: CensorRule, end: float) -> None:
        """Flood the victims' nodes as ``rule`` says until ``end`` (nothing when calm)."""
        if self.calm or trio.current_time() >= end:
            return

        def targets() -> list[Target]:  # asked anew each try: nodes restart
            up = [nodes[u] for u in sorted(self.victims) if u in nodes]
            return [target_of(n.listening[0], n.identity.public) for n in up if n.listening]

        await self._flood(targets, rule.ids, rule.addresses, end)

    def collect(self, nodes: Mapping[str, Node]) -> None:
        """Each victim's peak reservation and cap, and what it refused, into the result."""
        for user in sorted(self.victims):
            a = nodes[user].admission
            self.result.flood_nodes.append((a.peak_bytes, a.limits.memory))
            for reason, n in a.refused.items():
                key = reason.name.lower()
                self.result.flood_refused[key] = self.result.flood_refused.get(key, 0) + n

    async def _flood(
        self, targets: Callable[[], Sequence[Target]], ids: int, addresses: int, end: float
    ) -> None:
        hosts = [f"198.18.{j}.7" for j in range(addresses)]
        for host in hosts:
            self.world.add_host(host, ip=host, asn=64_998, country=self.country, isp="isp0")
        identities = [Identity(self.rng.randbytes(32)) for _ in range(ids)]
        with trio.move_on_at(end):
            async with trio.open_nursery() as nursery:
                for j, host in enumerate(hosts):
                    own = identities[j::addresses]
                    for attack in ATTACKS:
                        for k in range(len(own) if attack == "links" else PARALLEL):
                            rng = random.Random(f"{self.rng.random()}/{host}/{attack}/{k}")  # noqa: S311
                            nursery.start_soon(self._keep_trying, attack, host, own, targets, rng)

    async def _keep_trying(
        self,
        attack: str,
        host: str,
        ids: Sequence[Identity],
        targets: Callable[[], Sequence[Target]],
        rng: random.Random,
    ) -> None:
        net = self.world.net
        while True:
            choices = targets()
            if choices:
                target = rng.choice(choices)
                self.result.flood_tries[attack] = self.result.flood_tries.get(attack, 0) + 1
                with contextlib.suppress(*_ERRORS):
                    await _TRIES[attack](net, host, target, ids, rng)
            await trio.sleep(LINKS_PAUSE if attack == "links" else PAUSE)


@contextlib.asynccontextmanager
async def _secure(
    net: SimNetwork,
    host: str,
    target: Target,
    ids: Sequence[Identity],
    rng: random.Random,
    *,
    window: int | None = None,
) -> AsyncIterator[SecureLink]:
    """A secure link to ``target`` under one of ``ids``, closed on the way out."""
    name, port, public = target
    stream = await net.connect(host, name, port, window=window)
    link = await connect_secure(
        stream, rng.choice(ids), public, wall_clock=sim_wall_clock, rng=rng.randbytes,
        timeout=30.0,
    )  # fmt: skip
    try:
        yield link
    finally:
        await link.aclose()


async def _links(
    net: SimNetwork, host: str, target: Target, ids: Sequence[Identity], rng: random.Random
) -> None:
    async with _secure(net, host, target, ids, rng) as link:
        await link.receive()  # held until the node ends it


async def _frames(
    net: SimNetwork, host: str, target: Target, ids: Sequence[Identity], rng: random.Random
) -> None:
    # The node drops the link at the first frame it cannot read, so a window of
    # two frames is as much as it ever sees: sealing more is the flooder's own
    # cost, which made this try most of S16's run time.
    async with _secure(net, host, target, ids, rng, window=2) as link:
        while True:
            await link.send(rng.randbytes(wire.MAX_MESSAGE))


async def _stores(
    net: SimNetwork, host: str, target: Target, ids: Sequence[Identity], rng: random.Random
) -> None:
    info = records.PeerInfo((f"sim:{host}:1",))
    expires = int(sim_wall_clock()) + 3600
    async with _secure(net, host, target, ids, rng) as link:
        for n in range(1_000_000):
            record = records.make_peer_record(rng.choice(ids), info, n + 1, expires)
            rid = n.to_bytes(rpc.RID_BYTES, "big")
            request = rpc.Request(rid, rpc.Method.STORE, b"", records.encode(record))
            await link.send(rpc.encode_request(request))
            await link.receive()


async def _slowloris(
    net: SimNetwork, host: str, target: Target, ids: Sequence[Identity], rng: random.Random
) -> None:
    stream = await _raw(net, host, target)
    async with stream:
        while True:
            await stream.send(rng.randbytes(1))
            await trio.sleep(DRIP)


async def _half_open(
    net: SimNetwork, host: str, target: Target, ids: Sequence[Identity], rng: random.Random
) -> None:
    stream = await _raw(net, host, target)
    async with stream:
        await stream.send(rng.randbytes(rng.randrange(100, 400)))
        await stream.receive()  # nothing comes: held until the node ends it


async def _raw(net: SimNetwork, host: str, target: Target) -> SimStream:
    name, port, _ = target
    return await net.connect(host, name, port)


_TRIES = {
    "links": _links, "frames": _frames, "stores": _stores, "slowloris": _slowloris,
    "half_open": _half_open,
}  # fmt: skip


def target_of(endpoint: Endpoint, public: PublicIdentity) -> Target:
    """A user's node as the flooder knows it: where it listens, and who it is."""
    host, port = parse_sim_endpoint(endpoint)
    return host, port, public
