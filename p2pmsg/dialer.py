"""Reaching a peer: its endpoints raced, best path first, and the outcome scored.

Endpoints of transports we do not have are skipped (pt-spec: an unknown
transport is never fatal), and so are malformed ones. Both the delivery path
and the DHT use one :class:`Dialer`, so a censor sees one behaviour.

Theory of operation
-------------------
:meth:`Dialer.connect` orders a peer's endpoints by their path scores on the
current network (:class:`p2pmsg.pathscore.PathScores`: the last working path
first, then the paths that failed least, recently), leaves out any whose
(server, port) is inside a residual-block window after a reset or silence
during the handshake (:class:`p2pmsg.pathscore.ResidualGuard`, S4: a censor
blocks the 3-tuple after it matched a flow's payload; a refused SYN or a
clean close is far more often a peer that is down or restarting), and races
the rest happy-eyeballs style (RFC 8305): the first starts at once, each next
one :data:`~p2pmsg.pathscore.STAGGER_DELAY` later or as soon as the one
before it fails, and the first secure link to complete wins; the others are
cancelled and any late success closed. A path of the transport that last
worked gets a head start of :data:`~p2pmsg.pathscore.STICKY_HEAD_START`, so a
stable network does not flap between transports (S12), also when dialling a
new peer. Every finished attempt is scored: a success, or a failure
classified by :func:`p2pmsg.pathscore.classify` at its stage (the
transport's dial, or the secure handshake above it, where silence is the
signature of DPI dropping a flow). A cancelled attempt is no evidence and is
not scored. So when a censor starts killing one transport, the next dial
tries another first, and the session above (delivery's outbox and acks,
the DHT's retries) resumes on it: nothing is lost, and the receiver's
deduplication shows nothing twice.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from p2pmsg.abc import Link, Transport
from p2pmsg.clock import ClockCheck
from p2pmsg.endpoint import MAX_ENDPOINT_CHARS, Endpoint, Invite
from p2pmsg.errors import (
    BadEndpoint,
    HandshakeError,
    RemoteProtocolError,
    TunnelRefused,
    UnsupportedEndpoint,
)
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.link import tunnel
from p2pmsg.link.secure import HANDSHAKE_TIMEOUT, SecureLink, connect_secure
from p2pmsg.pathscore import (
    STAGGER_DELAY,
    STICKY_HEAD_START,
    Failure,
    PathScores,
    ResidualGuard,
    ThreeTuple,
    classify,
    stagger,
)

NETWORK_CHECK = 10.0
"""Seconds between two looks at which network we are on."""
TUNNEL_OPEN_TIMEOUT = 30.0
"""How long a bridge may take to reach a tunnel's target."""

log = logging.getLogger(__name__)

#: What a failed attempt on one endpoint may raise; the next endpoint is tried.
DIAL_ERRORS = (
    OSError,
    HandshakeError,
    RemoteProtocolError,
    UnsupportedEndpoint,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
    trio.TooSlowError,
)


@dataclass
class TransportHealth:
    """What one transport's dials came to, for ``status``."""

    successes: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    last_failure: str | None = None
    residual_skips: int = 0


@dataclass
class TunnelStats:
    """Links opened through bridges, and the attempts a bridge or the target refused."""

    opened: int = 0
    failed: int = 0


@dataclass(frozen=True)
class _Candidate:
    text: str
    endpoint: Endpoint
    transport: Transport
    three_tuple: ThreeTuple | None


@dataclass
class _Attempt:
    transport: str
    started: float
    connected: float | None = None
    """When its transport connected (its handshake began); None before."""

    def silent(self, now: float) -> bool:
        """Whether its handshake has met silence by ``now``: connected, then no
        answer for at least :data:`SILENT_AFTER` and four times the connection's round
        trip (a DPI drop; a slow or lossy path has not even connected)."""
        if self.connected is None:
            return False
        rtt = self.connected - self.started
        return now - self.connected >= max(SILENT_AFTER, 4 * rtt)


@dataclass
class _Race:
    peer: PublicIdentity
    candidates: list[_Candidate]
    offsets: list[float]
    nursery: trio.Nursery | None = None
    winner: tuple[SecureLink, Endpoint] | None = None
    errors: list[Exception] = field(default_factory=list)
    pending: list[_Attempt] = field(default_factory=list)
    """The attempts still waiting for an answer."""


