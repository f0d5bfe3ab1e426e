"""The stock ``kademlia`` package (2.2.3) as a benchmark peer, in its own process.

Started by ``bench/dht_vs_kademlia.py``; not a module of the project. It
needs only the standard library and ``kademlia`` (asyncio, UDP), so it is
run as a script, never imported: the package schedules work with
``asyncio.ensure_future`` and must not share an event loop with trio.

Theory of operation: ``--nodes`` servers listen on 127.0.0.1 (ports picked
by the kernel) in this one asyncio loop; each in turn bootstraps from the
first, as the package's ``Server.bootstrap`` does (ping, then a crawl for its
own id). Then the script reads JSON commands from stdin, one a line, and
answers each with one JSON line on stdout:

* ``{"lookups": M}``: M lookups, each from a random server for the id of
  another random server, exactly as the package looks up a key's nodes
  (``router.find_neighbors`` then ``NodeSpiderCrawl.find``); the answer is
  ``{"results": [...]}``, one dict per lookup (see :func:`one_lookup`);
* ``{"quit": true}`` or the end of stdin: stop every server and exit.

The first line it prints is ``{"ready": ...}`` once the network is built.
RPCs are counted by a protocol subclass (every ``call_*`` the package makes
after bootstrap goes through one of them); crawl rounds by a crawler
subclass. Nothing of the package is modified.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from kademlia.crawling import NodeSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

LOOPBACK = "127.0.0.1"
#: A lookup on loopback takes milliseconds; a stuck one fails the run instead of hanging it.
LOOKUP_TIMEOUT = 60.0
#: Real seconds after each lookup for the RPCs it set off (pings of full buckets) to be sent.
SETTLE = 0.02
#: Every RPC sent by any server, by method, and the ones that got no answer.
NETWORK: Counter[str] = Counter()


class CountingProtocol(KademliaProtocol):
    """The package's protocol, counting the RPCs it sends."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.find_nodes = 0

    async def _counted(self, method: str, call: Any) -> Any:
        NETWORK[method] += 1
        result = await call
        if not result[0]:
            NETWORK["timeouts"] += 1
        return result

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Any:
        self.find_nodes += 1
        return await self._counted("find_node", super().call_find_node(node_to_ask, node_to_find))

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Any:
        return await self._counted("find_value", super().call_find_value(node_to_ask, node_to_find))

    async def call_ping(self, node_to_ask: Node) -> Any:
        return await self._counted("ping", super().call_ping(node_to_ask))

    async def call_store(self, node_to_ask: Node, key: bytes, value: Any) -> Any:
        return await self._counted("store", super().call_store(node_to_ask, key, value))


class CountingServer(Server):
    protocol_class = CountingProtocol


class CountingCrawl(NodeSpiderCrawl):
    """The package's node crawl, counting its rounds (each waits for all its replies)."""

    rounds = 0

    async def _find(self, rpcmethod: Any) -> Any:
        self.rounds += 1
        return await super()._find(rpcmethod)


def rpcs_sent() -> int:
    return sum(n for method, n in NETWORK.items() if method != "timeouts")


async def build(count: int, ksize: int, alpha: int) -> list[Server]:
    """``count`` servers on loopback, each bootstrapped from the first in turn."""
    servers: list[Server] = []
    seed: tuple[str, int] | None = None
    for _ in range(count):
        server = CountingServer(ksize=ksize, alpha=alpha)
        servers.append(server)  # appended first: stopped in main's finally even if listen fails
        await server.listen(0, interface=LOOPBACK)
        if seed is None:
            seed = (LOOPBACK, server.transport.get_extra_info("sockname")[1])
        else:
            await asyncio.wait_for(server.bootstrap([seed]), LOOKUP_TIMEOUT)
    return servers


async def one_lookup(servers: Sequence[Server], rng: random.Random) -> dict[str, Any]:
    """One lookup for an existing id; its counts, times and success against the oracle.

    ``cpu`` is this process's CPU time (all servers: the searcher and every
    node it asked) from the start of the lookup until ``SETTLE`` after it;
    ``wall`` is the lookup alone.
    """
    searcher, target = rng.sample(list(servers), 2)
    protocol = searcher.protocol
    key = Node(target.node.id)
    find_nodes, rpcs, timeouts = protocol.find_nodes, rpcs_sent(), NETWORK["timeouts"]
    sent = NETWORK.copy()
    cpu = time.process_time()
    start = time.perf_counter()
    nearest = protocol.router.find_neighbors(key)
    crawl = CountingCrawl(protocol, key, nearest, searcher.ksize, searcher.alpha)
    found = await asyncio.wait_for(crawl.find(), LOOKUP_TIMEOUT)
    wall = time.perf_counter() - start
    await asyncio.sleep(SETTLE)
    cpu = time.process_time() - cpu
    # The package's find_neighbors never returns the id it is asked for, so
    # the node itself is left out of the oracle's closest set.
    others = [s.node for s in servers if s is not searcher and s is not target]
    oracle = sorted(others, key=key.distance_to)[: searcher.ksize]
    got = {node.id for node in found}
    sent = NETWORK - sent
    return {
        "find_node": protocol.find_nodes - find_nodes,
        "rpcs": rpcs_sent() - rpcs,
        "find_node_all": sent["find_node"],
        "ping": sent["ping"],
        "other": sent["find_value"] + sent["store"],
        "failed": NETWORK["timeouts"] - timeouts,
        "rounds": crawl.rounds,
        "wall": wall,
        "cpu": cpu,
        "target_found": target.node.id in got,
        "exact_k": got == {node.id for node in oracle},
    }


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve_commands(servers: Sequence[Server], rng: random.Random) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 16)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if "lookups" not in command:
                return
            results = [await one_lookup(servers, rng) for _ in range(int(command["lookups"]))]
            emit({"results": results})
    finally:
        transport.close()


async def main_async(args: argparse.Namespace) -> None:
    random.seed(args.seed)  # the package draws its node ids from `random`
    start = time.perf_counter()
    servers: list[Server] = []
    try:
        servers = await build(args.nodes, args.k, args.alpha)
        emit(
            {
                "ready": True,
                "nodes": len(servers),
                "version": metadata.version("kademlia"),
                "build_seconds": time.perf_counter() - start,
            }
        )
        await serve_commands(servers, random.Random(args.seed + 1))
    finally:
        for server in servers:
            server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--alpha", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    # The package logs every lost reply at WARNING/ERROR; they are counted instead.
    for name in ("kademlia", "rpcudp"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
