"""Our DHT against the stock ``kademlia`` package: RPCs, success and time per lookup.

Both sides build a network of ``--nodes`` nodes (k = 20, alpha = 3), each node
joining through the first, then look up the id of a random node from another
random node, ``--lookups`` times, and are judged against a brute-force oracle
that knows every id:

* ours: the real :class:`~p2pmsg.dht.service.Dht` services with real secure
  links on the simulated network (``p2pmsg.sim.net`` and the ``sim``
  transport), all in this process under trio's ``MockClock`` with autojump,
  as ``tests/dhtworld.py`` builds them; every packet takes ``--rtt-ms`` / 2
  of simulated time, so the simulated duration of a lookup is its latency;
* the peer: ``kademlia`` 2.2.3 (asyncio, UDP on 127.0.0.1) in a second
  process, ``bench/kademlia_peer.py``, which answers JSON lines on a pipe.

The lookups run in interleaved rounds, the order swapped every round; while
one side runs, the other waits (the simulated clock is stopped while the peer
works), so both get the same machine and a ratio compares batches taken
moments apart (STYLE.md, rule 12). Without ``kademlia`` installed, our column
is printed alone with a line saying how to install it.
"""

from __future__ import annotations

import argparse
import heapq
import importlib.util
import json
import math
import os
import random
import select
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from trio.testing import MockClock

from bench._common import environment, median, table
from p2pmsg.dht import rpc
from p2pmsg.dht.host import serve_dht
from p2pmsg.dht.peer import Peer, distance
from p2pmsg.dht.service import Dht, DhtOptions, RpcFailed
from p2pmsg.dialer import Dialer
from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.link.secure import SecureLink
from p2pmsg.sim.net import Deliver, Packet, SimNetwork
from transports.sim import SimTransport

K, ALPHA = 20, 3
PEER_SCRIPT = Path(__file__).resolve().parent / "kademlia_peer.py"
INSTALL_HINT = "kademlia not installed: pip install kademlia==2.2.3 (its column is left out)"
EPOCH = 1_800_000_000.0
#: Simulated seconds after each lookup for the RPCs it set off (verification pings).
SETTLE = 2.0
#: Simulated seconds; a lookup's RPCs time out after 5, so this only catches a hang.
LOOKUP_TIMEOUT = 600.0
#: The peer's replies are a few hundred bytes per lookup.
MAX_REPLY = 16 << 20
Result = dict[str, Any]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100, help="nodes per network (default 100)")
    parser.add_argument("--lookups", type=int, default=100, help="lookups per side (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--rtt-ms", type=float, default=50.0, help="simulated round-trip time (default 50)"
    )
    parser.add_argument("--seed", type=int, default=1, help="node ids and lookup pairs")
    parser.add_argument("--no-kademlia", action="store_true", help="measure our side only")
    parser.add_argument(
        "--warm-up", type=int, default=0, help="unreported lookups per side after the cold ones"
    )
    parser.add_argument(
        "--warm-lookups",
        type=int,
        default=0,
        help="lookups per side on the warmed network, reported apart (default 0: none)",
    )
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.lookups < 1 or args.rounds < 1 or not args.rtt_ms >= 0:
        parser.error("need --nodes >= 2, --lookups >= 1, --rounds >= 1, --rtt-ms >= 0")
    if args.warm_up < 0 or args.warm_lookups < 0:
        parser.error("need --warm-up >= 0 and --warm-lookups >= 0")
    return args


def kademlia_available() -> bool:
    return importlib.util.find_spec("kademlia") is not None


