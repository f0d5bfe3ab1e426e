"""Censor rules that scenarios switch on: scope, chance, shutdowns, learning, DNS.

Theory of operation. These are :class:`~p2pmsg.sim.censor.Rule` objects
like those of :mod:`p2pmsg.sim.censor`, for the ``[[censor]]`` actions of a
scenario beyond address blocking (see :mod:`p2pmsg.sim.runner`, which adds
each to the censor at its ``at`` and takes it away at its ``until``):

* :class:`Scoped` asks its rule only about flows in scope: ``"country"``
  (a flow with an end in the censor's country: its ISPs carry it),
  ``"border"`` (a flow that crosses the border) or ``"wan"`` (a flow between
  two networks: everything but a LAN's own traffic).
* :class:`Chance` lets its rule see a flow with probability ``p``, drawn once
  per flow (the GFW blocked 26.3% of the flows it flagged, S5).
* :class:`BorderDrop` drops every flow across the border, each ISP from its
  own time (Iran's shutdown was rolled out per ISP, S10).
* :class:`LearnFingerprint` is the learning censor of S6: it counts the
  distinct clients of each flow *shape* (the length of the first client
  payload) and, once a shape has ``min_clients``, resets
  or drops every flow of that shape. Shapes that look like DNS, HTTP or TLS
  are never learned: blocking the web is the collateral damage a censor
  avoids.
* :func:`payload_match` names the matches of ``dpi`` rules, which are
  :class:`~p2pmsg.sim.censor.MatchPayload` rules: the S5 detector, S7's
  allowlist (it needs the server port), a TLS server name.
* :class:`Degrade` makes the path worse: more latency, and loss that costs
  each lost packet a retransmission timeout (S18's phases);
* :class:`Policing` holds each flow direction to a rate (S9);
  :class:`DropAll` drops whatever its scope lets it see (S11).
* :class:`Probe` notes the servers of flows it cannot classify for the
  runner's prober (S8), which replays what their clients sent and blocks
  those that answer.
* :class:`InjectDns` forges the answer to a cleartext DNS query for a listed
  name (S3): the on-path injector's answer arrives first, so the client
  sees it instead of the resolver's.

Deterministic (time from the caller, chance from a seeded ``random.Random``)
and bounded (each keeps at most ``max_*`` entries).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pmsg.sim import detectors
from p2pmsg.sim.censor import FlowView, Match, Rule, fully_encrypted_first
from p2pmsg.sim.net import DROP, RESET, Deliver, Packet, SimHost, Verdict

DNS_PORT = 53
RTO_MIN = 0.2
"""A retransmission timeout's floor, seconds (Linux's TCP)."""
FORGED_ANSWER = "10.10.34.34"
"""The address Iran's resolvers answered for blocked names."""


def in_scope(hosts: Callable[[str], SimHost], country: str, scope: str, packet: Packet) -> bool:
    """Whether the censor of ``country`` acts on ``packet`` under ``scope``."""
    a, b = hosts(packet.src_host), hosts(packet.dst_host)
    if scope == "border":
        return (a.country == country) != (b.country == country)
    if scope == "wan" and a.isp == b.isp:
        return False
    return country in (a.country, b.country)


@dataclass
class Scoped:
    """``rule``, for flows in ``scope`` only (see :func:`in_scope`)."""

    rule: Rule
    hosts: Callable[[str], SimHost]
    country: str
    scope: str = "country"
    isp: str = ""
    """Only flows of this ISP's clients, when set."""

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        if not in_scope(self.hosts, self.country, self.scope, packet):
            return None
        if self.isp and self.hosts(flow.client[0]).isp != self.isp:
            return None
        return self.rule.judge(packet, flow, now)


@dataclass
class Chance:
    """``rule`` sees each flow with probability ``p``, drawn at its first packet."""

    rule: Rule
    p: float
    rng: random.Random

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        drawn = flow.settled.get(id(self))
        if drawn is None:
            drawn = flow.settled[id(self)] = self.rng.random() < self.p
        return self.rule.judge(packet, flow, now) if drawn else None


@dataclass
class BorderDrop:
    """Drop flows across the border of ``country``: each ISP from ``start[isp]``."""

    hosts: Callable[[str], SimHost]
    country: str
    start: dict[str, float]

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        a, b = self.hosts(packet.src_host), self.hosts(packet.dst_host)
        if (a.country == self.country) == (b.country == self.country):
            return None
        inside = a if a.country == self.country else b
        if now < self.start.get(inside.isp, float("inf")):
            return None
        flow.condemned = DROP
        return DROP


def shape(first: bytes) -> int | None:
    """The shape :class:`LearnFingerprint` learns (the first payload's length,
    as ISPs found MTProxy), or None for web-like or empty payloads."""
    if not first or detectors.allowed_protocol([first], 443) is not None:
        return None
    return len(first)


@dataclass
class LearnFingerprint:
    """Learn the shapes seen from ``min_clients`` clients; condemn their flows.

    Each flow counts once, at its first client payload; a learned shape
    condemns every flow of that shape at its next packet, those that began
    before it was learned too (as :class:`MatchPayload`)."""

    min_clients: int
    verdict: Verdict = RESET
    on_learn: Callable[[], None] | None = None
    """Called at each shape learned (the lab marks it as a censor event)."""
    max_shapes: int = 4096
    seen: OrderedDict[int, set[str]] = field(default_factory=OrderedDict)
    learned: set[int] = field(default_factory=set)

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        del now
        if packet.kind != "data" or not flow.first:
            return None
        key = shape(flow.first[0])
        if key is None:
            return None
        if key not in self.learned:
            if packet.direction != "c2s" or len(flow.first) != 1:
                return None
            clients = self.seen.setdefault(key, set())
            clients.add(flow.client[0])
            self.seen.move_to_end(key)
            while len(self.seen) > self.max_shapes:
                self.seen.popitem(last=False)
            if len(clients) < self.min_clients:
                return None
            self.learned.add(key)
            if self.on_learn is not None:
                self.on_learn()
        flow.condemned = self.verdict
        return self.verdict


