"""Onion messages per second, against the crypto-bound limit of the Sphinx path.

Every row is measured in every round (rounds interleaved, order rotated), in
this process:

* the primitives the Sphinx format is made of: X25519 (``crypto_scalarmult``
  and ``_base``), ChaCha20-Poly1305 IETF at the two sizes Sphinx uses it
  (2016 B, the LIONESS half of a 2048-byte payload, and 455 B, a header's
  ``beta`` plus one slot) and keyed BLAKE2b at the three sizes it hashes
  (2016 B in LIONESS, 422 B for the header MAC, at most 47 B for the key
  derivations);
* the limits: how many messages per second those rates allow, from the
  operation counts of :func:`sphinx_costs` (printed with the table, and
  checked against a traced run of the pipeline before anything is timed);
* the pipeline: ``sphinx.create_packet`` for 3 relays and the destination,
  then the four ``peel`` calls, in a loop;
* real nodes: a seed, ``--relays`` relays, a sender and a recipient, each
  :meth:`Node.open` on its own temporary home with a ``TcpTransport`` on
  127.0.0.1 and the default store offload (a worker thread), all in this
  trio run, all joined to the seed. Each round the sender queues
  ``--messages`` messages with ``node.send`` (onion, 3 relays) and the rate
  is messages over the time until the last ack (``node.deliveries()``);
  one-way latency is send call to the recipient's ``node.messages()``
  receipt, one clock. A second node row sends ``--sequential`` messages one
  at a time (the next once the previous is acked): latency without a queue.

Setting up the nodes (joining, prekeys, the first message's session) is
not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import io
import logging
import os
import pstats
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import nacl.bindings as sodium
import trio

from bench._common import (
    Measure,
    environment,
    loop_rate,
    median,
    paired_ratio,
    run_rounds,
    sync_measure,
    table,
)
from p2pmsg.contacts import contact_from_text
from p2pmsg.endpoint import Endpoint
from p2pmsg.home import Config, Home
from p2pmsg.keys import Identity
from p2pmsg.node import Node
from p2pmsg.onion import header as hdr
from p2pmsg.onion import sphinx
from transports.tcp import TcpTransport

RELAYS_ON_ROUTE = 3  # the node's default (OnionOptions.hops)
LIONESS_HALF = sphinx.PAYLOAD_BYTES - hdr.KEY_BYTES  # 2016: what S and H run over
STREAM_BYTES = hdr.BETA_BYTES + hdr.SLOT_BYTES  # 455: a header's keystream
MAC_INPUT = hdr.KEY_BYTES + hdr.BETA_BYTES  # 422: alpha || beta
SMALL_INPUT = len(b"blinding factor") + hdr.KEY_BYTES  # 47: the longest key derivation
MESSAGE = bytes(range(256)) * 4  # 1 KiB; the payload is padded to 2048 B anyway
SETUP_TIMEOUT = 120.0
WARM_UP = 5  # messages sent one at a time before the first round (not timed)

#: The primitives, each one measured row and one term of the limit.
PRIMITIVES = ("dh", "base", "aead_payload", "aead_stream", "b2_payload", "b2_mac", "b2_small")


# -- the formula -----------------------------------------------------------------


def sphinx_costs(relays: int, *, reply: bool = False) -> Counter[str]:
    """Primitive calls for one message over ``relays`` relays and the destination.

    ``n = relays + 1`` Sphinx hops. ``create_packet``: one base mult for
    ``alpha_0``; per hop ``i`` one DH with its key and ``i`` blindings of that
    secret, plus ``n - 1`` blindings of ``alpha``: ``n + n(n-1)/2 + (n-1)`` DH;
    per hop five key derivations, one ``beta`` keystream, one MAC and one
    LIONESS layer. A relay's ``peel``: DH for the secret, DH to blind
    ``alpha``, five derivations, MAC, keystream, one LIONESS layer; the
    destination's the same without the blinding. One LIONESS operation is
    two ChaCha20 and two BLAKE2b over 2016 B and four subkey derivations.

    With ``reply``, add the ack: the sender's ``create_surb`` (the header of
    ``create_packet`` over a route of ``relays`` and itself, no payload),
    ``use_surb`` at the recipient (one LIONESS), ``relays`` relay peels and
    the sender's peel, and ``open_reply`` (``n`` LIONESS encryptions and
    one decryption).
    """
    n = relays + 1
    header_dh = n + n * (n - 1) // 2 + (n - 1)
    c: Counter[str] = Counter()

    def header(dh: int) -> None:
        c["base"] += 1
        c["dh"] += dh
        c["b2_small"] += 5 * n
        c["aead_stream"] += n
        c["b2_mac"] += n

    def peels() -> None:
        c["dh"] += 2 * relays + 1
        c["b2_small"] += 5 * n
        c["aead_stream"] += n
        c["b2_mac"] += n

    header(header_dh)
    peels()
    lioness_ops = n + n  # the sender's layers, one per peel
    if reply:
        header(header_dh)
        peels()
        lioness_ops += 1 + n + (n + 1)  # use_surb, the peels, open_reply
    c["aead_payload"] += 2 * lioness_ops
    c["b2_payload"] += 2 * lioness_ops
    c["b2_small"] += 4 * lioness_ops
    return c


def limit_rate(costs: Counter[str], rates: dict[str, float]) -> float:
    """Messages per second if nothing but these primitive calls took time."""
    return 1.0 / sum(count / rates[name] for name, count in costs.items())


def round_limits(samples: dict[str, list[float]], costs: Counter[str]) -> list[float]:
    """The crypto-bound limit of each round, from that round's primitive rates."""
    rounds = zip(*(samples[p] for p in PRIMITIVES), strict=True)
    return [limit_rate(costs, dict(zip(PRIMITIVES, r, strict=True))) for r in rounds]