@dataclass(frozen=True)
class Dialled:
    """One :meth:`Dialer.connect`, as its observers see it."""

    seconds: float
    winner: str | None
    """The transport of the link it made; None when it failed."""
    current: str | None = None
    """The transport the node dials first after it: its last working path's
    (:meth:`~p2pmsg.pathscore.PathScores.last_working`); None while it has none."""


def _hung_up(exc: BaseException) -> bool:
    """Whether the peer closed the connection cleanly (a FIN): what a peer that
    is restarting or refusing us does. A censor resets or goes silent."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, trio.EndOfChannel):
            return True
        cause = cause.__cause__
    return False


def _tunnelable(text: str) -> bool:
    """Whether a bridge can be asked for ``text``: it parses and fits the request."""
    try:
        Endpoint.parse(text)
    except BadEndpoint:
        return False
    return len(text.encode()) <= MAX_ENDPOINT_CHARS


def _three_tuple(endpoint: Endpoint) -> ThreeTuple | None:
    """("", server host, port) for the residual guard; None without a port,
    and None for a loopback or link-local address: no censor sits between us
    and a host on our own machine or link, so a reset from one is the host's
    own (a node killed in the middle of our handshake), not a residual block."""
    try:
        host, port = endpoint.host_port()
    except BadEndpoint:
        return None
    with contextlib.suppress(ValueError):  # a name is guarded like any host
        address = ipaddress.ip_address(host)
        if address.is_loopback or address.is_link_local:
            return None
    return ("", host, port)


SILENT_AFTER = 2.0
"""Seconds a handshake may go unanswered (and at least four round trips)
before a cancellation counts as silence for the clock check."""


class Dialer:
    """Dials peers for the node; keeps the path scores and per-transport health."""

    def __init__(
        self,
        identity: Identity,
        transports: Sequence[Transport],
        *,
        dial_timeout: float = 10.0,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        stagger_delay: float = STAGGER_DELAY,
        network: str | Callable[[], str] = "default",
        bridges: Sequence[Invite] = (),
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.transports = list(transports)
        self.dial_timeout = dial_timeout
        self.handshake_timeout = handshake_timeout
        self.stagger_delay = stagger_delay
        self._label = network if callable(network) else None
        self.network = network if isinstance(network, str) else network()
        """The label of the network we are on: paths are scored per network.
        Given a function (:func:`p2pmsg.network.local_network_label`), it is
        asked again before a dial, at most every :data:`NETWORK_CHECK` seconds."""
        self._checked = -NETWORK_CHECK
        self.bridges = list(bridges)
        """Invites of the bridges every other peer is reached through (none: direct)."""
        self.tunnels = TunnelStats()
        self._last_bridge = b""
        self.scores = PathScores()
        self.residual = ResidualGuard()
        self.health: dict[str, TransportHealth] = {}
        self.clock = ClockCheck()
        """Handshakes that met silence tell of a clock too far off (the DHT's
        PINGs add the peers' clocks to the same check)."""
        self._wall_clock = wall_clock
        self._rng = rng
        self.observers: list[Callable[[Dialled], None]] = []
        """Told of each direct :meth:`connect`, for measurements (S12)."""

    def health_report(self) -> dict[str, dict[str, Any]]:
        """Per transport we have: its dials' outcomes, and whether it is the
        transport of the last path that worked on this network."""
        last = self.scores.last_working(self.network)
        report = {}
        for transport in self.transports:
            health = self.health.get(transport.name, TransportHealth())
            report[transport.name] = {
                **asdict(health),
                "last_working": last is not None and last[0] == transport.name,
            }
        return report

    def _check_network(self) -> None:
        now = trio.current_time()
        if self._label is None or now - self._checked < NETWORK_CHECK:
            return
        self._checked = now
        label = self._label()
        if label != self.network:
            log.info("the network changed: paths are scored as known for the new one")
            self.network = label

    def transport_for(self, endpoint: Endpoint) -> Transport | None:
        return next((t for t in self.transports if t.can_dial(endpoint)), None)

    async def connect(
        self, endpoints: Sequence[str], peer: PublicIdentity
    ) -> tuple[SecureLink, Endpoint]:
        """A secure link over the first endpoint to complete, and that endpoint.

        With bridges, every peer but a bridge is reached through one of them
        (:mod:`p2pmsg.link.tunnel`). Raises the last failure, or
        :class:`UnsupportedEndpoint` if none was dialable. Cancellation leaves
        nothing open.
        """
        self._check_network()
        if self.bridges and all(b.identity.key != peer.key for b in self.bridges):
            return await self._through_bridge(endpoints, peer)
        candidates = self._candidates(endpoints)
        if not candidates:
            raise UnsupportedEndpoint("no dialable endpoint")
        last = self.scores.last_working(self.network)
        sticky = last is not None and candidates[0].endpoint.transport == last[0]
        offsets = stagger(
            len(candidates), self.stagger_delay, head_start=STICKY_HEAD_START if sticky else None
        )
        race = _Race(peer, candidates, offsets)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            race.nursery = nursery
            nursery.start_soon(self._attempt, race, 0, None)
        working = self.scores.last_working(self.network)
        dialled = Dialled(
            trio.current_time() - started,
            None if race.winner is None else race.winner[1].transport,
            None if working is None else working[0],
        )
        for observer in self.observers:
            observer(dialled)
        if race.winner is None:
            raise race.errors[-1]
        return race.winner

    async def _through_bridge(
        self, endpoints: Sequence[str], peer: PublicIdentity
    ) -> tuple[SecureLink, Endpoint]:
        """A secure link to ``peer`` inside a link to the first bridge that opens
        one; the bridge that worked last is asked first."""
        targets = [text for text in dict.fromkeys(endpoints) if _tunnelable(text)]
        targets = targets[: tunnel.MAX_TARGET_ENDPOINTS]
        if not targets:
            raise UnsupportedEndpoint("no endpoint a bridge could dial")
        errors: list[Exception] = []
        for bridge in sorted(self.bridges, key=lambda b: b.identity.key != self._last_bridge):
            try:
                carrier, _ = await self.connect([str(e) for e in bridge.endpoints], bridge.identity)
            except DIAL_ERRORS as exc:
                errors.append(exc)
                continue
            try:
                found = await self._open_tunnel(carrier, targets, peer)
            except DIAL_ERRORS as exc:
                self.tunnels.failed += 1
                errors.append(exc)
                with trio.CancelScope(shield=True):
                    await carrier.aclose()
                continue
            self.tunnels.opened += 1
            self._last_bridge = bridge.identity.key
            return found
        raise errors[-1] if errors else UnsupportedEndpoint("no bridge")

    async def _open_tunnel(
        self, carrier: SecureLink, targets: list[str], peer: PublicIdentity
    ) -> tuple[SecureLink, Endpoint]:
        with trio.fail_after(TUNNEL_OPEN_TIMEOUT):
            await carrier.send(tunnel.encode_open(tunnel.Open(peer.key, tuple(targets))))
            reply = tunnel.decode_reply(await carrier.receive())
        if reply.status is not tunnel.Status.OPENED or reply.index >= len(targets):
            raise TunnelRefused(reply.status.name.lower().replace("_", " "))
        secure = await connect_secure(
            tunnel.TunnelLink(carrier),
            self.identity,
            peer,
            wall_clock=self._wall_clock,
            rng=self._rng,
            timeout=self.handshake_timeout,
        )
        return secure, Endpoint.parse(targets[reply.index])

    async def dial_raw(self, endpoints: Sequence[str]) -> tuple[Link, int]:
        """A bridge's dial for a tunnel: a transport link (no handshake) to the
        first of ``endpoints`` that connects, best path first, each scored, and
        that endpoint's index. Raises :class:`UnsupportedEndpoint` (from the
        last failure) when none connects within half the client's wait."""
        errors: list[Exception] = []
        with trio.move_on_after(TUNNEL_OPEN_TIMEOUT / 2):
            for candidate in self._candidates(endpoints):
                try:
                    with trio.fail_after(self.dial_timeout):
                        link = await candidate.transport.dial(candidate.endpoint)
                except DIAL_ERRORS as exc:
                    self._failed(candidate, classify(exc, stage="dial"), censored=False)
                    errors.append(exc)
                    continue
                self._health(candidate).successes += 1
                return link, list(endpoints).index(candidate.text)
        last = errors[-1] if errors else None
        raise UnsupportedEndpoint("no endpoint of the target answered in time") from last

    def _candidates(self, endpoints: Sequence[str]) -> list[_Candidate]:
        """The dialable endpoints, best path first, residual blocks left out."""
        found: dict[str, _Candidate] = {}
        for text in endpoints:
            try:
                endpoint = Endpoint.parse(text)
            except BadEndpoint:
                continue
            transport = self.transport_for(endpoint)
            if transport is not None and text not in found:
                found[text] = _Candidate(text, endpoint, transport, _three_tuple(endpoint))
        now = trio.current_time()
        paths = [(c.endpoint.transport, c.text) for c in found.values()]
        out = []
        for _, text in self.scores.order(self.network, paths, now):
            candidate = found[text]
            if candidate.three_tuple is None or self.residual.attempt(candidate.three_tuple, now):
                out.append(candidate)
            else:
                self._health(candidate).residual_skips += 1
        return out

    async def _attempt(self, race: _Race, index: int, previous_failed: trio.Event | None) -> None:
        """Candidate ``index``: wait for its turn, start the next one, dial."""
        assert race.nursery is not None
        if previous_failed is not None:
            with trio.move_on_after(race.offsets[index] - race.offsets[index - 1]):
                await previous_failed.wait()
        failed = trio.Event()
        if index + 1 < len(race.candidates):
            race.nursery.start_soon(self._attempt, race, index + 1, failed)
        try:
            secure = await self._dial(race.candidates[index], race)
        except DIAL_ERRORS as exc:
            race.errors.append(exc)
            failed.set()
            return
        if race.winner is not None:  # another finished first in the same tick
            with trio.CancelScope() as scope:
                scope.cancel()
                await secure.aclose()
            return
        race.winner = (secure, race.candidates[index].endpoint)
        race.nursery.cancel_scope.cancel()

    async def _dial(self, candidate: _Candidate, race: _Race) -> SecureLink:
        """One attempt, scored unless cancelled. Raises what the dial raised.

        A handshake that meets silence, or is cancelled after waiting well
        past the round trip the connection took, is told to :attr:`clock`."""
        stage, peer, transport = "dial", race.peer, candidate.endpoint.transport
        attempt = _Attempt(transport, trio.current_time())
        race.pending.append(attempt)
        try:
            with trio.fail_after(self.dial_timeout):
                link = await candidate.transport.dial(candidate.endpoint)
            stage, attempt.connected = "handshake", trio.current_time()
            secure = await connect_secure(
                link,
                self.identity,
                peer,
                wall_clock=self._wall_clock,
                rng=self._rng,
                timeout=self.handshake_timeout,
            )
        except DIAL_ERRORS as exc:
            censored = stage == "handshake" and not _hung_up(exc)
            failure = classify(exc, stage=stage)
            self._failed(candidate, failure, censored=censored)
            if failure is Failure.SILENCE:
                self.clock.handshake(peer.node_id, completed=False)
            raise
        except trio.Cancelled:
            if attempt.silent(trio.current_time()):
                self.clock.handshake(peer.node_id, completed=False)
            raise
        finally:
            race.pending.remove(attempt)
        self.clock.handshake(peer.node_id, completed=True)
        now = trio.current_time()
        working = self.scores.last_working(self.network)
        # our transport's handshake met silence and lost to this one: switch
        outraced = working is not None and any(
            a.transport == working[0] and a.silent(now) for a in race.pending
        )
        self.scores.succeeded(self.network, transport, candidate.text, now, outraced=outraced)
        if candidate.three_tuple is not None:
            self.residual.succeeded(candidate.three_tuple)
        self._health(candidate).successes += 1
        return secure

    def _failed(self, candidate: _Candidate, failure: Failure, *, censored: bool) -> None:
        now = trio.current_time()
        transport = candidate.endpoint.transport
        self.scores.failed(self.network, transport, candidate.text, failure, now)
        if candidate.three_tuple is not None and censored:
            self.residual.failed(candidate.three_tuple, failure, now)
        health = self._health(candidate)
        health.failures[failure.value] = health.failures.get(failure.value, 0) + 1
        health.last_failure = failure.value

    def _health(self, candidate: _Candidate) -> TransportHealth:
        name = candidate.endpoint.transport
        if name not in self.health:
            self.health[name] = TransportHealth()
        return self.health[name]
