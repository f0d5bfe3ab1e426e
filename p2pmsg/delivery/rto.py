"""When to try an onion message again: a high quantile of our acks' recent
round trips, as Tor's circuit build timeout is a quantile of recent builds.

Each onion attempt carries a reply block of its own, so an ack names the
attempt it answers and every round trip is measured without ambiguity (no
Karn's rule needed). With fewer than :data:`MIN_SAMPLES` acks in the last
:data:`MAX_AGE` seconds the timeout is :data:`INITIAL_RTO` (three relays
there and three back, with room); with them, the :data:`QUANTILE` of those
round trips (the newest :data:`WINDOW`), within
[:data:`MIN_RTO`, :data:`MAX_RTO`], so a node on a fast network retries a
lost packet in seconds and one on a slow, lossy network waits about as long
as its slower acks really take. A round trip longer than :data:`MAX_RTO` is
an ack that waited in a mailbox for an offline recipient: it says nothing
about the network and is not counted.

Why not TCP's SRTT + 4 RTTVAR (RFC 6298): every attempt takes new random
routes, so round trips vary from route to route, not over time, with a long
tail (a relay that dials its next hop, a lost segment's retransmission).
Four mean deviations over such a spread waited 17 s (27 s at the 90th
percentile) where acks took 6.4 s at the median and 14 s at the 90th (S18's
500 ms paths with 10% loss): a lost attempt's retry came too late for a
30 s deadline. A spurious retry here costs a packet or two, which the
recipient drops as duplicates, not a congestion collapse.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

INITIAL_RTO = 6.0
"""Six hops of a few hundred milliseconds each, with room (RFC 6298 starts
TCP at 1 s). A first ack slower than this costs one early attempt, which the
recipient drops as a duplicate; 15 s left only two attempts inside a 30 s
deadline, and censored networks lose first attempts most."""
MIN_RTO = 4.0
"""No sooner: a relay holds a packet for up to a batch, and the recipient
commits a message before it acks."""
MAX_RTO = 60.0
QUANTILE = 0.9
"""The share of acks that come before the timeout (Tor's circuit build
timeout takes 0.8 of builds; a message retry sends two copies, so fewer)."""
WINDOW = 64
"""Round trips remembered: the newest, so the timeout follows the network."""
MAX_AGE = 600.0
"""Older round trips say little of the network now: a user who sends a few
messages an hour would otherwise still wait as long as in a bad spell that
ended long ago (S18's lossy third)."""
MIN_SAMPLES = 4
"""Acks counted before their quantile replaces :data:`INITIAL_RTO`."""


@dataclass
class RetransmitTimer:
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=WINDOW))
    """(when, round trip) of the newest acks."""
    samples: int = 0

    def sample(self, rtt: float, now: float) -> None:
        """Count one ack's round trip, in seconds, that ended at ``now``."""
        if not 0 <= rtt <= MAX_RTO:
            return
        self.samples += 1
        self.recent.append((now, rtt))

    def rto(self, now: float) -> float:
        """Seconds to wait for an ack before the first retry, at ``now``."""
        ordered = sorted(rtt for when, rtt in self.recent if now - when <= MAX_AGE)
        if len(ordered) < MIN_SAMPLES:
            return INITIAL_RTO
        slower = ordered[min(len(ordered) - 1, int(QUANTILE * len(ordered)))]
        return min(MAX_RTO, max(MIN_RTO, slower))
