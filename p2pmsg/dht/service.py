"""The DHT as a trio service: RPCs over secure links, lookups, records.

The pure parts (routing table, lookup iterator, records, the records seen
(:mod:`p2pmsg.dht.known`), RPC codec, rate limiter) decide everything; this
module only moves their inputs and outputs over links. Outbound, every RPC
goes on a pooled or fresh secure link (:mod:`p2pmsg.dht.linkpool`; the
node's dialler tries a peer's endpoints in order and reports the one that
authenticated) and waits for its response under ``rpc_timeout``. A peer
enters the routing table only after it answered us on an endpoint we
dialled, so its network prefix (the unit of the diversity limits) is one we
verified, not one it claimed.

Inbound, the node hands each request to :meth:`Dht.handle`. A requester may
attach its signed peer record; when it is not in our table yet and the
table has a place for it, it is queued (bounded, drop when full) for a
verifying PING dialled back to it, unless those endpoints were verified
within the refresh interval: by such a PING, or by answering a request we
dialled to them (a lookup's FIND_NODE, say). Writes
(STORE, DEPOSIT) are free until a window brings more than a calm node takes;
then they cost a proof of work (:mod:`p2pmsg.dht.puzzle`), which
:meth:`Dht.call` pays when asked.

Every node keeps its own signed peer record, republished by :meth:`Dht.run`
before it expires, and stored at the k nodes closest to its id and, as
copies, to two more keys (:func:`~p2pmsg.dht.records.peer_keys`); a new
one from :meth:`Dht.publish_local` (new endpoints, the next epoch's onion
keys) is stored there at once. Mailboxes (:mod:`p2pmsg.dht.mailboxes`) ride
on the same lookups and calls.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from p2pmsg.clock import MIN_PEERS, ClockCheck
from p2pmsg.dht import puzzle, rpc
from p2pmsg.dht import records as rec
from p2pmsg.dht.driver import LookupRun
from p2pmsg.dht.known import KnownPeers
from p2pmsg.dht.linkpool import Connect, LinkPool
from p2pmsg.dht.lookup import Lookup
from p2pmsg.dht.mailbox import DEFAULT_TTL
from p2pmsg.dht.mailboxes import Mailboxes
from p2pmsg.dht.peer import Peer, distance, prefix_of_endpoint
from p2pmsg.dht.ratelimit import RateLimiter
from p2pmsg.dht.record_store import Ignored, RecordStore
from p2pmsg.dht.table import PingNeeded, RoutingTable
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import LocalProtocolError, P2PMsgError, RemoteProtocolError
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.link.wire import MAX_MESSAGE

log = logging.getLogger(__name__)

RPC_ERRORS = (
    OSError,
    P2PMsgError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
    trio.TooSlowError,
)


def _fit(records: list[bytes], budget: int) -> list[bytes]:
    """The leading records that fit ``budget`` bytes with their length prefixes."""
    out: list[bytes] = []
    for record in records[: rpc.MAX_RECORDS]:
        budget -= len(record) + 2
        if budget < 0:
            break
        out.append(record)
    return out


#: Bytes of records one reply may carry: a response must fit one link message.
REPLY_BUDGET = MAX_MESSAGE - 1024
PRICED = frozenset({rpc.Method.STORE, rpc.Method.DEPOSIT})
"""The writes that cost a proof of work under load."""
ADDRESS_SHARE = 4
"""An address may send this many times one id's request rate: a few honest
nodes behind one NAT, not a flooder's thousand ids."""


class RpcFailed(P2PMsgError):
    """A DHT request to a peer failed."""


@dataclass(frozen=True)
class DhtOptions:
    k: int = 20
    alpha: int = 3
    rpc_timeout: float = 5.0
    max_per_prefix_bucket: int | None = 2
    max_per_prefix_table: int | None = 3
    record_ttl: int = 24 * 3600
    republish_every: float = 3600.0
    refresh_every: float = 3600.0
    rate: float = 20.0
    burst: float = 60.0
    verify_queue: int = 64
    known_records: int = 4096
    disjoint_paths: int = 3
    max_links: int = 32
    link_idle: float = 60.0
    mailbox_k: int | None = None
    """Holders per mailbox replica key; None means ``k`` (at most ``k``)."""
    unlisted: bool = False
    """A bridge: our peer record is never stored, sent or answered, so no
    other node can list us; only those given our invite can reach us."""