class KademliaPeer:
    """The peer process: one JSON line per request and per reply, under real-time deadlines."""

    def __init__(self, nodes: int, seed: int) -> None:
        command = [sys.executable, str(PEER_SCRIPT), "--nodes", str(nodes), "--seed", str(seed)]
        command += ["--k", str(K), "--alpha", str(ALPHA)]
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._buffer = bytearray()

    def request(self, message: Result, timeout: float) -> Result:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(message).encode() + b"\n")
        self._proc.stdin.flush()
        return self.read(timeout)

    def read(self, timeout: float) -> Result:
        """The next JSON line (the first is the peer's ``ready``)."""
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the kademlia peer did not answer within {timeout:.0f} s")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise RuntimeError("the kademlia peer exited (its error is above)")
                self._buffer += chunk
                if len(self._buffer) > MAX_REPLY:
                    raise RuntimeError("the kademlia peer sent an oversized reply")
        line, _, rest = self._buffer.partition(b"\n")
        self._buffer = bytearray(rest)
        reply: Result = json.loads(line)
        return reply

    def close(self) -> None:
        """Ask the peer to quit; kill it if it has not within 10 s."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(b'{"quit": true}\n')
            self._proc.stdin.close()
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            self._proc.stdout.close()


# -- our side: real Dht services on the simulated network --------------------------


def sim_wall_clock() -> float:
    """Wall-clock time that follows trio's (mock) clock."""
    return EPOCH + trio.current_time()


@dataclass
class Tally:
    """RPCs sent by every node of our network, failed ones, new secure links, and the
    verifying pings queued, by why: a requester met (``newcomer``, ``moved``) or the
    oldest entry of a full bucket (``evict_check``)."""

    sent: Counter[rpc.Method] = field(default_factory=Counter)
    failed: int = 0
    links: int = 0
    verify: Counter[str] = field(default_factory=Counter)