def formula(costs: Counter[str]) -> str:
    return " + ".join(f"{costs[name]}/{name}" for name in PRIMITIVES if costs[name])


# -- primitives --------------------------------------------------------------------

_KEY = bytes(range(32))
_OTHER = hashlib.sha256(b"another key").digest()
_NONCE = bytes(12)


def _x25519(seconds: float, base: bool) -> float:
    if base:
        return loop_rate(partial(sodium.crypto_scalarmult_base, _KEY), seconds, batch=50)
    point = sodium.crypto_scalarmult_base(_OTHER)
    return loop_rate(partial(sodium.crypto_scalarmult, _KEY, point), seconds, batch=50)


def _aead(seconds: float, size: int) -> float:
    data = bytes(size)
    encrypt = sodium.crypto_aead_chacha20poly1305_ietf_encrypt
    return loop_rate(partial(encrypt, data, None, _NONCE, _KEY), seconds, batch=50)


def _blake2b(seconds: float, size: int) -> float:
    data = bytes(size)

    def step() -> bytes:
        return hashlib.blake2b(data, key=_KEY, person=hdr.PERSONALISATION, digest_size=32).digest()

    return loop_rate(step, seconds, batch=50)


# -- the pipeline ------------------------------------------------------------------


def _route(relays: int) -> tuple[list[sphinx.Hop], list[bytes]]:
    privates = [hashlib.sha256(bytes([i])).digest() for i in range(relays + 1)]
    hops = [
        sphinx.Hop(hashlib.sha256(p).digest(), sodium.crypto_scalarmult_base(p)) for p in privates
    ]
    return hops, privates


def one_message(route: Sequence[sphinx.Hop], privates: Sequence[bytes]) -> None:
    """create_packet, then every hop's peel; raises if the message does not arrive."""
    first, packet = sphinx.create_packet(route, MESSAGE, os.urandom)
    node_ids = [hop.node_id for hop in route]
    at = node_ids.index(first)
    while True:
        result = sphinx.peel(privates[at], packet).result
        if isinstance(result, sphinx.Deliver):
            if result.message != MESSAGE or at != len(route) - 1:
                raise RuntimeError("the pipeline delivered the wrong message")
            return
        at = node_ids.index(result.next_hop)
        packet = result.packet


