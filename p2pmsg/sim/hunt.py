"""S13 over 30 days: a censor hunting bridges, honest users replacing them.

S13 asks whether, after 30 days of a censor that enumerates the bridge
distribution with Sybils at the allowed rate, has 5% of the relays log
the addresses that reach them, and blocks what it learned 2 to 36 days
later, at least 90% of honest users still have a bridge that works; and
how many days the censor needs to find half the bridges. A scenario run
lasts hours, and bridge enumeration does not depend on message traffic,
so this model steps through the days an hour at a time without running
nodes. The lab runs it after each seed of a scenario with
``traffic.bridge_days`` (S13).

Real, unmodified:

* the distributor, :class:`p2pmsg.distributor.Distributor`: its hash ring,
  its young-bridges-only rule and its answers, for honest users and Sybils
  alike;
* the node's rule for asking, :func:`p2pmsg.distributor.needs_more`;
* the censor's :class:`p2pmsg.sim.blocklist.Blocklist`: each learned
  address is listed ``block_after`` (U(2, 36) days) after the censor
  learned it, taking effect at each ISP within ``propagation``; whether a
  user's bridge works is ``Blocklist.blocks`` of that user and bridge.

Modelled:

* ``users`` honest users on ``isps`` ISPs; each fetches bridges on day 0
  and checks its bridges every hour (a node notices a failed bridge at its
  next dial). A request goes through a bridge that still works; a user
  with none left has no path and stays without (no friend, no pasted list:
  the pessimistic case). It tells the distributor every bridge that has
  failed for it;
* operators offer ``bridges`` bridges on day 0 and ``new_per_day`` more a
  day, at random times;
* the censor's Sybils: ``sybils_per_day`` requests a day, at random times,
  each from a new identity (a key pair and a link handshake: a state can
  make many);
* logging relays: each day each honest user tunnels to a relay of its
  choice, which logs with probability ``logging`` and learns the bridge the
  user goes through;
* the control: the same users had they never asked for more (their day-0
  bridges only).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from p2pmsg.distributor import DAY, SECRET_BYTES, Distributor, needs_more
from p2pmsg.sim.blocklist import Blocklist
from p2pmsg.sim.net import SimHost
from p2pmsg.sim.scenario import Scenario

HOUR = 3600.0
COUNTRY = "CN"


@dataclass(frozen=True)
class Params:
    """One run of the model; the defaults are S13's."""

    days: int = 30
    users: int = 1000
    isps: int = 3
    bridges: int = 50
    """Offered on day 0."""
    new_per_day: int = 10
    sybils_per_day: int = 100
    logging: float = 0.05
    block_after: tuple[float, float] = (2 * DAY, 36 * DAY)
    propagation: float = 2 * HOUR
    seed: int = 1

    @classmethod
    def of(cls, scenario: Scenario, seed: int) -> Params:
        """The model of ``scenario.traffic.bridge_days`` on the scenario's ISPs."""
        return cls(days=scenario.traffic.bridge_days, isps=scenario.topology.isps, seed=seed)

    def check(self) -> None:
        """Raises ``ValueError`` for a model that cannot run."""
        if self.days < 1 or self.users < 1 or self.isps < 1 or self.bridges < 1:
            raise ValueError("days, users, isps and bridges must be at least 1")
        if self.new_per_day < 0 or self.sybils_per_day < 0 or not 0 <= self.logging <= 1:
            raise ValueError("new_per_day and sybils_per_day not negative, logging in [0, 1]")
        low, high = self.block_after
        if not 0 <= low <= high or self.propagation < 0:
            raise ValueError("block_after is (low, high) with 0 <= low <= high")


@dataclass
class Figures:
    users: int = 0
    open_at_end: int = 0
    """Honest users with at least one working bridge at the end."""
    control_open_at_end: int = 0
    """The same users, had they kept their day-0 bridges."""
    fewest_open: int = 0
    """The fewest honest users with a working bridge at any hour."""
    requests: int = 0
    """Honest users' requests after day 0."""
    bridges: int = 0
    """Bridges offered in all."""
    found: int = 0
    """Bridges the censor learned."""
    blocked: int = 0
    days_to_half: float | None = None
    """When the censor first knew half the bridges offered so far."""


@dataclass
class _User:
    host: SimHost
    key: bytes
    bridges: list[str]
    failed: set[str] = field(default_factory=set)
    """Every bridge that failed for this user (blocks are never lifted): what
    it tells the distributor."""
    asked: float = -math.inf

    def working(self) -> list[str]:
        return [b for b in self.bridges if b not in self.failed]


