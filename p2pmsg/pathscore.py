"""Which path to try first: failure classes, decaying path scores, residual blocks.

Theory of operation
-------------------
A path is a (transport, endpoint) pair seen from one network (an opaque label
the node derives for the network it is on: censors differ per ISP, S12).
Every failed dial or handshake is put in one :class:`Failure` class by
:func:`classify` and charged to its path in :class:`PathScores` with the
class's weight, and also to the path's transport on that network, a quarter
of whose penalty every path of that transport carries (a censor's DPI matches
a protocol, so one transport's endpoints fail together: S5, S6). A success
credits both, down to a small bonus that ranks a path known to work above an
untried one. Every value decays toward zero with a half-life, so a block that
lifts is forgotten and a flapping rule is relearned. :meth:`PathScores.order`
puts the network's last working path first for as long as it has not failed
since, then every path with no penalty, those of the last working path's
transport first, then the rest by score, ties in input order (hysteresis: a
stable network sees no switching, S12, also when a new peer is dialled: two
transports that both work would otherwise take turns, by whichever had the
latest success or the quickest handshake). A success on another transport
becomes the last working path only once the current one's transport has
failed on this network (:data:`SWITCH_PENALTY`), or was outraced by it
while silent (a DPI drop: the cancelled loser is not scored). A peer whose
path on it is blocked at the peer's own ISP, or held back by the residual
guard, is reached over another transport without the node switching to it.

A censor that resets a flow often blocks the same (client, server, port) for
90 to 180 s afterwards (S4, S5's residual censorship), and every retry inside
that window is wasted or even extends it. :class:`ResidualGuard` refuses such a
3-tuple for ``window`` seconds after a reset or a handshake black hole, and
then lets exactly one retry through per window until one succeeds.

How :mod:`p2pmsg.dialer` uses this (the lead integrates)::

    paths = scores.order(network, [(Endpoint.parse(t).transport, t) for t in texts], now)
    lead = STICKY_HEAD_START if paths and paths[0] == scores.last_working(network) else None
    offsets = stagger(len(paths), head_start=lead)
    # (the dialer also gives the lead to a first path of the last working transport)
    # race: start path i at offsets[i] or as soon as path i-1 fails (RFC 8305);
    # skip it if not guard.attempt(three_tuple, now); the first secure link wins
    # and the others are cancelled (a cancelled attempt is no evidence: not scored).
    # on success: scores.succeeded(network, t, e, now); guard.succeeded(three_tuple)
    # on failure: f = classify(exc, stage="dial" or "handshake")
    #             scores.failed(network, t, e, f, now); guard.failed(three_tuple, f, now)
    # a session that breaks within EARLY_BREAK s of its handshake: failed(..., RESET)
    # goodput under THROTTLE_RATIO of what the network gives elsewhere: THROTTLED

The 3-tuple's client host is the local address the dial used ("" if unknown,
which only widens the key). Snapshots hold scores, never timestamps: ``now``
is monotonic time, meaningless in another process. The guard is not
persisted: its windows last minutes.

Pure: time comes in as ``now``; nothing here does I/O or logs.
"""

from __future__ import annotations

import errno
import math
import ssl
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from enum import Enum
from typing import Generic, TypeVar

import trio

from p2pmsg.errors import RemoteProtocolError

#: RFC 8305's recommended Connection Attempt Delay between staggered starts.
STAGGER_DELAY = 0.25
#: Head start of the last working path: RFC 8305's upper bound, so a path
#: that works is not lost to a faster newcomer (at most 1 switch per 5 min, S12).
STICKY_HEAD_START = 2.0
#: A session that dies this soon after its handshake died "right after connect".
EARLY_BREAK = 10.0
#: Goodput below this share of the expected rate is throttling (S9 polices to 130 kbps).
THROTTLE_RATIO = 0.2
#: How long a reset 3-tuple is avoided: the longest residual block observed (S4, S5).
RESIDUAL_WINDOW = 180.0

HALF_LIFE = 600.0
CAPACITY = 4096
#: A path's penalty is capped so that any block is forgotten within ~4 half-lives.
MAX_PENALTY = 16.0
#: What a success takes off a penalty; also the best (lowest) score a path can have.
SUCCESS_CREDIT = 1.0
#: Share of a transport's network-wide penalty added to each of its paths.
TRANSPORT_SHARE = 0.25
#: The working transport's own penalty at which a success elsewhere replaces it:
#: a handshake black hole at once, two resets or three timeouts net of its
#: successes. One peer's path blocked at that peer's ISP is less (S12).
SWITCH_PENALTY = 2.0
MAX_TEXT_CHARS = 2048  # endpoint texts are capped at this size too
SNAPSHOT_VERSION = 1

