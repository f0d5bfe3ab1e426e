"""Choosing the relays of an onion route, and remembering which relays fail.

Theory of operation
-------------------
A sender picks ``hops`` relays (3 by default, at most 5) from the verified
peer records it holds: records of peers in its routing table (each answered
on an endpoint we dialled) that carry the ``relay`` capability and an onion
key for the current epoch. The sender and recipient are never relays of
their own route, and no two relays share a network prefix (an IPv4 /16) or,
where known, an ASN, so one operator or one ISP rarely sees two hops.

A relay that drops or tags packets cannot be named by anyone: a tagged
payload is detected only at the destination, a dropped one not at all. So,
like Tor's path-bias accounting, every relay of a route whose ack never came
takes a failure and every relay of an acknowledged route a success.
:class:`RelayScores` keeps a failure weight per relay that decays toward
zero (half-life ``half_life``), so a relay that loses packets sinks out of
selection while an honest one, whose failures are shared with everyone and
offset by its successes, stays. Selection is weighted random sampling
without replacement, weight ``1 / (1 + failures)**2``; relays whose weight
falls under ``floor`` are skipped while enough others remain, and after
them relays the sender itself failed to reach last time it tried (its DHT's
view, which the sender refreshes by pinging the relays of each lost route):
a border block that cuts us off from a relay cuts off our country's other
relays too, and a route through it would be lost past the first hop, while
a reachable relay with a poor record has often only shared a lost route
with one behind the cut (S10).

Pure: time comes in as ``now`` and randomness as ``rng``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from p2pmsg.errors import P2PMsgError

DEFAULT_HOPS = 3
MAX_RELAYS = 5
RELAY_CAPABILITY = "relay"


class NoRoute(P2PMsgError):
    """Not enough relays are known to build an onion route; the message stays queued."""


@dataclass(frozen=True)
class Candidate:
    """A relay we may route through: its node id, onion key and network."""

    node_id: bytes
    onion_key: bytes
    prefix: str
    asn: int | None = None
    unreachable: bool = False
    """Our own last attempt to reach it failed: behind a border block, a relay
    we cannot reach is likely one our country's relays cannot reach either."""


class RelayScores:
    """Decaying failure weights per relay, bounded to ``capacity`` relays."""

    def __init__(self, *, half_life: float = 3600.0, capacity: int = 4096) -> None:
        if half_life <= 0 or capacity < 1:
            raise ValueError("half_life and capacity are positive")
        self.half_life = half_life
        self.capacity = capacity
        self._failures: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def failures(self, node_id: bytes, now: float) -> float:
        """The relay's failure weight at ``now`` (0 for a relay never seen to fail)."""
        entry = self._failures.get(node_id)
        if entry is None:
            return 0.0
        weight, since = entry
        return weight * math.exp2(-max(0.0, now - since) / self.half_life)

    def weight(self, node_id: bytes, now: float) -> float:
        """Selection weight in (0, 1]: 1 for a relay with no failures."""
        return 1.0 / (1.0 + self.failures(node_id, now)) ** 2

    def route_failed(self, relays: Iterable[bytes], now: float) -> None:
        for node_id in relays:
            self._set(node_id, self.failures(node_id, now) + 1.0, now)

    def route_succeeded(self, relays: Iterable[bytes], now: float) -> None:
        for node_id in relays:
            if node_id in self._failures:
                self._set(node_id, max(0.0, self.failures(node_id, now) - 1.0), now)

    def _set(self, node_id: bytes, weight: float, now: float) -> None:
        self._failures.pop(node_id, None)
        if weight <= 0.0:
            return
        self._failures[node_id] = (weight, now)
        while len(self._failures) > self.capacity:
            # Forgetting the oldest news only ever makes a relay look better.
            self._failures.popitem(last=False)


def _uniform(rng: Callable[[int], bytes]) -> float:
    return int.from_bytes(rng(7), "big") / 2**56


def _compatible(candidate: Candidate, chosen: Sequence[Candidate]) -> bool:
    for other in chosen:
        if other.prefix == candidate.prefix:
            return False
        if candidate.asn is not None and other.asn == candidate.asn:
            return False
    return True


def select_route(
    candidates: Sequence[Candidate],
    *,
    hops: int = DEFAULT_HOPS,
    exclude: Iterable[bytes] = (),
    scores: RelayScores | None = None,
    now: float = 0.0,
    rng: Callable[[int], bytes],
    floor: float = 0.05,
    last: Candidate | None = None,
    avoid: Iterable[bytes] = (),
) -> list[Candidate]:
    """``hops`` distinct relays in route order. Raises :class:`NoRoute`.

    Never picks a node in ``exclude`` (the sender and recipient), two relays
    with the same prefix or known ASN, or the same relay twice. Relays whose
    score weight is below ``floor`` are used only when too few others remain,
    relays marked ``unreachable`` only after them (a relay we reach, whatever
    its record, beats one we cannot), and relays in ``avoid`` (a spare copy's,
    those of the copy it doubles) only when too few good others remain.
    ``last``, when given, is the route's last relay (a node's gateway).
    """
    if not 1 <= hops <= MAX_RELAYS:
        raise ValueError(f"a route has 1 to {MAX_RELAYS} relays")
    fixed = [] if last is None else [last]
    banned = set(exclude) | {c.node_id for c in fixed}
    unique = {c.node_id: c for c in candidates if c.node_id not in banned}
    weights = {node_id: scores.weight(node_id, now) if scores else 1.0 for node_id in unique}
    reachable = [c for c in unique.values() if not c.unreachable]
    good = [c for c in reachable if weights[c.node_id] >= floor]
    pools = [good, reachable, list(unique.values())]
    if avoided := set(avoid):
        pools.insert(0, [c for c in good if c.node_id not in avoided])
    for pool in pools:
        route = _sample(pool, weights, hops - len(fixed), rng, fixed)
        if route is not None:
            return route + fixed
    raise NoRoute(f"fewer than {hops} usable relays on distinct networks")


def _sample(
    pool: list[Candidate],
    weights: dict[bytes, float],
    hops: int,
    rng: Callable[[int], bytes],
    fixed: list[Candidate],
) -> list[Candidate] | None:
    """Weighted sampling without replacement under the diversity rule (which
    ``fixed`` relays, already in the route, count for), or None."""
    chosen: list[Candidate] = []
    remaining = sorted(pool, key=lambda c: c.node_id)  # rng alone decides the order
    while len(chosen) < hops:
        allowed = [c for c in remaining if _compatible(c, [*fixed, *chosen])]
        if not allowed:
            return None
        total = sum(weights[c.node_id] for c in allowed)
        point = _uniform(rng) * total
        pick = allowed[-1]
        for candidate in allowed:
            point -= weights[candidate.node_id]
            if point < 0:
                pick = candidate
                break
        chosen.append(pick)
        remaining.remove(pick)
    return chosen
