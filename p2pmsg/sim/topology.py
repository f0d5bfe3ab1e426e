"""The simulated world's hosts, and the network's policy: censor, latency, loss.

:func:`place_hosts` lays out a scenario's internet (see the docstring of
:mod:`p2pmsg.sim.runner` for the plan), :class:`Meter` is the network's
policy (the censor's verdict, then latency and loss, counting wire bytes),
:func:`censor_rules` turns a ``[[censor]]`` rule about flows into the
censor's rules, and the web servers and the prober's probe are the small
services the runner starts beside the nodes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import trio

from p2pmsg.sim import control, rules
from p2pmsg.sim.censor import Censor, MatchPayload, ResetEvery, ResidualBlock, Rule
from p2pmsg.sim.net import DROP, RESET, Deliver, Packet, SimNetwork, SimStream, Verdict
from p2pmsg.sim.scenario import CensorRule, Scenario, Topology
from p2pmsg.sim.world import World

ABROAD = "DE"
"""The country of users abroad."""
PROBER = "probe0"
MULE = "mule"
PROBE_EVERY = 5.0
PROBES_AT_ONCE = 64
PROBE_HORIZON = 180.0
"""How long the prober watches a probed connection (obfs servers close within 90 s)."""
WEB_PORT = 80
WEB_TIMEOUT = 10.0


def control_host(user: str) -> str:
    """The host of ``user``'s control messenger."""
    return f"{user}c"


@dataclass(frozen=True)
class Reaction:
    """What a server did with a probe: ``end`` is ``answered`` (bytes came
    back), ``close``, ``reset``, ``refused`` or ``open`` (at the horizon),
    ``after`` seconds from the probe's sending (to the millisecond)."""

    end: str
    after: float

    @property
    def answered(self) -> bool:
        return self.end == "answered"


async def reaction(net: SimNetwork, server: str, port: int, probe: bytes) -> Reaction:
    """Send ``probe`` to ``server`` on ``port`` and watch for :data:`PROBE_HORIZON`."""
    start, end = trio.current_time(), "open"
    with trio.move_on_after(PROBE_HORIZON):
        try:
            stream = await net.connect(PROBER, server, port)
        except OSError:
            return Reaction("refused", 0.0)
        start = trio.current_time()
        try:
            await stream.send(probe)
            while not await stream.receive():
                pass
            end = "answered"
        except trio.EndOfChannel:
            end = "close"
        except trio.BrokenResourceError:
            end = "reset"
        finally:
            await stream.aclose()
    return Reaction(end, round(trio.current_time() - start, 3))


class Meter:
    """The network's policy: the censor, then latency; counts wire bytes."""

    def __init__(
        self, censor: Censor, net: SimNetwork, topology: Topology, rng: random.Random
    ) -> None:
        self.censor, self.net, self.topology, self.rng = censor, net, topology, rng
        self.wire_bytes = 0
        self.nodes: set[str] = set()
        self.dns_lookups = 0
        self.residuals: list[ResidualBlock] = []
        """Every residual block the censor ran (S4 counts the retries they saw)."""

    def __call__(self, packet: Packet) -> Verdict:
        if packet.kind == "syn" and packet.dst_port == rules.DNS_PORT:
            self.dns_lookups += packet.src_host in self.nodes
        verdict = self.censor(packet)
        if not isinstance(verdict, Deliver):
            return verdict
        self.wire_bytes += len(packet.data)
        same = self.net.host(packet.src_host).country == self.net.host(packet.dst_host).country
        latency = self.topology.latency if same else self.topology.border_latency
        latency += rules.retransmissions(self.rng, self.topology.loss, latency)
        return Deliver(verdict.delay + latency, verdict.data)