class Dht:
    """One node's view of the DHT. Start :meth:`run` in a nursery."""

    def __init__(
        self,
        identity: Identity,
        connect: Connect,
        *,
        options: DhtOptions | None = None,
        wall_clock: Callable[[], float],
        rng: Callable[[int], bytes],
        clock: ClockCheck | None = None,
    ) -> None:
        self.identity = identity
        self.options = options = options or DhtOptions()
        self._connect = connect
        self._wall_clock = wall_clock
        self._rng = rng
        self.table = RoutingTable(
            identity.node_id,
            k=options.k,
            max_per_prefix_bucket=options.max_per_prefix_bucket,
            max_per_prefix_table=options.max_per_prefix_table,
        )
        self.records = RecordStore(own=[identity.public.key])
        self.limiter = RateLimiter(options.rate, options.burst)
        self.address_limiter = RateLimiter(
            options.rate * ADDRESS_SHARE, options.burst * ADDRESS_SHARE
        )
        """Requests per address too: a flooder's many ids share few addresses."""
        self.pricing = puzzle.Pricing(rng)
        """The price of writes: free while calm, a proof of work under load."""
        self.clock = clock or ClockCheck()
        """How far our wall clock is from our peers' (PING replies feed it)."""
        self.own_record: rec.Record | None = None
        self.own_copies: tuple[rec.Record, ...] = ()
        """:attr:`own_record`'s copies, under its other keys (``rec.peer_keys``)."""
        self.known = KnownPeers(
            identity.node_id, self.table.__contains__, capacity=options.known_records
        )
        self.links = LinkPool(connect, max_links=options.max_links, link_idle=options.link_idle)
        self._verified: OrderedDict[bytes, tuple[tuple[str, ...], float]] = OrderedDict()
        """node id -> (endpoints, when): queued for a verifying ping, or answered
        a request we dialled to those endpoints (which verifies them as well)."""
        self._verify_send, self._verify_receive = trio.open_memory_channel[Peer](
            options.verify_queue
        )
        self.dropped_verifications = 0
        self.mailboxes = Mailboxes(
            identity.node_id, self._mailbox_holders, self.call, wall_clock=wall_clock
        )
        self._publish_due = trio.Event()

    def __repr__(self) -> str:
        return f"Dht(node_id={self.identity.node_id.hex()[:16]}…, peers={len(self.table)})"

    def stats(self) -> dict[str, Any]:
        """Counters for ``status``: sizes, and what was refused and why."""
        return {
            "peers": len(self.table),
            "records": len(self.records),
            "refused_records": self.records.stats,
            "rate_limited": self.limiter.refused + self.address_limiter.refused,
            "pricing": self.pricing.stats(),
            "dropped_verifications": self.dropped_verifications,
            "pooled_links": len(self.links),
            "mailbox": self.mailboxes.store.stats(),
        }

    # -- our own record --------------------------------------------------------

    @property
    def shared_record(self) -> rec.Record | None:
        """Our peer record as we hand it to others: none when unlisted."""
        return None if self.options.unlisted else self.own_record

    def as_peer(self) -> Peer:
        """What an invite to this node gives another: its key and endpoints."""
        if self.own_record is None:
            raise LocalProtocolError("publish_local() first")
        info = rec.decode_peer_info(self.own_record.value)
        prefix = prefix_of_endpoint(Endpoint.parse(info.endpoints[0]))
        return Peer(self.identity.node_id, self.identity.public.key, info.endpoints, prefix)

    def publish_local(
        self,
        endpoints: Sequence[str],
        capabilities: frozenset[str],
        onion_keys: Sequence[tuple[int, bytes]] = (),
    ) -> rec.Record:
        """Sign a fresh peer record for ourselves and keep it locally; a running
        :meth:`run` stores it on the k closest nodes at once (once it has peers).

        ``onion_keys`` are (key epoch, X25519 public key) pairs, epochs
        increasing. Raises ``ValueError`` for out-of-bounds fields.
        """
        info = rec.PeerInfo(tuple(endpoints), capabilities, tuple(onion_keys))
        record = self._sign_own(info)
        self._publish_due.set()
        return record

    def _sign_own(self, info: rec.PeerInfo) -> rec.Record:
        now = self._wall_clock()
        # seq in milliseconds, never below the last: two publishes in one ms still order
        seq = int(now * 1000)
        if self.own_record is not None:
            seq = max(seq, self.own_record.seq + 1)
        expires = int(now) + self.options.record_ttl
        record, *copies = (
            rec.make_peer_record(self.identity, info, seq, expires, replica)
            for replica in range(rec.PEER_REPLICAS)
        )
        if not self.options.unlisted:
            for each in (record, *copies):
                self.records.put(each, now, source=self.identity.node_id)
        self.own_record, self.own_copies = record, tuple(copies)
        return record

    async def put_own(self) -> None:
        """Store our peer record and its copies, each on the k nodes closest
        to its key (nothing when unlisted)."""
        if self.shared_record is None:
            return
        async with trio.open_nursery() as nursery:
            for record in (self.shared_record, *self.own_copies):
                nursery.start_soon(self.put, record)

    def table_records(self) -> list[rec.Record]:
        """The validated, unexpired peer records of the peers in our routing table
        (validated when first seen; newest seen per peer), in table order."""
        now = self._wall_clock()
        found = (self.known.record_of(p.node_id) for p in self.table.peers())
        records = (rec.decode(data) for data in found if data is not None)
        return [r for r in records if r.expires > now]

    def _peer_from_bytes(self, data: bytes) -> Peer | None:
        return self.known.peer_from_bytes(data, self._wall_clock())

    # -- serving ---------------------------------------------------------------

    async def handle(
        self, requester: PublicIdentity, request: rpc.Request, address: str | None = None
    ) -> rpc.Response:
        """Answer one request from an authenticated ``requester``, which came
        from ``address`` when the link it came on knows it."""
        now = self._wall_clock()
        # Monotonic time: wall-clock floats are too coarse, and may step.
        mono = trio.current_time()
        if not self.limiter.allow(requester.node_id, mono) or (
            address is not None and not self.address_limiter.allow(address.encode(), mono)
        ):
            return rpc.Response(request.rid, rpc.Status.RATE_LIMITED)
        if request.method in PRICED or request.method is rpc.Method.PAID:
            priced = self._priced(requester, request, mono)
            if isinstance(priced, rpc.Response):
                return priced
            request = priced
        if request.sender:
            self._consider(requester, request.sender)
        try:
            body = self._answer(requester, request, now)
        except RemoteProtocolError as exc:
            log.debug("refused a DHT request: %s", exc)
            return rpc.Response(request.rid, rpc.Status.REFUSED)
        await trio.lowlevel.checkpoint()
        return rpc.Response(request.rid, rpc.Status.OK, body)

    def _priced(
        self, requester: PublicIdentity, request: rpc.Request, mono: float
    ) -> rpc.Request | rpc.Response:
        """The write to answer (a PAID one unwrapped), or the answer that
        refuses it or asks for work first."""
        if request.method is rpc.Method.PAID:
            try:
                paid = puzzle.decode_paid(request.body)
                method = rpc.Method(paid.method)
            except (RemoteProtocolError, ValueError):
                return rpc.Response(request.rid, rpc.Status.REFUSED)
            if method not in PRICED:
                return rpc.Response(request.rid, rpc.Status.REFUSED)
            price = self.pricing.accept(paid.price, puzzle.proof(paid, requester.node_id), mono)
            request = rpc.Request(request.rid, method, request.sender, paid.body)
        else:
            price = self.pricing.ask(mono)
        if price is None:
            return request
        return rpc.Response(request.rid, rpc.Status.PUZZLE, puzzle.encode_price(price))

    def _answer(self, requester: PublicIdentity, request: rpc.Request, now: float) -> bytes:
        match request.method:
            case rpc.Method.PING:
                own = rec.encode(self.shared_record) if self.shared_record else b""
                return rpc.encode_pong(max(0, int(now * 1000)), own)
            case rpc.Method.FIND_NODE:
                target = rpc.decode_target(request.body)
                closer = self._closer_records(target, requester.node_id)
                return rpc.encode_records(_fit(closer, REPLY_BUDGET))
            case rpc.Method.FIND_VALUE:
                rtype, key = rpc.decode_find_value(request.body)
                values = _fit(self._values(rtype, key, now), REPLY_BUDGET // 2)
                closer = _fit(self._closer_records(key, requester.node_id), REPLY_BUDGET // 2)
                return rpc.encode_value_reply(values, closer)
            case rpc.Method.STORE:
                record = rec.decode(request.body)
                result = self.records.put(record, now, source=requester.node_id)
                if record.type is rec.RecordType.PEER and record.key in self.table:
                    self.known.remember(record)
                if isinstance(result, Ignored) and result.reason.value != "not_newer":
                    raise RemoteProtocolError(f"store refused: {result.reason.value}")
                return b""
            case rpc.Method.DEPOSIT | rpc.Method.FETCH | rpc.Method.CLEAR:
                return self.mailboxes.answer(request.method, requester.node_id, request.body, now)
            case rpc.Method.PAID:  # unwrapped by _priced
                raise RemoteProtocolError("a paid request inside a paid request")

    def _values(self, rtype: int, key: bytes, now: float) -> list[bytes]:
        try:
            record_type = rec.RecordType(rtype)
        except ValueError as exc:
            raise RemoteProtocolError(f"unknown record type {rtype}") from exc
        found = self.records.get(record_type, key, now)
        return [rec.encode(r) for r in found[: rpc.MAX_RECORDS]]

    def _closer_records(self, target: bytes, requester: bytes) -> list[bytes]:
        peers = self.table.closest(target, self.options.k, exclude=(requester,))
        found = (self.known.record_of(p.node_id) for p in peers)
        return [r for r in found if r is not None]

    def consider(self, data: bytes) -> Peer | None:
        """A peer from an untrusted signed peer record (mDNS, an invite...),
        or None when the record is invalid or our own. Unverified: ping it."""
        return self._peer_from_bytes(data)

    def _consider(self, requester: PublicIdentity, sender: bytes) -> None:
        peer = self._peer_from_bytes(sender)
        if peer is None or peer.node_id != requester.node_id:
            return
        listed = self.table.get(peer.node_id)
        if listed is None and not self.table.has_room(peer.node_id):
            # Verified, it would find every place taken: the dial back is not
            # worth it (its bucket fills from the peers our own calls reach).
            return
        if listed is None or listed.endpoints != peer.endpoints:
            # A newcomer, or a known peer that moved: verify the new endpoints.
            self._verify(peer, moved=listed is not None)

    def _verify(self, peer: Peer, *, moved: bool = False) -> bool:
        """Queue a verifying ping, at most once per peer and endpoints per
        refresh interval unless it ``moved``. False when it was not queued
        (verified recently, or the queue is full)."""
        now = trio.current_time()
        last = self._verified.get(peer.node_id)
        if (
            not moved
            and last is not None
            and last[0] == peer.endpoints
            and now - last[1] < self.options.refresh_every
        ):
            return False
        try:
            self._verify_send.send_nowait(peer)
        except trio.WouldBlock:
            self.dropped_verifications += 1
            return False
        self._mark_verified(peer, now)
        return True

    def _mark_verified(self, peer: Peer, now: float) -> None:
        self._verified[peer.node_id] = (peer.endpoints, now)
        self._verified.move_to_end(peer.node_id)
        while len(self._verified) > self.options.known_records:
            self._verified.popitem(last=False)

    # -- calling ---------------------------------------------------------------

    async def call(self, peer: Peer, method: rpc.Method, body: bytes = b"") -> bytes:
        """One RPC to ``peer``; the OK response's body. Raises :class:`RpcFailed`.

        A peer that answers is offered to the routing table with the prefix
        of the endpoint that worked; one that fails is reported to it.
        """
        sender = rec.encode(self.shared_record) if self.shared_record else b""
        request = rpc.Request(self._rng(rpc.RID_BYTES), method, sender, body)
        response, used = await self._exchange(peer, request)
        if response.status is rpc.Status.PUZZLE and method in PRICED:
            try:
                price = puzzle.decode_price(response.body)
                first = self._rng(puzzle.NONCE_BYTES)
                paid = await puzzle.solve(price, self.identity.node_id, method, body, first=first)
            except (RemoteProtocolError, ValueError) as exc:
                raise RpcFailed(f"{method.name} not paid for: {exc}") from exc
            paid_body = puzzle.encode_paid(paid)
            request = rpc.Request(self._rng(rpc.RID_BYTES), rpc.Method.PAID, sender, paid_body)
            response, used = await self._exchange(peer, request)
        if response.status is not rpc.Status.OK:
            raise RpcFailed(f"{method.name} answered {response.status.name}")
        verified = Peer(peer.node_id, peer.public_key, peer.endpoints, prefix_of_endpoint(used))
        # It answered on an endpoint we dialled: as good as a verifying ping
        # (its request arriving next, say a ping verifying us, needs none).
        self._mark_verified(peer, trio.current_time())
        self._offer(verified)
        return response.body

    async def _exchange(self, peer: Peer, request: rpc.Request) -> tuple[rpc.Response, Endpoint]:
        try:
            return await self.links.exchange(peer, request, timeout=self.options.rpc_timeout)
        except RPC_ERRORS as exc:
            self.table.on_failure(peer.node_id)
            raise RpcFailed(f"{request.method.name} failed: {type(exc).__name__}") from exc

    def _offer(self, peer: Peer) -> None:
        result = self.table.offer(peer, trio.current_time())
        if peer.node_id in self.table:
            self.known.pin(peer.node_id, len(self.table))
        if isinstance(result, PingNeeded) and not self._verify(result.oldest):
            # Seen alive recently (or no room to ask): the old contact stays.
            self.table.ping_result(result.oldest.node_id, True, trio.current_time())

    async def ping(self, peer: Peer) -> bool:
        """True when ``peer`` answered; its record is remembered and its
        clock compared with ours (:attr:`clock`)."""
        sent = self._wall_clock()
        try:
            body = await self.call(peer, rpc.Method.PING)
        except RpcFailed:
            return False
        try:
            clock_ms, record = rpc.decode_pong(body)
        except RemoteProtocolError as exc:
            log.debug("a bad PING reply: %s", exc)
            return True
        self.clock.sample(peer.node_id, sent, self._wall_clock(), clock_ms / 1000)
        if record:
            self._peer_from_bytes(record)
        return True

    async def read_clocks(self, want: int = MIN_PEERS) -> None:
        """Ping peers of the routing table whose clocks we have not read
        lately, so that the clock check has at least ``want`` fresh readings
        (joins and verifications alone may ping too few)."""
        missing = want - self.clock.verdict().peers
        unread = [p for p in self.table.peers() if not self.clock.read(p.node_id)]
        async with trio.open_nursery() as nursery:
            for peer in unread[: max(0, missing)]:
                nursery.start_soon(self.ping, peer)

    # -- lookups ---------------------------------------------------------------

    async def lookup(
        self,
        target: bytes,
        *,
        disjoint_paths: int = 1,
        value_type: rec.RecordType | None = None,
    ) -> tuple[list[Peer], list[rec.Record]]:
        """The k closest answering peers to ``target`` and, with ``value_type``,
        the valid records of that type stored under ``target`` (newest first),
        our own store's among them: we may be one of the k closest."""
        lookup = Lookup(
            target,
            self.table.closest(target, self.options.k),
            k=self.options.k,
            alpha=self.options.alpha,
            disjoint_paths=disjoint_paths,
            rpc_timeout=self.options.rpc_timeout,
            exclude={self.identity.node_id},
        )
        run = LookupRun(
            lookup,
            value_type,
            call=self.call,
            peer_from_bytes=self._peer_from_bytes,
            wall_clock=self._wall_clock,
        )
        if value_type is not None:
            held = self.records.get(value_type, target, self._wall_clock())
            run.collect([rec.encode(r) for r in held])
        return await run.run()

    # -- storing and finding ---------------------------------------------------

    async def put(self, record: rec.Record) -> int:
        """Store ``record`` on the k nodes closest to its key; how many took it."""
        peers, _ = await self.lookup(record.key)
        stored = 0

        async def store(peer: Peer) -> None:
            nonlocal stored
            try:
                await self.call(peer, rpc.Method.STORE, rec.encode(record))
            except RpcFailed:
                return
            stored += 1

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(store, peer)
        return stored

    async def find_records(self, rtype: rec.RecordType, key: bytes) -> list[rec.Record]:
        """The valid records of type ``rtype`` stored under ``key``, newest first,
        looked up on disjoint paths (see :meth:`find_peer`)."""
        _, values = await self.lookup(
            key, value_type=rtype, disjoint_paths=self.options.disjoint_paths
        )
        return values

    async def find_newest(self, rtype: rec.RecordType, keys: Sequence[bytes]) -> list[rec.Record]:
        """:meth:`find_records` under each of ``keys`` at once (the copies of
        one record: :func:`~p2pmsg.dht.records.prekey_keys`), newest first, so
        Sybils around one key hide nothing the others hold."""
        found: list[list[rec.Record]] = [[] for _ in keys]

        async def one(i: int) -> None:
            found[i] = await self.find_records(rtype, keys[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(keys)):
                nursery.start_soon(one, i)
        merged = {(r.publisher, r.seq, r.value): r for copies in found for r in copies}
        return sorted(merged.values(), key=lambda r: r.seq, reverse=True)

    async def find_peer(self, node_id: bytes) -> Peer | None:
        """The newest valid peer record of ``node_id`` in the DHT, as a Peer.

        The lookup runs on disjoint paths (S/Kademlia), so Sybils around the
        key have to capture every path to hide the record; when they did (or
        the record is not there), its copies under the other
        :func:`~p2pmsg.dht.records.peer_keys`, far from the id, are looked up
        (S14)."""
        _, values = await self.lookup(
            node_id, value_type=rec.RecordType.PEER, disjoint_paths=self.options.disjoint_paths
        )
        if peer := self._peer_among(node_id, values):
            return peer
        copies = await self.find_newest(rec.RecordType.PEER, rec.peer_keys(node_id)[1:])
        return self._peer_among(node_id, copies)

    def _peer_among(self, node_id: bytes, records: list[rec.Record]) -> Peer | None:
        for record in records:
            peer = self._peer_from_bytes(rec.encode(record))
            if peer is not None and peer.node_id == node_id:
                return peer
        return None

    # -- mailboxes -------------------------------------------------------------

    @property
    def mailbox_k(self) -> int:
        """How many holders each mailbox replica key gets."""
        return min(self.options.mailbox_k or self.options.k, self.options.k)

    async def _mailbox_holders(self, key: bytes) -> list[Peer]:
        """The mailbox_k nodes closest to ``key``, ourselves included when we
        are one (and reachable), so every node names the same holders."""
        peers, _ = await self.lookup(key, disjoint_paths=self.options.disjoint_paths)
        own = self.shared_record
        if own is not None and rec.decode_peer_info(own.value).endpoints:
            peers = sorted([*peers, self.as_peer()], key=lambda p: distance(p.node_id, key))
        return peers[: self.mailbox_k]

    async def deposit(self, owner_node_id: bytes, blob: bytes, *, ttl: int = DEFAULT_TTL) -> int:
        """Deposit ``blob`` in ``owner_node_id``'s mailbox; how many holders took it.

        See :meth:`Mailboxes.deposit` (raises ``ValueError`` for a bad blob or ttl).
        """
        return await self.mailboxes.deposit(owner_node_id, blob, ttl=ttl)

    async def fetch_mailbox(self, owner_node_id: bytes, epoch: int) -> list[bytes]:
        """The blobs in ``owner_node_id``'s mailbox of ``epoch``, deduplicated."""
        return await self.mailboxes.fetch(owner_node_id, epoch)

    async def clear_mailbox(self, identity: Identity, epoch: int, ids: Sequence[bytes]) -> int:
        """Ask the holders to delete entries ``ids``; how many acknowledged (best effort)."""
        return await self.mailboxes.clear(identity, epoch, list(ids))

    # -- joining and upkeep ----------------------------------------------------

    async def join(self, seeds: Sequence[Peer], *, stagger: float = 0.25) -> bool:
        """Ping ``seeds`` with staggered starts; on the first answer, look up our
        own id to fill the table. True when any seed answered."""
        joined = trio.Event()

        async def attempt(index: int, peer: Peer) -> None:
            await trio.sleep(index * stagger)
            if await self.ping(peer):
                joined.set()
                nursery.cancel_scope.cancel()

        # The nursery ends on the first answer, or by itself when every seed failed.
        async with trio.open_nursery() as nursery:
            for index, peer in enumerate(seeds):
                nursery.start_soon(attempt, index, peer)
        if not joined.is_set():
            return False
        await self.lookup(self.identity.node_id)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Verify newcomers and pings, republish our record, refresh buckets."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(self._verifier)
                nursery.start_soon(self._publisher)
                task_status.started()
                while True:
                    await self._upkeep()
                    await trio.sleep(min(self.options.republish_every, self.options.refresh_every))
        finally:
            await self.links.close_all()

    async def _verifier(self) -> None:
        async for peer in self._verify_receive:
            alive = await self.ping(peer)
            self.table.ping_result(peer.node_id, alive, trio.current_time())

    async def _publisher(self) -> None:
        """Store each record :meth:`publish_local` signs on the k closest nodes."""
        while True:
            await self._publish_due.wait()
            self._publish_due = trio.Event()
            if len(self.table):
                await self.put_own()

    async def _upkeep(self) -> None:
        now = self._wall_clock()
        self.records.expire(now)
        self.mailboxes.store.expire(now)
        if self.own_record is not None and len(self.table):
            self._sign_own(rec.decode_peer_info(self.own_record.value))
            await self.put_own()
        stale = self.table.stale_buckets(
            trio.current_time(), self.options.refresh_every, rng=self._rng
        )
        for target in stale:
            await self.lookup(target)
