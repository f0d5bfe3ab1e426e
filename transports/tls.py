"""The ``tls`` transport: real TLS 1.3 (Python's ``ssl``) around an inner stream.

Endpoints are ``tls:HOST:PORT`` (``tls:198.51.100.7:443``,
``tls:[2001:db8::7]:8443``; the port defaults to 443) with two optional
arguments:

- ``sni=NAME``: a cover name the client sends as SNI. Without it the
  ClientHello carries no ``server_name`` extension at all, so the connection
  names nobody (the node's own name never appears on the wire).
- ``pin=PIN``: the SHA-256 of the server certificate's SubjectPublicKeyInfo
  (see :mod:`transports.tls_certs`), 52 base32 characters or 64 hex digits.
  The client then refuses any other certificate with
  :class:`TlsPinMismatch` before a byte of the inner protocol is sent. The
  pin is optional: without it any certificate is accepted, because the secure
  link above authenticates the peer anyway; the pin only stops a TLS
  man-in-the-middle from seeing (random-looking) inner bytes. ``serve``
  always reports its endpoint with ``pin=`` so invites carry it.

Theory of operation. Both sides speak TLS 1.3 only; the client offers ALPN
``h2`` and ``http/1.1`` like a browser and the server picks ``http/1.1``; the
server issues no session tickets. The server's certificate is the node's own
(:func:`transports.tls_certs.load_or_create` in ``cert_dir``). The TLS state
machine is :class:`trio.SSLStream` over :class:`_LinkStream`, an adapter from
the inner :class:`~p2pmsg.abc.Link` (by default a tcp connection, or a
simulated one) to a :class:`trio.abc.Stream`. The handshake runs inside
``dial`` and before the server's handler is called, under
:data:`HANDSHAKE_TIMEOUT`; a failed or stalled handshake on the server is
closed silently, as any TLS server would.

The link is a byte stream (``framed = False``). Cancellation: a cancelled
``receive`` loses nothing. A cancelled ``send`` breaks the link, even if no
byte had left: TLS records are numbered, and a record that was encrypted but
not sent cannot be taken back. The inner connection is then closed without
a ``close_notify``, so the peer sees ``BrokenResourceError`` too. ``aclose``
sends a ``close_notify`` when no send is in progress and it goes out within
:data:`CLOSE_GRACE` seconds, then closes the inner link.

Limits: the ClientHello is OpenSSL's, not a browser's (Python exposes no
control over TLS 1.3 cipher suites, groups or extension order), so a censor
fingerprinting ClientHellos (JA3/JA4) can tell it from Chrome.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from p2pmsg.abc import MAX_SEND, Link, LinkHandler, Transport, remote_host
from p2pmsg.endpoint import Endpoint, format_address
from p2pmsg.errors import BadEndpoint, RemoteProtocolError, UnsupportedEndpoint
from transports.inner import ReportAs
from transports.tcp import TcpTransport
from transports.tls_certs import (
    DEFAULT_COMMON_NAME,
    decode_pin,
    encode_pin,
    load_or_create,
    spki_pin,
)

HANDSHAKE_TIMEOUT = 30.0
CLOSE_GRACE = 1.0
DEFAULT_PORT = 443
CLIENT_ALPN = ["h2", "http/1.1"]
SERVER_ALPN = ["http/1.1"]
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?")
_IPV4 = re.compile(r"[0-9.]+")

log = logging.getLogger(__name__)


class TlsPinMismatch(RemoteProtocolError, ConnectionError):
    """The server's TLS certificate does not match the pin in its endpoint."""


class TlsHandshakeFailed(RemoteProtocolError, ConnectionError):
    """The TLS handshake with the server failed."""


@dataclass(frozen=True)
class TlsTarget:
    """What a tls endpoint says: where to connect, the SNI to send, the pin."""

    host: str
    port: int
    sni: str | None
    pin: bytes | None

    @property
    def address(self) -> str:
        """``HOST:PORT`` (``[V6]:PORT``) for the inner transport."""
        return format_address(self.host, self.port)


def parse_tls_endpoint(endpoint: Endpoint) -> TlsTarget:
    """The :class:`TlsTarget` of a tls endpoint. Raises :class:`UnsupportedEndpoint`."""
    if endpoint.transport != TlsTransport.name:
        raise UnsupportedEndpoint(f"not a tls endpoint: {endpoint.transport}")
    try:
        host, port = endpoint.host_port(DEFAULT_PORT)
    except BadEndpoint as exc:
        raise UnsupportedEndpoint(f"bad tls address: {exc}") from exc
    sni = endpoint.arg("sni")
    if sni is not None and (not _DNS_NAME.fullmatch(sni) or _IPV4.fullmatch(sni)):
        raise UnsupportedEndpoint(f"the sni {sni!r} is not a DNS name")
    pin_text = endpoint.arg("pin")
    try:
        pin = None if pin_text is None else decode_pin(pin_text)
    except ValueError as exc:
        raise UnsupportedEndpoint(str(exc)) from exc
    return TlsTarget(host, port, sni, pin)


