"""Sending a message over an onion route, and reading the acks that come back.

Theory of operation
-------------------
One attempt at one outbox message (:meth:`OnionPath.prepare`, then
:meth:`OnionPath.transmit`):

1. e2e: the message frame is encrypted with the recipient's Double Ratchet
   session (started from its signed prekey bundle in the DHT when there is
   none) and sealed, so only the recipient learns who sent it. The new
   session state is committed before anything leaves the host.
2. a reply block (SURB) for the ack is built over a fresh route back to us;
   its secret is committed with the message id and the route's relays.
3. a fresh forward route of ``hops`` relays (:mod:`p2pmsg.onion.route`) ends
   at the recipient; the packet goes to the first relay over a reused link.
   A message too long for one packet goes as fragments
   (:mod:`p2pmsg.delivery.fragments`), each over a fresh route of its own,
   with one SURB for the whole.

Every attempt is a new ratchet message, a new SURB and a new route: a retry
after a lost packet or a bad relay takes other relays, and the recipient
deduplicates by message id. When an ack arrives through a SURB
(:meth:`OnionPath.open_reply`), the SURB is taken (single use), the message
marked delivered and the route's relays credited; when an attempt times out
the relays of its unanswered SURBs take a failure. Each ack's round trip
feeds the retransmission timer (:mod:`p2pmsg.delivery.rto`) that tells the
sender when to try again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TypeVar

import trio

from p2pmsg.delivery import fragments, frames, onion_frames
from p2pmsg.delivery.frames import MessageKind, MsgFrame
from p2pmsg.delivery.rto import RetransmitTimer
from p2pmsg.dht import records as rec
from p2pmsg.dht.peer import Peer
from p2pmsg.dht.service import Dht
from p2pmsg.dialer import DIAL_ERRORS
from p2pmsg.e2e import prekeys, sealed, session
from p2pmsg.e2e.ratchet import RatchetState
from p2pmsg.errors import P2PMsgError, RemoteProtocolError
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.onion import sphinx
from p2pmsg.onion.route import RELAY_CAPABILITY, Candidate, NoRoute, RelayScores, select_route
from p2pmsg.packet_links import PacketLinks
from p2pmsg.relay import Resolver, epoch_of
from p2pmsg.store import OutboxMessage, Store, SurbRecord

log = logging.getLogger(__name__)

V = TypeVar("V")

MAX_ONION_BODY = (
    sealed.MAX_ENVELOPE_BYTES
    - sealed.SEAL_OVERHEAD
    - session.INITIAL_OVERHEAD
    - frames.HEADER_BYTES
)
"""The largest message body an onion message carries, in up to
:data:`~p2pmsg.delivery.onion_frames.MAX_FRAGMENTS` packets."""


RESTART_EVERY = 8
"""Unanswered attempts after which a message goes out on a fresh session
(a fallback: the recipient normally asks for one, :meth:`OnionPath.unreadable`)."""
UNREADABLE_RETRY = 15.0
"""Seconds after the recipient asked for a new session that the message is
tried again on one (once per message; later requests wait for the backoff)."""
FIRST_HOP_TRIES = 3
"""Routes one packet may try when their first relay cannot be reached from here."""
MAX_REMEMBERED = 4096
"""Peers remembered as owed a new session, messages as hurried once, and
relays as probed."""
PROBE_EVERY = 600.0
"""Seconds before a relay of a lost route is pinged again (:meth:`OnionPath.probe`)."""
PROBE_TRIES = 2
"""Pings a probe sends before the relay counts as unreachable: one lost to a
lossy path (S18) is no evidence."""


class NoPrekeys(P2PMsgError):
    """The recipient's prekeys were not found in the DHT; the message stays queued."""


@dataclass(frozen=True)
class OnionOptions:
    hops: int = 3
    surb_ttl: float = 2 * 86_400.0


@dataclass(frozen=True, eq=False)
class Attempt:
    """One prepared attempt at a message: committed, not yet sent (each one
    its own, compared and hashed by identity)."""

    relays: tuple[bytes, ...]
    """Every relay of its routes (the SURB's and the forward ones)."""
    surb_id: bytes
    parts: tuple[tuple[bytes, list[Candidate]], ...]
    """Each fragment and its forward route."""
    candidates: Sequence[Candidate]
    dest: sphinx.Hop


