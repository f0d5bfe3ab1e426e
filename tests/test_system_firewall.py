"""Real ``p2pmsg run`` processes in a censored country: namespaces and nftables (root).

The lab (:mod:`netlab`): inside hosts and outside hosts on two LANs joined by
a router whose nftables ``forward`` chain is the censor. Each test puts one
rule there, as a firewall would, and checks that messages still arrive and
that the rule really fired (its counter), so a test cannot pass by never
meeting the censor:

* (a) the bootstrap node's address dropped: a node joins through a friend's
  invite instead, finds a third node by id in the DHT and reaches it;
* (b) the tcp port dropped: the node falls back to the peer's ws endpoint;
* (c) a byte pattern (a first payload that starts with ``GET``, ws's HTTP
  upgrade) dropped: the node falls back to the peer's tcp endpoint.

mDNS across a bridge (d) is :mod:`test_mdns_netns`. CI runs these as root
and installs nftables; elsewhere they skip with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import Lab
from syshelpers import NodeProcess, ok, poll, running, short_base

from p2pmsg.endpoint import Invite

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0, reason="network namespaces need root"
    ),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs `ip` (Debian package iproute2)"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs `nft` (Debian package nftables)"),
]

DELIVERY = 90.0
"""Seconds a message may take through the fallbacks (a dropped SYN costs a dial timeout)."""


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    with short_base(tmp_path) as path:
        yield path


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.build(inside=["alice", "dave"], outside=["bob", "seed"])
        yield lab
    finally:
        lab.close()


async def _init(lab: Lab, home: Path, name: str, *args: str) -> str:
    done = await ok(home, "init", *args, prefix=lab.exec_prefix(name))
    return done.lines[0]


async def _delivered(sender: Path, message_id: str, nodes: list[NodeProcess]) -> None:
    async def check() -> bool | None:
        rows = (await ok(sender, "outbox", "--json")).json_lines()
        return (
            True if any(r["id"] == message_id and r["state"] == "delivered" for r in rows) else None
        )

    await poll(check, f"message {message_id} delivered", node_logs=nodes, within=DELIVERY)


async def test_a_dropped_bootstrap_node_is_routed_around_through_a_friends_invite(
    lab: Lab, base: Path
) -> None:
    """(a) Alice's built-in bootstrap node is unreachable from inside; she also
    has Bob's invite (a friend abroad). She joins through Bob, finds Dave by his
    node id alone in the DHT, and her message reaches him."""
    _, seed_ip = lab.hosts["seed"]
    lab.block(f"ip daddr {seed_ip} counter drop")
    homes = {name: base / name for name in ("seed", "bob", "dave", "alice")}
    ip = {name: lab.hosts[name][1] for name in homes}
    seed = await _init(lab, homes["seed"], "seed", "--listen", f"tcp:{ip['seed']}:0")
    bob = await _init(
        lab, homes["bob"], "bob", "--listen", f"tcp:{ip['bob']}:0", "--bootstrap", seed
    )
    dave = await _init(
        lab, homes["dave"], "dave", "--listen", f"tcp:{ip['dave']}:0", "--bootstrap", bob
    )
    await _init(
        lab, homes["alice"], "alice", "--listen", f"tcp:{ip['alice']}:0",
        "--bootstrap", seed, "--bootstrap", bob,
    )  # fmt: skip
    dave_id = Invite.parse(dave).identity.node_id.hex()
    await ok(
        homes["alice"], "contacts", "add", "dave", dave_id
    )  # an id only: the DHT must find him
    order = ("seed", "bob", "dave", "alice")
    prefixes = tuple(lab.exec_prefix(name) for name in order)
    async with running(*(homes[n] for n in order), prefixes=prefixes) as nodes:
        message_id = (await ok(homes["alice"], "send", "--direct", "dave", "hi")).lines[0]
        await _delivered(homes["alice"], message_id, nodes)
    assert lab.counters()[0] > 0  # she did try the dropped node


@pytest.mark.parametrize(
    ("rule", "listen", "fell_back_to"),
    [
        ("tcp dport {tcp} counter drop", ("tcp", "ws"), "ws"),
        ("@ih,0,32 0x47455420 counter drop", ("ws", "tcp"), "tcp"),
    ],
    ids=["tcp-port-dropped", "http-get-pattern-dropped"],
)
async def test_a_blocked_transport_falls_back_to_the_peers_other_endpoint(
    lab: Lab, base: Path, rule: str, listen: tuple[str, str], fell_back_to: str
) -> None:
    """(b) the tcp port dropped -> ws; (c) first payloads that start with GET
    (ws's upgrade request) dropped -> the raw tcp link, which has no fixed bytes."""
    alice, bob = base / "alice", base / "bob"
    bob_ip = lab.hosts["bob"][1]
    endpoints = {"tcp": f"tcp:{bob_ip}:0", "ws": f"ws:{bob_ip}:0/chat"}
    flags = [arg for t in listen for arg in ("--listen", endpoints[t])]
    link = await _init(lab, bob, "bob", *flags)
    await _init(lab, alice, "alice", "--listen", f"tcp:{lab.hosts['alice'][1]}:0")
    await ok(alice, "contacts", "add", "bob", link)
    (tcp,) = (e for e in Invite.parse(link).endpoints if e.transport == "tcp")
    lab.block(rule.format(tcp=tcp.host_port(0)[1]))
    prefixes = (lab.exec_prefix("bob"), lab.exec_prefix("alice"))
    async with running(bob, alice, prefixes=prefixes) as nodes:
        message_id = (await ok(alice, "send", "--direct", "bob", "hi")).lines[0]
        await _delivered(alice, message_id, nodes)
        transports = json.loads((await ok(alice, "status", "--json")).lines[0])["transports"]
    assert lab.counters()[0] > 0  # the censor met the first transport
    assert transports[fell_back_to]["successes"] >= 1


async def test_with_every_listed_address_dropped_a_node_talks_through_its_bridge(
    base: Path,
) -> None:
    """(e) Tor's bridge users' case: the censor drops every listed node's
    address (the seed, and Bob, a friend abroad); only the unlisted bridge,
    on obfs, is let through. Alice, told to use the bridge, joins through it
    and her message reaches Bob, and she never sent a packet to a listed
    address: the drop rule counts nothing, the bridge's rule does."""
    lab = Lab()
    try:
        lab.build(inside=["alice"], outside=["bob", "seed", "bridge"])
        ip = {name: lab.hosts[name][1] for name in ("alice", "bob", "seed", "bridge")}
        lab.block(f"ip saddr {ip['alice']} ip daddr {{ {ip['seed']}, {ip['bob']} }} counter drop")
        lab.block(f"ip saddr {ip['alice']} ip daddr {ip['bridge']} counter accept")
        homes = {name: base / name for name in ("seed", "bridge", "bob", "alice")}
        seed = await _init(lab, homes["seed"], "seed", "--listen", f"tcp:{ip['seed']}:0")
        bridge = await _init(
            lab, homes["bridge"], "bridge", "--listen", f"obfs:{ip['bridge']}:0",
            "--bridge", "--bootstrap", seed,
        )  # fmt: skip
        bob = await _init(
            lab, homes["bob"], "bob", "--listen", f"tcp:{ip['bob']}:0", "--bootstrap", seed
        )
        await _init(lab, homes["alice"], "alice", "--use-bridge", bridge)
        await ok(homes["alice"], "contacts", "add", "bob", bob)
        order = ("seed", "bridge", "bob", "alice")
        prefixes = tuple(lab.exec_prefix(name) for name in order)
        async with running(*(homes[n] for n in order), prefixes=prefixes) as nodes:
            message_id = (await ok(homes["alice"], "send", "--direct", "bob", "hi")).lines[0]
            await _delivered(homes["alice"], message_id, nodes)
            status = json.loads((await ok(homes["alice"], "status", "--json")).lines[0])
        dropped, through_bridge = lab.counters()
        assert dropped == 0
        assert through_bridge > 0
        assert status["tunnels"]["opened"] >= 1
    finally:
        lab.close()