Path = tuple[str, str]
ThreeTuple = tuple[str, str, int]
K = TypeVar("K", bound=Hashable)


class Failure(Enum):
    """Why an attempt on a path failed, as a censor's action shows through."""

    TIMEOUT = "timeout"  # no answer to the dial: SYN dropped, address blocked, loss
    RESET = "reset"  # refused, reset, broken during or right after connect
    SILENCE = "silence"  # connected, then the handshake met a black hole (DPI drop)
    THROTTLED = "throttled"  # works, but goodput is far below what is expected


#: Penalty per class. A timeout is the weakest evidence (loss, a peer offline);
#: a reset is an act (refusal or injected RST); silence after connecting is
#: DPI recognising the transport, the strongest sign the path will fail again;
#: a throttled path still works, so it is only demoted.
FAILURE_WEIGHT = {
    Failure.TIMEOUT: 1.0,
    Failure.RESET: 2.0,
    Failure.SILENCE: 4.0,
    Failure.THROTTLED: 0.5,
}

_RESET_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE}
_TIMEOUT_ERRNOS = {errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}
_RESET_TYPES = (ConnectionError, ssl.SSLError, trio.BrokenResourceError, trio.EndOfChannel)
_TIMEOUT_TYPES = (trio.TooSlowError, TimeoutError)


def _signal(exc: BaseException) -> Failure | None:
    """TIMEOUT or RESET if ``exc`` itself says which, else None."""
    if isinstance(exc, _TIMEOUT_TYPES):
        return Failure.TIMEOUT
    if isinstance(exc, _RESET_TYPES):
        return Failure.RESET
    if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS:
        return Failure.RESET
    if isinstance(exc, OSError) and exc.errno in _TIMEOUT_ERRNOS:
        return Failure.TIMEOUT
    return None


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _signal_in_chain(exc: BaseException) -> Failure | None:
    """The first signal in ``exc`` or what caused it (a bounded walk: chains may loop).

    trio's ``open_tcp_stream`` raises a bare OSError caused by a group of the
    per-address errors, so groups met on the way are entered by their first leaf.
    """
    chain: BaseException | None = exc
    for _ in range(16):
        if chain is None:
            return None
        chain = _first_leaf(chain)
        found = _signal(chain)
        if found is not None:
            return found
        cause = chain.__cause__
        chain = cause if cause is not None or chain.__suppress_context__ else chain.__context__
    return None


def classify(exc: BaseException, *, stage: str) -> Failure:
    """The failure class of ``exc`` raised while dialling or in the handshake.

    ``stage`` is ``"dial"`` (``transport.dial``, including a transport's own
    TLS or WebSocket setup) or ``"handshake"`` (the secure link on top). The
    exception and its causes are read outermost first, a group by its first
    leaf: a timeout while dialling is TIMEOUT, in the handshake SILENCE; a
    refusal, reset or broken stream is RESET; a protocol error from the far end
    (garbage, an impostor, an injected block page) is RESET too, as the path
    delivered something other than our peer. Anything else is the stage's
    weakest class (TIMEOUT, SILENCE). Raises ValueError for an unknown stage,
    TypeError for :class:`trio.Cancelled` (a race loser is no evidence).
    """
    if stage not in ("dial", "handshake"):
        raise ValueError(f"unknown stage {stage!r}")
    leaf = _first_leaf(exc)
    if isinstance(leaf, trio.Cancelled):
        raise TypeError("a cancelled attempt is not a failure of its path")
    found = _signal_in_chain(leaf)
    if found is None:
        found = Failure.RESET if isinstance(leaf, RemoteProtocolError) else Failure.TIMEOUT
    if stage == "handshake" and found is Failure.TIMEOUT:
        return Failure.SILENCE
    return found


def throttled(goodput: float, expected: float, *, ratio: float = THROTTLE_RATIO) -> bool:
    """True when ``goodput`` is far below ``expected`` (both in bytes per second)."""
    return expected > 0 and goodput < ratio * expected


def stagger(
    n: int, delay: float = STAGGER_DELAY, *, head_start: float | None = None
) -> list[float]:
    """Start offsets in seconds for racing ``n`` candidates (happy eyeballs).

    Candidate 0 starts at once, candidate 1 after ``head_start`` (default
    ``delay``), each next one ``delay`` later. Raises ValueError on negatives.
    """
    first = delay if head_start is None else head_start
    if n < 0 or delay < 0 or first < 0:
        raise ValueError("counts and delays are not negative")
    return [0.0 if i == 0 else first + (i - 1) * delay for i in range(n)]


