"""The ``ws`` transport's sans-IO core: a browser's WebSocket upgrade and frames.

Theory of operation. A flow starts as an HTTP/1.1 ``GET PATH`` upgrade in
the header order and wording of a desktop Chrome (:class:`ClientHandshake`,
with a random ``Sec-WebSocket-Key`` passed in by the caller). The server
(:class:`ServerHandshake`) reads one request with h11: only a valid WebSocket
upgrade of its configured path gets ``101``; any other request gets nginx's
own ``404 Not Found`` page, malformed HTTP gets nginx's ``400 Bad Request``,
a client that closes early gets nothing. Nothing p2pmsg-specific is ever said
to a prober. After ``101`` both ends exchange binary WebSocket messages
(:class:`WsFramer`, over wsproto's frame layer; client frames are masked):
one encoded message per send, whole messages out. Inbound messages above
:data:`MAX_MESSAGE` are refused from their frame header, before their payload
is read, with close code 1009. Pings are answered by a pong sent ahead of the
next message (only the latest ping is kept).

No I/O, no clock, no randomness: bytes, the time and the key come in as
parameters; :mod:`transports.ws` is the trio adapter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate

import h11
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from p2pmsg.endpoint import format_address
from p2pmsg.errors import LocalProtocolError, RemoteProtocolError

MAX_MESSAGE = 1024 * 1024
MAX_REQUEST_HEAD = 8 * 1024  # nginx's large_client_header_buffers
MAX_RESPONSE_HEAD = 16 * 1024
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {400: "Bad Request", 404: "Not Found"}


class WsRefused(RemoteProtocolError, ConnectionError):
    """The server did not accept the WebSocket upgrade."""


class WsProtocolError(RemoteProtocolError):
    """The peer broke the WebSocket protocol."""

    def __init__(self, message: str, close_code: int = CloseReason.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


# --- targets --------------------------------------------------------------


@dataclass(frozen=True)
class WsTarget:
    """What a ``ws`` endpoint says: where to connect and how to look."""

    host: str
    port: int
    path: str
    host_header: str
    origin: str

    @property
    def address(self) -> str:
        """``HOST:PORT`` for the inner transport."""
        return format_address(self.host, self.port)


# --- the handshake (sans-IO) -----------------------------------------------


@dataclass(frozen=True)
class NeedData:
    """Feed more bytes."""


@dataclass(frozen=True)
class Upgraded:
    """The upgrade is done: send ``response`` (server only), then frames follow."""

    response: bytes
    trailing: bytes


@dataclass(frozen=True)
class Refused:
    """Send ``response`` (maybe empty), then close: this is not one of ours."""

    response: bytes


NEED_DATA = NeedData()


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455, 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - the RFC's choice


def _tokens(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    return {t.strip().lower() for k, v in headers if k == name for t in v.split(b",")}


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for k, v in headers if k == name]


def _valid_key(values: list[bytes]) -> bool:
    if len(values) != 1:
        return False
    try:
        return len(base64.b64decode(values[0], validate=True)) == 16
    except binascii.Error:
        return False


def http_page(status: int, date: str, *, body: bool = True) -> bytes:
    """An nginx error page (``Connection: close``) for ``status``."""
    title = f"{status} {_REASONS[status]}"
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    head = (
        f"HTTP/1.1 {title}\r\nServer: nginx\r\nDate: {date}\r\n"
        f"Content-Type: text/html\r\nContent-Length: {len(page)}\r\nConnection: close\r\n\r\n"
    )
    return (head + page).encode() if body else head.encode()


class ServerHandshake:
    """Reads one HTTP request; upgrades it only if it is our WebSocket GET.

    ``now`` (wall-clock seconds) dates the response, as a web server would.
    """

    def __init__(self, path: str, *, now: float) -> None:
        self._path = path.encode()
        self._date = formatdate(now, usegmt=True)
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self._done = False

    def receive_data(self, data: bytes) -> NeedData | Upgraded | Refused:
        """Feed bytes (``b""``: the client closed). Returns what to do next.

        Raises :class:`LocalProtocolError` once an answer was given.
        """
        if self._done:
            raise LocalProtocolError("the handshake is over")
        if not data:
            self._done = True
            return Refused(b"")
        try:
            self._http.receive_data(data)
            event = self._http.next_event()
            if event is h11.NEED_DATA:
                return NEED_DATA
            assert isinstance(event, h11.Request)  # h11's first server event
            outcome = self._answer(event)
        except h11.RemoteProtocolError:
            outcome = Refused(http_page(400, self._date))
        self._done = True
        return outcome

    def _answer(self, request: h11.Request) -> Upgraded | Refused:
        if not self._is_upgrade(request) or self._http.next_event() != h11.EndOfMessage():
            return Refused(http_page(404, self._date, body=request.method != b"HEAD"))
        key = _header(request.headers, b"sec-websocket-key")[0]
        response = (
            b"HTTP/1.1 101 Switching Protocols\r\nServer: nginx\r\nDate: "
            + self._date.encode()
            + b"\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: "
            + accept_token(key)
            + b"\r\n\r\n"
        )
        return Upgraded(response, self._http.trailing_data[0])

    def _is_upgrade(self, request: h11.Request) -> bool:
        headers = request.headers
        return (
            request.method == b"GET"
            and request.http_version == b"1.1"
            and request.target.partition(b"?")[0] == self._path
            and b"websocket" in _tokens(headers, b"upgrade")
            and b"upgrade" in _tokens(headers, b"connection")
            and _header(headers, b"sec-websocket-version") == [b"13"]
            and _valid_key(_header(headers, b"sec-websocket-key"))
        )


class ClientHandshake:
    """Writes a browser's upgrade request and checks the server's ``101``."""

    def __init__(self, target: WsTarget, *, key: bytes, user_agent: str = USER_AGENT) -> None:
        if len(key) != 16:
            raise LocalProtocolError("a Sec-WebSocket-Key is 16 random bytes")
        self._key = base64.b64encode(key)
        self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        headers = [
            ("Host", target.host_header),
            ("Connection", "Upgrade"),
            ("Pragma", "no-cache"),
            ("Cache-Control", "no-cache"),
            ("User-Agent", user_agent),
            ("Upgrade", "websocket"),
            ("Origin", target.origin),
            ("Sec-WebSocket-Version", "13"),
            ("Accept-Encoding", "gzip, deflate, br, zstd"),
            ("Accept-Language", "en-US,en;q=0.9"),
            ("Sec-WebSocket-Key", self._key.decode()),
            ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
        ]
        request = h11.Request(method="GET", target=target.path, headers=headers)
        self.request = (self._http.send(request) or b"") + (
            self._http.send(h11.EndOfMessage()) or b""
        )

    def receive_data(self, data: bytes) -> NeedData | Upgraded:
        """Feed the server's bytes (``b""``: it closed). Raises :class:`WsRefused`."""
        try:
            self._http.receive_data(data)
            event = self._http.next_event()
            while isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                event = self._http.next_event()  # 1xx other than 101 precede the answer
        except h11.RemoteProtocolError as exc:
            raise WsRefused("the answer is not HTTP") from exc
        if event is h11.NEED_DATA:
            return NEED_DATA
        if isinstance(event, h11.Response):
            raise WsRefused(f"HTTP {event.status_code}")
        if not isinstance(event, h11.InformationalResponse):
            raise WsRefused("the server closed the connection")
        headers = event.headers
        if (
            b"websocket" not in _tokens(headers, b"upgrade")
            or b"upgrade" not in _tokens(headers, b"connection")
            or _header(headers, b"sec-websocket-accept") != [accept_token(self._key)]
            or _header(headers, b"sec-websocket-extensions")
        ):
            raise WsRefused("a bad 101 answer")
        return Upgraded(b"", self._http.trailing_data[0])


