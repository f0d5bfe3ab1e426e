"""When to try an onion message again: RFC 6298's retransmission timer,
fed the round trips of our acks.

Each onion attempt carries a reply block of its own, so an ack names the
attempt it answers and every round trip is measured without ambiguity (no
Karn's rule needed). Before the first measured ack the timeout is
:data:`INITIAL_RTO` (three relays there and three back, with room); after
it, ``SRTT + 4 * RTTVAR`` within [:data:`MIN_RTO`, :data:`MAX_RTO`], so a
node on a fast network retries a lost packet in seconds and one on a slow,
lossy network waits as long as its acks really take. A round trip longer
than :data:`MAX_RTO` is an ack that waited in a mailbox for an offline
recipient: it says nothing about the network and is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

INITIAL_RTO = 6.0
"""Six hops of a few hundred milliseconds each, with room (RFC 6298 starts
TCP at 1 s). A first ack slower than this costs one early attempt, which the
recipient drops as a duplicate; 15 s left only two attempts inside a 30 s
deadline, and censored networks lose first attempts most."""
MIN_RTO = 4.0
"""No sooner: a relay holds a packet for up to a batch, and the recipient
commits a message before it acks."""
MAX_RTO = 60.0
ALPHA = 1 / 8
BETA = 1 / 4
K = 4


@dataclass
class RetransmitTimer:
    srtt: float | None = None
    rttvar: float = 0.0
    samples: int = 0

    def sample(self, rtt: float) -> None:
        """Count one ack's round trip, in seconds (RFC 6298, section 2)."""
        if not 0 <= rtt <= MAX_RTO:
            return
        self.samples += 1
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
            return
        self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
        self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt

    def rto(self) -> float:
        """Seconds to wait for an ack before the first retry."""
        if self.srtt is None:
            return INITIAL_RTO
        return min(MAX_RTO, max(MIN_RTO, self.srtt + K * self.rttvar))
