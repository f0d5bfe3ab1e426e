"""Fetching and clearing our DHT mailbox through an onion route.

Theory of operation
-------------------
Anyone can compute the three DHT keys of a node's mailbox, so fetching them
from our own address tells the holders, and the nodes on the lookup paths,
that we are online. Instead the owner asks a relay to do it (as Nym's
clients ask their gateway): an onion packet to a relay carries a FETCH with
the owner's node id, the epoch, three single-use reply blocks and the
prefixes of the entries the owner already has. The relay looks the mailbox
up and fetches it as any node may (:meth:`p2pmsg.dht.service.Dht.fetch_mailbox`,
cached for a minute), picks the first entry the owner has not seen and sends
it back in parts through the reply blocks: a stored entry is a whole Sphinx
packet, larger than one reply. The owner reassembles it, checks it against
its id (a hash of the entry), hands it to its relay worker like any packet,
and asks again until nothing unseen is left. The relay learns a node id and
an epoch; never who asks, nor from where.

Clearing works the same way: the owner signs one clear request per replica
(:func:`p2pmsg.dht.mailbox.sign_clear`) and a relay carries them to the
holders. Each relay serves a bounded number of fetches at once and keeps a
bounded cache.

When we know too few relays to build routes, the owner falls back to fetching
and clearing directly: a message waiting in a mailbox matters more than
hiding that we came online.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import trio

from p2pmsg.delivery import onion_frames
from p2pmsg.delivery.onion_frames import ClearRequests, EntryPart, FetchRequest
from p2pmsg.delivery.onion_path import OnionPath
from p2pmsg.dht import mailbox
from p2pmsg.dht.service import Dht
from p2pmsg.dialer import DIAL_ERRORS
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity, PublicIdentity, node_id_of
from p2pmsg.onion import sphinx
from p2pmsg.onion.route import NoRoute

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 60.0
MAX_ENTRIES_PER_POLL = onion_frames.MAX_SEEN
CLEAR_CHUNK = 24
CACHE_TTL = 60.0
CACHE_SIZE = 16
SERVING = 4


@dataclass
class MailboxStats:
    fetched_onion: int = 0
    fetched_direct: int = 0
    served_fetches: int = 0
    served_clears: int = 0


class OnionMailbox:
    """Our mailbox over onion routes, and others' fetches we carry out."""

    def __init__(
        self,
        identity: Identity,
        dht: Dht,
        path: OnionPath,
        *,
        wall_clock: Callable[[], float],
        rng: Callable[[int], bytes],
    ) -> None:
        self.identity = identity
        self.dht = dht
        self.path = path
        self.stats = MailboxStats()
        self._wall_clock = wall_clock
        self._rng = rng
        self._waiting: dict[bytes, trio.MemorySendChannel[EntryPart]] = {}
        self._cache: OrderedDict[tuple[bytes, int, bytes], tuple[float, list[bytes]]] = (
            OrderedDict()
        )
        self._serving = trio.CapacityLimiter(SERVING)

    # -- the owner's side ------------------------------------------------------

    async def fetch(self, epoch: int, seen: set[bytes]) -> list[bytes]:
        """The entries of our mailbox of ``epoch`` not in ``seen`` (entry ids),
        at most :data:`MAX_ENTRIES_PER_POLL`. Falls back to a direct fetch when
        no route can be built."""
        try:
            relay = self._pick_relay()
        except NoRoute:
            log.info("too few relays known: fetching the mailbox directly")
            blobs = await self.dht.fetch_mailbox(self.identity.node_id, epoch)
            self.stats.fetched_direct += len(blobs)
            return [b for b in blobs if mailbox.entry_id(b) not in seen]
        got: list[bytes] = []
        # The request names at most MAX_SEEN entries: this poll's first (or the
        # relay would answer with one of them again, and the poll go nowhere),
        # then as many earlier ones as fit.
        this_poll: dict[bytes, None] = {}
        earlier = sorted({i[: onion_frames.PREFIX_BYTES] for i in seen})
        session = self._rng(onion_frames.SESSION_BYTES)
        for _ in range(MAX_ENTRIES_PER_POLL):
            known = [*this_poll, *(p for p in earlier if p not in this_poll)]
            entry = await self._fetch_one(relay, epoch, session, known)
            if entry is None:
                break
            blob, remaining = entry
            this_poll[mailbox.entry_id(blob)[: onion_frames.PREFIX_BYTES]] = None
            got.append(blob)
            self.stats.fetched_onion += 1
            if not remaining:
                break
        return got

    def _pick_relay(self) -> PublicIdentity:
        candidates = self.path.candidates(self._wall_clock())
        others = [c for c in candidates if c.node_id != self.identity.node_id]
        if len(others) < self.path.options.hops + 1:  # the relay, and routes around it
            raise NoRoute("too few relays to fetch through one")
        pick = others[int.from_bytes(self._rng(4), "big") % len(others)]
        peer = self.dht.table.get(pick.node_id)
        if peer is None:
            raise NoRoute("the relay left the routing table")
        return PublicIdentity(peer.public_key)

    async def _fetch_one(
        self, relay: PublicIdentity, epoch: int, session: bytes, known: list[bytes]
    ) -> tuple[bytes, int] | None:
        """The next unseen entry and how many remain, or None (none left, or no answer)."""
        tag = self._rng(16)
        send, receive = trio.open_memory_channel[EntryPart](onion_frames.MAX_FETCH_SURBS)
        self._waiting[tag] = send
        try:
            surbs = [
                await self.path.make_surb(tag, avoid=relay.node_id, ttl=FETCH_TIMEOUT)
                for _ in range(onion_frames.MAX_FETCH_SURBS)
            ]
            seen = tuple(known[: onion_frames.MAX_SEEN])
            request = FetchRequest(self.identity.node_id, epoch, session, tuple(surbs), seen)
            await self.path.send_to(relay, onion_frames.encode_fetch(request))
            with trio.move_on_after(FETCH_TIMEOUT):
                return await _reassemble(receive)
            log.info("a relay did not answer a mailbox fetch in %.0f s", FETCH_TIMEOUT)
        except (*DIAL_ERRORS, NoRoute, RemoteProtocolError) as exc:
            log.info("a mailbox fetch through a relay failed: %s", type(exc).__name__)
        finally:
            del self._waiting[tag]
        return None

    async def take_part(self, tag: bytes, part: EntryPart) -> None:
        channel = self._waiting.get(tag)
        if channel is not None:
            # more parts than reply blocks would block: a confused or lying relay
            with contextlib.suppress(trio.WouldBlock):
                channel.send_nowait(part)

    async def clear(self, epoch: int, ids: list[bytes]) -> None:
        """Ask the holders to delete ``ids``: through a relay, or directly."""
        for start in range(0, len(ids), CLEAR_CHUNK):
            chunk = ids[start : start + CLEAR_CHUNK]
            try:
                relay = self._pick_relay()
                requests = tuple(
                    mailbox.encode_clear(mailbox.sign_clear(self.identity, epoch, index, chunk))
                    for index in range(mailbox.MAILBOX_REPLICAS)
                )
                await self.path.send_to(relay, onion_frames.encode_clears(ClearRequests(requests)))
            except (*DIAL_ERRORS, NoRoute):
                await self.dht.clear_mailbox(self.identity, epoch, chunk)

    # -- a relay's side --------------------------------------------------------

    async def serve_fetch(self, request: FetchRequest) -> None:
        """Fetch ``request.owner``'s mailbox and send the first unseen entry back."""
        async with self._serving:
            blobs = await self._cached_fetch(request)
        seen = set(request.seen)
        unseen = [b for b in blobs if mailbox.entry_id(b)[: onion_frames.PREFIX_BYTES] not in seen]
        self.stats.served_fetches += 1
        log.info("fetching a mailbox for someone: %d entries, %d unseen", len(blobs), len(unseen))
        surbs = [sphinx.decode_surb(s) for s in request.surbs]
        if not unseen:
            await self._answer(surbs[0], EntryPart(bytes(16), 0, 0, 0, b""))
            return
        blob = unseen[0]
        parts = [
            blob[i : i + onion_frames.MAX_PART] for i in range(0, len(blob), onion_frames.MAX_PART)
        ]
        if len(parts) > len(surbs):
            raise RemoteProtocolError("too few reply blocks for an entry")
        entry = mailbox.entry_id(blob)
        for index, (data, surb) in enumerate(zip(parts, surbs, strict=False)):
            await self._answer(surb, EntryPart(entry, index, len(parts), len(unseen) - 1, data))

    async def _cached_fetch(self, request: FetchRequest) -> list[bytes]:
        """One DHT fetch per requester's poll (session), reused while it pages."""
        now = trio.current_time()
        slot = (request.owner, request.epoch, request.session)
        cached = self._cache.get(slot)
        if cached is not None and now - cached[0] < CACHE_TTL:
            return cached[1]
        found = await self.dht.fetch_mailbox(request.owner, request.epoch)
        blobs = sorted(found, key=mailbox.entry_id)
        self._cache[slot] = (now, blobs)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return blobs

    async def _answer(self, surb: sphinx.Surb, part: EntryPart) -> None:
        first, packet = sphinx.use_surb(surb, onion_frames.encode_part(part))
        try:
            await self.path.send_packet(first, packet)
        except (*DIAL_ERRORS, NoRoute) as exc:
            log.debug("could not answer a mailbox fetch: %r", exc)

    async def serve_clear(self, request: ClearRequests) -> None:
        """Carry the owner's signed clear requests to the holders (checked first:
        we amplify nothing a holder would refuse)."""
        self.stats.served_clears += 1
        for data in request.requests:
            clear = mailbox.decode_clear(data)
            key = mailbox.mailbox_keys(node_id_of(clear.owner), clear.epoch)[clear.index]
            mailbox.verify_clear(clear, key)
            await self.dht.mailboxes.forward_clear(key, clear)


async def _reassemble(receive: trio.MemoryReceiveChannel[EntryPart]) -> tuple[bytes, int] | None:
    """Collect one entry's parts; None when the relay says nothing is left.
    Raises :class:`RemoteProtocolError` for parts that do not fit together."""
    first = await receive.receive()
    if first.count == 0:
        return None
    parts = {first.index: first}
    while len(parts) < first.count:
        part = await receive.receive()
        if part.entry != first.entry or part.count != first.count:
            raise RemoteProtocolError("parts of different entries")
        parts[part.index] = part
    blob = b"".join(parts[i].data for i in range(first.count))
    if mailbox.entry_id(blob) != first.entry:
        raise RemoteProtocolError("an entry that does not match its id")
    return blob, first.remaining
