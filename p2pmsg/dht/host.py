"""A DHT-only host: serve DHT requests on inbound links, nothing else.

A full node serves delivery frames and DHT requests on the same links (see
:mod:`p2pmsg.node`); the simulator's crowds, the scenario tests and the
benchmarks run many bare DHTs, which need only this.
"""

from __future__ import annotations

from collections.abc import Callable

from p2pmsg.abc import Link
from p2pmsg.dht import rpc
from p2pmsg.dht.service import Dht
from p2pmsg.dialer import DIAL_ERRORS
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.link.secure import HANDSHAKE_TIMEOUT, accept_secure


async def serve_dht(
    dht: Dht,
    replay: ReplayWindow,
    link: Link,
    *,
    wall_clock: Callable[[], float],
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> None:
    """Accept a secure link and answer its DHT requests until it ends.

    Link errors and bad bytes end this link only; nothing is raised.
    """
    try:
        secure = await accept_secure(
            link, dht.identity, replay, wall_clock=wall_clock, timeout=handshake_timeout
        )
    except DIAL_ERRORS:
        return
    try:
        while True:
            message = rpc.decode(await secure.receive())
            if isinstance(message, rpc.Request):
                await secure.send(rpc.encode_response(await dht.handle(secure.peer, message)))
    except DIAL_ERRORS:
        pass
    finally:
        await secure.aclose()