def client_context() -> ssl.SSLContext:
    """TLS 1.3 only, ALPN like a browser, no CA checks (the pin replaces them)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(CLIENT_ALPN)
    return context


def server_context(cert_file: Path) -> ssl.SSLContext:
    """TLS 1.3 only, ALPN ``http/1.1``, no session tickets. Reads ``cert_file``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(SERVER_ALPN)
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    context.load_cert_chain(cert_file)
    return context


# --- the trio adapters -------------------------------------------------------------


class _LinkStream(trio.abc.Stream):
    """A :class:`trio.abc.Stream` over a :class:`~p2pmsg.abc.Link` (for ``SSLStream``).

    ``receive_some`` keeps what exceeds ``max_bytes`` for the next call and
    loses nothing when cancelled; ``send_all`` cuts at :data:`MAX_SEND`.
    """

    def __init__(self, link: Link) -> None:
        self.link = link
        self._pending = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        if not data:
            await trio.lowlevel.checkpoint()
        for start in range(0, len(data), MAX_SEND):
            await self.link.send(data[start : start + MAX_SEND])

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            await trio.lowlevel.checkpoint()
        else:
            try:
                self._pending = await self.link.receive()
            except trio.EndOfChannel:
                return b""
        size = len(self._pending) if max_bytes is None else max_bytes
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    async def aclose(self) -> None:
        await self.link.aclose()


class TlsLink:
    """A stream :class:`~p2pmsg.abc.Link` of TLS application data."""

    def __init__(self, tls: trio.SSLStream[_LinkStream], *, close_grace: float = CLOSE_GRACE):
        self._tls = tls
        self._inner = tls.transport_stream.link
        self._close_grace = close_grace
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._closed = False
        self._broken = False
        self._eof = False

    @property
    def remote_host(self) -> str | None:
        return remote_host(self._inner)

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the link was closed")
        if self._broken:
            raise trio.BrokenResourceError("the link broke (a send was cancelled)")

    async def send(self, data: bytes) -> None:
        """Send all of ``data``. Raises ``ClosedResourceError`` after our
        ``aclose``, ``BrokenResourceError`` when the connection broke.
        Cancelled: the link is broken (see the module docstring).
        """
        async with self._send_lock:
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()  # a cancel before encrypting is harmless
            try:
                await self._tls.send_all(data)
            except trio.Cancelled:
                self._broken = True
                await trio.aclose_forcefully(self._tls.transport_stream)
                raise
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._check_usable()
                raise

    async def receive(self) -> bytes:
        """The next chunk of bytes. Raises ``EndOfChannel`` after the peer's
        ``close_notify``, ``BrokenResourceError`` on a reset, a cut without
        ``close_notify`` or bad records, ``ClosedResourceError`` after our
        ``aclose``. Cancelled: no bytes were consumed.
        """
        async with self._receive_lock:
            self._check_usable()
            if self._eof:
                raise trio.EndOfChannel
            try:
                data = await self._tls.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._check_usable()
                raise
        if not data:
            self._eof = True
            raise trio.EndOfChannel
        return bytes(data)

    async def aclose(self) -> None:
        """Send a ``close_notify`` if possible, close the connection
        (idempotent); pending operations are woken with ``ClosedResourceError``.
        """
        if self._closed:
            await self._inner.aclose()
            return
        self._closed = True
        try:
            if not (self._broken or self._send_lock.locked()):
                with (
                    trio.move_on_after(self._close_grace),
                    contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                ):
                    async with self._send_lock:
                        await self._tls.aclose()
        finally:
            await self._inner.aclose()


