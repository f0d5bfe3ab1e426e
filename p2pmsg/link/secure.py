"""The trio adapter that runs a :class:`LinkConnection` over a transport link.

It only moves bytes between the core and the transport; all parsing is in
the core. :func:`connect_secure` and :func:`accept_secure` run the handshake
under a deadline and return a :class:`SecureLink`, a message channel that
preserves message boundaries over any transport, framed or not.

Probe resistance lives in :func:`accept_secure`: whatever is wrong with what
a client sent (garbage, a replay, a wrong key, a truncated or slow
handshake), the listener sends nothing, keeps reading and discarding until
the handshake deadline that started when the connection arrived, then closes
the connection gracefully: one reaction for every kind of invalid input, the
same as a service that waits for a request that never comes.

Under load a listener given a :class:`~p2pmsg.puzzle.Pricing` asks a
client for work before it answers (a price frame, see
:mod:`p2pmsg.link.connection`); :func:`connect_secure` solves it within its
deadline and sends a first flight that pays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable

import trio

from p2pmsg import puzzle
from p2pmsg.abc import Link
from p2pmsg.errors import HandshakeError, RemoteProtocolError
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.link import wire
from p2pmsg.link.connection import (
    NEED_DATA,
    Closed,
    Established,
    LinkConnection,
    Message,
    Priced,
)
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.puzzle import Pricing

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 30.0
CLOSE_GRACE = 1.0

WallClock = Callable[[], float]


class SecureLink:
    """An authenticated, encrypted message channel to :attr:`peer`."""

    def __init__(self, conn: LinkConnection, transport_link: Link, peer: PublicIdentity) -> None:
        self._conn = conn
        self._link = transport_link
        self.peer = peer
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"SecureLink(peer={self.peer!r})"

    async def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data:
            await self._link.send(data)

    async def send(self, data: bytes) -> None:
        """Send one message. Raises ``trio.ClosedResourceError`` after aclose."""
        async with self._send_lock:
            # checked under the lock: another task may close the link while we wait
            if self._closed:
                raise trio.ClosedResourceError
            self._conn.send_message(data)
            await self._flush()

    async def receive(self) -> bytes:
        """The next message.

        Raises ``trio.EndOfChannel`` after the peer's close,
        ``RemoteProtocolError`` on bad bytes (the link is then closed) and
        ``trio.BrokenResourceError`` when the connection ended without a close.
        """
        if self._closed:
            raise trio.ClosedResourceError
        async with self._receive_lock:
            while True:
                try:
                    event = self._conn.next_event()
                except RemoteProtocolError:
                    await self._abort()
                    raise
                if isinstance(event, Message):
                    return event.data
                if isinstance(event, Closed):
                    raise trio.EndOfChannel
                assert event is NEED_DATA
                try:
                    chunk = await self._link.receive()
                except trio.EndOfChannel:
                    raise trio.BrokenResourceError("the connection ended without a close") from None
                self._conn.receive_data(chunk)

    async def _abort(self) -> None:
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._link.aclose()

    async def aclose(self) -> None:
        """Send a close cell (briefly, best effort) and close the transport."""
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            try:
                self._conn.close()
                await self._flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        with trio.CancelScope(shield=True):
            await self._link.aclose()


async def _send_handshake(data: bytes, link: Link) -> None:
    if data:
        try:
            await link.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise HandshakeError("the connection ended during the handshake") from exc


async def _handshake(
    conn: LinkConnection,
    link: Link,
    rng: Callable[[int], bytes],
    before_reply: Callable[[], Awaitable[None]] | None = None,
) -> Established:
    while True:
        event = conn.next_event()
        data = conn.data_to_send()
        if data and before_reply is not None:
            await before_reply()
        await _send_handshake(data, link)
        if isinstance(event, Established):
            return event
        if isinstance(event, Priced):
            nonce = await puzzle.solve_nonce(
                event.price,
                person=wire.POW_PERSON,
                checkpoint=trio.lowlevel.checkpoint,
                first=rng(puzzle.NONCE_BYTES),
            )
            conn.pay(nonce)
            continue
        try:
            chunk = await link.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError) as exc:
            raise HandshakeError("the connection ended during the handshake") from exc
        conn.receive_data(chunk)


async def connect_secure(
    link: Link,
    identity: Identity,
    peer: PublicIdentity,
    *,
    wall_clock: WallClock = time.time,
    rng: Callable[[int], bytes] = os.urandom,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> SecureLink:
    """Run the initiator's handshake on ``link`` (paying the responder's price
    for it, if it asks one).

    Raises :class:`HandshakeError` (the link is closed) on failure or timeout.
    Cancellation closes the link.
    """
    conn = LinkConnection(identity, peer=peer, now=wall_clock(), rng=rng)
    conn.initiate()
    try:
        with trio.fail_after(timeout):
            await _handshake(conn, link, rng)
    except trio.TooSlowError as exc:
        await _close_quietly(link)
        raise HandshakeError("no answer to the handshake") from exc
    except BaseException:
        await _close_quietly(link)
        raise
    return SecureLink(conn, link, peer)


async def accept_secure(
    link: Link,
    identity: Identity,
    replay: ReplayWindow,
    *,
    wall_clock: WallClock = time.time,
    rng: Callable[[int], bytes] = os.urandom,
    timeout: float = HANDSHAKE_TIMEOUT,
    pricing: Pricing | None = None,
    before_reply: Callable[[], Awaitable[None]] | None = None,
) -> SecureLink:
    """Run the responder's handshake on a freshly accepted ``link``.

    ``pricing`` (optional) asks clients for work under load. ``before_reply``
    (optional) is awaited before each handshake frame goes out (the answer,
    or a price); it raises :class:`HandshakeError` to refuse the client
    instead.

    On any failure the link is drained silently until ``timeout`` after this
    call began, closed, and :class:`HandshakeError` is raised.
    """
    deadline = trio.current_time() + timeout
    conn = LinkConnection(
        identity,
        replay=replay,
        now=wall_clock(),
        rng=rng,
        pricing=pricing,
        monotonic=trio.current_time(),
    )
    try:
        with trio.fail_after(timeout):
            established = await _handshake(conn, link, rng, before_reply)
    except (HandshakeError, RemoteProtocolError, trio.TooSlowError) as exc:
        log.debug("refused a handshake: %s", exc)
        await _drain_until(link, deadline)
        raise HandshakeError("refused an invalid handshake") from exc
    return SecureLink(conn, link, established.peer)


async def _drain_until(link: Link, deadline: float) -> None:
    with trio.move_on_at(deadline):
        try:
            while True:
                await link.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await _close_quietly(link)


async def _close_quietly(link: Link) -> None:
    with (
        trio.CancelScope(shield=True),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await link.aclose()