def pipeline(seconds: float) -> float:
    route, privates = _route(RELAYS_ON_ROUTE)
    return loop_rate(partial(one_message, route, privates), seconds)


# -- counting primitive calls --------------------------------------------------------


@contextlib.contextmanager
def traced() -> Iterator[Counter[str]]:
    """Count X25519, ChaCha20-Poly1305 and keyed-BLAKE2b calls by size, process-wide.

    Patches ``nacl.bindings`` and ``hashlib`` attributes (the onion code looks
    them up at each call) and restores them on exit. Sizes outside Sphinx's
    land in ``aead_other``/``b2_other``: the link, the e2e layer, the DHT.
    """
    counts: Counter[str] = Counter()
    dh, base, enc, dec, blake = (
        sodium.crypto_scalarmult,
        sodium.crypto_scalarmult_base,
        sodium.crypto_aead_chacha20poly1305_ietf_encrypt,
        sodium.crypto_aead_chacha20poly1305_ietf_decrypt,
        hashlib.blake2b,
    )
    aead_sizes = {LIONESS_HALF: "aead_payload", STREAM_BYTES: "aead_stream"}

    def t_dh(*args: Any) -> Any:
        counts["dh"] += 1
        return dh(*args)

    def t_base(*args: Any) -> Any:
        counts["base"] += 1
        return base(*args)

    def t_enc(message: bytes, *args: Any) -> Any:
        counts[aead_sizes.get(len(message), "aead_other")] += 1
        return enc(message, *args)

    def t_dec(message: bytes, *args: Any) -> Any:
        counts["aead_other"] += 1
        return dec(message, *args)

    def t_blake(data: bytes = b"", **kwargs: Any) -> Any:
        if "key" not in kwargs:
            counts["b2_unkeyed"] += 1
        elif len(data) == LIONESS_HALF:
            counts["b2_payload"] += 1
        elif len(data) == MAC_INPUT:
            counts["b2_mac"] += 1
        elif len(data) <= SMALL_INPUT:
            counts["b2_small"] += 1
        else:
            counts["b2_other"] += 1
        return blake(data, **kwargs)

    patches = {
        (sodium, "crypto_scalarmult"): t_dh,
        (sodium, "crypto_scalarmult_base"): t_base,
        (sodium, "crypto_aead_chacha20poly1305_ietf_encrypt"): t_enc,
        (sodium, "crypto_aead_chacha20poly1305_ietf_decrypt"): t_dec,
        (hashlib, "blake2b"): t_blake,
    }
    with contextlib.ExitStack() as stack:
        for (module, name), traced_call in patches.items():
            stack.enter_context(mock.patch.object(module, name, traced_call))
        yield counts


def check_formula() -> None:
    """The formula must match what one pipeline message really calls."""
    route, privates = _route(RELAYS_ON_ROUTE)
    with traced() as counts:
        one_message(route, privates)
    expected = sphinx_costs(RELAYS_ON_ROUTE)
    if +counts != +expected:
        raise RuntimeError(f"the formula is out of date: traced {dict(counts)}, not {expected}")


# -- real nodes over TCP ---------------------------------------------------------------