class TlsTransport:
    """Dials and serves ``tls:HOST:PORT`` endpoints over an inner stream transport.

    ``inner`` (default :class:`TcpTransport`) carries the bytes; ``cert_dir``
    holds the node's certificate (made on the first ``serve``, named
    ``common_name``); ``rng`` and ``wall_clock`` make and date it.
    """

    name = "tls"
    framed = False

    def __init__(
        self,
        inner: Transport | None = None,
        *,
        cert_dir: Path | str,
        common_name: str = DEFAULT_COMMON_NAME,
        rng: Callable[[int], bytes] = os.urandom,
        wall_clock: Callable[[], float] = time.time,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._inner: Transport = inner if inner is not None else TcpTransport()
        self._cert_dir = Path(cert_dir)
        self._common_name = common_name
        self._rng = rng
        self._wall_clock = wall_clock
        self._timeout = handshake_timeout
        self._client_context = client_context()

    def can_dial(self, endpoint: Endpoint) -> bool:
        """True for a ``tls`` endpoint with a host, a non-zero port, a DNS-name
        ``sni`` if any and a well-formed ``pin`` if any."""
        try:
            target = parse_tls_endpoint(endpoint)
        except UnsupportedEndpoint:
            return False
        return target.port != 0

    async def dial(self, endpoint: Endpoint) -> Link:
        """Connect, run the TLS handshake and check the pin, within the timeout.

        Raises ``UnsupportedEndpoint``, ``OSError`` when the connection fails,
        :class:`TlsHandshakeFailed` or :class:`TlsPinMismatch` (both
        ``OSError``), ``TimeoutError`` when the server does not answer.
        Cancellation closes the connection.
        """
        target = parse_tls_endpoint(endpoint)
        if target.port == 0:
            raise UnsupportedEndpoint("cannot dial port 0")
        inner = await self._inner.dial(Endpoint(self._inner.name, target.address))
        stream = _LinkStream(inner)
        tls = trio.SSLStream(stream, self._client_context, server_hostname=target.sni)
        try:
            with trio.fail_after(self._timeout):
                await tls.do_handshake()
            _check_pin(tls, target.pin)
        except BaseException as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc, trio.TooSlowError):
                raise TimeoutError("no answer to the TLS handshake") from exc
            if isinstance(exc, trio.BrokenResourceError):
                raise TlsHandshakeFailed(str(exc.__cause__ or exc)) from exc
            raise
        return TlsLink(tls)

    async def serve(
        self,
        endpoint: Endpoint,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``endpoint`` with the node's certificate; see the module docstring.

        Creates the certificate in ``cert_dir`` on first use. Reports
        ``tls:HOST:PORT;...;pin=PIN`` (port 0 resolved, other arguments
        kept) and runs until cancelled. Raises ``UnsupportedEndpoint`` or
        ``OSError`` before reporting. A handler's exception closes its link only.
        """
        target = parse_tls_endpoint(endpoint)
        # A few KiB of file I/O (and one key generation), once per serve: done
        # inline like binding the socket, since a worker thread would let an
        # autojump clock run ahead of it in simulated runs.
        cert = load_or_create(
            self._cert_dir,
            now=self._wall_clock(),
            rng=self._rng,
            common_name=self._common_name,
        )
        context = server_context(cert.path)
        await trio.lowlevel.checkpoint()
        args = (*((k, v) for k, v in endpoint.args if k != "pin"), ("pin", encode_pin(cert.pin)))

        def report(bound: Endpoint) -> Endpoint:
            return Endpoint(self.name, bound.address, args)

        await self._inner.serve(
            Endpoint(self._inner.name, target.address),
            partial(self._serve_one, context, handler),
            task_status=ReportAs(task_status, report),
        )

    async def _serve_one(self, context: ssl.SSLContext, handler: LinkHandler, inner: Link) -> None:
        """Run the TLS handshake and the handler (the inner transport closes ``inner``)."""
        tls = trio.SSLStream(_LinkStream(inner), context, server_side=True)
        with trio.move_on_after(self._timeout) as scope:
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("tls: a handshake failed: %r", exc.__cause__ or exc)
                return
        if scope.cancelled_caught:
            log.debug("tls: a handshake timed out")
            return
        link = TlsLink(tls)
        try:
            await handler(link)
        except Exception as exc:
            # A handler is expected to handle link errors itself: this is a bug upstream.
            log.warning("tls: a link handler failed: %r", exc)
            log.debug("tls: the link handler failed", exc_info=True)
        finally:
            await link.aclose()


def _check_pin(tls: trio.SSLStream[_LinkStream], pin: bytes | None) -> None:
    """Raise :class:`TlsPinMismatch` unless the peer's certificate has ``pin``."""
    if pin is None:
        return
    der = tls.getpeercert(binary_form=True)
    try:
        actual = spki_pin(der) if der else b""
    except ValueError:
        actual = b""
    if not hmac.compare_digest(actual, pin):
        shown = encode_pin(actual) if actual else "no usable certificate"
        raise TlsPinMismatch(f"expected pin {encode_pin(pin)}, the server presented {shown}")
