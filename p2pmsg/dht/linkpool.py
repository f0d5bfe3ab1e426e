"""Secure links kept open between DHT requests to the same peers.

A request goes on an idle pooled link to its peer when there is one, else
on a fresh one from ``connect``. A link is taken out while in use, so each
request has a link to itself; one that fails (the peer closed it while idle)
is dropped and the request goes on a fresh link. At most ``per_peer``
requests to one peer are under way at once; the rest wait for one of their
links, and fail at once if a request to the peer fails meanwhile. A burst
(a relay depositing a long message's 33 fragments at every holder) would
otherwise open a link per request, and the holders' admission control
refuses a burst of handshakes from one address. The pool keeps at most
``max_links`` idle links and none idle longer than ``link_idle`` seconds,
below the listener's own idle timeout.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from p2pmsg.dht import rpc
from p2pmsg.dht.peer import Peer
from p2pmsg.dialer import DIAL_ERRORS
from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import PublicIdentity
from p2pmsg.link.secure import SecureLink

PER_PEER = 8

Connect = Callable[[Sequence[str], PublicIdentity], Awaitable[tuple[SecureLink, Endpoint]]]


async def round_trip(link: SecureLink, request: rpc.Request) -> rpc.Response:
    """Send ``request`` and return the response with its id (others are skipped)."""
    await link.send(rpc.encode_request(request))
    while True:
        message = rpc.decode(await link.receive())
        if isinstance(message, rpc.Response) and message.rid == request.rid:
            return message


@dataclass
class _Turns:
    limiter: trio.CapacityLimiter
    failed: float = -math.inf
    """When a request to the peer last failed."""


class LinkPool:
    def __init__(
        self, connect: Connect, *, max_links: int, link_idle: float, per_peer: int = PER_PEER
    ) -> None:
        self._connect = connect
        self.max_links = max_links
        self.link_idle = link_idle
        self.per_peer = per_peer
        self._idle: dict[bytes, list[tuple[SecureLink, Endpoint, float]]] = {}
        self._turns: dict[bytes, _Turns] = {}
        """Per peer with requests under way or waiting, and only then."""

    def __len__(self) -> int:
        return sum(map(len, self._idle.values()))

    async def exchange(
        self, peer: Peer, request: rpc.Request, *, timeout: float
    ) -> tuple[rpc.Response, Endpoint]:
        """The response to ``request`` and the endpoint of the link it went on.

        ``timeout`` runs once the request's turn has come: waiting behind
        other requests to the peer is not the peer's fault. Raises what
        ``connect`` and the link raise, and ``trio.TooSlowError``;
        cancellation closes the link.
        """
        turn = self._turns.setdefault(peer.node_id, _Turns(trio.CapacityLimiter(self.per_peer)))
        queued = trio.current_time()
        try:
            async with turn.limiter:
                if turn.failed > queued:  # it failed while we waited: no use trying
                    raise ConnectionError("the peer failed a request just now")
                try:
                    with trio.fail_after(timeout):
                        return await self._exchange(peer, request)
                except Exception:
                    turn.failed = trio.current_time()
                    raise
        finally:
            stats = turn.limiter.statistics()
            idle = not stats.borrowed_tokens and not stats.tasks_waiting
            if idle and self._turns.get(peer.node_id) is turn:  # not already gone
                del self._turns[peer.node_id]

    async def _exchange(self, peer: Peer, request: rpc.Request) -> tuple[rpc.Response, Endpoint]:
        idle = self._idle.get(peer.node_id)
        if idle:
            link, used, _ = idle.pop()
            if not idle:
                del self._idle[peer.node_id]
            try:
                response = await round_trip(link, request)
            except DIAL_ERRORS:
                await link.aclose()
            except BaseException:
                await link.aclose()
                raise
            else:
                await self._put_back(peer.node_id, link, used)
                return response, used
        link, used = await self._connect(peer.endpoints, PublicIdentity(peer.public_key))
        try:
            response = await round_trip(link, request)
        except BaseException:
            await link.aclose()
            raise
        await self._put_back(peer.node_id, link, used)
        return response, used

    async def _put_back(self, node_id: bytes, link: SecureLink, used: Endpoint) -> None:
        now = trio.current_time()
        self._idle.setdefault(node_id, []).append((link, used, now))
        while (oldest := self._oldest()) is not None and (
            len(self) > self.max_links or now - oldest[1] > self.link_idle
        ):
            peer_id, _ = oldest
            old, _, _ = self._idle[peer_id].pop(0)
            if not self._idle[peer_id]:
                del self._idle[peer_id]
            await old.aclose()

    def _oldest(self) -> tuple[bytes, float] | None:
        """The peer whose first idle link went back longest ago, and when."""
        firsts = [(links[0][2], peer_id) for peer_id, links in self._idle.items()]
        if not firsts:
            return None
        when, peer_id = min(firsts)
        return peer_id, when

    async def close_all(self) -> None:
        """Close every pooled link (shielded from cancellation)."""
        with trio.CancelScope(shield=True):
            while self._idle:
                _, links = self._idle.popitem()
                for link, _, _ in links:
                    await link.aclose()