class _Hunt:
    """The model's state. Only users that may see a change are checked in an
    hour: those holding a bridge the censor listed less than ``propagation``
    and an hour ago, and those whose bridges changed as recently."""

    def __init__(self, p: Params) -> None:
        self.p = p
        self.rng = random.Random(p.seed)  # noqa: S311 - a seeded simulation
        self.hosts: dict[str, SimHost] = {}
        isps = tuple(f"isp{i}" for i in range(p.isps))
        self.blocklist = Blocklist(self.hosts.__getitem__, COUNTRY, isps, rng=self.rng)
        self.distributor = Distributor(self.rng.randbytes(SECRET_BYTES))
        self.figures = Figures(users=p.users)
        self.found: dict[str, float] = {}
        self.due: list[tuple[float, str]] = []
        """(when to list it, bridge): the censor's schedule."""
        self.users: list[_User] = []
        self.holders: dict[str, set[int]] = {}
        self.watch: dict[int, float] = {}
        """User -> the hour until which it is checked."""
        self.without: set[int] = set()
        """Users with no working bridge."""

    def offer(self, now: float) -> None:
        n = self.figures.bridges
        name = f"b{n}"
        self.hosts[name] = SimHost(name, f"198.{18 + n // 65_536}.{n // 256 % 256}.{n % 256}")
        self.distributor.offer(name, now)
        self.figures.bridges += 1

    def learn(self, bridge: str, now: float) -> None:
        if bridge not in self.found:
            self.found[bridge] = now
            heapq.heappush(self.due, (now + self.rng.uniform(*self.p.block_after), bridge))

    def block(self, bridge: str, when: float) -> None:
        ip = self.hosts[bridge].ip
        self.figures.blocked += self.blocklist.add([ip], when, propagation=self.p.propagation,
                                                   reason="learned")  # fmt: skip
        for u in self.holders.get(bridge, ()):
            self.watch[u] = max(self.watch.get(u, 0.0), when + self.p.propagation + HOUR)

    def give(self, u: int, bridges: list[str], now: float) -> None:
        user = self.users[u]
        for b in user.bridges:
            self.holders[b].discard(u)
        user.bridges = bridges
        for b in bridges:
            self.holders.setdefault(b, set()).add(u)
        self.watch[u] = max(self.watch.get(u, 0.0), now + self.p.propagation + HOUR)

    def step(self, now: float, every_user: bool) -> None:
        """The hour's blocks, then the users' checks."""
        f = self.figures
        while self.due and self.due[0][0] <= now:
            when, bridge = heapq.heappop(self.due)
            self.block(bridge, when)
        if f.days_to_half is None and 2 * len(self.found) >= f.bridges:
            f.days_to_half = now / DAY
        for u, until in list(self.watch.items()):
            if until < now:
                del self.watch[u]
            elif not every_user:
                self.check(u, now)
        for u in range(len(self.users)) if every_user else ():
            self.check(u, now)
        f.fewest_open = min(f.fewest_open, len(self.users) - len(self.without))

    def works(self, user: _User, bridge: str, now: float) -> bool:
        return not self.blocklist.blocks(user.host, self.hosts[bridge], now)

    def check(self, u: int, now: float) -> None:
        """Update what works for user ``u``; ask for more when its node would."""
        user = self.users[u]
        user.failed.update(b for b in user.bridges if not self.works(user, b, now))
        working = user.working()
        if not working:
            self.without.add(u)
            return
        self.without.discard(u)
        if needs_more([b in user.failed for b in user.bridges], now, user.asked):
            user.asked = now
            got = self.distributor.hand_out(user.key, now, user.failed)
            self.give(u, working + [b for b in got if b not in working], now)
            self.figures.requests += 1


def measure(p: Params) -> Figures:
    """Run the model of ``p`` (see the module docstring)."""
    return run(p).figures


def run(p: Params, *, every_user: bool = False) -> _Hunt:
    """:func:`measure`, with the model's state at the end. ``every_user``:
    check every user every hour, the slow reference its tests compare with."""
    p.check()
    hunt, rng = _Hunt(p), random.Random(p.seed + 1)  # noqa: S311 - a seeded simulation
    f = hunt.figures
    for _ in range(p.bridges):
        hunt.offer(0.0)
    for i in range(p.users):
        host = SimHost(f"u{i}", f"10.{i // 65_536}.{i // 256 % 256}.{i % 256}", 0, COUNTRY,
                       f"isp{i % p.isps}")  # fmt: skip
        key = rng.randbytes(32)
        hunt.users.append(_User(host, key, []))
        hunt.give(i, list(hunt.distributor.hand_out(key, 0.0)), 0.0)
    control = [list(u.bridges) for u in hunt.users]
    offers = deque(sorted(rng.uniform(d * DAY, (d + 1) * DAY)
                          for d in range(1, p.days) for _ in range(p.new_per_day)))  # fmt: skip
    sybils = deque(sorted(rng.uniform(d * DAY, (d + 1) * DAY)
                          for d in range(p.days) for _ in range(p.sybils_per_day)))  # fmt: skip
    f.fewest_open = p.users
    end = p.days * DAY
    for hour in range(1, int(end // HOUR) + 1):
        now = hour * HOUR
        while offers and offers[0] <= now:
            hunt.offer(offers.popleft())
        while sybils and sybils[0] <= now:
            when = sybils.popleft()
            for b in hunt.distributor.hand_out(rng.randbytes(32), when):
                hunt.learn(b, when)
        if hour % 24 == 0:  # each user's relay of the day logs with probability ``logging``
            for user in hunt.users:
                using = user.working()
                if using and rng.random() < p.logging:
                    hunt.learn(using[0], now)
        hunt.step(now, every_user)
    f.open_at_end = p.users - len(hunt.without)
    f.control_open_at_end = sum(
        any(hunt.works(user, b, end) for b in bridges)
        for user, bridges in zip(hunt.users, control, strict=True)
    )
    f.found = len(hunt.found)
    return hunt
