"""Failure classes, decaying path scores and the residual-block guard (pure).

The classifier is fed real exceptions: a refused localhost connection, trio's
timeouts and broken streams, and the secure handshake failing over in-memory
links under ``autojump_clock`` (no real time passes). Everything else is pure
and driven with explicit ``now`` values.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import socket
import ssl
from collections import Counter
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2pmsg.errors import HandshakeError, RemoteProtocolError
from p2pmsg.keys import Identity
from p2pmsg.link.secure import connect_secure
from p2pmsg.pathscore import (
    FAILURE_WEIGHT,
    MAX_PENALTY,
    MAX_TEXT_CHARS,
    RESIDUAL_WINDOW,
    SUCCESS_CREDIT,
    SWITCH_PENALTY,
    Failure,
    PathScores,
    ResidualGuard,
    classify,
    stagger,
    throttled,
)

NET = "isp-a"
TUPLE = ("10.0.0.2", "198.51.100.7", 443)
paths_st = st.lists(
    st.tuples(st.sampled_from(["tcp", "tls", "ws"]), st.sampled_from(["e0", "e1", "e2", "e3"])),
    max_size=12,
)
failures_st = st.sampled_from(list(Failure))


# -- classify, on real exceptions ---------------------------------------------


class SilentLink:
    """A link that takes every byte and never answers: a black hole after connect."""

    async def send(self, data: bytes) -> None:
        pass

    async def receive(self) -> bytes:
        await trio.sleep_forever()

    async def aclose(self) -> None:
        pass


class ClosingLink(SilentLink):
    """A link the far end (or a censor's RST) ends as soon as we listen."""

    async def receive(self) -> bytes:
        raise trio.BrokenResourceError("reset")


async def handshake_error(link: SilentLink) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        await connect_secure(link, Identity(bytes([1]) * 32), Identity(bytes([2]) * 32).public)
    return info.value


async def test_trio_and_handshake_failures(autojump_clock: trio.testing.MockClock) -> None:
    silent = await handshake_error(SilentLink())
    assert classify(silent, stage="handshake") is Failure.SILENCE
    broken = await handshake_error(ClosingLink())
    assert classify(broken, stage="handshake") is Failure.RESET
    with pytest.raises(trio.TooSlowError) as slow, trio.fail_after(10):
        await trio.sleep_forever()
    assert classify(slow.value, stage="dial") is Failure.TIMEOUT
    assert classify(slow.value, stage="handshake") is Failure.SILENCE
    left, right = trio.testing.memory_stream_pair()
    await right.aclose()
    with pytest.raises(trio.BrokenResourceError) as reset:
        await left.send_all(b"x")
    assert classify(reset.value, stage="dial") is Failure.RESET


async def test_a_refused_connection_is_a_reset() -> None:
    with socket.socket() as probe:  # an ephemeral port, closed again: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError, match="all attempts") as info:
        await trio.open_tcp_stream("127.0.0.1", port)
    assert info.value.errno is None  # trio hides the refusal in the cause's group
    assert classify(info.value, stage="dial") is Failure.RESET


async def test_a_cancelled_race_loser_is_no_evidence() -> None:
    caught: list[BaseException] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            caught.append(exc)
            raise
    with pytest.raises(TypeError):
        classify(caught[0], stage="dial")


@pytest.mark.parametrize(
    ("exc", "dial", "handshake"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "reset", "reset"),
        (OSError(errno.ECONNRESET, "reset"), "reset", "reset"),
        (OSError(errno.EPIPE, "broken pipe"), "reset", "reset"),
        (OSError(errno.ETIMEDOUT, "timed out"), "timeout", "silence"),
        (OSError(errno.EHOSTUNREACH, "unreachable"), "timeout", "silence"),
        (ssl.SSLEOFError(8, "EOF in violation of protocol"), "reset", "reset"),
        (trio.EndOfChannel(), "reset", "reset"),
        (RemoteProtocolError("garbage"), "reset", "reset"),
        (HandshakeError("bad signature"), "reset", "reset"),
        (ValueError("something else"), "timeout", "silence"),
        (ExceptionGroup("race", [ConnectionResetError(), TimeoutError()]), "reset", "reset"),
    ],
)
def test_classify_table(exc: BaseException, dial: str, handshake: str) -> None:
    assert classify(exc, stage="dial") is Failure(dial)
    assert classify(exc, stage="handshake") is Failure(handshake)