class OnionPath:
    """Builds and sends onion packets for outbox messages; reads acks."""

    def __init__(  # noqa: PLR0917 - the node's parts, in the order it builds them
        self,
        identity: Identity,
        store: Store,
        dht: Dht,
        links: PacketLinks,
        resolver: Resolver,
        scores: RelayScores,
        *,
        options: OnionOptions,
        wall_clock: Callable[[], float],
        rng: Callable[[int], bytes],
    ) -> None:
        self.identity = identity
        self.store = store
        self.dht = dht
        self.links = links
        self.resolver = resolver
        self.scores = scores
        self.options = options
        self._wall_clock = wall_clock
        self._rng = rng
        self._restart: OrderedDict[bytes, None] = OrderedDict()  # peers owed a new session
        self._hurried: OrderedDict[bytes, None] = OrderedDict()  # message ids
        self._probed: OrderedDict[bytes, float] = OrderedDict()  # relay -> when
        self.on_retry: Callable[[], None] = lambda: None
        """Called when a message became due sooner (the node wakes its sender)."""
        self.timer = RetransmitTimer()
        self._sent: OrderedDict[bytes, float] = OrderedDict()  # SURB id -> when
        self.gateway: Candidate | None = None
        """The relay that holds a link we opened (a node nobody can dial): the
        last hop of our reply blocks, so replies come back over that link."""

    # -- sending ---------------------------------------------------------------

    async def prepare(
        self,
        recipient: PublicIdentity,
        message: OutboxMessage,
        *,
        avoid: Collection[bytes] = (),
        spare: bool = False,
    ) -> Attempt:
        """Encrypt one attempt and commit its session and SURB, on routes that
        keep out of ``avoid`` while enough other relays remain. A ``spare``
        copy of an attempt never starts a new session. Attempts for one
        recipient must be prepared one at a time (each advances its ratchet);
        their transmissions may overlap. Raises :class:`NoRoute` or
        :class:`NoPrekeys`."""
        now = self._wall_clock()
        candidates = self.candidates(now)
        ends = (self.identity.node_id, recipient.node_id)
        back = self._route(candidates, ends, now, last=self.gateway, avoid=avoid)
        state, envelope = await self._encrypt(recipient, message, spare=spare)
        surb_id = self._rng(sphinx.SURB_ID_BYTES)
        me = sphinx.Hop(self.identity.node_id, self.identity.public.x25519)
        surb, secret = sphinx.create_surb([*_hops(back), me], surb_id, self._rng)
        payload = onion_frames.encode_forward(
            onion_frames.ForwardMessage(sphinx.encode_surb(surb), envelope)
        )
        parts = fragments.split(payload, self._rng)
        forwards = [self._route(candidates, ends, now, avoid=avoid) for _ in parts]
        relays = tuple(dict.fromkeys(c.node_id for c in chain(back, *forwards)))
        surb_record = SurbRecord(
            surb_id, message.id, relays, secret.to_bytes(), now + self.options.surb_ttl
        )
        await self.store.commit_attempt(recipient.node_id, state.to_bytes(), now, surb_record)
        self._restart.pop(recipient.node_id, None)
        dest = sphinx.Hop(recipient.node_id, recipient.x25519)
        return Attempt(relays, surb_id, tuple(zip(parts, forwards, strict=True)), candidates, dest)

    async def transmit(self, attempt: Attempt) -> None:
        """Send a prepared attempt's packets. Raises a dial error or :class:`NoRoute`."""
        ends = (self.identity.node_id, attempt.dest.node_id)
        for part, forward in attempt.parts:
            await self._send_part(part, forward, attempt.candidates, ends, attempt.dest)
        self._sent[attempt.surb_id] = trio.current_time()
        while len(self._sent) > MAX_REMEMBERED:
            self._sent.popitem(last=False)

    async def _send_part(
        self,
        part: bytes,
        forward: list[Candidate],
        candidates: Sequence[Candidate],
        ends: tuple[bytes, bytes],
        dest: sphinx.Hop,
    ) -> None:
        """Send one packet over ``forward``; when its first relay cannot be
        reached from here (a blocked address, a relay gone), that relay takes a
        failure and the packet goes over a new route without it, at most
        :data:`FIRST_HOP_TRIES` routes in all. Raises the last failure."""
        avoid: set[bytes] = set()
        for tries_left in range(FIRST_HOP_TRIES - 1, -1, -1):
            first, packet = sphinx.create_packet([*_hops(forward), dest], part, self._rng)
            try:
                await self.send_packet(first, packet)
            except (*DIAL_ERRORS, NoRoute) as exc:
                now = self._wall_clock()
                self.scores.route_failed([first], now)
                avoid.add(first)
                if not tries_left:
                    raise
                log.debug("first relay unreachable (%r): another route", exc)
                usable = [c for c in candidates if c.node_id not in avoid]
                forward = self._route(usable, ends, now)
            else:
                return

    async def make_surb(self, tag: bytes, *, avoid: bytes, ttl: float) -> bytes:
        """A reply block to us over a fresh route that avoids node ``avoid``,
        remembered under ``tag`` (what a reply through it answers); a reply
        that finds us offline is dropped, never left in our mailbox. Raises
        :class:`NoRoute`."""
        now = self._wall_clock()
        ends = (self.identity.node_id, avoid)
        back = self._route(self.candidates(now), ends, now, last=self.gateway)
        surb_id = self._rng(sphinx.SURB_ID_BYTES)
        me = sphinx.Hop(self.identity.node_id, self.identity.public.x25519)
        surb, secret = sphinx.create_surb([*_hops(back), me], surb_id, self._rng, deposit=False)
        relays = tuple(c.node_id for c in back)
        await self.store.add_surb(SurbRecord(surb_id, tag, relays, secret.to_bytes(), now + ttl))
        return sphinx.encode_surb(surb)

    async def send_to(self, dest: PublicIdentity, message: bytes) -> list[bytes]:
        """Send ``message`` to ``dest`` over a fresh route; the relays used.
        A request is worthless by the time an offline ``dest`` is back, so the
        packet is dropped rather than left in its mailbox. Raises
        :class:`NoRoute` or a dial error."""
        now = self._wall_clock()
        route = self._route(self.candidates(now), (self.identity.node_id, dest.node_id), now)
        hops = [*_hops(route), sphinx.Hop(dest.node_id, dest.x25519)]
        first, packet = sphinx.create_packet(hops, message, self._rng, deposit=False)
        await self.send_packet(first, packet)
        return [c.node_id for c in route]

    async def send_packet(self, first_hop: bytes, packet: bytes) -> None:
        """Hand a packet to a relay we hold a verified record of. Raises dial errors."""
        peer = await self.resolver.resolve(first_hop)
        if peer is None:
            raise NoRoute("the first relay is gone")
        await self.links.send(peer, onion_frames.encode_packet_message(packet))

    def candidates(self, now: float) -> list[Candidate]:
        """Relays in our routing table with a relay capability and a key for now."""
        epoch = epoch_of(now)
        found: list[Candidate] = []
        for record in self.dht.table_records():
            peer = self.dht.table.get(record.key)
            if peer is None:
                continue
            try:
                info = rec.decode_peer_info(record.value)
            except RemoteProtocolError:
                continue
            key = dict(info.onion_keys).get(epoch)
            if RELAY_CAPABILITY in info.capabilities and key is not None:
                cut_off = self.dht.table.failures(peer.node_id) > 0
                cut_off = cut_off or self.links.unreachable(peer.node_id)
                found.append(Candidate(peer.node_id, key, peer.prefix, unreachable=cut_off))
        return found

    def _route(
        self,
        candidates: Sequence[Candidate],
        ends: tuple[bytes, bytes],
        now: float,
        *,
        last: Candidate | None = None,
        avoid: Collection[bytes] = (),
    ) -> list[Candidate]:
        if last is not None and last.node_id in ends:
            last = None  # the gateway is the peer itself: any route will do
        return select_route(
            candidates,
            hops=self.options.hops,
            exclude=ends,
            scores=self.scores,
            now=now,
            rng=self._rng,
            last=last,
            avoid=avoid,
        )

    async def _encrypt(
        self, recipient: PublicIdentity, message: OutboxMessage, *, spare: bool = False
    ) -> tuple[RatchetState, bytes]:
        """The session advanced by ``message`` (for the caller to commit) and
        the sealed envelope."""
        peer = recipient.node_id
        stored = await self.store.get_session(peer)
        state = RatchetState.from_bytes(stored) if stored is not None else None
        # A new session from the peer's current bundle when the peer could not
        # open our last message, and every few unanswered attempts in case its
        # answer was lost. Both sides keep the session it replaces as previous.
        restart = (
            state is not None
            and not spare
            and (peer in self._restart or message.attempts % RESTART_EVERY == RESTART_EVERY - 1)
        )
        bundle = await self._bundle(recipient) if state is None or restart else None
        frame = MsgFrame(
            message.id,
            int(message.created * 1000),
            MessageKind(message.kind),
            message.body,
            message.seq,
            await self.store.low_water(message.peer),
        )
        state, inner = session.encrypt(
            self.identity, recipient, state, bundle, frames.encode(frame), self._rng,
            restart=restart,
        )  # fmt: skip
        return state, sealed.seal(self.identity, recipient, inner, self._rng)

    async def _bundle(self, recipient: PublicIdentity) -> prekeys.PrekeyBundle:
        found = await self.dht.find_newest(
            rec.RecordType.PREKEYS, rec.prekey_keys(recipient.node_id)
        )
        for record in found:
            if record.publisher != recipient.key:
                continue
            try:
                bundle = prekeys.decode_bundle(record.value)
                prekeys.verify_bundle(bundle, recipient.key)
            except RemoteProtocolError as exc:
                log.info("refused a prekey bundle: %s", exc)
                continue
            return bundle
        raise NoPrekeys(recipient.node_id.hex()[:16])

    # -- acks ------------------------------------------------------------------

    async def open_reply(
        self, surb_id: bytes, payload: bytes
    ) -> tuple[bytes, onion_frames.OnionMessage] | None:
        """(the SURB's tag, the reply) for a reply through our SURB ``surb_id``;
        None for an unknown (used or expired) SURB. The route is credited.
        Raises :class:`RemoteProtocolError` for a tampered or malformed reply."""
        record = await self.store.take_surb(surb_id)
        if record is None:
            return None
        secret = sphinx.SurbSecret.from_bytes(record.secret)
        reply = onion_frames.decode(sphinx.open_reply(secret, payload))
        self.scores.route_succeeded(record.relays, self._wall_clock())
        sent = self._sent.pop(surb_id, None)
        if sent is not None:
            now = trio.current_time()
            self.timer.sample(now - sent, now)
        return record.message, reply

    async def unreadable(self, message_id: bytes) -> None:
        """The recipient of ``message_id`` could not open it with any session it
        holds: the next attempt to that peer starts a new one, and the first
        time for this message that attempt comes within :data:`UNREADABLE_RETRY`
        seconds (a peer that keeps refusing waits for the usual backoff)."""
        first = message_id not in self._hurried
        soon = self._wall_clock() + UNREADABLE_RETRY if first else float("inf")
        peer = await self.store.retry_sooner(message_id, soon)
        if peer is None:
            return  # delivered or expired meanwhile
        _remember(self._restart, peer, None)
        if first:
            _remember(self._hurried, message_id, None)
            self.on_retry()

    async def attempt_failed(self, message_id: bytes, *, copies: int = 1) -> list[bytes]:
        """The ack of ``message_id`` is overdue: the routes of its last attempt
        (``copies`` sends), unanswered, take a failure. Returns their relays."""
        now = self._wall_clock()
        lost: dict[bytes, None] = {}
        for relays in await self.store.surb_routes(message_id, limit=copies):
            self.scores.route_failed(relays, now)
            lost.update(dict.fromkeys(relays))
        return list(lost)

    async def probe(self, relays: Sequence[bytes]) -> list[bytes]:
        """Ping the relays of a lost route, each at most once every
        :data:`PROBE_EVERY` seconds, up to :data:`PROBE_TRIES` times. One that
        never answers is marked failed in the routing table, and so goes after
        every relay we can reach (:attr:`Candidate.unreachable`); one that
        answers is no longer held to a failed dial. A lost route blames its
        relays alike; only a ping tells the one behind a border cut (S10) from
        the honest ones beside it. Returns the relays pinged."""
        now = trio.current_time()
        due = []
        for node_id in relays:
            last = self._probed.get(node_id)
            if (last is None or now - last >= PROBE_EVERY) and (
                peer := self.dht.table.get(node_id)
            ):
                _remember(self._probed, node_id, now)
                due.append(peer)
        async with trio.open_nursery() as nursery:
            for peer in due:
                nursery.start_soon(self._ping, peer)
        return [peer.node_id for peer in due]

    async def _ping(self, peer: Peer) -> None:
        for _ in range(PROBE_TRIES):
            if await self.dht.ping(peer):
                self.links.reached(peer.node_id)
                return


def _remember(table: OrderedDict[bytes, V], key: bytes, value: V) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_REMEMBERED:
        table.popitem(last=False)


def _hops(route: Sequence[Candidate]) -> list[sphinx.Hop]:
    return [sphinx.Hop(c.node_id, c.onion_key) for c in route]
