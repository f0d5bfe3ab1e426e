"""Driving one lookup: the pure iterator's queries, run as trio tasks.

:class:`p2pmsg.dht.lookup.Lookup` decides whom to ask and when the lookup is
done; :class:`LookupRun` only carries out its steps. Each ``Query`` becomes a
task that sends FIND_NODE (or FIND_VALUE, when records of ``value_type`` are
wanted) through ``call`` and reports the answer or the failure back to the
iterator; a ``Wait`` sleeps until that deadline or the next answer. Records
found on the way are validated and the newest per publisher kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from p2pmsg.dht import records as rec
from p2pmsg.dht import rpc
from p2pmsg.dht.lookup import Finished, Lookup, Query
from p2pmsg.dht.peer import Peer
from p2pmsg.errors import P2PMsgError, RemoteProtocolError

Call = Callable[[Peer, rpc.Method, bytes], Awaitable[bytes]]


class LookupRun:
    """One lookup in progress; :meth:`run` it once."""

    def __init__(
        self,
        lookup: Lookup,
        value_type: int | None,
        *,
        call: Call,
        peer_from_bytes: Callable[[bytes], Peer | None],
        wall_clock: Callable[[], float],
    ) -> None:
        self.lookup = lookup
        self.value_type = value_type
        self.found: dict[tuple[bytes, int], rec.Record] = {}
        self._call = call
        self._peer_from_bytes = peer_from_bytes
        self._wall_clock = wall_clock
        self._wake = trio.Event()

    async def run(self) -> tuple[list[Peer], list[rec.Record]]:
        """The k closest answering peers and the valid records found, newest first."""
        async with trio.open_nursery() as nursery:
            while True:
                step = self.lookup.next(trio.current_time())
                if isinstance(step, Finished):
                    break
                if isinstance(step, Query):
                    nursery.start_soon(self._query, step.peer)
                    continue
                self._wake = trio.Event()
                with trio.move_on_at(step.until):
                    await self._wake.wait()
            nursery.cancel_scope.cancel()
        values = sorted(self.found.values(), key=lambda r: r.seq, reverse=True)
        return self.lookup.result(), values

    async def _query(self, peer: Peer) -> None:
        lookup, target = self.lookup, self.lookup.target
        try:
            if self.value_type is None:
                body = await self._call(peer, rpc.Method.FIND_NODE, target)
                closer = rpc.decode_node_reply(body)
            else:
                request = rpc.encode_find_value(self.value_type, target)
                body = await self._call(peer, rpc.Method.FIND_VALUE, request)
                values, closer = rpc.decode_value_reply(body)
                self.collect(values)
        except P2PMsgError:  # the RPC failed, or its answer is malformed
            lookup.on_failure(peer.node_id, trio.current_time())
        else:
            peers = [p for p in map(self._peer_from_bytes, closer) if p is not None]
            lookup.on_success(peer.node_id, peers, trio.current_time())
        self._wake.set()

    def collect(self, values: list[bytes]) -> None:
        """Keep the valid records of the lookup's type and target among
        ``values`` (encoded), the newest per publisher."""
        now = self._wall_clock()
        for data in values:
            try:
                record = rec.decode(data)
                rec.validate(record, now)
            except RemoteProtocolError:
                continue
            if record.type == self.value_type and record.key == self.lookup.target:
                slot = (record.publisher, record.type)
                if slot not in self.found or self.found[slot].seq < record.seq:
                    self.found[slot] = record
