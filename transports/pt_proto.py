"""Tor pluggable-transport spec 1.0, sans I/O: proxy lines, environment, SOCKS5.

Theory of operation. A managed proxy (obfs4proxy, lyrebird...) is a child
process configured by ``TOR_PT_*`` environment variables (built by
:func:`client_environment` / :func:`server_environment`) that reports on
stdout, one line at a time: ``VERSION 1``, then per method ``CMETHOD`` or
``SMETHOD`` (or ``*METHOD-ERROR``), then ``CMETHODS DONE``/``SMETHODS DONE``.
:class:`ProxyLineParser` turns those bytes into frozen events, checks the
order (nothing before ``VERSION``, nothing but logs after ``DONE``), caps the
line length and ignores unknown keywords as the spec demands. The fatal
errors (``VERSION-ERROR``, ``ENV-ERROR``, ``PROXY-ERROR``) are events: the
adapter decides what to raise.

On the client side every connection goes through the proxy's SOCKS5 port.
:class:`Socks5Client` is the handshake: greeting, RFC 1929 username/password
carrying the endpoint's ``k=v;k=v`` arguments (escaped per pt-spec 3.5, split
across username and password past 255 bytes), then ``CONNECT``. It says how
many bytes it needs next (:attr:`Socks5Client.need`), so an adapter that reads
exactly that much never swallows the peer's first application bytes.

Untrusted bytes produce events or :class:`PtProtocolError`; a well-formed
SOCKS failure reply raises :class:`SocksReplyError` (an ``OSError``, since
the dial failed, not the protocol).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from p2pmsg.errors import LocalProtocolError, P2PMsgError, RemoteProtocolError

MAX_LINE = 4096
MAX_SOCKS_ARGS = 2 * 255
SPEC_VERSION = "1"

_KEYWORD = re.compile(r"[A-Za-z0-9_-]+")
_METHOD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SOCKS_SPECIAL = frozenset(";=\\")
_OPTIONS_SPECIAL = frozenset(":;=\\")


class PtProtocolError(RemoteProtocolError):
    """The pluggable-transport proxy broke its protocol."""


class SocksReplyError(P2PMsgError, OSError):
    """The pluggable-transport proxy could not connect to the peer."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


# -- managed-proxy stdout lines ----------------------------------------------


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True)
class Version:
    version: str


@dataclass(frozen=True)
class FatalError:
    """``VERSION-ERROR``, ``ENV-ERROR`` or ``PROXY-ERROR``: the proxy exits."""

    keyword: str
    message: str


@dataclass(frozen=True)
class ProxyDone:
    """``PROXY DONE``: the upstream proxy was accepted."""


@dataclass(frozen=True)
class CMethod:
    name: str
    socks: str
    host: str
    port: int


@dataclass(frozen=True)
class SMethod:
    name: str
    host: str
    port: int
    args: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MethodError:
    """``CMETHOD-ERROR`` / ``SMETHOD-ERROR``: one method failed, not the proxy."""

    name: str
    message: str


@dataclass(frozen=True)
class MethodsDone:
    pass


@dataclass(frozen=True)
class Log:
    """``LOG`` or ``STATUS``: informational, passed on as text."""

    keyword: str
    text: str


ProxyEvent = Version | FatalError | ProxyDone | CMethod | SMethod | MethodError | MethodsDone | Log