def test_causes_are_followed_but_not_suppressed_or_endless_contexts() -> None:
    wrapped = HandshakeError("the connection ended")
    wrapped.__cause__ = ConnectionResetError()
    assert classify(wrapped, stage="handshake") is Failure.RESET
    hidden = ValueError("unrelated")
    hidden.__context__ = ConnectionResetError()
    hidden.__suppress_context__ = True
    assert classify(hidden, stage="dial") is Failure.TIMEOUT
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert classify(a, stage="dial") is Failure.TIMEOUT
    with pytest.raises(ValueError, match="stage"):
        classify(a, stage="transfer")


def test_throttled_and_stagger() -> None:
    assert throttled(16_000, 1_000_000) and not throttled(500_000, 1_000_000)
    assert not throttled(0, 0)
    assert stagger(0) == []
    assert stagger(4) == [0.0, 0.25, 0.5, 0.75]
    assert stagger(3, 0.1, head_start=2.0) == [0.0, 2.0, 2.1]
    with pytest.raises(ValueError, match="negative"):
        stagger(-1)
    with pytest.raises(ValueError, match="negative"):
        stagger(2, head_start=-1.0)


# -- PathScores ----------------------------------------------------------------


def test_scores_weigh_classes_decay_and_are_capped() -> None:
    scores = PathScores(half_life=100.0)
    for failure in Failure:
        scores.failed(NET, failure.value, "e", failure, 0.0)
    own = {f: scores.score(NET, f.value, "e", 0.0) for f in Failure}
    assert own == {f: pytest.approx(1.25 * w) for f, w in FAILURE_WEIGHT.items()}
    assert scores.score(NET, "reset", "e", 100.0) == pytest.approx(1.25)
    assert scores.score("other-net", "reset", "e", 0.0) == 0.0
    for _ in range(100):
        scores.failed(NET, "tcp", "e", Failure.SILENCE, 0.0)
    assert scores.score(NET, "tcp", "e", 0.0) == pytest.approx(1.25 * MAX_PENALTY)


def test_a_known_good_path_beats_an_untried_one_and_a_fingerprinted_transport_sinks() -> None:
    scores = PathScores()
    scores.succeeded(NET, "tls", "e1", 0.0)
    scores.failed(NET, "tls", "e1", Failure.TIMEOUT, 0.0)  # no longer the last working path
    candidates = [("ws", "e0"), ("tcp", "e0"), ("tls", "e1"), ("ws", "e2"), ("tcp", "e1")]
    assert scores.order(NET, candidates, 0.0) == candidates
    scores.succeeded(NET, "tcp", "e1", 0.0)
    scores.failed(NET, "tcp", "e1", Failure.THROTTLED, 0.0)  # still better than untried
    scores.failed(NET, "ws", "e0", Failure.SILENCE, 0.0)  # DPI knows ws: e2 too is suspect
    ranked = scores.order(NET, candidates, 0.0)
    assert ranked == [candidates[i] for i in (4, 1, 2, 3, 0)]
    assert scores.last_working(NET) is None


@given(
    events=st.lists(st.tuples(st.booleans(), failures_st, st.floats(0, 1e4))), gap=st.floats(0, 1e5)
)
def test_decay_is_monotone_toward_zero(
    events: list[tuple[bool, Failure, float]], gap: float
) -> None:
    scores = PathScores(half_life=60.0)
    now = 0.0
    for ok, failure, step in events:
        now += step
        if ok:
            scores.succeeded(NET, "tcp", "e", now)
        else:
            scores.failed(NET, "tcp", "e", failure, now)
    before, after = scores.score(NET, "tcp", "e", now), scores.score(NET, "tcp", "e", now + gap)
    assert abs(after) <= abs(before) and after * before >= 0
    assert -SUCCESS_CREDIT * 1.25 <= after <= MAX_PENALTY * 1.25


