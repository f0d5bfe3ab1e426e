"""Secure links kept open between DHT requests to the same peers.

A request goes on a pooled link when there is one, else on a fresh one from
``connect``. A pooled link is taken out while in use, so concurrent calls to
one peer each get their own; one that fails (the peer closed it while idle)
is dropped and the request goes on a fresh link. The pool keeps at most
``max_links`` links and none idle longer than ``link_idle`` seconds, below
the listener's own idle timeout.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import trio

from p2pmsg.dht import rpc
from p2pmsg.dht.peer import Peer
from p2pmsg.dialer import DIAL_ERRORS
from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import PublicIdentity
from p2pmsg.link.secure import SecureLink

Connect = Callable[[Sequence[str], PublicIdentity], Awaitable[tuple[SecureLink, Endpoint]]]


async def round_trip(link: SecureLink, request: rpc.Request) -> rpc.Response:
    """Send ``request`` and return the response with its id (others are skipped)."""
    await link.send(rpc.encode_request(request))
    while True:
        message = rpc.decode(await link.receive())
        if isinstance(message, rpc.Response) and message.rid == request.rid:
            return message


class LinkPool:
    def __init__(self, connect: Connect, *, max_links: int, link_idle: float) -> None:
        self._connect = connect
        self.max_links = max_links
        self.link_idle = link_idle
        self._links: OrderedDict[bytes, tuple[SecureLink, Endpoint, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._links)

    async def exchange(self, peer: Peer, request: rpc.Request) -> tuple[rpc.Response, Endpoint]:
        """The response to ``request`` and the endpoint of the link it went on.

        Raises what ``connect`` and the link raise; cancellation closes the link.
        """
        pooled = self._links.pop(peer.node_id, None)
        if pooled is not None:
            link, used, _ = pooled
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
        if node_id in self._links:
            await link.aclose()
            return
        self._links[node_id] = (link, used, now)
        while len(self._links) > self.max_links or (
            self._links and now - next(iter(self._links.values()))[2] > self.link_idle
        ):
            _, (old, _, _) = self._links.popitem(last=False)
            await old.aclose()

    async def close_all(self) -> None:
        """Close every pooled link (shielded from cancellation)."""
        with trio.CancelScope(shield=True):
            while self._links:
                _, (link, _, _) = self._links.popitem()
                await link.aclose()