def parse_address(text: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[V6]:PORT`` as the spec writes it. Raises :class:`PtProtocolError`."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise PtProtocolError("an IPv6 address without [brackets]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise PtProtocolError("the address is not IP:PORT") from None
    if not sep or not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise PtProtocolError("the address has a bad port")
    port = int(port_text)
    if not 0 < port <= 65535:
        raise PtProtocolError("the address has a bad port")
    return str(ip), port


def parse_smethod_args(text: str) -> tuple[tuple[str, str], ...]:
    """``k=v,k=v`` with ``\\`` escaping (the value of ``ARGS:``)."""
    args: list[tuple[str, str]] = []
    key: list[str] = []
    value: list[str] | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 == len(text):
                raise PtProtocolError("ARGS ends in a backslash")
            (key if value is None else value).append(text[i + 1])
            i += 1
        elif ch == "=" and value is None:
            value = []
        elif ch == ",":
            args.append(_arg(key, value))
            key, value = [], None
        else:
            (key if value is None else value).append(ch)
        i += 1
    args.append(_arg(key, value))
    return tuple(args)


def _arg(key: list[str], value: list[str] | None) -> tuple[str, str]:
    if not key or value is None:
        raise PtProtocolError("an ARGS entry is not k=v")
    return "".join(key), "".join(value)


class ProxyLineParser:
    """Bytes from a managed proxy's stdout in, :data:`ProxyEvent` s out."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.version: str | None = None
        self.done = False
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> list[ProxyEvent]:
        """Every event completed by ``data``. Raises :class:`PtProtocolError`."""
        self._buffer += data
        events: list[ProxyEvent] = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if len(line) > MAX_LINE:
                raise PtProtocolError(f"a line longer than {MAX_LINE} bytes")
            event = self._line(line)
            if event is not None:
                events.append(event)
        if len(self._buffer) > MAX_LINE:
            raise PtProtocolError(f"a line longer than {MAX_LINE} bytes")
        return events

    def _line(self, raw: bytes) -> ProxyEvent | None:
        if b"\x00" in raw or not raw.isascii():
            raise PtProtocolError("a line with NUL or non-ASCII bytes")
        keyword, _, rest = raw.decode("ascii").partition(" ")
        if not _KEYWORD.fullmatch(keyword):
            raise PtProtocolError("a line without a keyword")
        handler = _HANDLERS.get(keyword)
        if handler is None:
            return None  # pt-spec 3.3: unknown keywords are ignored
        return handler(self, keyword, rest)

    def _expect_configuring(self, keyword: str) -> None:
        if self.version is None:
            raise PtProtocolError(f"{keyword} before VERSION")
        if self.done:
            raise PtProtocolError(f"{keyword} after DONE")

    def _on_version(self, keyword: str, rest: str) -> ProxyEvent:
        if self.version is not None:
            raise PtProtocolError("a second VERSION")
        if rest != SPEC_VERSION:
            raise PtProtocolError(f"the proxy chose a version we did not offer: {rest!r}")
        self.version = rest
        return Version(rest)

    def _on_fatal(self, keyword: str, rest: str) -> ProxyEvent:
        return FatalError(keyword, rest)

    def _on_proxy(self, keyword: str, rest: str) -> ProxyEvent:
        self._expect_configuring(keyword)
        if rest != "DONE" or self.role is not Role.CLIENT:
            raise PtProtocolError("a PROXY line other than a client's PROXY DONE")
        return ProxyDone()

    def _on_method(self, keyword: str, rest: str) -> ProxyEvent:
        self._expect_configuring(keyword)
        if keyword[0] != self.role.name[0]:
            raise PtProtocolError(f"{keyword} from a {self.role.value} proxy")
        fields = rest.split(" ")
        if not _METHOD_NAME.fullmatch(fields[0]):
            raise PtProtocolError(f"{keyword} with a bad method name")
        if keyword == "CMETHOD":
            return _cmethod(fields)
        return _smethod(fields)

    def _on_method_error(self, keyword: str, rest: str) -> ProxyEvent:
        self._expect_configuring(keyword)
        if keyword[0] != self.role.name[0]:
            raise PtProtocolError(f"{keyword} from a {self.role.value} proxy")
        name, _, message = rest.partition(" ")
        if not _METHOD_NAME.fullmatch(name):
            raise PtProtocolError(f"{keyword} with a bad method name")
        return MethodError(name, message)

    def _on_done(self, keyword: str, rest: str) -> ProxyEvent:
        self._expect_configuring(keyword)
        if rest != "DONE" or keyword[0] != self.role.name[0]:
            raise PtProtocolError(f"{keyword} {rest!r} is not our DONE")
        self.done = True
        return MethodsDone()

    def _on_log(self, keyword: str, rest: str) -> ProxyEvent:
        return Log(keyword, rest)


def _cmethod(fields: list[str]) -> CMethod:
    if len(fields) != 3 or fields[1] not in ("socks4", "socks5"):
        raise PtProtocolError("CMETHOD is not NAME socks4|socks5 IP:PORT")
    host, port = parse_address(fields[2])
    return CMethod(fields[0], fields[1], host, port)


def _smethod(fields: list[str]) -> SMethod:
    if len(fields) < 2:
        raise PtProtocolError("SMETHOD without an address")
    host, port = parse_address(fields[1])
    args: tuple[tuple[str, str], ...] = ()
    for option in fields[2:]:
        if option.startswith("ARGS:"):
            args = parse_smethod_args(option[len("ARGS:") :])
    return SMethod(fields[0], host, port, args)


_HANDLERS = {
    "VERSION": ProxyLineParser._on_version,
    "VERSION-ERROR": ProxyLineParser._on_fatal,
    "ENV-ERROR": ProxyLineParser._on_fatal,
    "PROXY-ERROR": ProxyLineParser._on_fatal,
    "PROXY": ProxyLineParser._on_proxy,
    "CMETHOD": ProxyLineParser._on_method,
    "SMETHOD": ProxyLineParser._on_method,
    "CMETHOD-ERROR": ProxyLineParser._on_method_error,
    "SMETHOD-ERROR": ProxyLineParser._on_method_error,
    "CMETHODS": ProxyLineParser._on_done,
    "SMETHODS": ProxyLineParser._on_done,
    "LOG": ProxyLineParser._on_log,
    "STATUS": ProxyLineParser._on_log,
}


# -- the environment -------------------------------------------------------


def _escape(text: str, special: frozenset[str]) -> str:
    return "".join("\\" + ch if ch in special else ch for ch in text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def client_environment(methods: Iterable[str], state_dir: str) -> dict[str, str]:
    """The ``TOR_PT_*`` variables of a client proxy (stdin close stops it)."""
    return {
        "TOR_PT_MANAGED_TRANSPORT_VER": SPEC_VERSION,
        "TOR_PT_STATE_LOCATION": state_dir,
        "TOR_PT_EXIT_ON_STDIN_CLOSE": "1",
        "TOR_PT_CLIENT_TRANSPORTS": ",".join(methods),
    }


def server_environment(
    method: str,
    bind: tuple[str, int],
    orport: tuple[str, int],
    state_dir: str,
    options: Iterable[tuple[str, str]] = (),
) -> dict[str, str]:
    """The ``TOR_PT_*`` variables of a server proxy for one method.

    obfs4proxy refuses to start without ``TOR_PT_SERVER_BINDADDR``; options
    become ``TOR_PT_SERVER_TRANSPORT_OPTIONS`` with ``: ; = \\`` escaped.
    """
    env = {
        "TOR_PT_MANAGED_TRANSPORT_VER": SPEC_VERSION,
        "TOR_PT_STATE_LOCATION": state_dir,
        "TOR_PT_EXIT_ON_STDIN_CLOSE": "1",
        "TOR_PT_SERVER_TRANSPORTS": method,
        "TOR_PT_SERVER_BINDADDR": f"{method}-{format_address(*bind)}",
        "TOR_PT_ORPORT": format_address(*orport),
        "TOR_PT_EXTENDED_SERVER_PORT": "",
    }
    pairs = [
        f"{method}:{_escape(k, _OPTIONS_SPECIAL)}={_escape(v, _OPTIONS_SPECIAL)}"
        for k, v in options
    ]
    if pairs:
        env["TOR_PT_SERVER_TRANSPORT_OPTIONS"] = ";".join(pairs)
    return env


def child_environment(base: Mapping[str, str], pt: Mapping[str, str]) -> dict[str, str]:
    """``base`` without any stray ``TOR_PT_*`` variable, plus ``pt``."""
    return {k: v for k, v in base.items() if not k.startswith("TOR_PT_")} | dict(pt)


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