@given(paths=paths_st, events=st.lists(st.tuples(paths_st, st.booleans(), failures_st)))
def test_order_is_a_stable_permutation(
    paths: list[tuple[str, str]], events: list[tuple[list[tuple[str, str]], bool, Failure]]
) -> None:
    scores = PathScores()
    assert scores.order(NET, paths, 0.0) == paths  # all equal: input order
    for touched, ok, failure in events:
        for transport, endpoint in touched:
            if ok:
                scores.succeeded(NET, transport, endpoint, 1.0)
            else:
                scores.failed(NET, transport, endpoint, failure, 1.0)
    ordered = scores.order(NET, paths, 2.0)
    assert Counter(ordered) == Counter(paths)
    where: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(paths):
        where.setdefault(p, []).append(i)
    working = scores.last_working(NET)
    rest = [p for p in ordered if p != working]
    assert ordered[: len(ordered) - len(rest)] == [p for p in paths if p == working]
    keys = []
    for p in rest:
        score, other = scores.score(NET, *p, 2.0), working is None or p[0] != working[0]
        keys.append((max(score, 0.0), other, score, where[p].pop(0)))
    assert keys == sorted(keys)  # unpenalised first, the working transport's first; input order


def test_a_new_peer_is_dialled_first_on_the_transport_that_last_worked() -> None:
    """Two transports both work; the one that worked last is tried first for
    every peer, whichever has the better score, until it fails (S12)."""
    scores = PathScores()
    scores.succeeded(NET, "obfs", "a-obfs", 0.0)  # obfs works
    scores.succeeded(NET, "ws", "a-ws", 1.0)
    scores.succeeded(NET, "ws", "b-ws", 1.0)  # ws has the better transport score
    fresh = [("ws", "c-ws"), ("obfs", "c-obfs")]
    assert scores.order(NET, fresh, 2.0) == [("obfs", "c-obfs"), ("ws", "c-ws")]
    scores.failed(NET, "obfs", "c-obfs", Failure.RESET, 3.0)  # penalised: it sinks
    assert scores.order(NET, fresh, 4.0) == [("ws", "c-ws"), ("obfs", "c-obfs")]


def test_one_peer_reached_over_another_transport_is_no_switch() -> None:
    """While its transport works, the working path stays: a peer whose obfs
    path is reset at its own ISP is reached over ws without moving the node
    to ws. Once obfs fails here too, the next success elsewhere takes over (S12)."""
    scores = PathScores()
    scores.succeeded(NET, "obfs", "a-obfs", 0.0)
    scores.failed(NET, "obfs", "b-obfs", Failure.RESET, 1.0)  # one peer's obfs reset
    assert scores.transport_penalty(NET, "obfs", 1.0) < SWITCH_PENALTY
    scores.succeeded(NET, "ws", "b-ws", 2.0)
    assert scores.last_working(NET) == ("obfs", "a-obfs")
    scores.failed(NET, "obfs", "c-obfs", Failure.RESET, 3.0)
    assert scores.transport_penalty(NET, "obfs", 3.0) >= SWITCH_PENALTY
    scores.succeeded(NET, "ws", "c-ws", 4.0)
    assert scores.last_working(NET) == ("ws", "c-ws")


# -- ResidualGuard ---------------------------------------------------------------


def test_the_residual_window_at_its_edges() -> None:
    guard = ResidualGuard()
    assert guard.attempt(TUPLE, 0.0) and guard.attempt(TUPLE, 0.0)  # never blocked: free
    guard.failed(TUPLE, Failure.RESET, 100.0)
    other = ("10.0.0.2", "198.51.100.7", 80)
    assert guard.allowed(other, 100.0)
    assert not guard.allowed(TUPLE, 100.0)
    assert not guard.attempt(TUPLE, 100.0 + RESIDUAL_WINDOW - 1e-6)
    assert guard.allowed(TUPLE, 280.0)
    assert guard.attempt(TUPLE, 280.0)  # the one retry of this window
    assert not guard.attempt(TUPLE, 280.0)
    assert not guard.allowed(TUPLE, 459.999)
    guard.failed(TUPLE, Failure.TIMEOUT, 300.0)  # the retry met the residual drop
    assert not guard.allowed(TUPLE, 479.0) and guard.allowed(TUPLE, 480.0)
    guard.succeeded(TUPLE)
    assert guard.allowed(TUPLE, 300.0) and len(guard) == 0