class _Decaying(Generic[K]):
    """Values that decay toward zero, bounded to ``capacity`` keys (LRU by update)."""

    def __init__(self, half_life: float, capacity: int) -> None:
        self.half_life = half_life
        self.capacity = capacity
        self.entries: OrderedDict[K, tuple[float, float]] = OrderedDict()

    def value(self, key: K, now: float) -> float:
        entry = self.entries.get(key)
        if entry is None:
            return 0.0
        value, since = entry
        return value * math.exp2(-max(0.0, now - since) / self.half_life)

    def add(self, key: K, delta: float, now: float) -> None:
        self.put(key, self.value(key, now) + delta, now)

    def put(self, key: K, value: float, now: float) -> None:
        value = min(MAX_PENALTY, max(-SUCCESS_CREDIT, value))
        self.entries.pop(key, None)
        if value == 0.0:
            return
        self.entries[key] = (value, now)
        while len(self.entries) > self.capacity:
            # Forgetting the oldest news only ever moves a path toward neutral.
            self.entries.popitem(last=False)


class PathScores:
    """Decaying penalties per (network, transport, endpoint), and each network's
    last working path. Each table is bounded to ``capacity`` keys."""

    def __init__(self, *, half_life: float = HALF_LIFE, capacity: int = CAPACITY) -> None:
        if not half_life > 0 or capacity < 1:
            raise ValueError("half_life and capacity are positive")
        self.half_life = half_life
        self.capacity = capacity
        self._paths: _Decaying[tuple[str, str, str]] = _Decaying(half_life, capacity)
        self._transports: _Decaying[tuple[str, str]] = _Decaying(half_life, capacity)
        self._working: OrderedDict[str, Path] = OrderedDict()

    def __len__(self) -> int:
        return len(self._paths.entries)

    def sizes(self) -> tuple[int, int, int]:
        """Entries held: paths, transports, networks with a last working path."""
        return len(self._paths.entries), len(self._transports.entries), len(self._working)

    def score(self, network: str, transport: str, endpoint: str, now: float) -> float:
        """The path's penalty at ``now``: lower is better, 0 for an unknown path."""
        own = self._paths.value((network, transport, endpoint), now)
        return own + TRANSPORT_SHARE * self._transports.value((network, transport), now)

    def transport_penalty(self, network: str, transport: str, now: float) -> float:
        """The transport's own score on ``network`` at ``now`` (its paths carry a share)."""
        return self._transports.value((network, transport), now)

    def last_working(self, network: str) -> Path | None:
        """The path that last succeeded on ``network``, unless it has failed
        since; a success on another transport takes its place only once its
        own transport's penalty reaches :data:`SWITCH_PENALTY`, or when it
        outraced an attempt over it that met silence."""
        return self._working.get(network)

    def succeeded(
        self, network: str, transport: str, endpoint: str, now: float, *, outraced: bool = False
    ) -> None:
        """A link over the path; ``outraced``: an attempt over the last working
        path's transport, started before it, has not answered yet."""
        self._paths.add((network, transport, endpoint), -SUCCESS_CREDIT, now)
        self._transports.add((network, transport), -SUCCESS_CREDIT, now)
        current = self._working.get(network)
        if (
            current is not None
            and current[0] != transport
            and not outraced
            and self.transport_penalty(network, current[0], now) < SWITCH_PENALTY
        ):
            return  # ours still works: one peer reached over another is no switch (S12)
        self._working.pop(network, None)
        self._working[network] = (transport, endpoint)
        while len(self._working) > self.capacity:
            self._working.popitem(last=False)

    def failed(
        self, network: str, transport: str, endpoint: str, failure: Failure, now: float
    ) -> None:
        weight = FAILURE_WEIGHT[failure]
        self._paths.add((network, transport, endpoint), weight, now)
        self._transports.add((network, transport), weight, now)
        if self._working.get(network) == (transport, endpoint):
            del self._working[network]

    def order(self, network: str, paths: Sequence[Path], now: float) -> list[Path]:
        """``paths`` in the order to race them: a permutation of the input.

        The last working path first (every copy of it); then the paths with no
        penalty (a score of at most 0), those of the last working path's
        transport first, each group by score; then the penalised ones by
        score. Equal keys keep their input order.
        """
        working = self._working.get(network)
        transport = working[0] if working is not None else None
        scores = {p: self.score(network, p[0], p[1], now) for p in set(paths)}
        return sorted(
            paths, key=lambda p: (p != working, max(scores[p], 0.0), p[0] != transport, scores[p])
        )

    def to_dict(self, now: float) -> dict[str, object]:
        """A JSON-ready snapshot: scores as of ``now``, oldest first, no timestamps.

        Names longer than MAX_TEXT_CHARS are left out, so a snapshot always restores.
        """
        paths = [k for k in self._paths.entries if _short(k)]
        transports = [k for k in self._transports.entries if _short(k)]
        working = [(net, *path) for net, path in self._working.items() if _short((net, *path))]
        return {
            "version": SNAPSHOT_VERSION,
            "paths": [[*key, self._paths.value(key, now)] for key in paths],
            "transports": [[*key, self._transports.value(key, now)] for key in transports],
            "last_working": [list(row) for row in working],
        }

    @classmethod
    def from_dict(
        cls,
        data: object,
        *,
        now: float,
        half_life: float = HALF_LIFE,
        capacity: int = CAPACITY,
    ) -> PathScores:
        """Scores restored as observed at ``now`` (pass an earlier ``now`` to age them).

        Raises ValueError, and nothing else, on anything :meth:`to_dict` would not
        produce. Beyond ``capacity`` the newest entries are kept, as in use.
        """
        snapshot: dict[object, object] = data if isinstance(data, dict) else {}
        version = snapshot.get("version")
        if isinstance(version, bool) or version != SNAPSHOT_VERSION:
            raise ValueError("not a path score snapshot of a known version")
        scores = cls(half_life=half_life, capacity=capacity)
        for row in _rows(snapshot, "paths", 4):
            key = (_text(row[0]), _text(row[1]), _text(row[2]))
            scores._paths.put(key, _number(row[3]), now)
        for row in _rows(snapshot, "transports", 3):
            scores._transports.put((_text(row[0]), _text(row[1])), _number(row[2]), now)
        for row in _rows(snapshot, "last_working", 3):
            network, path = _text(row[0]), (_text(row[1]), _text(row[2]))
            scores._working.pop(network, None)
            scores._working[network] = path
            if len(scores._working) > capacity:
                scores._working.popitem(last=False)
        return scores


