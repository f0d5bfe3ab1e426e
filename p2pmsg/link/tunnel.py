"""Links through a bridge: a link to any peer, carried inside a link to the bridge.

Theory of operation
-------------------
A node whose censor blocks every listed address uses bridges, as Tor's
``UseBridges`` does: every connection it makes goes through one of them,
the way libp2p's circuit relay carries a stream through a relay. It opens a
secure link to the bridge and sends one OPEN message: the target's public
key and endpoints. The bridge dials the target over its own transports
(a plain transport link: the bridge does no handshake with the target),
answers OPENED with the index of the endpoint that connected, or REFUSED
with a reason, and from then on only copies bytes both ways (:func:`splice`):
each message from the client is written to the target's connection, each
chunk read from it goes back as a message. The client runs the ordinary
secure-link handshake with the target over that pipe (:class:`TunnelLink`),
so the bridge sees only ciphertext, the target sees an inbound link from the
bridge's address, and the censor sees one flow to an unlisted address.

Only a bridge carries tunnels (:class:`TunnelServer`), within bounds: so many
at once, so many per client, none to itself or back to the client, each
closed after ``idle`` seconds with no byte either way.

Wire (link messages; they share the space of the delivery frames, types
1-2, the DHT's RPCs, 3-4, and onion packets, 5)::

    OPEN   version(1) type=6 key(32) n(1) n x (len(2) endpoint)
    REPLY  version(1) type=7 status(1) index(1)

One encoder and one decoder per format; decoders raise
:class:`RemoteProtocolError` and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import trio

from p2pmsg import sized
from p2pmsg.abc import Link
from p2pmsg.endpoint import MAX_ENDPOINT_CHARS
from p2pmsg.errors import RemoteProtocolError, UnsupportedEndpoint
from p2pmsg.keys import KEY_BYTES, PublicIdentity

VERSION: Final = 1
OPEN_TYPE: Final = 6
REPLY_TYPE: Final = 7
MAX_TARGET_ENDPOINTS: Final = 8
"""Endpoints of the target a bridge tries, in the order the client sent them."""
CHUNK: Final = 16 * 1024
"""The most bytes one tunnel message carries, well inside a link message."""


class Status(IntEnum):
    OPENED = 0
    NOT_A_BRIDGE = 1
    BUSY = 2
    UNREACHABLE = 3
    REFUSED = 4


@dataclass(frozen=True)
class Open:
    key: bytes
    endpoints: tuple[str, ...]

    def __repr__(self) -> str:  # endpoints are addresses: not for logs
        return f"Open({len(self.endpoints)} endpoints)"


@dataclass(frozen=True)
class Reply:
    status: Status
    index: int = 0


def encode_open(message: Open) -> bytes:
    if len(message.key) != KEY_BYTES or not 0 < len(message.endpoints) <= MAX_TARGET_ENDPOINTS:
        raise ValueError("a tunnel names one key and 1 to 8 endpoints")
    raw = [endpoint.encode() for endpoint in message.endpoints]
    if any(len(item) > MAX_ENDPOINT_CHARS for item in raw):
        raise ValueError("endpoint too long")
    return bytes([VERSION, OPEN_TYPE]) + message.key + bytes([len(raw)]) + sized.pack(raw)


def decode_open(data: bytes) -> Open:
    if len(data) < 3 + KEY_BYTES or data[0] != VERSION or data[1] != OPEN_TYPE:
        raise RemoteProtocolError("not a tunnel request")
    key = data[2 : 2 + KEY_BYTES]
    count = data[2 + KEY_BYTES]
    if not 0 < count <= MAX_TARGET_ENDPOINTS:
        raise RemoteProtocolError("a tunnel request names 1 to 8 endpoints")
    raw, end = sized.unpack(data, 3 + KEY_BYTES, count, MAX_ENDPOINT_CHARS, "tunnel request")
    if end != len(data):
        raise RemoteProtocolError("trailing bytes after a tunnel request")
    return Open(key, sized.texts(raw, "tunnel endpoint"))


def encode_reply(reply: Reply) -> bytes:
    return bytes([VERSION, REPLY_TYPE, reply.status, reply.index])


def decode_reply(data: bytes) -> Reply:
    if len(data) != 4 or data[0] != VERSION or data[1] != REPLY_TYPE:
        raise RemoteProtocolError("not a tunnel reply")
    try:
        status = Status(data[2])
    except ValueError:
        raise RemoteProtocolError("unknown tunnel status") from None
    if data[3] >= MAX_TARGET_ENDPOINTS:
        raise RemoteProtocolError("tunnel reply names no endpoint we sent")
    return Reply(status, data[3])


async def _send_cut(link: Link, data: bytes) -> None:
    for start in range(0, len(data), CHUNK):
        await link.send(data[start : start + CHUNK])


class TunnelLink:
    """The transport link to the target, carried by a secure link to the bridge.

    A stream: bytes arrive in order, cut where the bridge read them.
    """

    def __init__(self, carrier: Link) -> None:
        self._carrier = carrier

    async def send(self, data: bytes) -> None:
        await _send_cut(self._carrier, data)

    async def receive(self) -> bytes:
        return await self._carrier.receive()

    async def aclose(self) -> None:
        await self._carrier.aclose()


async def splice(client: Link, target: Link, *, idle: float) -> int:
    """Copy messages from ``client`` to ``target`` and chunks back, until either
    side ends or nothing moved for ``idle`` seconds; close both. Returns the
    bytes copied. A broken side is an ending, not an error."""
    moved = 0
    last = trio.current_time()

    async def copy(source: Link, sink: Link, done: trio.CancelScope) -> None:
        nonlocal moved, last
        try:
            while True:
                data = await source.receive()
                last = trio.current_time()
                moved += len(data)
                await _send_cut(sink, data)
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError,
                RemoteProtocolError, OSError):  # fmt: skip
            pass
        done.cancel()

    async def watch(done: trio.CancelScope) -> None:
        while True:
            await trio.sleep_until(last + idle)
            if trio.current_time() >= last + idle:
                done.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, client, target, nursery.cancel_scope)
            nursery.start_soon(copy, target, client, nursery.cancel_scope)
            nursery.start_soon(watch, nursery.cancel_scope)
    finally:
        with trio.CancelScope(shield=True):
            await target.aclose()
            await client.aclose()
    return moved


RawDial = Callable[[Sequence[str]], Awaitable[tuple[Link, int]]]
"""The bridge's dial of a target: a transport link and the endpoint's index,
or :class:`UnsupportedEndpoint` when none connects."""


@dataclass
class BridgeStats:
    served: int = 0
    refused: int = 0


class TunnelServer:
    """A bridge's side: answers OPEN on a client's secure link, within bounds."""

    def __init__(
        self,
        me: PublicIdentity,
        dial: RawDial,
        *,
        enabled: bool,
        max_tunnels: int,
        max_per_peer: int,
        idle: float,
    ) -> None:
        self.me = me
        self.dial = dial
        self.enabled = enabled
        self.max_tunnels = max_tunnels
        self.max_per_peer = max_per_peer
        self.idle = idle
        self.stats = BridgeStats()
        self.open: dict[bytes, int] = {}
        """Tunnels carried now, per client key."""

    def _refusal(self, request: Open, client: bytes) -> Status | None:
        if not self.enabled:
            return Status.NOT_A_BRIDGE
        if sum(self.open.values()) >= self.max_tunnels or self.open.get(client, 0) >= (
            self.max_per_peer
        ):
            return Status.BUSY
        if request.key in (self.me.key, client):
            return Status.REFUSED
        return None

    async def serve(self, link: Link, peer: PublicIdentity, data: bytes) -> None:
        """Answer the OPEN in ``data`` from ``peer`` on ``link``; when a tunnel
        opens, copy bytes until either side ends. Raises
        :class:`RemoteProtocolError` for a malformed request."""
        request = decode_open(data)
        client = peer.key
        refusal = self._refusal(request, client)
        if refusal is not None:
            self.stats.refused += 1
            await link.send(encode_reply(Reply(refusal)))
            return
        self.open[client] = self.open.get(client, 0) + 1
        try:
            await self._carry(link, request)
        finally:
            self.open[client] -= 1
            if not self.open[client]:
                del self.open[client]

    async def _carry(self, link: Link, request: Open) -> None:
        try:
            target, index = await self.dial(request.endpoints)
        except UnsupportedEndpoint:
            self.stats.refused += 1
            await link.send(encode_reply(Reply(Status.UNREACHABLE)))
            return
        self.stats.served += 1
        try:
            await link.send(encode_reply(Reply(Status.OPENED, index)))
        except BaseException:
            with trio.CancelScope(shield=True):
                await target.aclose()
            raise
        await splice(link, target, idle=self.idle)