@dataclass
class InjectDns:
    """Forge the answer to DNS queries (on port 53) for names under ``domains``."""

    domains: tuple[str, ...]
    answer: str = FORGED_ANSWER
    max_flows: int = 65_536
    forged: int = 0
    _poisoned: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        del now
        if packet.kind != "data" or DNS_PORT not in (packet.src_port, packet.dst_port):
            return None
        if packet.direction == "c2s":
            name = detectors.dns_query_name(packet.data)
            if name is not None and any(_under(name, d) for d in self.domains):
                self._poisoned[packet.flow] = None
                while len(self._poisoned) > self.max_flows:
                    self._poisoned.popitem(last=False)
            return None
        if packet.flow not in self._poisoned:
            return None
        self.forged += 1
        return Deliver(data=f"A {self.answer}".encode())


def _under(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


@dataclass
class Policing:
    """At most ``rate`` bytes per second in each direction of each flow (S9):
    packets over the rate wait, in order, as a policer's queue holds them."""

    rate: float
    max_flows: int = 65_536
    _free_at: OrderedDict[tuple[int, str], float] = field(default_factory=OrderedDict)

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        del flow
        if packet.kind != "data":
            return None
        key = (packet.flow, packet.direction)
        start = max(now, self._free_at.get(key, now))
        self._free_at[key] = start + len(packet.data) / self.rate
        self._free_at.move_to_end(key)
        while len(self._free_at) > self.max_flows:
            self._free_at.popitem(last=False)
        return Deliver(self._free_at[key] - now)


@dataclass
class Degrade:
    """``latency`` more on every packet, and each lost with probability ``loss``:
    resent after a retransmission timeout that doubles with each loss, as TCP's,
    while the packets behind it wait (the network keeps a flow in order)."""

    latency: float
    loss: float
    rng: random.Random

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        del packet, flow, now
        return Deliver(self.latency + retransmissions(self.rng, self.loss, self.latency))


def retransmissions(rng: random.Random, loss: float, latency: float) -> float:
    """Seconds a packet loses to being lost, each time with probability ``loss``:
    a retransmission timeout (four one-way ``latency``s, at least
    :data:`RTO_MIN`) that doubles with each loss."""
    delay, timeout = 0.0, max(RTO_MIN, 4 * latency)
    while rng.random() < loss:
        delay += timeout
        timeout *= 2
    return delay


@dataclass
class DropAll:
    """Drop every flow (the rule a scope narrows: all WAN traffic in S11)."""

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        del packet, now
        flow.condemned = DROP
        return DROP


def payload_match(name: str, domains: tuple[str, ...] = ()) -> Match:
    """The :class:`~p2pmsg.sim.censor.MatchPayload` match of a ``dpi`` rule called
    ``name`` (see ``MATCHES`` of the scenario schema)."""
    if name == "fully_encrypted":
        return fully_encrypted_first
    if name == "not_allowlisted":
        return lambda first, port: detectors.allowed_protocol(first, port) is None
    if name == "sni":
        return lambda first, port: _under_any(detectors.client_hello_sni(first[0]), domains)
    return lambda first, port: True


def _under_any(name: str | None, domains: tuple[str, ...]) -> bool:
    return name is not None and any(_under(name, d) for d in domains)


@dataclass
class Probe:
    """Note the servers of flows whose first payload it cannot classify (S8):
    no DNS, HTTP or TLS it knows (fully encrypted protocols among them).

    The GFW's prober then connects to each and sends a replay of that
    payload, the replay with a byte changed, and random bytes; a server that
    answers any of them with data is not a closed port, and is blocked.
    This rule only judges who is suspect (each server and port once, at most
    ``max_suspects`` waiting, and each server remembered once probed: at
    most the world's hosts); the runner's prober task does the probing."""

    prober: str
    max_suspects: int = 1024
    suspects: OrderedDict[tuple[str, int], bytes] = field(default_factory=OrderedDict)
    probed: set[tuple[str, int]] = field(default_factory=set)

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        del now
        if packet.kind != "data" or packet.direction != "c2s" or flow.client_packets != 1:
            return None
        client, server, port = flow.client
        key = (server, port)
        if client == self.prober or key in self.probed or key in self.suspects:
            return None
        first = flow.first[0]
        if (
            detectors.allowed_protocol([first], 443) is None
            and len(self.suspects) < self.max_suspects
        ):
            self.suspects[key] = first
        return None

    def next_suspect(self) -> tuple[str, int, bytes] | None:
        if not self.suspects:
            return None
        (server, port), first = self.suspects.popitem(last=False)
        self.probed.add((server, port))
        return server, port, first


def probes(first: bytes, rng: random.Random) -> list[bytes]:
    """What the prober sends for a suspect first payload: the replay, the replay
    with its first byte changed, and as many random bytes."""
    changed = bytes([first[0] ^ 0xFF]) + first[1:]
    return [first, changed, rng.randbytes(len(first))]
