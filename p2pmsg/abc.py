"""The plugin boundaries: transports, links and discovery.

A transport knows *how* bytes move (tcp, the simulated network, later
WebSocket-, TLS- and obfs-shaped wrappers and Tor's pluggable-transport
binaries); it never knows *what* moves or to whom. Everything above it
(secure links, the node) is written against these protocols only, so
``p2pmsg`` never imports ``transports``: whoever runs a node hands it the
transports to use.

A :class:`Link` has the semantics of ``trio.abc.Channel[bytes]``: ``send``
(serialised by the link: concurrent senders never interleave),
``receive`` (raises ``trio.EndOfChannel`` on a clean close,
``trio.BrokenResourceError`` when the peer vanished or the connection broke,
``trio.ClosedResourceError`` after our own ``aclose``) and ``aclose``.

A transport whose ``framed`` is true delivers exactly the byte strings that
were sent. A stream transport (tcp) delivers the same bytes in order but may
split or join them: the secure link's wire format is self-delimiting for that
reason, so its bytes go on a TCP stream with no cleartext length in front.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import trio

from p2pmsg.endpoint import Endpoint

if TYPE_CHECKING:
    from p2pmsg.link.replay import SavedReplay

#: The largest byte string a transport must accept in one ``send``.
MAX_SEND = 128 * 1024

LinkHandler = Callable[["Link"], Awaitable[None]]


@runtime_checkable
class Link(Protocol):
    """An ordered, reliable channel of bytes to one peer."""

    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes: ...

    async def aclose(self) -> None: ...


def remote_host(link: Link) -> str | None:
    """The address a served link came from, for per-address limits
    (:mod:`p2pmsg.admission`); None when its transport cannot tell or the
    address is loopback (tests, a local proxy such as obfs4proxy).

    A link that knows its peer's address has a ``remote_host`` attribute;
    a wrapping link passes its inner link's on.
    """
    host = getattr(link, "remote_host", None)
    if not isinstance(host, str) or not host:
        return None
    try:
        if ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback:
            return None
    except ValueError:
        pass
    return host


class Transport(Protocol):
    """Dials and serves endpoints whose name is :attr:`name`."""

    #: The pt-spec style identifier that endpoints start with.
    name: str
    #: True when ``receive`` returns exactly what one ``send`` sent.
    framed: bool

    def can_dial(self, endpoint: Endpoint) -> bool:
        """Pure and cheap: could :meth:`dial` handle this endpoint at all?"""
        ...

    async def dial(self, endpoint: Endpoint) -> Link:
        """Connect. Raises ``UnsupportedEndpoint`` or ``OSError``."""
        ...

    async def serve(
        self,
        endpoint: Endpoint,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``endpoint`` and run ``handler`` per incoming link.

        Reports the bound endpoint (a port 0 resolved) through
        ``task_status``, then runs until cancelled. Each link is closed when
        its handler returns; a handler's exception closes that link only.
        """
        ...


@runtime_checkable
class KeepsReplays(Protocol):
    """A transport with a replay filter of its own (obfs): the node hands it
    its saved window, so the filter survives restarts."""

    def keep_replays(self, saved: SavedReplay) -> None: ...


class Discovery(Protocol):
    """A source of peer sightings; what it yields is untrusted."""

    async def run(
        self,
        advertise: bytes,
        sightings: trio.MemorySendChannel[bytes],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None: ...