def _rows(data: dict[object, object], name: str, width: int) -> list[list[object]]:
    rows = data.get(name)
    if isinstance(rows, list) and all(isinstance(r, list) and len(r) == width for r in rows):
        return rows
    raise ValueError(f"{name} is not a list of rows of {width} items")


def _short(names: tuple[str, ...]) -> bool:
    return all(len(name) <= MAX_TEXT_CHARS for name in names)


def _text(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise ValueError("a name is not a string of at most MAX_TEXT_CHARS")
    return value


def _number(value: object) -> float:
    # Compared before float(): a huge int must not overflow; NaN fails the range.
    if (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and -SUCCESS_CREDIT <= value <= MAX_PENALTY
    ):
        return float(value)
    raise ValueError("a score is not a number in range")


class ResidualGuard:
    """Refuses a (client host, server host, server port) inside its residual window.

    After a RESET or a SILENCE on a 3-tuple, and after a TIMEOUT on one already
    blocked (the censor's residual drop), the 3-tuple is refused for ``window``
    seconds; once the window has passed, :meth:`attempt` lets one retry through
    and starts a new window, so a blocked 3-tuple is tried at most once per
    window until :meth:`succeeded`. At most ``capacity`` 3-tuples are held; the
    one blocked longest ago is forgotten first.
    """

    def __init__(self, *, window: float = RESIDUAL_WINDOW, capacity: int = 1024) -> None:
        if not window > 0 or capacity < 1:
            raise ValueError("window and capacity are positive")
        self.window = window
        self.capacity = capacity
        self._until: OrderedDict[ThreeTuple, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def allowed(self, three_tuple: ThreeTuple, now: float) -> bool:
        """Whether dialling ``three_tuple`` at ``now`` is outside its window (no change)."""
        until = self._until.get(three_tuple)
        return until is None or now >= until

    def attempt(self, three_tuple: ThreeTuple, now: float) -> bool:
        """Like :meth:`allowed`, and a retry of a blocked 3-tuple uses up its window."""
        if not self.allowed(three_tuple, now):
            return False
        if three_tuple in self._until:
            self._arm(three_tuple, now)
        return True

    def failed(self, three_tuple: ThreeTuple, failure: Failure, now: float) -> None:
        if failure in (Failure.RESET, Failure.SILENCE) or (
            failure is Failure.TIMEOUT and three_tuple in self._until
        ):
            self._arm(three_tuple, now)

    def succeeded(self, three_tuple: ThreeTuple) -> None:
        self._until.pop(three_tuple, None)

    def _arm(self, three_tuple: ThreeTuple, now: float) -> None:
        until = max(now + self.window, self._until.pop(three_tuple, -math.inf))
        self._until[three_tuple] = until
        while len(self._until) > self.capacity:
            self._until.popitem(last=False)
