"""Tor pluggable-transport spec 1.0, sans I/O: proxy lines and the environment.

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

Untrusted bytes produce events or :class:`PtProtocolError`. On the client
side every connection then goes through the proxy's SOCKS5 port: that
handshake is :mod:`transports.socks5`, which defines the shared error classes
and escaping.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from p2pmsg.endpoint import format_address
from transports.socks5 import PtProtocolError as PtProtocolError  # noqa: PLC0414 - re-exported
from transports.socks5 import SocksReplyError as SocksReplyError  # noqa: PLC0414 - re-exported
from transports.socks5 import _escape

MAX_LINE = 4096
SPEC_VERSION = "1"

_KEYWORD = re.compile(r"[A-Za-z0-9_-]+")
_METHOD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPTIONS_SPECIAL = frozenset(":;=\\")


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
