"""SOCKS5 for pluggable transports, sans I/O: pt-spec 3.5 arguments and CONNECT.

Theory of operation. On the client side every connection goes through a
managed proxy's SOCKS5 port. :class:`Socks5Client` is the handshake: greeting,
RFC 1929 username/password carrying the endpoint's ``k=v;k=v`` arguments
(escaped per pt-spec 3.5 by :func:`encode_socks_args`, split across username
and password past 255 bytes), then ``CONNECT``. It says how many bytes it
needs next (:attr:`Socks5Client.need`), so an adapter that reads exactly that
much never swallows the peer's first application bytes.

Malformed bytes raise :class:`PtProtocolError`; a well-formed SOCKS failure
reply raises :class:`SocksReplyError` (an ``OSError``, since the dial failed,
not the protocol). :mod:`transports.pt_proto` (the managed-proxy lines and
environment) shares this module's error class and escaping.
"""

from __future__ import annotations

import errno
import ipaddress
import re
from collections.abc import Iterable
from enum import Enum

from p2pmsg.errors import LocalProtocolError, P2PMsgError, RemoteProtocolError

MAX_SOCKS_ARGS = 2 * 255

_SOCKS_SPECIAL = frozenset(";=\\")


class PtProtocolError(RemoteProtocolError):
    """The pluggable-transport proxy broke its protocol."""


