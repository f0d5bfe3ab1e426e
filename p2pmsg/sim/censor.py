"""A censor on the simulated network: rules that judge every packet.

Theory of operation. A :class:`Censor` is a :data:`~p2pmsg.sim.net.Policy`:
the network hands it each packet (SYNs included) and gets a verdict. It
keeps a small :class:`FlowView` per flow (when it started, its first client
payloads, whether a rule already condemned it) and asks its rules in order;
the first rule that returns a verdict other than ``None`` decides, and a flow
a rule condemned stays condemned (a censor that reset a flow's first packet
resets the rest). With no verdict the packet is delivered after the delay the
rate limits add up.

The rules are the building blocks of the censors in SCENARIOS.md, kept as
small as their scenarios need:

* :class:`MatchPayload` (S5, S6-style DPI): the first client payloads of a
  flow match (a byte pattern, the S5 detector) -> reset (or drop), and
  optionally a residual block.
* :class:`ResidualBlock` (S4, S5): after a condemned flow, SYNs on the same
  (client, server, port) are reset for ``seconds`` (each with probability
  ``p``).
* :class:`ResetEvery` (S19): any packet of a flow older than ``seconds``
  resets it.
* :class:`Police` (S9): a flow direction carries at most ``rate`` bytes per
  second; packets over the rate wait (their delivery is delayed in order).

Deterministic: time comes from ``clock`` (trio's, so the autojump clock
drives it) and chance from a seeded ``random.Random``. Bounded: flow views
are kept for at most ``max_flows`` flows (the oldest forgotten first).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from p2pmsg.sim import detectors
from p2pmsg.sim.net import DELIVER, RESET, Deliver, Packet, Verdict

FIRST_PAYLOADS = 2
"""How many client payloads of a flow a rule may look at (S7 looks at two)."""
Match = Callable[[Sequence[bytes], int], bool]
"""A DPI match: the flow's first client payloads and its server port -> condemned?"""


@dataclass
class FlowView:
    """What the censor remembers of one flow."""

    started: float
    client: tuple[str, str, int]
    """(client host, server host, server port): the residual-blocking key."""
    first: list[bytes] = field(default_factory=list)
    client_packets: int = 0
    settled: dict[int, bool] = field(default_factory=dict)
    """Per payload rule (by ``id``): its match once the first payloads are all in."""
    condemned: Verdict | None = None


class Rule(Protocol):
    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        """A verdict for ``packet``, or None to let the next rule judge."""
        ...


@dataclass
class MatchPayload:
    """Condemn a flow whose first client payloads ``match`` (a DPI rule).

    Judged at every packet of the flow, from its first payload on, so a rule
    added mid-conversation kills the flows it matches at their next packet,
    as a censor that keeps per-flow state does."""

    match: Match
    verdict: Verdict = RESET
    residual: ResidualBlock | None = None
    matched: int = 0

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        if not flow.first or not self._matches(flow):
            return None
        self.matched += 1
        flow.condemned = self.verdict
        if self.residual is not None:
            self.residual.block(flow.client, now)
        return self.verdict

    def _matches(self, flow: FlowView) -> bool:
        """``match`` on the flow's first payloads, computed once they are all in."""
        port = flow.client[2]
        if flow.client_packets < FIRST_PAYLOADS:
            return self.match(flow.first, port)
        if id(self) not in flow.settled:
            flow.settled[id(self)] = self.match(flow.first, port)
        return flow.settled[id(self)]


def contains(pattern: bytes) -> Match:
    """A match for :class:`MatchPayload`: ``pattern`` in the first payloads."""
    return lambda first, port: pattern in b"".join(first)


def fully_encrypted_first(first: Sequence[bytes], port: int) -> bool:
    """A match for :class:`MatchPayload`: the S5 detector on the first payload."""
    del port
    return detectors.fully_encrypted(first[0])


