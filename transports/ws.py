"""The ``ws`` transport: a link that looks like a browser's WebSocket.

Endpoints are ``ws:HOST:PORT/PATH`` (``ws:198.51.100.7:443/chat``,
``ws:[2001:db8::7]:80/``); the path defaults to ``/`` and the port to 80.
Optional arguments: ``host=NAME`` puts a cover name in the ``Host`` header
(default: the endpoint's host, with ``:PORT`` unless 80 or 443) and
``origin=URL`` sets ``Origin`` (default ``http(s)://`` + that name).

Theory of operation. The wire format (the Chrome-like upgrade, nginx's
answers to probers, binary messages of at most :data:`MAX_MESSAGE` bytes) is
the sans-IO core in :mod:`transports.ws_core`. This module is the trio
adapter: a stalled or cut request is closed silently after
:data:`HANDSHAKE_TIMEOUT`; one ``send`` is one message and ``receive``
returns one whole message, so the transport is ``framed``. :class:`WsLink`
is a thin adapter over any inner :class:`~p2pmsg.abc.Link` with byte-stream
semantics, by default a :class:`~transports.tcp.TcpTransport` connection, so
the same bytes can run on the simulated network. Cancellation follows the
inner link: a cancelled ``receive`` loses nothing (partial messages stay in
the framer); a cancelled ``send`` either sent nothing or breaks the link (tcp
aborts a torn write). ``aclose`` sends a close frame when it can within
:data:`CLOSE_GRACE` seconds and no send is in progress, then closes the
inner link.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from functools import partial

import trio
from wsproto.frame_protocol import CloseReason

from p2pmsg.abc import Link, LinkHandler, Transport, remote_host
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import BadEndpoint, UnsupportedEndpoint
from transports.inner import ReportAs, feed
from transports.tcp import TcpTransport
from transports.ws_core import (
    MAX_MESSAGE,
    NEED_DATA,
    USER_AGENT,
    ClientHandshake,
    Message,
    NeedData,
    PeerClosed,
    Refused,
    ServerHandshake,
    Upgraded,
    WsFramer,
    WsProtocolError,
    WsTarget,
)

HANDSHAKE_TIMEOUT = 30.0
CLOSE_GRACE = 1.0
DEFAULT_PORT = 80
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")

log = logging.getLogger(__name__)


def parse_ws_endpoint(endpoint: Endpoint) -> WsTarget:
    """The :class:`WsTarget` of a ws endpoint. Raises :class:`UnsupportedEndpoint`."""
    if endpoint.transport != WsTransport.name:
        raise UnsupportedEndpoint(f"not a ws endpoint: {endpoint.transport}")
    address, slash, rest = endpoint.address.partition("/")
    path = slash + rest or "/"
    if not _PATH.fullmatch(path):
        raise UnsupportedEndpoint(f"bad ws path {path!r}")
    try:
        host, port = Endpoint(endpoint.transport, address).host_port(DEFAULT_PORT)
    except BadEndpoint as exc:
        raise UnsupportedEndpoint(f"bad ws address: {exc}") from exc
    name = endpoint.arg("host") or (f"[{host}]" if ":" in host else host)
    host_header = name if port in (80, 443) else f"{name}:{port}"
    scheme = "https" if port == 443 else "http"
    origin = endpoint.arg("origin") or f"{scheme}://{host_header}"
    if not (host_header.isascii() and host_header.isprintable() and origin.isascii()):
        raise UnsupportedEndpoint("the Host or Origin is not printable ASCII")
    return WsTarget(host, port, path, host_header, origin)


# --- the trio adapter --------------------------------------------------------


class WsLink:
    """A framed :class:`~p2pmsg.abc.Link` of WebSocket messages over an inner link."""

    def __init__(self, inner: Link, framer: WsFramer, *, close_grace: float = CLOSE_GRACE):
        self._inner = inner
        self._framer = framer
        self._close_grace = close_grace
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._closed = False
        self._broken = False

    @property
    def remote_host(self) -> str | None:
        return remote_host(self._inner)

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the link was closed")
        if self._broken:
            raise trio.BrokenResourceError("the peer broke the WebSocket protocol")

    async def send(self, data: bytes) -> None:
        """Send ``data`` as one message. Raises ``ClosedResourceError`` after our
        ``aclose``, ``BrokenResourceError`` when the connection broke or the
        peer closed, ``ValueError`` above :data:`MAX_MESSAGE` bytes.
        Cancelled: nothing was sent, or the link is broken (see module doc).
        """
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"a ws message is at most {MAX_MESSAGE} bytes")
        async with self._send_lock:
            self._check_usable()
            if not self._framer.can_send:
                raise trio.BrokenResourceError("the peer closed the link")
            try:
                await self._inner.send(self._framer.encode(bytes(data)))
            except trio.ClosedResourceError:
                self._check_usable()
                raise

    async def receive(self) -> bytes:
        """The next whole message. Raises ``EndOfChannel`` after the peer's
        close, ``BrokenResourceError`` on a reset or a protocol violation
        (answered with a close frame), ``ClosedResourceError`` after our
        ``aclose``. Cancelled: nothing is lost.
        """
        async with self._receive_lock:
            self._check_usable()
            while True:
                try:
                    event = self._framer.next_event()
                except WsProtocolError as exc:
                    await self._fail(exc)
                    raise trio.BrokenResourceError(f"ws: {exc}") from exc
                if isinstance(event, Message):
                    return event.data
                if isinstance(event, PeerClosed):
                    raise trio.EndOfChannel
                await feed(self._inner, self._framer, self._check_usable)

    async def _fail(self, exc: WsProtocolError) -> None:
        if not self._broken:
            self._broken = True
            log.debug("ws: closing a link that broke the protocol: %s", exc)
            try:
                await self._say_goodbye(exc.close_code)
            finally:
                await self._inner.aclose()

    async def _say_goodbye(self, code: int) -> None:
        """Send a close frame if no send is in progress and it goes out in time."""
        if self._send_lock.locked():
            return
        async with self._send_lock:
            frame = self._framer.close_frame(code)
            with trio.move_on_after(self._close_grace):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._inner.send(frame)

    async def aclose(self) -> None:
        """Say goodbye if possible, close the connection (idempotent); pending
        operations are woken with ``ClosedResourceError``.
        """
        if self._closed:
            await self._inner.aclose()
            return
        self._closed = True
        try:
            if not self._broken:
                await self._say_goodbye(CloseReason.NORMAL_CLOSURE)
        finally:
            await self._inner.aclose()


class WsTransport:
    """Dials and serves ``ws:HOST:PORT/PATH`` endpoints over an inner stream transport.

    ``inner`` (default :class:`TcpTransport`) carries the bytes; ``rng`` makes
    the WebSocket keys; ``wall_clock`` dates the server's answers.
    """

    name = "ws"
    framed = True

    def __init__(
        self,
        inner: Transport | None = None,
        *,
        user_agent: str = USER_AGENT,
        rng: Callable[[int], bytes] = os.urandom,
        wall_clock: Callable[[], float] = time.time,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._inner: Transport = inner if inner is not None else TcpTransport()
        self._user_agent = user_agent
        self._rng = rng
        self._wall_clock = wall_clock
        self._timeout = handshake_timeout

    def can_dial(self, endpoint: Endpoint) -> bool:
        """True for a ``ws`` endpoint with a host, a non-zero port and a valid path."""
        try:
            target = parse_ws_endpoint(endpoint)
        except UnsupportedEndpoint:
            return False
        return target.port != 0

    async def dial(self, endpoint: Endpoint) -> Link:
        """Connect and upgrade within the handshake timeout.

        Raises ``UnsupportedEndpoint``, ``OSError`` when the connection fails,
        :class:`WsRefused` (an ``OSError``) when the server does not upgrade,
        ``TimeoutError`` when it does not answer. Cancellation closes the connection.
        """
        target = parse_ws_endpoint(endpoint)
        if target.port == 0:
            raise UnsupportedEndpoint("cannot dial port 0")
        inner = await self._inner.dial(Endpoint(self._inner.name, target.address))
        handshake = ClientHandshake(target, key=self._rng(16), user_agent=self._user_agent)
        try:
            with trio.fail_after(self._timeout):
                trailing = await _run_client_handshake(inner, handshake)
        except trio.TooSlowError as exc:
            await inner.aclose()
            raise TimeoutError("no answer to the WebSocket upgrade") from exc
        except BaseException:
            await inner.aclose()
            raise
        return WsLink(inner, WsFramer(client=True, trailing=trailing))

    async def serve(
        self,
        endpoint: Endpoint,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``endpoint``; upgrade requests for its path, answer others as nginx.

        Reports ``ws:HOST:PORT/PATH`` (port 0 resolved, arguments kept) and
        runs until cancelled. Raises ``UnsupportedEndpoint`` or ``OSError``
        before reporting. A handler's exception closes its link only.
        """
        target = parse_ws_endpoint(endpoint)

        def report(bound: Endpoint) -> Endpoint:
            return Endpoint(self.name, bound.address + target.path, endpoint.args)

        await self._inner.serve(
            Endpoint(self._inner.name, target.address),
            partial(self._serve_one, target.path, handler),
            task_status=ReportAs(task_status, report),
        )

    async def _serve_one(self, path: str, handler: LinkHandler, inner: Link) -> None:
        """Upgrade one connection and run the handler (the inner transport closes it)."""
        handshake = ServerHandshake(path, now=self._wall_clock())
        link = None
        with trio.move_on_after(self._timeout):
            link = await _run_server_handshake(inner, handshake)
        if link is None:
            return
        try:
            await handler(link)
        except Exception as exc:
            # A handler is expected to handle link errors itself: this is a bug upstream.
            log.warning("ws: a link handler failed: %r", exc)
            log.debug("ws: the link handler failed", exc_info=True)
        finally:
            await link.aclose()


async def _run_client_handshake(inner: Link, handshake: ClientHandshake) -> bytes:
    """Send the request and read the answer; return the bytes after it."""
    await inner.send(handshake.request)
    while True:
        try:
            data = await inner.receive()
        except trio.EndOfChannel:
            data = b""
        outcome = handshake.receive_data(data)
        if isinstance(outcome, Upgraded):
            return outcome.trailing


async def _run_server_handshake(inner: Link, handshake: ServerHandshake) -> WsLink | None:
    """Read one request and answer it; a :class:`WsLink` if it was an upgrade."""
    outcome: NeedData | Upgraded | Refused = NEED_DATA
    try:
        while isinstance(outcome, NeedData):
            try:
                data = await inner.receive()
            except trio.EndOfChannel:
                data = b""
            outcome = handshake.receive_data(data)
        if outcome.response:
            await inner.send(outcome.response)
    except trio.BrokenResourceError:
        return None
    if isinstance(outcome, Refused):
        log.debug("ws: answered a request that was not ours")
        return None
    return WsLink(inner, WsFramer(client=False, trailing=outcome.trailing))
