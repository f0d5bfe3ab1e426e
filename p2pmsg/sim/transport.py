"""The ``sim`` transport: plain frames on the simulated internet.

Endpoints are ``sim:HOST`` (port 1) or ``sim:HOST:PORT``. A transport object
is one host's network stack: it dials from its host and serves on its host
only. Links are :class:`p2pmsg.sim.net.SimStream` ends, which already have
the link semantics (framed, ordered, bounded; see that module's docstring).
"""

from __future__ import annotations

import errno
import logging

import trio

from p2pmsg.abc import Link, LinkHandler
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import BadEndpoint, UnsupportedEndpoint
from p2pmsg.sim.net import SimNetwork, SimStream

DEFAULT_PORT = 1

log = logging.getLogger(__name__)


def parse_sim_endpoint(endpoint: Endpoint) -> tuple[str, int]:
    """``(host, port)`` of a sim endpoint. Raises :class:`UnsupportedEndpoint`."""
    if endpoint.transport != SimTransport.name:
        raise UnsupportedEndpoint(f"not a sim endpoint: {endpoint.transport}")
    try:
        return endpoint.host_port(DEFAULT_PORT)
    except BadEndpoint as exc:
        raise UnsupportedEndpoint(f"bad sim address: {exc}") from exc


class SimTransport:
    """Dials and serves ``sim:`` endpoints for one host of a :class:`SimNetwork`."""

    name = "sim"
    framed = True

    def __init__(self, net: SimNetwork, host: str) -> None:
        self.net = net
        self.host = host

    def can_dial(self, endpoint: Endpoint) -> bool:
        """True for a ``sim`` endpoint with a host and a non-zero port."""
        try:
            _, port = parse_sim_endpoint(endpoint)
        except UnsupportedEndpoint:
            return False
        return port != 0

    async def dial(self, endpoint: Endpoint) -> Link:
        """Connect from our host. Raises ``UnsupportedEndpoint``, or
        ``OSError`` (``ConnectionRefusedError``, unknown host); hangs while
        the network drops the SYN.
        """
        host, port = parse_sim_endpoint(endpoint)
        if port == 0:
            raise UnsupportedEndpoint("cannot dial port 0")
        return await self.net.connect(self.host, host, port)

    async def serve(
        self,
        endpoint: Endpoint,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on our host; report ``sim:HOST:PORT``; run until cancelled.

        Raises ``UnsupportedEndpoint``, ``OSError(EADDRNOTAVAIL)`` for another
        host's endpoint, ``OSError(EADDRINUSE)``. Each link is closed when its
        handler returns; a handler's exception is logged at DEBUG.
        """
        host, port = parse_sim_endpoint(endpoint)
        if host != self.host:
            raise OSError(errno.EADDRNOTAVAIL, f"this transport serves host {self.host!r} only")
        listener = await self.net.listen(host, port)
        async with listener, trio.open_nursery() as nursery:
            task_status.started(Endpoint(self.name, f"{host}:{listener.port}", endpoint.args))
            while True:
                stream = await listener.accept()
                nursery.start_soon(_run_handler, handler, stream)


async def _run_handler(handler: LinkHandler, stream: SimStream) -> None:
    """Run one handler; its failure closes its link and nothing else."""
    try:
        await handler(stream)
    except Exception as exc:
        # A handler is expected to handle link errors itself: this is a bug upstream.
        log.warning("sim: a link handler failed: %r", exc)
        log.debug("sim: the handler for %s:%d failed", *stream.remote, exc_info=True)
    finally:
        await stream.aclose()