def _free_loopback_port() -> int:
    """A port the kernel just handed out (as ``p2pmsg init --listen tcp:127.0.0.1:0``
    does): invites carry the configured endpoint, so it must be known up front."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _make_home(root: Path, name: str, bootstrap: Sequence[str]) -> Home:
    home = Home(root / name)
    listen = (Endpoint("tcp", f"127.0.0.1:{_free_loopback_port()}"),)
    home.init(Config(listen=listen, bootstrap=tuple(bootstrap)), Identity.generate())
    return home


@dataclass
class Network:
    """The running nodes and what the recipient and sender have reported."""

    sender: Node
    recipient: Node
    nodes: list[Node]
    sent_at: dict[bytes, float] = field(default_factory=dict)
    received_at: dict[bytes, float] = field(default_factory=dict)
    acked: dict[bytes, trio.Event] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    profiler: cProfile.Profile | None = None
    setup_seconds: float = 0.0

    async def watch(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receipts)
            nursery.start_soon(self._acks)

    async def _receipts(self) -> None:
        async for message in self.recipient.messages():
            self.received_at.setdefault(message.id, time.perf_counter())

    async def _acks(self) -> None:
        async for message_id in self.sender.deliveries():
            self.acked.setdefault(message_id, trio.Event()).set()

    async def send(self, text: str) -> bytes:
        start = time.perf_counter()
        message_id = await self.sender.send("recipient", text)
        self.sent_at[message_id] = start
        self.acked.setdefault(message_id, trio.Event())
        return message_id

    def latency(self, message_id: bytes) -> float:
        return self.received_at[message_id] - self.sent_at[message_id]

    async def burst(self, count: int, label: str) -> float:
        """Queue ``count`` messages; messages per second until every ack is in."""
        with self._profiling():
            start = time.perf_counter()
            ids = [await self.send(f"burst {i}") for i in range(count)]
            for message_id in ids:
                await self.acked[message_id].wait()
            elapsed = time.perf_counter() - start
        self.latencies.setdefault(label, []).extend(self.latency(i) for i in ids)
        return count / elapsed

    async def one_at_a_time(self, count: int, label: str) -> float:
        with self._profiling():
            start = time.perf_counter()
            ids = []
            for i in range(count):
                ids.append(await self.send(f"single {i}"))
                await self.acked[ids[-1]].wait()
            elapsed = time.perf_counter() - start
        self.latencies.setdefault(label, []).extend(self.latency(i) for i in ids)
        return count / elapsed

    @contextlib.contextmanager
    def _profiling(self) -> Iterator[None]:
        if self.profiler is None:
            yield
            return
        self.profiler.enable()
        try:
            yield
        finally:
            self.profiler.disable()


async def _wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` (the nodes offer no event for most of what is awaited)."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while not await condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the nodes did not get ready in {SETUP_TIMEOUT:g} s: {what}")
        await trio.sleep(0.1)


async def _close_packet_links(nodes: list[Node]) -> None:
    for node in nodes:
        await node.onion.links.close_all()


@contextlib.asynccontextmanager
async def network(relays: int) -> AsyncIterator[Network]:
    """A seed, ``relays`` relays, a sender and a recipient, ready to send onion messages."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="p2pmsg-bench-onion-") as tmp:
        root = Path(tmp)
        seed = _make_home(root, "seed", ())
        boot = [str(seed.invite())]
        names = [*(f"relay{i}" for i in range(relays)), "recipient", "sender"]
        homes = [seed, *(_make_home(root, name, boot) for name in names)]
        nodes: list[Node] = []
        async with contextlib.AsyncExitStack() as stack:
            # Node.open leaves the relay's packet links (OnionService.links) open
            # when it exits; closed here, after every node has stopped.
            stack.push_async_callback(_close_packet_links, nodes)
            for home in homes:
                nodes.append(
                    await stack.enter_async_context(Node.open(home.path, [TcpTransport()]))
                )
            sender, recipient = nodes[-1], nodes[-2]
            others = len(nodes) - 2

            async def joined() -> bool:
                return all(n.joined.is_set() for n in nodes[1:])

            async def prekeys() -> bool:
                return recipient.onion.prekeys_published.is_set()

            async def routable() -> bool:
                return len(sender.onion.path.candidates(time.time())) >= min(others, 6)

            async def polled() -> bool:
                # Each node's first mailbox poll fetches 31 epochs from every holder: a
                # storm of DHT requests and handshakes that would swamp the first rounds.
                return all([await n.store.get_meta("mailbox_epoch") for n in nodes])

            await _wait_for(joined, "joined")
            await _wait_for(prekeys, "prekeys published")
            await _wait_for(routable, "relays known to the sender")
            await _wait_for(polled, "the first mailbox poll of every node")
            invite = str(Home(root / "recipient").invite())
            await sender.store.add_contact(contact_from_text("recipient", invite, time.time()))
            net = Network(sender, recipient, nodes)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(net.watch)
                with trio.fail_after(SETUP_TIMEOUT):  # the e2e session, the first links
                    await net.one_at_a_time(WARM_UP, "warm-up")
                net.setup_seconds = time.perf_counter() - start
                yield net
                nursery.cancel_scope.cancel()