class CountingDht(Dht):
    """The real service, counting the RPCs it sends (its lookup iterator is internal)
    and the verifications it queues."""

    def __init__(self, tally: Tally, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tally = tally
        self.sent: Counter[rpc.Method] = Counter()
        self._why = "evict_check"

    @property
    def find_nodes(self) -> int:
        return self.sent[rpc.Method.FIND_NODE]

    async def call(self, peer: Peer, method: rpc.Method, body: bytes = b"") -> bytes:
        self.tally.sent[method] += 1
        self.sent[method] += 1
        try:
            return await super().call(peer, method, body)
        except RpcFailed:
            self.tally.failed += 1
            raise

    def _consider(self, requester: PublicIdentity, sender: bytes) -> None:
        self._why = "requester"
        try:
            super()._consider(requester, sender)
        finally:
            self._why = "evict_check"

    def _verify(self, peer: Peer, *, moved: bool = False) -> bool:
        queued = super()._verify(peer, moved=moved)
        if queued:
            self.tally.verify["moved" if moved else self._why] += 1
        return queued


async def add_node(
    nursery: trio.Nursery, net: SimNetwork, index: int, tally: Tally, rng: random.Random
) -> CountingDht:
    # One /16 per node, so the default diversity limits never bind.
    host = f"{1 + index // 256}.{index % 256}.0.1"
    identity = Identity.generate(rng.randbytes)
    transport = SimTransport(net, host)
    dialer = Dialer(
        identity, [transport], wall_clock=sim_wall_clock, dial_timeout=5.0, handshake_timeout=5.0
    )

    async def connect(endpoints: Sequence[str], peer: PublicIdentity) -> tuple[SecureLink, Any]:
        tally.links += 1
        return await dialer.connect(endpoints, peer)

    options = DhtOptions(k=K, alpha=ALPHA)
    dht = CountingDht(
        tally, identity, connect, options=options, wall_clock=sim_wall_clock, rng=os.urandom
    )
    handler = partial(serve_dht, dht, ReplayWindow(86400), wall_clock=sim_wall_clock)
    bound = await nursery.start(transport.serve, Endpoint.parse(f"sim:{host}"), handler)
    dht.publish_local([str(bound)], frozenset())
    await nursery.start(dht.run)
    return dht


def _uniform_latency(delay: Deliver, packet: Packet) -> Deliver:
    del packet
    return delay


async def build_ours(
    nursery: trio.Nursery, count: int, rtt: float, seed: int, tally: Tally
) -> list[CountingDht]:
    """``count`` nodes, each joining through the first in turn."""
    net = SimNetwork()
    if rtt > 0:
        net.policy = partial(_uniform_latency, Deliver(rtt / 2))
    rng = random.Random(seed)
    nodes = [await add_node(nursery, net, 0, tally, rng)]
    seed_peer = nodes[0].as_peer()
    for index in range(1, count):
        nodes.append(await add_node(nursery, net, index, tally, rng))
        if not await nodes[-1].join([seed_peer]):
            raise RuntimeError(f"node {index} could not join")
    await trio.sleep(SETTLE)
    return nodes


async def our_lookup(
    nodes: Sequence[CountingDht], rng: random.Random, tally: Tally, rtt: float
) -> Result:
    """One lookup for an existing id: counts, times and success against the oracle."""
    searcher, target = rng.sample(list(nodes), 2)
    target_id = target.identity.node_id
    before = (searcher.find_nodes, tally.sent.total(), tally.failed, tally.links)
    sent, own, verify = tally.sent.copy(), searcher.sent.copy(), tally.verify.copy()
    cpu, start, sim = time.process_time(), time.perf_counter(), trio.current_time()
    with trio.fail_after(LOOKUP_TIMEOUT):
        peers, _ = await searcher.lookup(target_id)
    wall, sim = time.perf_counter() - start, trio.current_time() - sim
    await trio.sleep(SETTLE)
    cpu = time.process_time() - cpu
    others = [n.identity.node_id for n in nodes if n is not searcher]
    oracle = heapq.nsmallest(K, others, key=partial(distance, target_id))
    got = {p.node_id for p in peers}
    sent, own, verify = tally.sent - sent, searcher.sent - own, tally.verify - verify
    return {
        "find_node": searcher.find_nodes - before[0],
        "rpcs": tally.sent.total() - before[1],
        **by_kind(sent, own, verify),
        "failed": tally.failed - before[2],
        "links": tally.links - before[3],
        "rtts": sim / rtt if rtt > 0 else math.nan,
        "wall": wall,
        "cpu": cpu,
        "target_found": target_id in got,
        "exact_k": got == set(oracle),
    }


def by_kind(sent: Counter[rpc.Method], own: Counter[rpc.Method], verify: Counter[str]) -> Result:
    """One lookup's RPCs by kind: the whole network's, the searcher's PINGs, and
    the verifications queued (a PING each, unless the peer is gone)."""
    find, ping = rpc.Method.FIND_NODE, rpc.Method.PING
    return {
        "find_node_all": sent[find],
        "ping": sent[ping],
        "ping_searcher": own[ping],
        "other": sent.total() - sent[find] - sent[ping],
        "verify_requester": verify["requester"] + verify["moved"],
        "verify_evict": verify["evict_check"],
    }


# -- the run -----------------------------------------------------------------------


async def stopped_clock(clock: MockClock, fn: Callable[..., Result], *args: Any) -> Result:
    """``fn`` in a thread while simulated time stands still (our nodes' timers wait)."""
    clock.autojump_threshold = math.inf
    try:
        return await trio.to_thread.run_sync(fn, *args)
    finally:
        clock.autojump_threshold = 0


def batches(lookups: int, rounds: int) -> list[int]:
    rounds = min(rounds, lookups)
    return [lookups // rounds + (i < lookups % rounds) for i in range(rounds)]


Sides = tuple[list[list[Result]], list[list[Result]]]


async def measure(
    args: argparse.Namespace, clock: MockClock, peer: KademliaPeer | None
) -> tuple[list[list[Result]], list[list[Result]], dict[str, Any]]:
    """Build our network, then the rounds; the results per side and round.

    The lookups returned are the cold ones, on networks fresh from their joins.
    With ``--warm-lookups``, ``info["warm"]`` holds the same for that many more
    lookups per side (fresh pairs) after ``--warm-up`` unreported ones, and
    ``info["warm_start"]`` the simulated time they began at.
    """
    rtt, tally = args.rtt_ms / 1000, Tally()
    info: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        start = time.perf_counter()
        nodes = await build_ours(nursery, args.nodes, rtt, args.seed, tally)
        info["ours_build"] = time.perf_counter() - start
        if peer is not None:
            info["peer"] = await stopped_clock(clock, peer.read, 60 + args.nodes)
        phases = Phases(nodes, random.Random(args.seed + 1), tally, rtt, clock, peer)
        ours, theirs = await phases.run(args.lookups, args.rounds)
        if args.warm_lookups:
            if args.warm_up:
                await phases.run(args.warm_up, args.rounds)
            info["warm_start"] = trio.current_time()
            info["warm"] = await phases.run(args.warm_lookups, args.rounds)
        info["sim_end"] = trio.current_time()
        nursery.cancel_scope.cancel()
    return ours, theirs, info


@dataclass
class Phases:
    """Both networks, ready for phases of lookups (the same ``rng`` throughout)."""

    nodes: Sequence[CountingDht]
    rng: random.Random
    tally: Tally
    rtt: float
    clock: MockClock
    peer: KademliaPeer | None

    async def run(self, lookups: int, rounds: int) -> Sides:
        """``lookups`` per side in interleaved rounds, the order swapped every round."""
        ours: list[list[Result]] = []
        theirs: list[list[Result]] = []
        for index, size in enumerate(batches(lookups, rounds)):
            for side in ("ours", "theirs") if index % 2 == 0 else ("theirs", "ours"):
                if side == "ours":
                    ours.append([await self._ours() for _ in range(size)])
                elif self.peer is not None:
                    request = partial(self.peer.request, {"lookups": size}, 30 + size)
                    theirs.append((await stopped_clock(self.clock, request))["results"])
        return ours, theirs

    async def _ours(self) -> Result:
        return await our_lookup(self.nodes, self.rng, self.tally, self.rtt)


# -- the report --------------------------------------------------------------------

#: (label, key, how one round is summarised, format)
ROWS: list[tuple[str, str, Callable[[list[float]], float], str]] = [
    ("FIND_NODE RPCs per lookup, searcher (mean)", "find_node", statistics.fmean, "{:.1f}"),
    ("RPCs per lookup, whole network (mean)", "rpcs", statistics.fmean, "{:.1f}"),
    ("  FIND_NODE, whole network", "find_node_all", statistics.fmean, "{:.1f}"),
    ("  PING, whole network", "ping", statistics.fmean, "{:.1f}"),
    ("    PING, the searcher's", "ping_searcher", statistics.fmean, "{:.1f}"),
    ("  other RPCs, whole network", "other", statistics.fmean, "{:.1f}"),
    ("verifications queued: a requester", "verify_requester", statistics.fmean, "{:.1f}"),
    ("verifications queued: a full bucket's oldest", "verify_evict", statistics.fmean, "{:.1f}"),
    ("new secure links per lookup (mean)", "links", statistics.fmean, "{:.1f}"),
    ("failed RPCs per lookup (mean)", "failed", statistics.fmean, "{:.2f}"),
    ("latency, RTTs per lookup (median)", "rtts", median, "{:.1f}"),
    ("CPU ms per lookup, all nodes (median)", "cpu", median, "{:.2f}"),
    ("wall ms per lookup (median)", "wall", median, "{:.2f}"),
    ("target node in the result (%)", "target_found", statistics.fmean, "{:.0%}"),
    ("result = true k closest (%)", "exact_k", statistics.fmean, "{:.0%}"),
]
NO_RATIO = {"target_found", "exact_k", "failed"}
SCALE = {"cpu": 1000.0, "wall": 1000.0}
HEADER = ("measurement", "p2pmsg Dht", "kademlia 2.2.3", "ours/kademlia")


def series(rounds: list[list[Result]], key: str) -> list[list[float]]:
    if key == "rtts" and rounds and "rounds" in rounds[0][0]:
        key = "rounds"  # the peer's crawl rounds: one RTT each (see the notes)
    return [[float(r[key]) * SCALE.get(key, 1.0) for r in batch if key in r] for batch in rounds]


def cell(rounds: list[list[Result]], key: str, summary: Callable[..., float], fmt: str) -> str:
    values = [v for batch in series(rounds, key) for v in batch]
    if not values or any(math.isnan(v) for v in values):
        return "-"
    return fmt.format(summary(values))


def ratio(ours: list[list[Result]], theirs: list[list[Result]], key: str, summary: Any) -> str:
    """The median of the per-round ratios of the round summaries."""
    pairs = zip(series(ours, key), series(theirs, key), strict=True)
    ratios = [summary(a) / summary(b) for a, b in pairs if a and b and summary(b) > 0]
    if key in NO_RATIO or not ratios or any(math.isnan(r) for r in ratios):
        return ""
    return f"{median(ratios):.2f}"


def side_by_side(ours: list[list[Result]], theirs: list[list[Result]], peer: bool) -> str:
    header = HEADER if peer else HEADER[:2]
    rows = []
    for label, key, summary, fmt in ROWS:
        row = [label, cell(ours, key, summary, fmt)]
        if peer:
            row += [cell(theirs, key, summary, fmt), ratio(ours, theirs, key, summary)]
        rows.append(row)
    return table(header, rows)


def report(
    args: argparse.Namespace, ours: list[list[Result]], theirs: list[list[Result]], info: Any
) -> str:
    peer = info.get("peer")
    built = f"built in {info['ours_build']:.1f} s (ours)"
    if peer:
        built += f", {peer['build_seconds']:.1f} s (kademlia {peer['version']}, concurrently)"
    lines = [
        f"p2pmsg DHT vs kademlia: {args.nodes} nodes per network, {args.lookups} lookups of "
        f"existing ids per side in {len(ours)} interleaved rounds, k={K}, alpha={ALPHA}",
        environment(),
        f"ours: simulated network, RTT {args.rtt_ms:g} ms, one process; "
        + ("kademlia: UDP on 127.0.0.1, one process; " if peer else "")
        + built,
        f"simulated time at the end: {info['sim_end']:.0f} s{_upkeep_warning(info)}",
        *([INSTALL_HINT] if info.get("missing") else []),
        "",
        side_by_side(ours, theirs, bool(peer)),
        "",
    ]
    if "warm" in info:
        lines += [
            f"warmed: {args.warm_lookups} more lookups per side (fresh pairs) after the "
            f"{args.lookups} above and {args.warm_up} unreported ones, from simulated "
            f"{info['warm_start']:.0f} s",
            "",
            side_by_side(info["warm"][0], info["warm"][1], bool(peer)),
            "",
        ]
    return "\n".join(lines + NOTES)


def _upkeep_warning(info: Any) -> str:
    options = DhtOptions()
    hourly = min(options.republish_every, options.refresh_every)
    return " (past the first hourly upkeep)" if info["sim_end"] >= hourly else ""


NOTES = [
    "ours/kademlia: median of the per-round ratios (rounds interleaved, order swapped).",
    "RPCs: requests sent; whole network adds what a lookup set off elsewhere (ours: pings",
    "  verifying a new requester). Ours go over secure links: new ones cost connect + Noise IK.",
    "verifications: verifying pings queued (ours), at most one per peer per refresh interval.",
    "latency: ours = simulated seconds / RTT (every packet takes RTT/2); kademlia = its crawl",
    "  rounds (each waits for all its replies: rounds x RTT at a uniform RTT).",
    "CPU: process CPU time, lookup plus settle time, all nodes of a side (one process each);",
    "  wall: the lookup call alone (ours: no network delay in it, that is simulated).",
    "success vs an oracle of all ids; kademlia never returns the id it looks up, so its target",
    "  cannot be in its result and its k closest are judged without the target.",
    "See bench/DHT.md.",
]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    peer = None
    if not args.no_kademlia and kademlia_available():
        peer = KademliaPeer(args.nodes, args.seed)  # builds while we build ours
    clock = MockClock(autojump_threshold=0)
    try:
        ours, theirs, info = trio.run(measure, args, clock, peer, clock=clock)
    finally:
        if peer is not None:
            peer.close()
    if peer is None and not args.no_kademlia:
        info["missing"] = True
    print(report(args, ours, theirs, info))


if __name__ == "__main__":
    main()