class SocksReplyError(P2PMsgError, OSError):
    """The pluggable-transport proxy could not connect to the peer."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        # the errno the reply stands for, so a refusal through the proxy is
        # scored as one (p2pmsg.pathscore.classify), not as silence
        self.errno = REPLY_ERRNOS.get(code or 0)


def _escape(text: str, special: frozenset[str]) -> str:
    return "".join("\\" + ch if ch in special else ch for ch in text)


# -- SOCKS5 per-connection arguments (pt-spec 3.5) ---------------------------


def encode_socks_args(args: Iterable[tuple[str, str]]) -> tuple[bytes, bytes]:
    """RFC 1929 ``(username, password)`` carrying ``k=v;k=v``.

    Up to 255 bytes fit in the username and the password is one NUL; longer
    lists continue in the password. Raises :class:`LocalProtocolError` past
    510 bytes or for an empty list (RFC 1929 needs a username).
    """
    text = ";".join(
        f"{_escape(k, _SOCKS_SPECIAL)}={_escape(v, _SOCKS_SPECIAL)}" for k, v in args
    ).encode()
    if not text:
        raise LocalProtocolError("no arguments to send")
    if len(text) > MAX_SOCKS_ARGS:
        raise LocalProtocolError(f"arguments longer than {MAX_SOCKS_ARGS} bytes")
    if len(text) <= 255:
        return text, b"\x00"
    return text[:255], text[255:]


def decode_socks_args(username: bytes, password: bytes) -> tuple[tuple[str, str], ...]:
    """The inverse of :func:`encode_socks_args`, as a PT server reads it."""
    text = (username + (b"" if password == b"\x00" else password)).decode("utf-8")
    args: list[tuple[str, str]] = []
    for raw in _split_escaped(text, ";"):
        pieces = _split_escaped(raw, "=")
        if len(pieces) != 2:
            raise PtProtocolError("a SOCKS argument is not k=v")
        args.append((_unescape(pieces[0]), _unescape(pieces[1])))
    return tuple(args)


def _split_escaped(text: str, sep: str) -> list[str]:
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if i > len(text):
        raise PtProtocolError("a SOCKS argument ends in a backslash")
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


# -- the SOCKS5 client handshake (RFC 1928, RFC 1929) --------------------------

SOCKS_VERSION = 5
AUTH_VERSION = 1
NO_AUTH, USER_PASS, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CMD_CONNECT = 1
ATYP_IPV4, ATYP_NAME, ATYP_IPV6 = 1, 3, 4

REPLY_MESSAGES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}

REPLY_ERRNOS = {
    3: errno.ENETUNREACH,
    4: errno.EHOSTUNREACH,
    5: errno.ECONNREFUSED,
    6: errno.ETIMEDOUT,
}


class SocksState(Enum):
    METHOD = "method"
    AUTH = "auth"
    REPLY_HEAD = "reply head"
    REPLY_NAME_LENGTH = "reply name length"
    REPLY_ADDRESS = "reply address"
    CONNECTED = "connected"


def encode_address(host: str, port: int) -> bytes:
    """``ATYP ADDR PORT`` of a request. Raises :class:`LocalProtocolError`."""
    if not 0 < port <= 65535:
        raise LocalProtocolError(f"bad port {port}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("ascii") if host.isascii() and host.isprintable() else b""
        if not 0 < len(name) <= 255:
            raise LocalProtocolError("a host name SOCKS cannot carry") from None
        return bytes([ATYP_NAME, len(name)]) + name + port.to_bytes(2, "big")
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes([atyp]) + ip.packed + port.to_bytes(2, "big")


class Socks5Client:
    """One SOCKS5 ``CONNECT`` with pt-spec arguments, as a byte-in/byte-out core.

    Send :meth:`greeting`, then feed what the proxy sends to
    :meth:`receive_data` and send what it returns, until :attr:`state` is
    ``CONNECTED``. Read at most :attr:`need` bytes at a time and
    :attr:`leftover` stays empty.
    """

    def __init__(self, host: str, port: int, args: Iterable[tuple[str, str]] = ()) -> None:
        args = tuple(args)
        self._credentials = encode_socks_args(args) if args else None
        self._request = bytes([SOCKS_VERSION, CMD_CONNECT, 0]) + encode_address(host, port)
        self.state = SocksState.METHOD
        self.bound: tuple[str, int] | None = None
        self.leftover = b""
        self._want = 2
        self._atyp = 0
        self._buffer = bytearray()

    @property
    def connected(self) -> bool:
        return self.state is SocksState.CONNECTED

    @property
    def need(self) -> int:
        """Bytes still missing from the proxy's current message (0 once connected)."""
        return 0 if self.state is SocksState.CONNECTED else self._want - len(self._buffer)

    def greeting(self) -> bytes:
        method = NO_AUTH if self._credentials is None else USER_PASS
        return bytes([SOCKS_VERSION, 1, method])

    def receive_data(self, data: bytes) -> bytes:
        """Feed the proxy's bytes; returns the bytes to send next (maybe none).

        Raises :class:`PtProtocolError` on malformed bytes and
        :class:`SocksReplyError` when the proxy refuses or the connect failed.
        """
        if self.connected:
            raise LocalProtocolError("the SOCKS handshake is over")
        self._buffer += data
        out = bytearray()
        while not self.connected and len(self._buffer) >= self._want:
            message = bytes(self._buffer[: self._want])
            del self._buffer[: self._want]
            out += _STEPS[self.state](self, message)
        if self.connected:
            self.leftover = bytes(self._buffer)
            self._buffer.clear()
        return bytes(out)

    def _expect(self, state: SocksState, want: int) -> None:
        self.state, self._want = state, want

    def _on_method(self, message: bytes) -> bytes:
        if message[0] != SOCKS_VERSION:
            raise PtProtocolError(f"a SOCKS version {message[0]} method reply")
        if message[1] == NO_ACCEPTABLE:
            raise SocksReplyError("the proxy accepts none of our SOCKS authentication methods")
        if message[1] != self.greeting()[2]:
            raise PtProtocolError(f"the proxy chose SOCKS method {message[1]} we did not offer")
        if self._credentials is None:
            self._expect(SocksState.REPLY_HEAD, 4)
            return self._request
        username, password = self._credentials
        self._expect(SocksState.AUTH, 2)
        return bytes([AUTH_VERSION, len(username)]) + username + bytes([len(password)]) + password

    def _on_auth(self, message: bytes) -> bytes:
        if message[0] != AUTH_VERSION:
            raise PtProtocolError(f"a version {message[0]} authentication reply")
        if message[1] != 0:
            raise SocksReplyError(f"the proxy refused the endpoint's arguments ({message[1]})")
        self._expect(SocksState.REPLY_HEAD, 4)
        return self._request

    def _on_reply_head(self, message: bytes) -> bytes:
        version, code, reserved, atyp = message
        if version != SOCKS_VERSION:
            raise PtProtocolError(f"a SOCKS version {version} reply")
        if code != 0:
            reason = REPLY_MESSAGES.get(code, "an unassigned reply code")
            raise SocksReplyError(f"{reason} (SOCKS reply {code})", code)
        if reserved != 0:
            raise PtProtocolError("a SOCKS reply with a non-zero reserved byte")
        self._atyp = atyp
        if atyp == ATYP_NAME:
            self._expect(SocksState.REPLY_NAME_LENGTH, 1)
        elif atyp in (ATYP_IPV4, ATYP_IPV6):
            self._expect(SocksState.REPLY_ADDRESS, (4 if atyp == ATYP_IPV4 else 16) + 2)
        else:
            raise PtProtocolError(f"a SOCKS reply with address type {atyp}")
        return b""

    def _on_name_length(self, message: bytes) -> bytes:
        if message[0] == 0:
            raise PtProtocolError("a SOCKS reply with an empty host name")
        self._expect(SocksState.REPLY_ADDRESS, message[0] + 2)
        return b""

    def _on_address(self, message: bytes) -> bytes:
        raw, port = message[:-2], int.from_bytes(message[-2:], "big")
        host = raw.decode("latin-1") if self._atyp == ATYP_NAME else str(ipaddress.ip_address(raw))
        self.bound = (host, port)
        self._expect(SocksState.CONNECTED, 0)
        return b""


_STEPS = {
    SocksState.METHOD: Socks5Client._on_method,
    SocksState.AUTH: Socks5Client._on_auth,
    SocksState.REPLY_HEAD: Socks5Client._on_reply_head,
    SocksState.REPLY_NAME_LENGTH: Socks5Client._on_name_length,
    SocksState.REPLY_ADDRESS: Socks5Client._on_address,
}