@dataclass
class ResidualBlock:
    """Reset SYNs on a blocked (client, server, port) for ``seconds``.

    It also counts the client's retries (S4: at most one per window): for
    each 3-tuple, :attr:`retries` is the most SYNs it saw inside one of its
    windows, whether or not it reset them (kept for :attr:`max_keys` too)."""

    seconds: float
    p: float = 1.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # noqa: S311 - a seeded simulation
    max_keys: int = 65_536
    blocked_syns: int = 0
    retries: dict[tuple[str, str, int], int] = field(default_factory=dict)
    _until: OrderedDict[tuple[str, str, int], float] = field(default_factory=OrderedDict)
    _syns: dict[tuple[str, str, int], int] = field(default_factory=dict)

    def block(self, key: tuple[str, str, int], now: float) -> None:
        self._until[key] = now + self.seconds
        self._until.move_to_end(key)
        self._syns[key] = 0
        self.retries.setdefault(key, 0)
        while len(self._until) > self.max_keys:
            gone, _ = self._until.popitem(last=False)
            del self._syns[gone]
        while len(self.retries) > self.max_keys:
            del self.retries[next(iter(self.retries))]

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        if packet.kind != "syn" or packet.direction != "c2s":
            return None
        until = self._until.get(flow.client)
        if until is None or now >= until:
            return None
        syns = self._syns[flow.client] = self._syns[flow.client] + 1
        self.retries[flow.client] = max(self.retries.get(flow.client, 0), syns)
        if self.rng.random() >= self.p:
            return None
        self.blocked_syns += 1
        return RESET


@dataclass
class ResetEvery:
    """Reset any flow at its first packet ``seconds`` or more after it started."""

    seconds: float
    resets: int = 0

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        if now - flow.started < self.seconds:
            return None
        self.resets += 1
        flow.condemned = RESET
        return RESET


@dataclass
class Police:
    """At most ``rate`` bytes per second in each direction of each flow."""

    rate: float
    _free_at: dict[tuple[int, str], float] = field(default_factory=dict)

    def delay(self, packet: Packet, now: float) -> float:
        key = (packet.flow, packet.direction)
        start = max(now, self._free_at.get(key, now))
        self._free_at[key] = start + len(packet.data) / self.rate
        return self._free_at[key] - now

    def forget(self, flow: int) -> None:
        self._free_at.pop((flow, "c2s"), None)
        self._free_at.pop((flow, "s2c"), None)


class Censor:
    """The policy: ``rules`` in order, then ``police`` delays."""

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        police: Police | None = None,
        clock: Callable[[], float] = trio.current_time,
        max_flows: int = 65_536,
    ) -> None:
        self.rules = list(rules)
        self.police = police
        self._clock = clock
        self.max_flows = max_flows
        self._flows: OrderedDict[int, FlowView] = OrderedDict()

    def flows(self) -> list[FlowView]:
        """The flows remembered, oldest first."""
        return list(self._flows.values())

    def __call__(self, packet: Packet) -> Verdict:
        now = self._clock()
        flow = self._view(packet, now)
        if flow.condemned is not None:
            return flow.condemned
        if packet.kind == "data" and packet.direction == "c2s":
            flow.client_packets += 1
            if flow.client_packets <= FIRST_PAYLOADS:
                flow.first.append(packet.data)
        for rule in self.rules:
            verdict = rule.judge(packet, flow, now)
            if verdict is not None:
                return verdict
        if self.police is None or packet.kind != "data":
            return DELIVER
        return Deliver(self.police.delay(packet, now))

    def _view(self, packet: Packet, now: float) -> FlowView:
        flow = self._flows.get(packet.flow)
        if flow is None:
            client = (
                (packet.src_host, packet.dst_host, packet.dst_port)
                if packet.direction == "c2s"
                else (packet.dst_host, packet.src_host, packet.src_port)
            )
            flow = self._flows[packet.flow] = FlowView(now, client)
            while len(self._flows) > self.max_flows:
                forgotten, _ = self._flows.popitem(last=False)
                if self.police is not None:
                    self.police.forget(forgotten)
        return flow
