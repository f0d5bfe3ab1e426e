"""DHT mailboxes over RPCs: deposit, fetch and clear, and answering them.

The rules live in :mod:`p2pmsg.dht.mailbox` (keys, the bounded store, the
owner's clear request) and the wire in :mod:`p2pmsg.dht.rpc`; this module
moves them. :class:`Mailboxes` belongs to a :class:`~p2pmsg.dht.service.Dht`,
which gives it two things: ``holders(key)``, the mailbox-k closest nodes to a
key (a disjoint-path lookup), and ``call(peer, method, body)``, one RPC.

Deposit, fetch and clear each work on the :data:`MAILBOX_REPLICAS` keys and
their holders concurrently, so holders that are slow, refuse, or lie about
one key (SCENARIOS S15) cost only that key's copy. A fetch pages through
each holder (a holder answers at most a link message's worth at a time),
keeps at most ``max_per_key`` entries from any one holder (an honest holder
never has more), and merges by entry id; the ids are hashes of the blobs,
so a holder cannot fake them. What comes back is still untrusted: the
owner's layers above decrypt and authenticate every blob.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import trio

from p2pmsg.dht import rpc
from p2pmsg.dht.mailbox import (
    DEFAULT_MAX_PER_KEY,
    DEFAULT_TTL,
    MAX_BLOB,
    MAX_CLEAR_IDS,
    MAX_TTL,
    ClearRequest,
    MailboxStore,
    entry_id,
    epoch_of,
    mailbox_keys,
    sign_clear,
    verify_clear,
)
from p2pmsg.dht.peer import Peer
from p2pmsg.errors import P2PMsgError, RemoteProtocolError
from p2pmsg.keys import Identity
from p2pmsg.link.wire import MAX_MESSAGE

#: Bytes of blobs one FETCH reply may carry: a response must fit one link message.
FETCH_BUDGET: Final = MAX_MESSAGE - 1024
#: Pages asked of one holder per key: enough for a full key of the smallest pages.
MAX_PAGES: Final = 32

Holders = Callable[[bytes], Awaitable[list[Peer]]]
Call = Callable[[Peer, rpc.Method, bytes], Awaitable[bytes]]


def _fit(blobs: list[bytes], budget: int) -> list[bytes]:
    out: list[bytes] = []
    for blob in blobs:
        budget -= len(blob) + 2
        if budget < 0:
            break
        out.append(blob)
    return out


class Mailboxes:
    """The mailboxes this node holds for others, and its requests to holders."""

    def __init__(
        self,
        own_id: bytes,
        holders: Holders,
        call: Call,
        *,
        wall_clock: Callable[[], float],
        store: MailboxStore | None = None,
    ) -> None:
        self._own_id = own_id
        self._holders = holders
        self._call = call
        self._wall_clock = wall_clock
        self.store = store or MailboxStore()

    # -- serving ---------------------------------------------------------------

    def answer(self, method: rpc.Method, requester: bytes, body: bytes, now: float) -> bytes:
        """The OK body for a DEPOSIT, FETCH or CLEAR from node ``requester``.

        Raises :class:`RemoteProtocolError` for a malformed or refused request.
        """
        match method:
            case rpc.Method.DEPOSIT:
                key, expires, blob = rpc.decode_deposit(body)
                outcome = self.store.put(key, blob, expires, now, source=requester)
                if not outcome.accepted:
                    raise RemoteProtocolError(f"deposit refused: {outcome.value}")
                return b""
            case rpc.Method.FETCH:
                key, after, limit = rpc.decode_fetch(body)
                entries = self.store.get(key, now, after=after, limit=limit + 1)
                page = _fit([e.blob for e in entries[:limit]], FETCH_BUDGET)
                return rpc.encode_fetch_reply(page, more=len(page) < len(entries))
            case rpc.Method.CLEAR:
                key, request = rpc.decode_clear_body(body)
                verify_clear(request, key)
                self.store.delete(key, list(request.ids))
                return b""
            case _:
                raise RemoteProtocolError(f"{method.name} is not a mailbox method")

    # -- depositing ------------------------------------------------------------

    async def deposit(self, owner_node_id: bytes, blob: bytes, *, ttl: int = DEFAULT_TTL) -> int:
        """Deposit ``blob`` in ``owner_node_id``'s mailbox of the current epoch,
        on the holders of every replica key; how many holders took it.

        Raises ``ValueError`` for an empty or oversized blob or a ttl outside
        1 s .. 30 days; a holder that fails is skipped. Cancellation stops it.
        """
        if not 0 < len(blob) <= MAX_BLOB or not 0 < ttl <= MAX_TTL:
            raise ValueError(f"a blob of 1..{MAX_BLOB} bytes and a ttl of 1..{MAX_TTL} s")
        now = self._wall_clock()
        expires = int(now) + ttl
        taken = 0

        async def replica(key: bytes) -> None:
            nonlocal taken

            def keep() -> int:  # we are a holder ourselves
                return int(self.store.put(key, blob, expires, now, source=self._own_id).accepted)

            body = rpc.encode_deposit(key, expires, blob)
            took = await self._ask_holders(key, rpc.Method.DEPOSIT, [body], keep)
            taken += took  # not `taken += await`: that reads taken before the wait

        async with trio.open_nursery() as nursery:
            for key in mailbox_keys(owner_node_id, epoch_of(now)):
                nursery.start_soon(replica, key)
        return taken

    async def deposit_at(
        self, peers: list[Peer], owner_node_id: bytes, blob: bytes, *, ttl: int = DEFAULT_TTL
    ) -> int:
        """:meth:`deposit` straight to ``peers`` (under every replica key),
        whoever the holders are: for a sender no route leaves, its LAN
        neighbours, one of which may carry the blob to its owner. How many
        (peer, key) pairs took it."""
        if not 0 < len(blob) <= MAX_BLOB or not 0 < ttl <= MAX_TTL:
            raise ValueError(f"a blob of 1..{MAX_BLOB} bytes and a ttl of 1..{MAX_TTL} s")
        now = self._wall_clock()
        expires = int(now) + ttl
        taken = 0

        async def one(peer: Peer, key: bytes) -> None:
            nonlocal taken
            try:
                await self._call(peer, rpc.Method.DEPOSIT, rpc.encode_deposit(key, expires, blob))
            except P2PMsgError:
                return
            taken += 1

        async with trio.open_nursery() as nursery:
            for peer in peers:
                for key in mailbox_keys(owner_node_id, epoch_of(now)):
                    nursery.start_soon(one, peer, key)
        return taken

    async def _ask_holders(
        self, key: bytes, method: rpc.Method, bodies: list[bytes], local: Callable[[], int]
    ) -> int:
        """Send each of ``bodies`` to every holder of ``key`` at once; how many
        (holder, body) pairs were acknowledged. When we are a holder ourselves,
        ``local()`` does the work here and says how many count."""
        done = 0

        async def one(peer: Peer, body: bytes) -> None:
            nonlocal done
            try:
                await self._call(peer, method, body)
            except P2PMsgError:
                return
            done += 1

        async with trio.open_nursery() as nursery:
            for peer in await self._holders(key):
                if peer.node_id == self._own_id:
                    done += local()
                    continue
                for body in bodies:
                    nursery.start_soon(one, peer, body)
        return done

    # -- fetching --------------------------------------------------------------

    async def fetch(self, owner_node_id: bytes, epoch: int) -> list[bytes]:
        """Every entry the holders of ``owner_node_id``'s mailbox of ``epoch``
        return, deduplicated by entry id. Holders that fail or lie are skipped."""
        found: dict[bytes, bytes] = {}

        async def replica(key: bytes) -> None:
            for entry in self.store.get(key, self._wall_clock(), limit=DEFAULT_MAX_PER_KEY):
                found.setdefault(entry.id, entry.blob)  # we may hold it ourselves
            async with trio.open_nursery() as nursery:
                for peer in await self._holders(key):
                    if peer.node_id != self._own_id:
                        nursery.start_soon(self._fetch_from, peer, key, found)

        async with trio.open_nursery() as nursery:
            for key in mailbox_keys(owner_node_id, epoch):
                nursery.start_soon(replica, key)
        return list(found.values())

    async def fetch_at(self, peer: Peer, owner_node_id: bytes, epoch: int) -> list[bytes]:
        """:meth:`fetch` from ``peer`` alone, whether or not it is a holder by
        the DHT's measure (a LAN neighbour that may carry our entries)."""
        found: dict[bytes, bytes] = {}
        async with trio.open_nursery() as nursery:
            for key in mailbox_keys(owner_node_id, epoch):
                nursery.start_soon(self._fetch_from, peer, key, found)
        return list(found.values())

    async def _fetch_from(self, peer: Peer, key: bytes, found: dict[bytes, bytes]) -> None:
        """Page through ``peer``'s entries of ``key`` into ``found``. Each
        holder is paged to its end: holders hold entries in their own order,
        and some missed some deposits."""
        after: bytes | None = None
        given: set[bytes] = set()
        for _ in range(MAX_PAGES):
            try:
                body = await self._call(
                    peer, rpc.Method.FETCH, rpc.encode_fetch(key, after, rpc.MAX_FETCH_ENTRIES)
                )
                blobs, more = rpc.decode_fetch_reply(body)
            except P2PMsgError:
                return
            ids = [entry_id(blob) for blob in blobs]
            new = [(i, b) for i, b in zip(ids, blobs, strict=True) if i not in given]
            for id_, blob in new[: DEFAULT_MAX_PER_KEY - len(given)]:
                given.add(id_)
                found.setdefault(id_, blob)
            # stop at the end, at a page with nothing this holder had not
            # given (going in circles), or when it gave what a key can hold
            if not more or not new or len(given) >= DEFAULT_MAX_PER_KEY:
                return
            after = ids[-1]

    # -- clearing --------------------------------------------------------------

    async def forward_clear(self, key: bytes, request: ClearRequest) -> int:
        """Carry an owner's signed clear request for ``key`` to its holders
        (we may be one); how many acknowledged. Best effort."""

        def delete() -> int:
            self.store.delete(key, list(request.ids))
            return 1

        body = rpc.encode_clear_body(key, request)
        return await self._ask_holders(key, rpc.Method.CLEAR, [body], delete)

    async def clear(self, identity: Identity, epoch: int, ids: list[bytes]) -> int:
        """Ask every holder of ``identity``'s mailbox of ``epoch`` to delete
        ``ids``; how many (holder, request) pairs were acknowledged. Best effort."""
        chunks = [ids[i : i + MAX_CLEAR_IDS] for i in range(0, len(ids), MAX_CLEAR_IDS)]
        done = 0

        async def replica(index: int, key: bytes) -> None:
            nonlocal done
            bodies = [
                rpc.encode_clear_body(key, sign_clear(identity, epoch, index, chunk))
                for chunk in chunks
            ]
            self.store.delete(key, ids)  # whether or not we are a holder
            acked = await self._ask_holders(key, rpc.Method.CLEAR, bodies, lambda: len(bodies))
            done += acked

        if not chunks:
            return 0
        async with trio.open_nursery() as nursery:
            for index, key in enumerate(mailbox_keys(identity.node_id, epoch)):
                nursery.start_soon(replica, index, key)
        return done
