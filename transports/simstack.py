"""Our transports over the simulated network: ws and obfs for the censorship lab.

The library never imports ``transports`` (DESIGN.md's layering), so the
simulator cannot build a ws or obfs node itself: whoever starts it (the CLI,
a test) hands it these wrappers, as :data:`WRAPPERS`. Each wraps a node's
:class:`~p2pmsg.sim.transport.SimTransport` in the real transport, unchanged,
and names the endpoint the node listens on:

* ``ws``: WebSocket on port 443 (where a web server listens), path ``/chat``;
* ``obfs``: our obfs4-like transport on port 8443, its server key made in the
  node's home (``HOME/obfs``) from the node's seeded randomness, so a seed
  reproduces the key and the invite that carries it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import encode_key
from p2pmsg.sim.world import SimWrapper
from transports.obfs import ObfsTransport, load_or_create_key
from transports.ws import WsTransport

WS_PORT = 443
OBFS_PORT = 8443


def _obfs_endpoint(host: str, home: Path, rng: Callable[[int], bytes]) -> Endpoint:
    key = load_or_create_key(home / "obfs", rng=rng)
    return Endpoint("obfs", f"{host}:{OBFS_PORT}", (("key", encode_key(key.public)),))


WRAPPERS: dict[str, SimWrapper] = {
    "ws": SimWrapper(
        endpoint=lambda host, home, rng: Endpoint.parse(f"ws:{host}:{WS_PORT}/chat"),
        wrap=lambda inner, home, rng, clock: WsTransport(inner, rng=rng, wall_clock=clock),
    ),
    "obfs": SimWrapper(
        endpoint=_obfs_endpoint,
        wrap=lambda inner, home, rng, clock: ObfsTransport(
            inner, state_dir=home / "obfs", rng=rng, wall_clock=clock
        ),
    ),
}
"""Every transport the lab's scenarios may name besides ``sim``."""