# -- the report --------------------------------------------------------------------

LABELS = {
    "dh": "X25519 crypto_scalarmult",
    "base": "X25519 crypto_scalarmult_base",
    "aead_payload": f"ChaCha20-Poly1305, {LIONESS_HALF} B",
    "aead_stream": f"ChaCha20-Poly1305, {STREAM_BYTES} B",
    "b2_payload": f"keyed BLAKE2b, {LIONESS_HALF} B",
    "b2_mac": f"keyed BLAKE2b, {MAC_INPUT} B",
    "b2_small": f"keyed BLAKE2b, {SMALL_INPUT} B",
    "limit": "limit: one message, crypto-bound",
    "limit_rt": "limit: message + ack via SURB",
    "pipeline": "pipeline: create_packet + 4 peels",
    "burst": "nodes/TCP: burst, until all acked",
    "single": "nodes/TCP: one at a time",
}
SUBJECTS = ("pipeline", "burst", "single")
HEADER = ("measurement", "per s", "min", "max", "x limit", "x limit+ack")


def _row(
    label: str, series: list[float], samples: dict[str, list[float]], ratios: bool
) -> list[str]:
    return [
        label,
        f"{median(series):,.0f}",
        f"{min(series):,.0f}",
        f"{max(series):,.0f}",
        f"{paired_ratio(series, samples['limit']):.3f}" if ratios else "",
        f"{paired_ratio(series, samples['limit_rt']):.3f}" if ratios else "",
    ]


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(results: Results, args: argparse.Namespace) -> str:
    samples = dict(results.samples)
    latencies, node_counts = results.latencies, results.node_counts
    forward, both = sphinx_costs(RELAYS_ON_ROUTE), sphinx_costs(RELAYS_ON_ROUTE, reply=True)
    samples["limit"] = round_limits(samples, forward)
    samples["limit_rt"] = round_limits(samples, both)
    keys = [*PRIMITIVES, "limit", "limit_rt", *(k for k in SUBJECTS if k in samples)]
    rows = [_row(LABELS[k], samples[k], samples, k in SUBJECTS) for k in keys]
    lines = [
        f"p2pmsg onion messages: {args.rounds} interleaved rounds x {args.seconds:g} s "
        f"(nodes: {args.messages} queued, {args.sequential} one at a time, "
        f"{args.relays} relays + seed), medians",
        environment(),
        "",
        table(HEADER, rows),
        "",
        f"limit = 1 / ({formula(forward)})  [{RELAYS_ON_ROUTE} relays + destination]",
        f"limit+ack = 1 / ({formula(both)})",
        "  (each name is that primitive's rate per second, as measured in this round;",
        "   the node rows also pay the e2e layer, the links and the store, not counted here)",
        "",
        "ratios (median of per-round ratios):",
    ]
    ratios = [("pipeline", "limit", "pipeline / crypto-bound limit")]
    if "burst" in samples:
        ratios += [
            ("burst", "limit", "nodes, burst / crypto-bound limit"),
            ("burst", "limit_rt", "nodes, burst / limit with the ack"),
            ("burst", "pipeline", "nodes, burst / pipeline"),
        ]
    lines += [f"  {name}: {paired_ratio(samples[a], samples[b]):.3f}" for a, b, name in ratios]
    if "burst" in samples:
        lines += [
            "",
            f"node set-up (not timed): {results.setup_seconds:.1f} s; onion attempts per message"
            f" sent (1 = no retransmission): {results.attempts:.2f}",
            "",
            "one-way latency, send() to the recipient's messages() (all rounds pooled):",
        ]
        for key, name in (("burst", f"burst of {args.messages}"), ("single", "one at a time")):
            ms = [v * 1000 for v in latencies.get(key, [])]
            if ms:
                lines.append(
                    f"  {name}: p50 {quantile(ms, 0.5):.1f} ms, p99 {quantile(ms, 0.99):.1f} ms,"
                    f" max {max(ms):.1f} ms ({len(ms)} messages)"
                )
    if node_counts is not None:
        per = {k: v / args.sequential for k, v in sorted(node_counts.items())}
        lines += [
            "",
            "primitive calls per message on the node path, all nodes"
            f" (traced, {args.sequential} messages one at a time):",
            "  " + ", ".join(f"{k} {v:.1f}" for k, v in per.items()),
            "  formula, message + ack via SURB: " + ", ".join(f"{k} {both[k]}" for k in PRIMITIVES),
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="length of one CPU measurement (default 1.0)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--messages", type=int, default=200, help="messages queued per node round (default 200)"
    )
    parser.add_argument(
        "--sequential",
        type=int,
        default=20,
        help="messages sent one at a time per node round (default 20)",
    )
    parser.add_argument(
        "--relays", type=int, default=6, help="relay nodes besides the seed (default 6)"
    )
    parser.add_argument("--no-nodes", action="store_true", help="skip the real nodes")
    parser.add_argument(
        "--profile",
        metavar="N",
        type=int,
        default=0,
        help="cProfile the node rows and print the top N functions",
    )
    parser.add_argument("--debug", action="store_true", help="log p2pmsg at DEBUG to stderr")
    args = parser.parse_args(argv)
    if not args.seconds > 0 or args.rounds < 1 or min(args.messages, args.sequential) < 1:
        parser.error("--seconds must be positive, --rounds, --messages and --sequential at least 1")
    if args.relays < RELAYS_ON_ROUTE:
        parser.error(f"--relays must be at least {RELAYS_ON_ROUTE}")
    return args