def place_hosts(world: World, s: Scenario) -> dict[str, list[str]]:
    """Add the scenario's hosts to ``world``; their names by group (``users``, ``late``, ``skewed``,
    ``control``, ``bootstrap``, ``servers``, ``web``, ``bg``, ``resolver``, ``mule``)."""
    topo = s.topology
    names = (
        "users", "late", "control", "bootstrap", "servers", "web", "bg", "resolver", "skewed",
        "mule",
    )  # fmt: skip
    groups: dict[str, list[str]] = {name: [] for name in names}
    late = topo.late_users
    controls = late if s.control.kind == "bootstrap_only" else 0
    for i in range(topo.users + late + controls):
        j = i % topo.isps
        if i < topo.users:
            group, letter = "users", "u"
        else:
            group, letter = ("late", "n") if i < topo.users + late else ("control", "c")
        name = f"{letter}{i:04d}"
        ip = f"95.{j}.{i // 250}.{i % 250 + 1}"
        world.add_host(name, ip=ip, asn=64_500 + j, country=topo.country, isp=f"isp{j}")
        groups[group].append(name)
    for i in range(topo.bad_clocks):
        j = i % topo.isps
        name, ip = f"k{i:04d}", f"95.{j}.240.{i % 250 + 1}"
        world.add_host(name, ip=ip, asn=64_500 + j, country=topo.country, isp=f"isp{j}")
        groups["skewed"].append(name)
    for i in range(topo.abroad):
        name, ip = f"a{i:04d}", f"85.1.{i // 250}.{i % 250 + 1}"
        world.add_host(name, ip=ip, asn=3320, country=ABROAD, isp="abroad")
        groups["users"].append(name)
    if s.control.kind == "fixed_servers":
        _control_devices(world, groups["users"])
    if topo.mule:  # a device of nobody's, on the first ISP's LAN (p2pmsg.sim.mule)
        world.add_host(MULE, ip="95.0.245.1", asn=64_500, country=topo.country, isp="isp0")
        groups["mule"].append(MULE)
    if any(rule.action == "probe" for rule in s.censor):
        world.add_host(PROBER, ip="95.0.251.1", asn=64_500, country=topo.country, isp="isp0")
    for j in range(topo.isps):
        name = f"bg{j}"
        ip = f"95.{j}.250.1"
        world.add_host(name, ip=ip, asn=64_500 + j, country=topo.country, isp=f"isp{j}")
        groups["bg"].append(name)
    counts = {"bootstrap": topo.bootstrap, "servers": s.control.servers, "web": topo.web}
    if s.control.resolve:
        counts["resolver"] = 1
    k = 0
    for group, count in counts.items():
        for i in range(count):
            name = {"web": f"web{i}", "resolver": control.RESOLVER}.get(group, f"{group[0]}{i}")
            prefix = k % topo.cloud_prefixes
            ip = f"52.{prefix}.{k // 250}.{k % 250 + 1}"
            world.add_host(name, ip=ip, asn=16_509, country="cloud", isp="cloud")
            groups[group].append(name)
            k += 1
    return groups


def _control_devices(world: World, users: list[str]) -> None:
    """Each user's control messenger: a device of theirs, beside their node."""
    for name in users:
        host = world.net.host(name)
        a, b, c, d = host.ip.split(".")
        ip = f"{int(a) + 1}.{b}.{c}.{d}"
        world.add_host(control_host(name), ip=ip, asn=host.asn, country=host.country, isp=host.isp)


async def web_server(world: World, host: str) -> None:
    listener = await world.net.listen(host, WEB_PORT)
    async with listener, trio.open_nursery() as nursery:
        while True:
            nursery.start_soon(_answer, await listener.accept())


async def _answer(stream: SimStream) -> None:
    try:
        await stream.send(b"HTTP/1.1 200 OK\r\n\r\n" + await stream.receive())
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
        pass
    finally:
        await stream.aclose()


def censor_rules(
    rule: CensorRule,
    net: SimNetwork,
    country: str,
    rng: random.Random,
    on_learn: Callable[[], None] | None = None,
) -> list[Rule]:
    """The censor rules that carry out ``rule`` (one about flows, not addresses)
    from now; a learning rule calls ``on_learn`` at each shape it learns."""
    hosts = net.host
    verdict = DROP if rule.verdict == "drop" else RESET
    made: list[Rule] = []
    residual = None
    if rule.residual > 0:
        made.append(residual := ResidualBlock(rule.residual, rule.residual_p, rng))
    one: Rule
    if rule.action == "dpi":
        match = rules.payload_match(rule.match, (control.DOMAIN,))
        one = MatchPayload(match, verdict, residual)
    elif rule.action == "learn_fingerprint":
        one = rules.LearnFingerprint(rule.min_clients, verdict, on_learn=on_learn)
    elif rule.action == "police":
        one = rules.Policing(rule.kbps * 1000 / 8)
    elif rule.action == "reset_every":
        one = ResetEvery(rule.lifetime)
    elif rule.action == "inject_dns":
        one = rules.InjectDns((control.DOMAIN,))
    elif rule.action == "delay":
        one = rules.Degrade(rule.latency, rule.loss, rng)
    elif rule.target == "border":
        now, isps = trio.current_time(), sorted({h.isp for h in net.hosts.values()})
        start = {isp: now + rng.uniform(0, rule.propagation) for isp in isps}
        one = rules.BorderDrop(hosts, country, start)
    else:
        one = rules.DropAll()
    if rule.probability < 1:
        one = rules.Chance(one, rule.probability, rng)
    made.append(rules.Scoped(one, hosts, country, rule.scope, rule.isp))
    return made