def test_what_arms_the_guard_and_its_bound() -> None:
    guard = ResidualGuard(window=10.0, capacity=3)
    guard.failed(TUPLE, Failure.TIMEOUT, 0.0)  # a plain timeout may be loss
    guard.failed(TUPLE, Failure.THROTTLED, 0.0)  # the flow worked
    assert guard.allowed(TUPLE, 0.0)
    guard.failed(TUPLE, Failure.SILENCE, 0.0)
    assert not guard.allowed(TUPLE, 9.9)
    guard.failed(TUPLE, Failure.RESET, 5.0)
    assert not guard.allowed(TUPLE, 14.9) and guard.allowed(TUPLE, 15.0)
    for port in range(4):  # the oldest block is forgotten first
        guard.failed(("c", "s", port), Failure.RESET, 6.0 + port)
    assert len(guard) == 3 and guard.allowed(TUPLE, 7.0) and not guard.allowed(("c", "s", 3), 7.0)
    with pytest.raises(ValueError, match="positive"):
        ResidualGuard(window=0.0)
    with pytest.raises(ValueError, match="positive"):
        PathScores(half_life=math.nan)


class GuardMachine(RuleBasedStateMachine):
    """S4: after a reset, a 3-tuple is tried at most once per window until it works."""

    def __init__(self) -> None:
        super().__init__()
        self.guard = ResidualGuard(window=RESIDUAL_WINDOW, capacity=8)
        self.now = 0.0
        self.blocked_at: dict[int, float] = {}  # port -> last arming event, while blocked

    @rule(step=st.sampled_from([0.0, 1.0, 90.0, 179.999, 180.0, 400.0]) | st.floats(0, 500))
    def wait(self, step: float) -> None:
        self.now += step

    @rule(port=st.integers(0, 3), failure=failures_st)
    def fail(self, port: int, failure: Failure) -> None:
        self.guard.failed(("c", "s", port), failure, self.now)
        if failure in (Failure.RESET, Failure.SILENCE) or (
            failure is Failure.TIMEOUT and port in self.blocked_at
        ):
            self.blocked_at[port] = self.now

    @rule(port=st.integers(0, 3))
    def attempt(self, port: int) -> None:
        ok = self.guard.attempt(("c", "s", port), self.now)
        since = self.blocked_at.get(port)
        assert ok == (since is None or self.now >= since + RESIDUAL_WINDOW)
        if since is not None and ok:
            self.blocked_at[port] = self.now  # the retry starts the next window

    @rule(port=st.integers(0, 3))
    def succeed(self, port: int) -> None:
        self.guard.succeeded(("c", "s", port))
        self.blocked_at.pop(port, None)

    @invariant()
    def bounded(self) -> None:
        assert len(self.guard) <= 8


GuardMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=50)
TestGuard = GuardMachine.TestCase


class ScoresMachine(RuleBasedStateMachine):
    """Any sequence of operations: tables stay bounded, order() stays a permutation,
    and (hysteresis, S12) the last working path is first until it fails, or
    another path on its network succeeds: of its transport, or of another once
    its transport has a penalty, however often anything failed before."""

    CAPACITY = 5

    def __init__(self) -> None:
        super().__init__()
        self.scores = PathScores(half_life=30.0, capacity=self.CAPACITY)
        self.now = 0.0
        self.working: dict[str, tuple[str, str]] = {}

    path = st.tuples(st.sampled_from(["tcp", "tls", "ws"]), st.sampled_from(["a", "b", "c"]))
    net = st.sampled_from(["n0", "n1", "n2"])

    @rule(step=st.floats(0, 100))
    def wait(self, step: float) -> None:
        self.now += step

    @rule(net=net, path=path, failure=failures_st)
    def fail(self, net: str, path: tuple[str, str], failure: Failure) -> None:
        self.scores.failed(net, *path, failure, self.now)
        if self.working.get(net) == path:
            del self.working[net]

    @rule(net=net, path=path)
    def succeed(self, net: str, path: tuple[str, str]) -> None:
        self.scores.succeeded(net, *path, self.now)
        current = self.working.get(net)
        stays = (  # (after the success: its credit may have evicted the current transport's score)
            current is not None
            and current[0] != path[0]
            and self.scores.transport_penalty(net, current[0], self.now) < SWITCH_PENALTY
        )
        if not stays:
            self.working[net] = path

    @rule()
    def restart(self) -> None:
        data = json.loads(json.dumps(self.scores.to_dict(self.now)))
        self.scores = PathScores.from_dict(
            data, now=self.now, half_life=30.0, capacity=self.CAPACITY
        )

    @invariant()
    def bounded(self) -> None:
        assert all(size <= self.CAPACITY for size in self.scores.sizes())

    @invariant()
    def hysteresis_and_permutation(self) -> None:
        candidates = [(t, e) for t in ("tcp", "tls", "ws") for e in ("a", "b", "c")]
        for net in ("n0", "n1", "n2"):
            ordered = self.scores.order(net, candidates, self.now)
            assert sorted(ordered) == sorted(candidates)
            assert self.scores.last_working(net) == self.working.get(net)
            if net in self.working:
                assert ordered[0] == self.working[net]


ScoresMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=40)
TestScores = ScoresMachine.TestCase


# -- snapshots -----------------------------------------------------------------


def busy_scores() -> PathScores:
    scores = PathScores(half_life=100.0)
    scores.failed(NET, "tcp", "e0", Failure.RESET, 0.0)
    scores.failed(NET, "ws", "e1", Failure.SILENCE, 10.0)
    scores.succeeded(NET, "tls", "e2", 20.0)
    scores.succeeded("n2", "ws", "e1", 30.0)
    return scores


def test_snapshot_round_trip_through_json() -> None:
    scores = busy_scores()
    scores.succeeded("y" * (MAX_TEXT_CHARS + 1), "tcp", "e0", 0.0)  # too long to keep: left out
    scores.failed(NET, "tcp", "y" * (MAX_TEXT_CHARS + 1), Failure.RESET, 0.0)
    data = json.loads(json.dumps(scores.to_dict(50.0)))
    restored = PathScores.from_dict(data, now=1000.0, half_life=100.0)  # another process's clock
    candidates = [("tcp", "e0"), ("ws", "e1"), ("tls", "e2"), ("tcp", "e9")]
    for net in (NET, "n2", "n3"):
        assert restored.last_working(net) == scores.last_working(net)
        assert restored.order(net, candidates, 1000.0) == scores.order(net, candidates, 50.0)
        for path in candidates:
            assert restored.score(net, *path, 1100.0) == pytest.approx(
                scores.score(net, *path, 150.0)
            )
    assert restored.to_dict(1000.0) == data


def test_a_snapshot_larger_than_capacity_keeps_the_newest() -> None:
    busy = busy_scores()
    restored = PathScores.from_dict(busy.to_dict(50.0), now=0.0, capacity=1)
    assert restored.sizes() == (1, 1, 1)
    newest = busy.score("n2", "ws", "e1", 50.0)
    assert newest < 0 and restored.score("n2", "ws", "e1", 0.0) == pytest.approx(newest)
    assert restored.score(NET, "tls", "e2", 0.0) == 0.0
    assert restored.last_working("n2") == ("ws", "e1") and restored.last_working(NET) is None


def snap(**rows: object) -> dict[str, object]:
    return {"version": 1, "paths": [], "transports": [], "last_working": [], **rows}


GARBAGE: list[Any] = [
    *(None, [], "{}", {}, snap(version=2), snap(version=True), snap(paths={})),
    *(snap(paths=[["n", "t", "e", x]]) for x in ("1", True, math.nan, math.inf, 10**400, -2.0)),
    *(snap(paths=[["n", "t", "e"]]), snap(paths=[["n", 5, "e", 1.0]])),
    *(snap(transports=[["n", "t"]]), snap(last_working=[["n", None, "e"]])),
    *(
        snap(last_working=[["x" * (MAX_TEXT_CHARS + 1), "t", "e"]]),
        {"version": 1, "paths": [], "transports": []},
    ),
]


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_snapshots_are_refused(data: Any) -> None:
    with pytest.raises(ValueError, match=r"snapshot|list|name|score"):
        PathScores.from_dict(data, now=0.0)


json_st = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)


@given(
    noise=json_st,
    key=st.sampled_from(["version", "paths", "transports", "last_working"]),
    row=st.integers(0, 3),
    col=st.integers(0, 3),
)
def test_any_garbage_raises_value_error_and_nothing_else(
    noise: Any, key: str, row: int, col: int
) -> None:
    for data in (noise, {**busy_scores().to_dict(50.0), key: noise}):
        with contextlib.suppress(ValueError):
            PathScores.from_dict(data, now=0.0)
    mangled = busy_scores().to_dict(50.0)
    rows = mangled.get(key)
    if isinstance(rows, list) and rows:
        mangled_row = list(rows[row % len(rows)])
        mangled_row[col % len(mangled_row)] = noise
        rows[row % len(rows)] = mangled_row
        with contextlib.suppress(ValueError):
            PathScores.from_dict(mangled, now=0.0)