@dataclass
class Results:
    samples: dict[str, list[float]]
    latencies: dict[str, list[float]] = field(default_factory=dict)
    node_counts: Counter[str] | None = None
    attempts: float = 0.0
    setup_seconds: float = 0.0
    profile: str = ""


async def run(args: argparse.Namespace) -> Results:
    cpu: dict[str, Measure] = {
        "dh": sync_measure(partial(_x25519, base=False)),
        "base": sync_measure(partial(_x25519, base=True)),
        "aead_payload": sync_measure(partial(_aead, size=LIONESS_HALF)),
        "aead_stream": sync_measure(partial(_aead, size=STREAM_BYTES)),
        "b2_payload": sync_measure(partial(_blake2b, size=LIONESS_HALF)),
        "b2_mac": sync_measure(partial(_blake2b, size=MAC_INPUT)),
        "b2_small": sync_measure(partial(_blake2b, size=SMALL_INPUT)),
        "pipeline": sync_measure(pipeline),
    }
    if args.no_nodes:
        return Results(await run_rounds(cpu, args.seconds, args.rounds))
    async with network(args.relays) as net:
        if args.profile:
            net.profiler = cProfile.Profile()

        async def burst(_: float) -> float:
            return await net.burst(args.messages, "burst")

        async def single(_: float) -> float:
            return await net.one_at_a_time(args.sequential, "single")

        measures = {**cpu, "burst": burst, "single": single}
        results = Results(await run_rounds(measures, args.seconds, args.rounds))
        results.latencies = net.latencies
        results.setup_seconds = net.setup_seconds
        if net.profiler is not None:
            out = io.StringIO()
            stats = pstats.Stats(net.profiler, stream=out)
            stats.sort_stats("tottime").print_stats(args.profile)
            results.profile = out.getvalue()
            net.profiler = None
        with traced() as counts:
            await net.one_at_a_time(args.sequential, "traced")
        results.node_counts = +counts
        sent = await net.sender.store.list_outbox(limit=len(net.sent_at))
        results.attempts = sum(m.attempts for m in sent) / len(sent)
        return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.debug:
        logging.basicConfig(stream=sys.stderr, format="%(relativeCreated)8.0f %(name)s %(message)s")
        logging.getLogger("p2pmsg").setLevel(logging.DEBUG)
    check_formula()
    results = trio.run(run, args)
    print(report(results, args))
    if results.profile:
        print("\nprofile of the node rows (main thread, by own time):\n" + results.profile)


if __name__ == "__main__":
    main()
