"""Reaching a peer: the first of its endpoints that dials and authenticates.

Endpoints of transports we do not have are skipped (pt-spec: an unknown
transport is never fatal), and so are malformed ones. Both the delivery path
and the DHT use one :class:`Dialer`, so a censor sees one behaviour.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import trio

from p2pmsg.abc import Transport
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import BadEndpoint, HandshakeError, RemoteProtocolError, UnsupportedEndpoint
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.link.secure import HANDSHAKE_TIMEOUT, SecureLink, connect_secure

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


class Dialer:
    def __init__(
        self,
        identity: Identity,
        transports: Sequence[Transport],
        *,
        dial_timeout: float = 10.0,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.transports = list(transports)
        self.dial_timeout = dial_timeout
        self.handshake_timeout = handshake_timeout
        self._wall_clock = wall_clock
        self._rng = rng

    def transport_for(self, endpoint: Endpoint) -> Transport | None:
        return next((t for t in self.transports if t.can_dial(endpoint)), None)

    async def connect(
        self, endpoints: Sequence[str], peer: PublicIdentity
    ) -> tuple[SecureLink, Endpoint]:
        """A secure link over the first endpoint that works, in order, and that endpoint.

        Raises the last error, or :class:`UnsupportedEndpoint` if none was
        dialable. Cancellation leaves nothing open.
        """
        last: Exception = UnsupportedEndpoint("no dialable endpoint")
        for text in endpoints:
            try:
                endpoint = Endpoint.parse(text)
            except BadEndpoint:
                continue
            transport = self.transport_for(endpoint)
            if transport is None:
                continue
            try:
                with trio.fail_after(self.dial_timeout):
                    link = await transport.dial(endpoint)
                secure = await connect_secure(
                    link,
                    self.identity,
                    peer,
                    wall_clock=self._wall_clock,
                    rng=self._rng,
                    timeout=self.handshake_timeout,
                )
            except DIAL_ERRORS as exc:
                last = exc
            else:
                return secure, endpoint
        raise last
