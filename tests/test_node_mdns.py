"""Two full nodes with no bootstrap at all find each other through mDNS.

Real time and real zeroconf (its threads cannot run under a mock clock),
bound to 127.0.0.1 only; the waits are hang guards, not timing assertions.
"""

from __future__ import annotations

from pathlib import Path

import trio

from p2pmsg.endpoint import Endpoint
from p2pmsg.home import Config, Home
from p2pmsg.keys import Identity
from p2pmsg.node import Node
from p2pmsg.store import Contact
from transports.tcp import TcpTransport


def lan_home(root: Path, name: str) -> Home:
    home = Home(root / name)
    config = Config(listen=(Endpoint.parse("tcp:127.0.0.1:0"),), mdns="127.0.0.1")
    home.init(config, Identity.generate())
    return home


async def test_lan_only_nodes_find_each_other_and_deliver(tmp_path: Path) -> None:
    alice_home, bob_home = lan_home(tmp_path, "alice"), lan_home(tmp_path, "bob")
    with trio.fail_after(60):
        async with (
            Node.open(alice_home.path, [TcpTransport()]) as alice,
            Node.open(bob_home.path, [TcpTransport()]) as bob,
        ):
            await alice.joined.wait()
            await bob.joined.wait()
            bare = Contact("bob", bob.identity.node_id, None, (), 0.0)
            await alice.store.add_contact(bare)
            sent = await alice.send("bob", "over the LAN", direct=True)
            got = await bob.messages().receive()
            assert got.id == sent
            assert await alice.deliveries().receive() == sent
            # an ordinary (onion-bound) message: two nodes are too few for an
            # onion route, so it is the LAN that carries it
            sent = await alice.send("bob", "nearby")
            got = await bob.messages().receive()
            assert (got.id, got.text) == (sent, "nearby")
            assert (await alice.status())["lan_sent"] == 1
