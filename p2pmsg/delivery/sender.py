"""Sending: the outbox drained over onion routes or direct links, with retries.

Each attempt first pushes its messages' next retry time into the store, then
sends. A message sent ``direct`` goes over a secure link to the contact,
marked delivered when its ack arrives on that link; any other goes over an
onion route (:mod:`p2pmsg.delivery.onion_path`) and is marked delivered
when its ack returns through a reply block. A crash at any point leaves
messages that will be retried. Contacts known only by node id, or whose known endpoints
fail, are resolved through the DHT's peer records. At most
``max_parallel_peers`` peers are worked on at once, one batch per peer;
onion attempts are prepared in turn and sent in the background (at most
:data:`PARALLEL_TRANSMITS` at once), so one that waits for a dial holds up
neither the others nor the contact's next batch.

A contact found on our LAN (``lan``, see :class:`p2pmsg.join.LanPeers`) gets
even its onion-bound messages over a secure link on the LAN, as Briar
delivers to contacts nearby: it works with the WAN gone (SCENARIOS S11),
where one LAN is too few networks for an onion route. When that link
fails, the contact is forgotten as a LAN peer and the onion route is tried.

The first :data:`SPARE_RETRIES` onion retries of a message each go twice,
the second copy over routes that share no relay with the first while enough
others remain (the recipient keeps one). A route is lost when any of its six
relays is cut off, as a border shutdown does to every relay abroad before
anyone can tell which (SCENARIOS S10); two disjoint routes fail together
far less often. Later retries, by then more likely waiting for an offline
recipient than for a lost route, go once, so its mailbox holds fewer copies.

While we look cut off from most relays (:meth:`Sender.cut_off`) and have
neighbours on our LAN, each attempt is also left unrouted in the
recipient's mailbox, with every node on our LAN and, if it could not
leave at all, with the holders we reach
(:meth:`Sender._deposit`): in a blackout where only the LAN works, a
neighbour carried to the recipient's LAN brings it (SCENARIOS S11's mule).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import trio

from p2pmsg import join
from p2pmsg.delivery import frames, rto
from p2pmsg.delivery.frames import AckFrame, MessageKind, MsgFrame
from p2pmsg.delivery.onion_path import Attempt, NoPrekeys, OnionPath
from p2pmsg.dht.service import Dht
from p2pmsg.dialer import DIAL_ERRORS, Dialer
from p2pmsg.e2e.primitives import NoSession
from p2pmsg.errors import UnsupportedEndpoint
from p2pmsg.keys import PublicIdentity
from p2pmsg.onion import sphinx
from p2pmsg.onion.route import NoRoute
from p2pmsg.store import Contact, OutboxMessage, Store

log = logging.getLogger(__name__)

PARALLEL_TRANSMITS = 64
"""Onion attempts on their way out at once, over every peer."""
SPARE_RETRIES = 3
"""Onion retries sent twice, over disjoint routes."""
PARALLEL_DEPOSITS = 8
"""Unrouted deposits (:meth:`Sender._deposit`) under way at once."""
CUT_OFF_WINDOW = 120.0
"""Seconds of onion attempts :meth:`Sender.cut_off` looks back on."""
CUT_OFF_MIN = 4
"""Attempts in that window it needs to judge."""
CUT_OFF_SAMPLES = 64
"""Attempts it remembers."""


class Sender:
    """Drains the outbox; start :meth:`run` in a nursery, :meth:`wake` on news."""

    def __init__(
        self,
        store: Store,
        dialer: Dialer,
        dht: Dht,
        *,
        batch: int,
        max_parallel_peers: int,
        ack_timeout: float,
        poll_interval: float,
        on_acked: Callable[[bytes], Awaitable[None]],
        onion: OnionPath | None = None,
        wall_clock: Callable[[], float],
        rng: Callable[[int], bytes],
    ) -> None:
        self.store = store
        self.dialer = dialer
        self.dht = dht
        self.batch = batch
        self.max_parallel_peers = max_parallel_peers
        self.ack_timeout = ack_timeout
        self.poll_interval = poll_interval
        self._on_acked = on_acked
        self.onion = onion
        self._wall_clock = wall_clock
        self._rng = rng
        self._wake = trio.Event()
        self._busy: set[bytes] = set()
        self._transmits = trio.CapacityLimiter(PARALLEL_TRANSMITS)
        self._nursery: trio.Nursery | None = None
        self.lan: join.LanPeers | None = None
        """Contacts on our LAN, reached straight over it."""
        self.lan_sent = 0
        """Messages sent over the LAN instead of an onion route."""
        self.deposited = 0
        """Attempts left unrouted in their recipient's mailbox (:meth:`_deposit`)."""
        self._deposits = trio.CapacityLimiter(PARALLEL_DEPOSITS)
        self._left: deque[tuple[float, bool]] = deque(maxlen=CUT_OFF_SAMPLES)
        """When recent onion attempts ended, and whether each left."""
        self._was_cut_off = False

    def wake(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self._wake = trio.Event()
                await self._start_due(nursery)
                next_due = await self.store.next_due_time()
                wait = self.poll_interval
                if next_due is not None:
                    wait = min(wait, max(1.0, next_due - self._wall_clock()))
                with trio.move_on_after(wait):
                    await self._wake.wait()

    async def _start_due(self, nursery: trio.Nursery) -> None:
        now = self._wall_clock()
        for message_id in await self.store.expire_due(now):
            log.warning("message %s expired undelivered", message_id.hex()[:8])
        for message in await self.store.due_messages(now, limit=self.batch * 4):
            if len(self._busy) >= self.max_parallel_peers:
                return
            if message.peer not in self._busy:
                self._busy.add(message.peer)
                nursery.start_soon(self._deliver_to, message.peer)

    async def _deliver_to(self, peer: bytes) -> None:
        try:
            now = self._wall_clock()
            # A direct link carries every queued message for the peer at once;
            # an onion attempt is one packet per message, sent only when due.
            batch = await self.store.pending_for_peer(peer, limit=self.batch, due=now)
            onion = self.onion
            first = onion.timer.rto(trio.current_time()) if onion is not None else rto.INITIAL_RTO
            schedule = []
            for message in batch:
                jitter = int.from_bytes(self._rng(2), "big") / 65536
                delay = (
                    frames.retry_delay(message.attempts, jitter)
                    if message.direct
                    else frames.onion_retry_delay(message.attempts, jitter, first)
                )
                schedule.append((message.id, now + delay))
            await self.store.mark_attempts(schedule)
            contact = await self.store.contact_by_node_id(peer)
            if contact is not None:
                await self._send_batch(contact, batch)
        finally:
            self._busy.discard(peer)
            self._wake.set()

    async def _send_batch(self, contact: Contact, batch: list[OutboxMessage]) -> None:
        direct = [m for m in batch if m.direct]
        routed = [m for m in batch if not m.direct]
        if direct:
            try:
                await self._push_or_resolve(contact, direct)
            except DIAL_ERRORS as exc:
                log.info("direct delivery failed: %s", type(exc).__name__)
        if routed and self.lan is not None and (near := self.lan.get(contact.node_id)):
            try:
                await self._push(near.public_key, near.endpoints, routed)
            except DIAL_ERRORS as exc:
                log.info("LAN delivery failed: %s", type(exc).__name__)
                self.lan.forget(contact.node_id)
            else:
                self.lan_sent += len(routed)
                return
        if routed:
            try:
                await self._send_routed(contact, routed)
            except (*DIAL_ERRORS, NoRoute, NoPrekeys, NoSession) as exc:
                log.info("onion delivery failed: %s", type(exc).__name__)

    async def _send_routed(self, contact: Contact, batch: list[OutboxMessage]) -> None:
        """One onion attempt per message, each on fresh routes: prepared one
        after another (each advances the session), then sent in the
        background, so a first relay that hangs holds up only its own packet,
        not the contact's next messages."""
        if self.onion is None:
            raise NoRoute("onion routing is off in this node")
        key = contact.public_key
        if key is None:
            found = await self.dht.find_peer(contact.node_id)
            if found is None:
                raise UnsupportedEndpoint("the contact's key is not in the DHT")
            key = found.public_key
            await self.store.set_contact_key(contact.node_id, key)
        recipient = PublicIdentity(key)
        onion = self.onion
        for message in batch:
            if message.attempts:
                lost = await onion.attempt_failed(message.id, copies=_copies(message.attempts - 1))
                assert self._nursery is not None
                self._nursery.start_soon(onion.probe, lost)
            attempt = await onion.prepare(recipient, message)
            await self._start_transmit(attempt, "onion delivery", deposit=True)
            if _copies(message.attempts) == 2:
                try:
                    spare = await onion.prepare(
                        recipient, message, avoid=attempt.relays, spare=True
                    )
                except NoRoute as exc:
                    log.debug("spare copy not sent: %r", exc)
                else:
                    await self._start_transmit(spare, "spare copy")

    async def _start_transmit(self, attempt: Attempt, what: str, *, deposit: bool = False) -> None:
        """Send ``attempt`` in the background once fewer than
        :data:`PARALLEL_TRANSMITS` are on their way; with ``deposit``, leave
        it in the recipient's mailbox should it not leave (:meth:`_deposit`)."""
        assert self._nursery is not None
        await self._transmits.acquire_on_behalf_of(attempt)
        self._nursery.start_soon(self._transmit, attempt, what, deposit)

    async def _transmit(self, attempt: Attempt, what: str, deposit: bool) -> None:
        assert self.onion is not None
        cut_off = self.cut_off()
        left = False
        try:
            await self.onion.transmit(attempt)
            left = True
        except (*DIAL_ERRORS, NoRoute) as exc:
            log.info("%s failed: %s", what, type(exc).__name__)
        finally:
            self._transmits.release_on_behalf_of(attempt)
        self._left.append((trio.current_time(), left))
        if self.lan is None or not len(self.lan):
            return  # nobody near to carry anything: the retries will do
        if self.cut_off() and not self._was_cut_off:
            # Just cut off: every message waiting for a retry goes now, and
            # so is deposited now, not at its retry, maybe after a carrier left.
            log.info("cut off from most relays: leaving messages in mailboxes")
            await self.store.retry_all_sooner(self._wall_clock())
            self.wake()
        self._was_cut_off = self.cut_off()
        if deposit and cut_off:
            await self._deposit(attempt, holders=not left)

    def cut_off(self) -> bool:
        """Whether we look cut off from most relays, as when only our LAN
        works: over the last :data:`CUT_OFF_WINDOW` seconds, at least
        :data:`CUT_OFF_MIN` onion attempts and not one ack, while some
        attempt could not leave, a link we sent on went silent (a black hole
        takes what we write, and links stay open long after their last
        packet), or half our DHT routing table stopped answering. An attempt
        that leaves through a relay on the LAN then likely dies at the next;
        a recipient merely offline leaves neither an attempt stuck here, nor
        a link silent, nor our peers silent."""
        now = trio.current_time()
        while self._left and self._left[0][0] < now - CUT_OFF_WINDOW:
            self._left.popleft()
        assert self.onion is not None
        acks = self.onion.timer.recent
        acked = bool(acks) and acks[-1][0] >= now - CUT_OFF_WINDOW
        table = self.dht.table
        silent = 2 * len(table.unreachable()) >= max(1, len(table))
        black_holed = self.onion.links.last_silent >= now - CUT_OFF_WINDOW
        stuck = silent or black_holed or any(not left for _, left in self._left)
        return len(self._left) >= CUT_OFF_MIN and stuck and not acked

    async def _deposit(self, attempt: Attempt, *, holders: bool) -> None:
        """Leave the attempt's packets, unrouted, in its recipient's mailbox:
        with every node on our LAN, and with ``holders``, with the holders
        the DHT still reaches.

        For every attempt while we are :meth:`cut_off`, as in a blackout
        where only the LAN works (SCENARIOS S11): a neighbour may be carried
        to where the recipient is, and the recipient asks each new neighbour
        for its mailbox; the holders, for an attempt that could not leave at
        all. It costs what a direct mailbox fetch costs (they learn our
        address wrote to that mailbox), so it is done only when routes
        cannot be used. The neighbours answer at once; the holders' lookups,
        slow where most of the network is cut off, run
        :data:`PARALLEL_DEPOSITS` at a time, and one more is skipped (the
        message's next attempt may make it)."""
        dest = attempt.dest.node_id
        neighbours = [entry.peer for entry in self.lan.entries()] if self.lan is not None else []
        packets = [
            sphinx.create_packet([attempt.dest], part, self._rng)[1] for part, _ in attempt.parts
        ]
        for packet in packets:
            await self.dht.mailboxes.deposit_at(neighbours, dest, packet)
        self.deposited += 1
        if not holders:
            return
        try:
            self._deposits.acquire_nowait()
        except trio.WouldBlock:
            return
        try:
            for packet in packets:
                await self.dht.deposit(dest, packet)
        finally:
            self._deposits.release()

    async def _push_or_resolve(self, contact: Contact, batch: list[OutboxMessage]) -> None:
        """Push over the contact's known endpoints; when that is impossible or
        fails, find its current peer record in the DHT and push there."""
        if contact.public_key is not None and contact.endpoints:
            try:
                await self._push(contact.public_key, contact.endpoints, batch)
            except DIAL_ERRORS as exc:
                log.debug("known endpoints failed (%r); asking the DHT", exc)
            else:
                return
        found = await self.dht.find_peer(contact.node_id)
        if found is None:
            raise UnsupportedEndpoint("no endpoints known, none found in the DHT")
        if contact.public_key is None:
            await self.store.set_contact_key(contact.node_id, found.public_key)
        if found.endpoints != contact.endpoints:
            await self.store.update_contact_endpoints(contact.node_id, found.endpoints)
        await self._push(found.public_key, found.endpoints, batch)

    async def _push(
        self, public_key: bytes, endpoints: Sequence[str], batch: list[OutboxMessage]
    ) -> None:
        link, _ = await self.dialer.connect(endpoints, PublicIdentity(public_key))
        try:
            low = await self.store.low_water(batch[0].peer)
            for message in batch:
                sent_ms = int(message.created * 1000)
                kind = MessageKind(message.kind)
                frame = MsgFrame(message.id, sent_ms, kind, message.body, message.seq, low)
                await link.send(frames.encode(frame))
            pending = {message.id for message in batch}
            with trio.move_on_after(self.ack_timeout):
                while pending:
                    ack = frames.decode(await link.receive())
                    if isinstance(ack, AckFrame) and ack.id in pending:
                        pending.discard(ack.id)
                        await self._on_acked(ack.id)
        finally:
            await link.aclose()


def _copies(attempt: int) -> int:
    """Onion copies of a message's attempt number ``attempt`` (0 the first)."""
    return 2 if 1 <= attempt <= SPARE_RETRIES else 1
