"""A node's inbound links: admitted, secured, then served message by message.

Theory of operation
-------------------
Each listener hands its new links to :meth:`Inbound.handle`. Admission
(:mod:`p2pmsg.admission`) refuses a link from a busy address before its
handshake, as Tor does, or admits it with a ticket that a link from a less
busy address may later evict. The secure-link handshake is priced under
load (:mod:`p2pmsg.puzzle`), and its replay tag is on disk before we answer.

The link then carries link messages, each dispatched by its type byte (one
small method per type, :meth:`Inbound._handlers`): DHT requests and
responses, onion packets, the gateway hello, bridge requests, and a
tunnel's OPEN, which hands the link to the tunnel server for good. Anything
else is a delivery frame: committed, then acked. A message that does not
parse is counted (``stats.bad_frames``) and ends its link; the node runs
on, and the peer may open another.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import trio

from p2pmsg import distributor
from p2pmsg.abc import Link, remote_host
from p2pmsg.admission import Admission, Ticket
from p2pmsg.delivery import frames, onion_frames
from p2pmsg.delivery.frames import AckFrame, MsgFrame
from p2pmsg.dht import rpc
from p2pmsg.dht.service import Dht
from p2pmsg.dialer import DIAL_ERRORS
from p2pmsg.errors import HandshakeError, RemoteProtocolError, StoreError
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.link import tunnel
from p2pmsg.link.secure import SecureLink, accept_secure
from p2pmsg.onion_service import OnionService
from p2pmsg.puzzle import Pricing
from p2pmsg.store_link import DurableReplay

if TYPE_CHECKING:
    from p2pmsg.bridges import Supply
    from p2pmsg.node import NodeStats

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[SecureLink, bytes, Ticket], Awaitable[bool]]
"""Serves one link message; True when it has taken the link over."""


class Inbound:
    """Serves the links peers open to us (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        replay: DurableReplay,
        stats: NodeStats,
        *,
        dht: Dht,
        onion: OnionService,
        tunnels: tunnel.TunnelServer,
        commit: Callable[[PublicIdentity, MsgFrame], Awaitable[None]],
        handshake_timeout: float,
        link_idle: float,
        admission: Admission,
        pricing: Pricing,
        wall_clock: Callable[[], float],
        rng: Callable[[int], bytes],
    ) -> None:
        self._identity = identity
        self._replay = replay
        self._stats = stats
        self._dht = dht
        self._onion = onion
        self._tunnels = tunnels
        self._commit = commit
        self._handshake_timeout = handshake_timeout
        self._link_idle = link_idle
        self._wall_clock = wall_clock
        self._rng = rng
        self._admission = admission
        self.pricing = pricing
        """Work asked of inbound handshakes under load (:mod:`p2pmsg.puzzle`)."""
        self.supply: Supply | None = None
        """The bridges we hand out, if we do (``init --distribute``)."""
        self._by_type: dict[int, Handler] = {
            rpc.REQUEST_TYPE: self._rpc,
            rpc.RESPONSE_TYPE: self._rpc,
            onion_frames.PACKET_TYPE: self._packet,
            onion_frames.GATEWAY_TYPE: self._gateway,
            distributor.REQUEST_TYPE: self._bridges,
            tunnel.OPEN_TYPE: self._tunnel,
        }

    async def handle(self, link: Link) -> None:
        """Serve ``link``, a listener's new link, until it ends."""
        ticket = self._admission.admit(remote_host(link), trio.current_time())
        if not isinstance(ticket, Ticket):  # closed before its handshake, as Tor does
            self._stats.inbound_refused += 1
            log.debug("refused an inbound link: %s", ticket.value)
            return
        try:
            with trio.CancelScope() as evicted:
                ticket.evict = evicted.cancel  # room for a link from a less busy address
                await self._accept_and_serve(link, ticket)
        finally:
            ticket.close()

    async def _accept_and_serve(self, link: Link, ticket: Ticket) -> None:
        try:
            secure = await accept_secure(
                link,
                self._identity,
                self._replay.window,
                wall_clock=self._wall_clock,
                rng=self._rng,
                timeout=self._handshake_timeout,
                pricing=self.pricing,
                before_reply=self._replay.before_reply,  # answers once the flight's tag is on disk
            )
        except HandshakeError:
            self._stats.refused_handshakes += 1
            return
        ticket.established()
        try:
            await self._serve(secure, ticket)
        except DIAL_ERRORS as exc:
            log.debug("inbound link ended: %r", exc)
        except StoreError as exc:  # what it carried is not acked: its sender sends it again
            log.warning("ended an inbound link: %s", exc)
        finally:
            self._onion.links.detach(secure)
            await secure.aclose()

    async def _serve(self, link: SecureLink, ticket: Ticket) -> None:
        while True:
            with trio.fail_after(self._link_idle):
                data = await link.receive()
            ticket.touch(trio.current_time())
            handler = self._by_type.get(data[1], self._frame) if len(data) > 1 else self._frame
            if await handler(link, data, ticket):
                return

    def _parse(self, decode: Callable[[bytes], T], data: bytes) -> T:
        try:
            return decode(data)
        except RemoteProtocolError:
            self._stats.bad_frames += 1
            raise

    async def _rpc(self, link: SecureLink, data: bytes, ticket: Ticket) -> bool:
        message = self._parse(rpc.decode, data)
        if isinstance(message, rpc.Request):
            response = await self._dht.handle(link.peer, message, ticket.address)
            await link.send(rpc.encode_response(response))
        return False

    async def _packet(self, link: SecureLink, data: bytes, ticket: Ticket) -> bool:
        self._onion.relay.submit(self._parse(onion_frames.decode_packet_message, data))
        return False

    async def _gateway(self, link: SecureLink, data: bytes, ticket: Ticket) -> bool:
        if data != onion_frames.GATEWAY_MESSAGE:
            return await self._frame(link, data, ticket)
        self._onion.links.attach(link)
        return False

    async def _bridges(self, link: SecureLink, data: bytes, ticket: Ticket) -> bool:
        """A bridge request: answered from our supply, or with none when we have none."""
        failed = self._parse(distributor.decode_request, data)
        if self.supply is not None:
            await self.supply.answer(link, link.peer, failed)
        else:
            await link.send(distributor.encode_reply(()))
        return False

    async def _tunnel(self, link: SecureLink, data: bytes, ticket: Ticket) -> bool:
        self._onion.links.detach(link)
        await self._tunnels.serve(link, link.peer, data)
        return True

    async def _frame(self, link: SecureLink, data: bytes, ticket: Ticket) -> bool:
        frame = self._parse(frames.decode, data)
        if isinstance(frame, MsgFrame):
            await self._commit(link.peer, frame)
            await link.send(frames.encode(AckFrame(frame.id)))
        return False
