"""Plain TCP: the baseline transport, and the one a censor sees first.

Endpoints are ``tcp:HOST:PORT`` or ``tcp:[V6]:PORT``. The link is a raw byte
stream (``framed = False``): ``send`` writes all of its bytes under a lock, so
concurrent senders never interleave, and ``receive`` returns whatever chunk
the socket has (up to 64 KiB). The layer above is self-delimiting.

A ``send`` cancelled after part of its bytes reached the socket would leave a
torn message on the wire, so the link then aborts the connection (an RST):
both ends see ``BrokenResourceError`` instead of a corrupt stream. A send
cancelled before any byte left did not happen, and the link stays usable.

``serve`` binds one listening socket (port 0 picks a free port; when the host
resolves to several addresses only the first is kept, so the reported
endpoint is the one listening), runs each handler in its own task, and closes
each link when its handler returns. A handler's exception is logged as a warning
(peer addresses appear at DEBUG only) and closes that link, not the listener.
"""

from __future__ import annotations

import logging
import socket
import struct
from functools import partial

import trio

from p2pmsg.abc import Link, LinkHandler
from p2pmsg.endpoint import Endpoint, format_address
from p2pmsg.errors import BadEndpoint, UnsupportedEndpoint

RECEIVE_CHUNK = 64 * 1024

log = logging.getLogger(__name__)


class TcpLink:
    """A :class:`~p2pmsg.abc.Link` over one TCP connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._closed = False
        self._broken = False

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    @property
    def remote_host(self) -> str | None:
        """The peer's address (no port), None once the socket is gone."""
        try:
            return str(self._stream.socket.getpeername()[0])
        except OSError:
            return None

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the link was closed")
        if self._broken:
            raise trio.BrokenResourceError("the link was aborted by a cancelled send")

    async def send(self, data: bytes) -> None:
        """Write all of ``data``. Raises ``ClosedResourceError`` after our
        ``aclose``, ``BrokenResourceError`` when the connection broke.
        Cancelled: nothing was sent, or the link is aborted (see module doc).
        """
        async with self._send_lock:
            self._check_usable()
            with memoryview(data) as view:
                await self._send_all(view)

    async def _send_all(self, view: memoryview) -> None:
        sent = 0
        try:
            if not view:
                await trio.lowlevel.checkpoint()
            while sent < len(view):
                sent += await self._stream.socket.send(view[sent:])
        except trio.Cancelled:
            if sent:
                self._abort()
            raise
        except trio.ClosedResourceError:
            self._check_usable()
            raise
        except OSError as exc:
            self._check_usable()
            raise trio.BrokenResourceError(f"tcp send failed: {exc.strerror}") from exc

    def _abort(self) -> None:
        """Reset the connection now: no half-sent message may be followed."""
        self._broken = True
        sock = self._stream.socket
        if sock.fileno() != -1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    async def receive(self) -> bytes:
        """The next chunk of bytes. Raises ``EndOfChannel`` at the peer's
        close, ``BrokenResourceError`` on a reset, ``ClosedResourceError``
        after our ``aclose``. Cancelled: no bytes were consumed.
        """
        async with self._receive_lock:
            self._check_usable()
            try:
                data = await self._stream.receive_some(RECEIVE_CHUNK)
            except trio.ClosedResourceError:
                self._check_usable()
                raise
        if not data:
            raise trio.EndOfChannel
        return data

    async def aclose(self) -> None:
        """Close the connection (idempotent); pending operations are woken."""
        self._closed = True
        await self._stream.aclose()


def parse_tcp_endpoint(endpoint: Endpoint) -> tuple[str, int]:
    """``(host, port)`` of a tcp endpoint. Raises :class:`UnsupportedEndpoint`."""
    if endpoint.transport != TcpTransport.name:
        raise UnsupportedEndpoint(f"not a tcp endpoint: {endpoint.transport}")
    try:
        return endpoint.host_port()
    except BadEndpoint as exc:
        raise UnsupportedEndpoint(f"bad tcp address: {exc}") from exc


class TcpTransport:
    """Dials and serves ``tcp:HOST:PORT`` endpoints on real sockets."""

    name = "tcp"
    framed = False

    def can_dial(self, endpoint: Endpoint) -> bool:
        """True for a ``tcp`` endpoint with a host and a non-zero port."""
        try:
            _, port = parse_tcp_endpoint(endpoint)
        except UnsupportedEndpoint:
            return False
        return port != 0

    async def dial(self, endpoint: Endpoint) -> Link:
        """Connect (happy eyeballs over the host's addresses).

        Raises ``UnsupportedEndpoint`` for another transport's or a port 0
        endpoint, ``OSError`` when the connection fails.
        """
        host, port = parse_tcp_endpoint(endpoint)
        if port == 0:
            raise UnsupportedEndpoint("cannot dial port 0")
        stream = await trio.open_tcp_stream(host, port)
        return TcpLink(stream)

    async def serve(
        self,
        endpoint: Endpoint,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``endpoint``; see the module docstring.

        Reports the bound endpoint (port 0 resolved) through ``task_status``
        and runs until cancelled. Raises ``UnsupportedEndpoint`` or
        ``OSError`` (address in use, ...) before reporting.
        """
        host, port = parse_tcp_endpoint(endpoint)
        listeners = await trio.open_tcp_listeners(port, host=host)
        for extra in listeners[1:]:
            extra.socket.close()  # synchronous: no checkpoint may leak listeners[0]
        listener = listeners[0]
        try:
            bound_host, bound_port = listener.socket.getsockname()[:2]
            address = format_address(bound_host, bound_port)
            task_status.started(Endpoint(self.name, address, endpoint.args))
        except BaseException:
            listener.socket.close()
            raise
        await trio.serve_listeners(partial(_run_handler, handler), [listener])


async def _run_handler(handler: LinkHandler, stream: trio.SocketStream) -> None:
    """Run one handler; its failure closes its link and nothing else."""
    link = TcpLink(stream)
    try:
        await handler(link)
    except Exception as exc:
        # A handler is expected to handle link errors itself: this is a bug upstream.
        log.warning("tcp: a link handler failed: %r", exc)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("tcp: the handler for %s failed", _peer_name(stream), exc_info=True)
    finally:
        await link.aclose()


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "a closed connection"
    return format_address(str(host), int(port))