# --- frames (sans-IO) ------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One whole binary message."""

    data: bytes


@dataclass(frozen=True)
class PeerClosed:
    """The peer sent a close frame: the end of its messages."""

    code: int


class _SizeLimit(Extension):
    """Refuses a message from the frame header that would take it past ``limit``."""

    name = "p2pmsg-size-limit"  # never offered: it only hooks the frame decoder

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._total = 0
        self._data_frame = False

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> CloseReason | RsvBits:
        self._data_frame = not opcode.iscontrol()
        if self._data_frame:
            self._total += payload_length
            if self._total > self._limit:
                return CloseReason.MESSAGE_TOO_BIG
        return RsvBits(False, False, False)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if self._data_frame and fin:
            self._total = 0
        return None


class WsFramer:
    """Binary WebSocket messages both ways, over wsproto's frame layer.

    Feed :meth:`receive_data` / :meth:`receive_eof`, then call
    :meth:`next_event` until it returns :class:`NeedData`. Memory is bounded
    by the bytes fed since the last ``NeedData`` plus one partial message of
    at most ``max_message`` bytes.
    """

    def __init__(self, *, client: bool, trailing: bytes = b"", max_message: int = MAX_MESSAGE):
        kind = ConnectionType.CLIENT if client else ConnectionType.SERVER
        self._ws = Connection(kind, extensions=[_SizeLimit(max_message)])
        self._max = max_message
        self._parts = bytearray()
        self._ready: deque[Message] = deque()
        self._end: PeerClosed | WsProtocolError | None = None
        self._pong: bytes | None = None
        self.receive_data(trailing)

    @property
    def can_send(self) -> bool:
        """False once a close frame went either way."""
        return self._ws.state is ConnectionState.OPEN

    def encode(self, data: bytes) -> bytes:
        """One binary message (after a pending pong). Raises :class:`LocalProtocolError`."""
        if not self.can_send or len(data) > self._max:
            raise LocalProtocolError("closed, or a message larger than the peer accepts")
        pong, self._pong = self._pong, None
        out = self._ws.send(Pong(payload=pong)) if pong is not None else b""
        return out + self._ws.send(BytesMessage(data=data))

    def close_frame(self, code: int = CloseReason.NORMAL_CLOSURE) -> bytes:
        """Our close frame, or ``b""`` if we sent one already."""
        if self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return b""
        return self._ws.send(CloseConnection(code=code))

    def receive_data(self, data: bytes) -> None:
        """Feed the peer's bytes; ignored after its close or an error."""
        if self._end is None and data:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._on_event(event)

    def receive_eof(self) -> None:
        """The connection ended: without a close frame, that is an error."""
        if self._end is None:
            self._end = WsProtocolError("the connection ended without a close frame")

    def next_event(self) -> Message | PeerClosed | NeedData:
        """The next message, the peer's close (again and again) or ``NeedData``.

        Raises :class:`WsProtocolError` (again and again) after a violation;
        its ``close_code`` is the code to close with.
        """
        if self._ready:
            return self._ready.popleft()
        if isinstance(self._end, WsProtocolError):
            raise self._end
        return self._end or NEED_DATA

    def _on_event(self, event: Event) -> None:
        if self._end is not None:
            return
        match event:
            case BytesMessage():
                self._parts += event.data
                if event.message_finished:
                    self._ready.append(Message(bytes(self._parts)))
                    self._parts.clear()
            case Ping():
                self._pong = bytes(event.payload)
            case TextMessage():
                self._end = WsProtocolError("a text message", CloseReason.UNSUPPORTED_DATA)
            case CloseConnection() if self._ws.state is ConnectionState.OPEN:
                # wsproto reports its parse errors as a close that the peer never sent
                self._end = WsProtocolError(event.reason or "bad frame", event.code)
            case CloseConnection():
                self._end = PeerClosed(event.code)
            case _:
                pass  # pongs
