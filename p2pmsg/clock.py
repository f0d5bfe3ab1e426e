"""Is our clock off? What the peers' clocks say, and who still talks to us (SCENARIOS S20).

Two kinds of evidence, both kept per peer for the :data:`WINDOW` peers heard
from last, so a few peers that lie or are off themselves move nothing:

* **offsets**: every PING reply carries the responder's wall clock
  (:func:`p2pmsg.dht.rpc.encode_pong`); the offset is their clock minus ours
  at the middle of the round trip, and the verdict takes the median. With
  at least :data:`MIN_PEERS` peers it says how far off we are, and warns
  beyond :data:`WARN`.
* **silent handshakes**: beyond a day (:data:`BROKEN`) no PING can tell us,
  because no link comes up. A listener accepts a link's first flight only
  when its timestamp is within a day of its own clock, and says nothing
  otherwise (an answer would tell a prober that replays old flights what it
  found). So when at least :data:`MIN_SILENT` peers accepted our connection
  and then stayed silent through the handshake, and none completed one, the
  verdict is an error: the likeliest cause is our clock. A network that
  black-holes p2pmsg's handshakes on every transport looks the same, and
  the message says so.

As Tor warns that its clock is skewed, the node reports the verdict in its
status and logs it when it changes, never per sample. Readings older than
:data:`MAX_AGE` are forgotten, so a clock set right is seen to be, and the
node reads a few more (:meth:`p2pmsg.dht.service.Dht.read_clocks`). No I/O;
the wall-clock times are parameters, and ages go by a monotonic clock
(trio's unless another is given).
"""

from __future__ import annotations

import logging
import statistics
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

log = logging.getLogger(__name__)
T = TypeVar("T")

WINDOW = 32
MIN_PEERS = 5
"""Peers whose clocks must be read before the offset is judged."""
MIN_SILENT = 3
"""Silent peers, and none that completed a handshake, for the error (a new
node may know no more than its three bootstrap nodes)."""
WARN = 3600.0
"""Seconds off at which messages may start to be refused (records expire early)."""
BROKEN = 86400.0
"""Seconds off beyond which links, routes and records fail: an error."""
MAX_AGE = 3600.0
"""Seconds (monotonic) a reading counts for: a clock set right is seen to be
within the hour, as new readings replace the old."""


@dataclass(frozen=True)
class ClockVerdict:
    offset: float | None
    """Seconds the peers' clocks run ahead of ours (median); None with too few peers."""
    peers: int
    """Peers whose clocks we have read."""
    error: str | None
    """What the user must do, when p2pmsg cannot work with our clock."""
    warning: str | None


def _put(
    table: OrderedDict[bytes, tuple[T, float]], key: bytes, value: T, now: float, window: int
) -> None:
    """``table[key] = (value, now)`` as its newest entry, the oldest dropped beyond ``window``."""
    table.pop(key, None)
    table[key] = (value, now)
    while len(table) > window:
        table.popitem(last=False)


def _prune(table: OrderedDict[bytes, tuple[T, float]], oldest: float) -> None:
    """Drop the entries older than ``oldest`` (the table is oldest first)."""
    while table and next(iter(table.values()))[1] < oldest:
        table.popitem(last=False)


def _hours(seconds: float) -> str:
    direction = "behind" if seconds > 0 else "ahead of"
    return f"{abs(seconds) / 3600:.1f} h {direction}"


class ClockCheck:
    """Offsets of peers' clocks from ours, handshake outcomes, and the verdict."""

    def __init__(
        self,
        window: int = WINDOW,
        min_peers: int = MIN_PEERS,
        *,
        monotonic: Callable[[], float] = trio.current_time,
    ) -> None:
        self.window, self.min_peers = window, min_peers
        self._monotonic = monotonic
        self._offsets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self._handshakes: OrderedDict[bytes, tuple[bool, float]] = OrderedDict()  # completed?
        self._reported: tuple[str | None, str | None] = (None, None)

    def sample(self, peer: bytes, sent: float, received: float, their_clock: float) -> None:
        """One PING sent and its reply received at our ``sent`` and
        ``received`` wall-clock times; the peer's clock read ``their_clock``."""
        offset = their_clock - (sent + received) / 2
        _put(self._offsets, peer, offset, self._monotonic(), self.window)
        self._log_change()

    def read(self, peer: bytes) -> bool:
        """Whether we hold a reading of ``peer``'s clock younger than :data:`MAX_AGE`."""
        self._prune()
        return peer in self._offsets

    def handshake(self, peer: bytes, *, completed: bool) -> None:
        """A link handshake with ``peer`` completed, or met silence after the
        connection was accepted. A peer that completed one stays so while it
        is in the window (a race's losers are cancelled after its winner)."""
        before = self._handshakes.get(peer, (False, 0.0))[0]
        _put(self._handshakes, peer, completed or before, self._monotonic(), self.window)
        self._log_change()

    def _prune(self) -> None:
        oldest = self._monotonic() - MAX_AGE
        _prune(self._offsets, oldest)
        _prune(self._handshakes, oldest)

    def verdict(self) -> ClockVerdict:
        self._prune()
        peers = len(self._offsets)
        offsets = [offset for offset, _ in self._offsets.values()]
        offset = statistics.median(offsets) if peers >= self.min_peers else None
        error = warning = None
        silent = len(self._handshakes)
        if silent >= MIN_SILENT and not any(done for done, _ in self._handshakes.values()):
            error = (
                f"none of the {silent} peers that accepted a connection completed a handshake:"
                " the likeliest cause is this device's clock being more than a day off; set the"
                " system clock right (a network that drops p2pmsg's handshakes looks the same)"
            )
        elif offset is not None and abs(offset) > BROKEN:
            error = (
                f"this device's clock is {_hours(offset)} the network's (median of {peers}"
                " peers): p2pmsg cannot route messages; set the system clock right"
            )
        elif offset is not None and abs(offset) > WARN:
            warning = (
                f"this device's clock is {_hours(offset)} the network's (median of {peers}"
                " peers): some messages may fail; set the system clock right"
            )
        return ClockVerdict(offset, peers, error, warning)

    def _log_change(self) -> None:
        v = self.verdict()
        kinds = (v.error and "error", v.warning and "warning")
        if kinds == self._reported:
            return
        self._reported = kinds
        if v.error is not None:
            log.error("%s", v.error)
        elif v.warning is not None:
            log.warning("%s", v.warning)
        else:
            log.info("the clock check found nothing wrong")
