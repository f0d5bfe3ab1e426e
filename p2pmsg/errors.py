"""One tree of errors under :class:`P2PMsgError`.

An exception's docstring is the sentence the CLI shows a person (the habit is
magic-wormhole's); the message passed when raising adds the specifics.
Protocol errors follow h11: a :class:`LocalProtocolError` is our own misuse of
a core, a :class:`RemoteProtocolError` is what untrusted bytes produce.
"""

from __future__ import annotations


class P2PMsgError(Exception):
    """Something went wrong in p2pmsg."""

    def user_message(self) -> str:
        """The one line the CLI prints: the docstring's sentence plus the specifics."""
        doc = (type(self).__doc__ or "").strip().splitlines()[0]
        detail = str(self)
        return f"{doc} ({detail})" if detail else doc


class LocalProtocolError(P2PMsgError):
    """A protocol core was used out of order (a bug in p2pmsg)."""


class RemoteProtocolError(P2PMsgError):
    """The peer sent bytes that break the protocol."""


class HandshakeError(RemoteProtocolError):
    """The secure handshake with the peer failed."""


class UnsupportedEndpoint(P2PMsgError):
    """No transport here can reach that endpoint."""


class TunnelRefused(P2PMsgError, ConnectionError):
    """The bridge could not open a link to that peer."""


class BadEndpoint(P2PMsgError):
    """That endpoint is malformed."""


class BadInvite(P2PMsgError):
    """That invite link is malformed."""


class BadKey(P2PMsgError):
    """That key is malformed or unreadable."""


class StoreError(P2PMsgError):
    """The node's database cannot be used."""


class UnknownContact(P2PMsgError):
    """There is no contact by that name."""


class OutboxFull(P2PMsgError):
    """Too many messages already wait to be delivered; send again when some are."""


class NodeNotRunning(P2PMsgError):
    """The node is not running (start it with `p2pmsg run`)."""


class HomeError(P2PMsgError):
    """The node's home directory cannot be used."""


class NotFound(P2PMsgError):
    """No node with that id was found in the DHT."""


class NoSuchFile(P2PMsgError):
    """No file with that id was received."""


class FileUnusable(P2PMsgError):
    """The file given cannot be read or written."""


class ListenError(P2PMsgError):
    """The node cannot listen on one of its endpoints."""


class ControlError(P2PMsgError):
    """The running node refused the request."""


class NodeRefused(ControlError):
    """The running node refused the request."""

    def user_message(self) -> str:
        # The node already phrased it for a person.
        return str(self) or super().user_message()
