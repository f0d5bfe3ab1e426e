"""Endpoints and invite links: the text people and transports exchange.

An endpoint is ``NAME:ADDRESS;k=v;k=v`` in the style of Tor's pt-spec: NAME
is a transport identifier (a C identifier, lower case), ADDRESS is whatever
that transport understands, and the arguments are ``k=v`` pairs where ``\\``
escapes ``;``, ``=`` and ``\\`` itself. The core parses syntax only: whether a
transport called NAME exists is the caller's question, and an unknown NAME is
skipped when dialling, never fatal.

An invite is ``p2pmsg://<public key>@<endpoint>,<endpoint>...``: the Ed25519
public key in base32 (it both names and authenticates the node) and the
endpoints, each percent-encoded so that ``,`` and ``%`` inside an argument
survive. Everything here is pure and size-capped; bad text raises
:class:`BadEndpoint` or :class:`BadInvite`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from p2pmsg.errors import BadEndpoint, BadInvite, BadKey
from p2pmsg.keys import PublicIdentity, decode_key

MAX_ENDPOINT_CHARS = 2048
MAX_ARGS = 32
MAX_INVITE_CHARS = 8192
MAX_INVITE_ENDPOINTS = 16
INVITE_SCHEME = "p2pmsg://"

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_SPECIAL = {";", "=", "\\"}


def _escape(text: str) -> str:
    return "".join("\\" + ch if ch in _SPECIAL else ch for ch in text)


def _split_unescaped(text: str, sep: str) -> list[str]:
    """Split on unescaped ``sep``, keeping escapes in the parts."""
    parts, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                raise BadEndpoint("a backslash ends the endpoint")
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Endpoint:
    """A transport name, an address and ordered ``k=v`` arguments."""

    transport: str
    address: str
    args: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.transport):
            raise BadEndpoint(f"bad transport name {self.transport!r}")
        if not self.address or not self.address.isprintable():
            raise BadEndpoint("the address is empty or not printable")
        if len(self.args) > MAX_ARGS:
            raise BadEndpoint(f"more than {MAX_ARGS} arguments")
        for key, value in self.args:
            if not key or not key.isprintable() or not value.isprintable():
                raise BadEndpoint("an argument is empty or not printable")
        if len(str(self)) > MAX_ENDPOINT_CHARS:
            raise BadEndpoint(f"longer than {MAX_ENDPOINT_CHARS} characters")

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``NAME:ADDRESS;k=v;...``. Raises :class:`BadEndpoint`."""
        if len(text) > MAX_ENDPOINT_CHARS:
            raise BadEndpoint(f"longer than {MAX_ENDPOINT_CHARS} characters")
        name, colon, rest = text.partition(":")
        if not colon:
            raise BadEndpoint("expected NAME:ADDRESS")
        address, *raw_args = _split_unescaped(rest, ";")
        args = []
        for raw in raw_args:
            pieces = _split_unescaped(raw, "=")
            if len(pieces) != 2:
                raise BadEndpoint(f"argument {raw!r} is not k=v")
            args.append((_unescape(pieces[0]), _unescape(pieces[1])))
        return cls(name, _unescape(address), tuple(args))

    def __str__(self) -> str:
        parts = [f"{self.transport}:{_escape(self.address)}"]
        parts += [f"{_escape(k)}={_escape(v)}" for k, v in self.args]
        return ";".join(parts)

    def arg(self, key: str, default: str | None = None) -> str | None:
        """The first value of argument ``key``, or ``default``."""
        return next((v for k, v in self.args if k == key), default)

    def host_port(self, default_port: int | None = None) -> tuple[str, int]:
        """Split an ``HOST:PORT`` or ``[V6]:PORT`` address. Raises :class:`BadEndpoint`."""
        host, port_text = self.address, ""
        if host.startswith("["):
            host, _, rest = host[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
            if rest and not rest.startswith(":"):
                raise BadEndpoint("text after ]")
        elif ":" in host:
            host, _, port_text = host.rpartition(":")
            if ":" in host:
                raise BadEndpoint("an IPv6 address needs [brackets]")
        if not host:
            raise BadEndpoint("the address has no host")
        if not port_text:
            if default_port is None:
                raise BadEndpoint("the address has no port")
            return host, default_port
        if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
            raise BadEndpoint(f"bad port {port_text!r}")
        return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, or ``[V6]:PORT`` for an IPv6 host: what :meth:`Endpoint.host_port` splits."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Invite:
    """Everything needed to reach and authenticate a node."""

    identity: PublicIdentity
    endpoints: tuple[Endpoint, ...] = ()

    def __post_init__(self) -> None:
        if len(self.endpoints) > MAX_INVITE_ENDPOINTS:
            raise BadInvite(f"more than {MAX_INVITE_ENDPOINTS} endpoints")
        if len(str(self)) > MAX_INVITE_CHARS:
            raise BadInvite(f"longer than {MAX_INVITE_CHARS} characters")

    @classmethod
    def parse(cls, text: str) -> Invite:
        """Parse a ``p2pmsg://`` link. Raises :class:`BadInvite`."""
        text = text.strip()
        if len(text) > MAX_INVITE_CHARS:
            raise BadInvite(f"longer than {MAX_INVITE_CHARS} characters")
        if not text.lower().startswith(INVITE_SCHEME):
            raise BadInvite(f"it does not start with {INVITE_SCHEME}")
        key_text, _, rest = text[len(INVITE_SCHEME) :].partition("@")
        try:
            identity = PublicIdentity(decode_key(key_text))
        except BadKey as exc:
            raise BadInvite(f"bad key: {exc}") from exc
        pieces = [p for p in rest.split(",") if p] if rest else []
        if len(pieces) > MAX_INVITE_ENDPOINTS:
            raise BadInvite(f"more than {MAX_INVITE_ENDPOINTS} endpoints")
        try:
            endpoints = tuple(Endpoint.parse(unquote(p, errors="strict")) for p in pieces)
        except (BadEndpoint, UnicodeDecodeError) as exc:
            raise BadInvite(f"bad endpoint: {exc}") from exc
        return cls(identity, endpoints)

    def __str__(self) -> str:
        eps = ",".join(quote(str(e), safe=":;=/[]\\") for e in self.endpoints)
        return f"{INVITE_SCHEME}{self.identity.encoded()}@{eps}"
