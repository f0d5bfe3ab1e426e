"""How cost grows with work: measured, fitted and plotted (issue 8, deliverable 4).

Theory of operation: three ladders of sizes, every point measured on the
real code in a fresh child process (its heap and its peak memory are its
own, and a large network's memory is gone before the next point):

* **dht**: RPCs, CPU and latency per lookup against network size, both
  sides as ``bench.dht_vs_kademlia`` measures them (its ``measure``, so its
  ``build_ours``, ``our_lookup``, ``Tally`` and ``KademliaPeer``): our real
  ``Dht`` services on the simulated network under a ``MockClock``, the
  stock ``kademlia`` package in a second process, lookups interleaved;
* **sim**: the simulator's wall time and peak memory against node count,
  ``bench.sim_scale.measure`` (which starts its own child per size);
* **records, mailbox, outbox**: memory held against items stored, filling
  the real stores: a :class:`~p2pmsg.dht.record_store.RecordStore` with
  signed peer records (decoded from wire bytes, validated), a
  :class:`~p2pmsg.dht.mailbox.MailboxStore` with Sphinx-packet-sized blobs,
  and a :class:`~p2pmsg.store.Database` (real SQLite, ``synchronous=FULL``,
  in a temporary directory) with queued outbox messages. Memory is the
  growth of ``VmRSS`` (``/proc/self/status``) across the fill; the time per
  insert is taken over the last tenth of the fill (the cost at size N).

Each ladder has a time budget: before a size, its time is projected from the
last two points (their growth exponent, at least linear) and the ladder stops
if that does not fit in what is left; the report names the sizes left out
and why. Each series is fitted with y ~ c * x^b by least squares on log-log
axes and b is printed (0 flat, 1 linear, 2 quadratic). ``--json`` prints one
JSON object of every row and series instead of the report. PNGs go to
``--out`` (default ``bench/``). Run from the checkout: ``python3 -m bench.growth``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter
from trio.testing import MockClock

from bench import dht_vs_kademlia as dvk
from bench import sim_scale
from bench._common import environment, table
from p2pmsg.dht import records
from p2pmsg.dht.mailbox import DEFAULT_TTL, MailboxStore, Outcome
from p2pmsg.dht.record_store import DEFAULT_MAX_TOTAL, RecordStore, Stored
from p2pmsg.dht.service import DhtOptions
from p2pmsg.keys import Identity
from p2pmsg.onion.sphinx import PACKET_BYTES
from p2pmsg.store import MAX_QUEUED, Database, MessageKind, OutboxMessage

Row = dict[str, Any]
LIBC = ctypes.CDLL(None)  # glibc: malloc_trim
ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
SEED = 1
RTT_MS = 50.0
NOW = 1_800_000_000
BODY_BYTES = 1000
"""An outbox message's body: a longish text message."""
OUTBOX_PEERS = 100
"""Queued messages spread over this many contacts (the cap per contact is 1000)."""


@dataclass(frozen=True)
class Plan:
    """What one run measures: sizes, lookups and a time budget (s) per ladder."""

    dht_nodes: tuple[int, ...]
    lookups: int
    rounds: int
    sim_nodes: tuple[int, ...]
    sim_minutes: float
    items: tuple[int, ...]
    budget: dict[str, float]


PLANS = {
    "default": Plan(
        dht_nodes=(100, 200, 500, 1000, 2000, 5000, 10_000), lookups=40, rounds=4,
        sim_nodes=(10, 20, 40, 80, 160), sim_minutes=1.0, items=(1000, 2000, 5000, 10_000, 20_000),
        budget={"dht": 450, "sim": 200, "records": 20, "mailbox": 20, "outbox": 150},
    ),  # about 14 minutes at most
    "quick": Plan(
        dht_nodes=(25, 50, 100, 200), lookups=20, rounds=2,
        sim_nodes=(5, 10, 20), sim_minutes=0.5, items=(200, 500, 1000, 2000),
        budget={"dht": 40, "sim": 25, "records": 10, "mailbox": 10, "outbox": 10},
    ),
    "tiny": Plan(
        dht_nodes=(8, 12), lookups=4, rounds=2, sim_nodes=(3, 4), sim_minutes=0.5, items=(50, 100),
        budget=dict.fromkeys(["dht", "sim", "records", "mailbox", "outbox"], 60.0),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    """One plotted series: a field of one ladder's rows against its size ``n``."""

    key: str
    ladder: str
    field: str
    label: str
    figure: str
    panel: int


SPECS = [
    Spec("dht_find_node_ours", "dht", "ours_find_node", "p2pmsg: FIND_NODE, searcher", "dht", 0),
    Spec("dht_rpcs_ours", "dht", "ours_rpcs", "p2pmsg: all RPCs, whole network", "dht", 0),
    Spec("dht_find_node_kad", "dht", "kad_find_node", "kademlia: FIND_NODE, searcher", "dht", 0),
    Spec("dht_rpcs_kad", "dht", "kad_rpcs", "kademlia: all RPCs, whole network", "dht", 0),
    Spec("dht_links_ours", "dht", "ours_links", "p2pmsg: new secure links", "dht", 0),
    Spec("dht_cpu_ours", "dht", "ours_cpu_ms", "p2pmsg: CPU ms per lookup", "dht", 1),
    Spec("dht_cpu_kad", "dht", "kad_cpu_ms", "kademlia: CPU ms per lookup", "dht", 1),
    Spec("dht_build_ours", "dht", "build_s", "p2pmsg: s to build the network", "dht", 1),
    Spec("sim_wall", "sim", "wall", "wall seconds", "sim", 0),
    Spec("sim_peak", "sim", "peak_mib", "peak RSS, MiB", "sim", 1),
    Spec("records_mib", "records", "mib", "DHT records (RecordStore): RSS", "stores", 0),
    Spec("mailbox_mib", "mailbox", "mib", "mailbox entries (MailboxStore): RSS", "stores", 0),
    Spec("outbox_mib", "outbox", "mib", "outbox messages (SQLite): RSS", "stores", 0),
    Spec("outbox_file", "outbox", "file_mib", "outbox messages: database files", "stores", 0),
    Spec("records_us", "records", "us_per_put", "DHT records: put", "stores", 1),
    Spec("mailbox_us", "mailbox", "us_per_put", "mailbox entries: put", "stores", 1),
    Spec("outbox_us", "outbox", "us_per_put", "outbox messages: enqueue", "stores", 1),
    Spec("outbox_cpu", "outbox", "cpu_us_per_put", "outbox messages: enqueue, CPU", "stores", 1),
]
PLAIN = FuncFormatter(lambda value, _: f"{value:,g}")
#: file name, suptitle, and per panel: title, x label, y label, log y
FIGURES: dict[str, tuple[str, str, list[tuple[str, str, str, bool]]]] = {
    "dht": (
        "growth_dht_lookups.png",
        "DHT lookups (k=20, alpha=3) against network size",
        [
            ("RPCs per lookup", "nodes in the network", "RPCs per lookup (mean)", False),
            (
                "CPU and build time",
                "nodes in the network",
                "CPU ms per lookup (median); build s",
                True,
            ),
        ],
    ),
    "sim": (
        "growth_sim.png",
        "the simulator (sim_scale scenario) against node count",
        [
            ("wall time", "simulated nodes", "wall seconds", True),
            ("peak memory", "simulated nodes", "peak RSS (MiB)", True),
        ],
    ),
    "stores": (
        "growth_stores.png",
        "memory and insert time against items stored",
        [
            ("memory held", "items stored", "MiB", True),
            ("cost of one more item", "items already stored", "µs per insert (last tenth)", True),
        ],
    ),
}


# -- the points, each run in a child process ----------------------------------------


def in_child(call: str) -> Row:
    """``bench.growth.<call>`` in a fresh interpreter; its JSON result."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    code = f"import json, bench.growth as g; print(json.dumps(g.{call}))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{call} failed:\n{done.stderr[-3000:]}")
    row: Row = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dht_point(nodes: int, lookups: int, rounds: int, kademlia: bool) -> Row:
    """One network size, both sides, as ``bench.dht_vs_kademlia`` runs it."""
    flags = {"nodes": nodes, "lookups": lookups, "rounds": rounds, "rtt-ms": RTT_MS, "seed": SEED}
    args = dvk.parse_args([f"--{name}={value}" for name, value in flags.items()])
    peer = dvk.KademliaPeer(nodes, SEED) if kademlia else None
    clock = MockClock(autojump_threshold=0)
    try:
        ours, theirs, info = trio.run(dvk.measure, args, clock, peer, clock=clock)
    finally:
        if peer is not None:
            peer.close()
    row = {"n": nodes, "build_s": info["ours_build"], "sim_end": info["sim_end"]}
    row |= {"peak_mib": peak_mib(), **_lookups("ours", ours)}
    if peer is not None:
        row |= {"kad_build_s": info["peer"]["build_seconds"], **_lookups("kad", theirs)}
    return row


def _lookups(side: str, rounds: list[list[Row]]) -> Row:
    flat = [r for batch in rounds for r in batch]
    latency = "rounds" if "rounds" in flat[0] else "rtts"  # the peer's crawl rounds
    return {
        f"{side}_find_node": statistics.fmean(r["find_node"] for r in flat),
        f"{side}_rpcs": statistics.fmean(r["rpcs"] for r in flat),
        **(
            {f"{side}_links": statistics.fmean(r["links"] for r in flat)}
            if "links" in flat[0]
            else {}
        ),
        f"{side}_cpu_ms": statistics.median(r["cpu"] for r in flat) * 1000,
        f"{side}_rtts": statistics.median(r[latency] for r in flat),
        f"{side}_exact": statistics.fmean(r["exact_k"] for r in flat),
    }


def rss_bytes() -> int:
    """This process's resident set now (``VmRSS``), in bytes."""
    status = Path("/proc/self/status").read_text(encoding="ascii")
    line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def timed_fill(n: int, put: Callable[[int], None]) -> Row:
    """``put(0..n-1)``: the RSS growth, and the wall and CPU time per put over the last tenth."""
    gc.collect()
    LIBC.malloc_trim(0)  # hand freed heap pages back, so that new items take new pages
    before = rss_bytes()
    tail = n - max(1, n // 10)
    for i in range(tail):
        put(i)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(tail, n):
        put(i)
    per_put = (time.perf_counter() - start) / (n - tail) * 1e6
    cpu_per_put = (time.process_time() - cpu) / (n - tail) * 1e6
    grown = rss_bytes() - before
    row = {"n": n, "mib": grown / MIB, "bytes_per_item": grown / n}
    return {**row, "us_per_put": per_put, "cpu_us_per_put": cpu_per_put}


def records_point(n: int) -> Row:
    """``n`` peer records, each from its own publisher, arriving as wire bytes."""
    rng = random.Random(SEED)
    info = records.PeerInfo(("tcp:192.0.2.1:4000",), frozenset(), ((1, bytes(32)), (2, bytes(32))))
    wire = [
        records.encode(
            records.make_peer_record(Identity.generate(rng.randbytes), info, 1, NOW + 3600)
        )
        for _ in range(n)
    ]  # signed before the fill: only what the store keeps is measured
    store = RecordStore()

    def put(i: int) -> None:
        record = records.decode(wire[i])
        if store.put(record, NOW, source=record.key) != Stored():
            raise RuntimeError(f"record {i} was not stored")

    return timed_fill(n, put)


def mailbox_point(n: int) -> Row:
    """``n`` deposits of Sphinx-packet-sized blobs, 100 per mailbox key."""
    rng, store = random.Random(SEED), MailboxStore()

    def put(i: int) -> None:
        key = hashlib.blake2b((i // 100).to_bytes(8, "big"), digest_size=32).digest()
        source = (i % 1000).to_bytes(32, "big")
        blob = rng.randbytes(PACKET_BYTES)
        if store.put(key, blob, NOW + DEFAULT_TTL, NOW, source=source) is not Outcome.STORED:
            raise RuntimeError(f"deposit {i} was not stored")

    return timed_fill(n, put)


def outbox_point(n: int) -> Row:
    """``n`` queued messages in a real database, each enqueue its own commit."""
    rng = random.Random(SEED)
    peers = [rng.randbytes(32) for _ in range(OUTBOX_PEERS)]
    with tempfile.TemporaryDirectory() as tmp, Database.open(Path(tmp) / "p2pmsg.db") as db:

        def put(i: int) -> None:
            message = OutboxMessage(
                id=i.to_bytes(16, "big"),
                peer=peers[i % OUTBOX_PEERS],
                kind=MessageKind.TEXT,
                body=rng.randbytes(BODY_BYTES),
                created=NOW + i / 1000,
                expires=NOW + DEFAULT_TTL,
                next_attempt=NOW,
            )
            db.enqueue(message)

        row = timed_fill(n, put)
        row["file_mib"] = sum(f.stat().st_size for f in Path(tmp).iterdir()) / MIB
    return row


# -- ladders, fits, the report ---------------------------------------------------------


def projected(rows: Sequence[Row], n: int) -> float:
    """Seconds a point of size ``n`` should take, from the last two (at least linear)."""
    if not rows:
        return 0.0
    (n0, t0), (n1, t1) = ((r["n"], r["seconds"]) for r in [rows[0], *rows][-2:])
    b = max(1.0, math.log(t1 / t0) / math.log(n1 / n0)) if n1 > n0 and t0 > 0 < t1 else 1.0
    return float(t1 * (n / n1) ** b)


def ladder(
    name: str, sizes: Sequence[int], budget: float, point: Callable[[int], Row]
) -> tuple[list[Row], str]:
    """Points in order while each fits in the budget; the rows and what was left out."""
    rows: list[Row] = []
    start = time.monotonic()
    for index, n in enumerate(sizes):
        left = budget - (time.monotonic() - start)
        guess = projected(rows, n)
        if guess > left:
            rest = ", ".join(f"{s:,}" for s in sizes[index:])
            return rows, (
                f"{name}: not measured: {rest} (projected {guess:.0f} s for {n:,}; "
                f"{max(left, 0):.0f} s left of its {budget:.0f} s budget)"
            )
        began = time.monotonic()
        rows.append({**point(n), "seconds": time.monotonic() - began})
        print(f"growth: {name} {n:,}: {rows[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    return rows, ""


def exponent(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """b in y ~ c * x^b, least squares on logs of the positive points; None if < 2."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    return statistics.linear_regression([x for x, _ in pts], [y for _, y in pts]).slope


def per_doubling(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The slope of y on log2(x): what a doubling of x adds."""
    return statistics.linear_regression([math.log2(x) for x in xs], list(ys)).slope


def all_series(results: dict[str, list[Row]]) -> dict[str, Row]:
    series = {}
    for spec in SPECS:
        rows = [r for r in results.get(spec.ladder, []) if spec.field in r]
        xs, ys = [r["n"] for r in rows], [r[spec.field] for r in rows]
        series[spec.key] = {"label": spec.label, "x": xs, "y": ys, "exponent": exponent(xs, ys)}
    return series


def plot(name: str, series: dict[str, Row], out: Path) -> Path:
    """One figure: its panels, each series' measured points marked and its b in the legend."""
    filename, title, panels = FIGURES[name]
    fig = Figure(figsize=(12, 4.8))
    FigureCanvasAgg(fig)  # Agg, and no pyplot state
    for index, (panel_title, xlabel, ylabel, log_y) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        for spec in (s for s in SPECS if s.figure == name and s.panel == index):
            one = series[spec.key]
            pts = [(x, y) for x, y in zip(one["x"], one["y"], strict=True) if y > 0]
            b = "" if one["exponent"] is None else f" (b = {one['exponent']:.2f})"
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=spec.label + b)
        ax.set(xscale="log", title=panel_title, xlabel=xlabel, ylabel=ylabel)
        ax.set_xticks(sorted({x for s in SPECS if s.figure == name for x in series[s.key]["x"]}))
        ax.xaxis.set_major_formatter(PLAIN)
        ax.xaxis.set_minor_formatter(NullFormatter())
        if ax.has_data() and log_y:
            ax.set_yscale("log")
            low, high = ax.get_ylim()  # under a decade: label the minor ticks too
            ax.yaxis.set_major_formatter(PLAIN)
            ax.yaxis.set_minor_formatter(PLAIN if high < 10 * low else NullFormatter())
        elif ax.has_data():
            ax.set_ylim(bottom=0)
        if ax.has_data():
            ax.legend(fontsize=7)
        ax.grid(visible=True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = out / filename
    fig.savefig(path, dpi=100)
    return path


Column = tuple[str, str, str]  # header, row key, format
DHT_COLUMNS: list[Column] = [
    ("FIND_NODE", "ours_find_node", "{:.1f}"),
    ("RPCs", "ours_rpcs", "{:.1f}"),
    ("kad FIND_NODE", "kad_find_node", "{:.1f}"),
    ("kad RPCs", "kad_rpcs", "{:.1f}"),
    ("new links", "ours_links", "{:.1f}"),
    ("CPU ms", "ours_cpu_ms", "{:.1f}"),
    ("kad CPU ms", "kad_cpu_ms", "{:.1f}"),
    ("RTTs", "ours_rtts", "{:.0f}"),
    ("kad rounds", "kad_rtts", "{:.0f}"),
    ("exact k", "ours_exact", "{:.0%}"),
    ("kad exact", "kad_exact", "{:.0%}"),
    ("build s", "build_s", "{:.1f}"),
    ("kad build s", "kad_build_s", "{:.1f}"),
    ("peak MiB", "peak_mib", "{:.0f}"),
    ("point s", "seconds", "{:.0f}"),
]
SIM_COLUMNS: list[Column] = [
    ("wall s", "wall", "{:.1f}"),
    ("peak MiB", "peak_mib", "{:.0f}"),
    ("x real time", "speed", "{:.1f}"),
    ("delivered", "delivered", "{:.0%}"),
    ("point s", "seconds", "{:.0f}"),
]
STORE_COLUMNS: list[Column] = [
    ("RSS growth MiB", "mib", "{:.2f}"),
    ("B per item", "bytes_per_item", "{:,.0f}"),
    ("µs per insert", "us_per_put", "{:,.0f}"),
    ("CPU µs", "cpu_us_per_put", "{:,.0f}"),
    ("files MiB", "file_mib", "{:.2f}"),
]


def rows_table(first: str, columns: list[Column], rows: list[tuple[str, Row]]) -> str:
    """One line per (label, row); ``-`` where a row lacks a column."""
    body = [
        [label, *(spec.format(r[key]) if key in r else "-" for _, key, spec in columns)]
        for label, r in rows
    ]
    return table([first, *(header for header, _, _ in columns)], body)


def dht_text(plan: Plan, rows: list[Row], note: str) -> list[str]:
    upkeep = min(DhtOptions().refresh_every, DhtOptions().republish_every)
    late = [r["n"] for r in rows if r["sim_end"] >= upkeep]
    peer = any("kad_rpcs" in r for r in rows)
    lines = [
        f"DHT lookups (bench.dht_vs_kademlia): k={dvk.K}, alpha={dvk.ALPHA}, simulated RTT "
        f"{RTT_MS:g} ms; {plan.lookups} lookups of existing ids per size and side in "
        f"{plan.rounds} interleaved rounds; the peer: "
        + ("kademlia 2.2.3 in a second process" if peer else dvk.INSTALL_HINT),
        rows_table(
            "nodes", DHT_COLUMNS, [(f"{r['n']:,}" + " *" * (r["n"] in late), r) for r in rows]
        ),
    ]
    if late:
        lines.append("* simulated time passed the nodes' first hourly upkeep (refresh, republish)")
    if rows:
        r = rows[-1]
        lines.append(
            f"largest network measured: {r['n']:,} nodes, {r['seconds']:.0f} s for the point "
            f"(our network built in {r['build_s']:.0f} s, peak {r['peak_mib']:.0f} MiB)"
        )
    return [*lines, *([note] if note else [])]


def sim_text(plan: Plan, rows: list[Row], note: str) -> list[str]:
    return [
        f"simulator (bench.sim_scale.measure): {plan.sim_minutes:g} simulated min + 3 min "
        "warm-up and drain; users = nodes, nodes / 2 pairs writing every minute",
        rows_table("nodes", SIM_COLUMNS, [(f"{r['n']:,}", r) for r in rows]),
        *([note] if note else []),
    ]


def stores_text(results: dict[str, list[Row]], notes: dict[str, str]) -> list[str]:
    rows = [(f"{kind} {r['n']:,}", r) for kind in STORES for r in results[kind]]
    return [
        f"stores: records = signed peer records in a RecordStore (cap {DEFAULT_MAX_TOTAL:,}); "
        f"mailbox = {PACKET_BYTES}-byte blobs in a MailboxStore;",
        f"  outbox = {BODY_BYTES}-byte messages to {OUTBOX_PEERS} contacts, Database.enqueue "
        f"on SQLite (cap {MAX_QUEUED:,}); one child process per point",
        rows_table("store, items", STORE_COLUMNS, rows),
        *(notes[kind] for kind in STORES if notes[kind]),
    ]


def exponent_lines(series: dict[str, Row]) -> list[str]:
    lines = [
        "growth exponents b (y ~ x^b, least squares on log-log; 0 flat, 1 linear, 2 quadratic):"
    ]
    for spec in SPECS:
        s = series[spec.key]
        if s["exponent"] is not None:
            extra = ""
            if spec.ladder == "dht" and spec.panel == 0:
                extra = f"; {per_doubling(s['x'], s['y']):+.2f} per doubling of the network"
            lines.append(f"  {spec.key:<18} b = {s['exponent']:5.2f}  ({spec.label}{extra})")
    return lines


STORES = ("records", "mailbox", "outbox")


def run(args: argparse.Namespace, plan: Plan) -> tuple[dict[str, list[Row]], dict[str, str]]:
    """Every chosen ladder; the rows and the note of what each left out."""
    kademlia = dvk.kademlia_available()

    def sim(n: int) -> Row:
        row = sim_scale.measure(n, plan.sim_minutes)
        return {"n": n, "speed": row["simulated"] / row["wall"], **row}

    points: dict[str, tuple[Sequence[int], Callable[[int], Row]]] = {
        "dht": (
            args.dht_nodes or plan.dht_nodes,
            lambda n: in_child(f"dht_point({n}, {plan.lookups}, {plan.rounds}, {kademlia})"),
        ),
        "sim": (plan.sim_nodes, sim),
        "records": (
            [n for n in plan.items if n <= DEFAULT_MAX_TOTAL],
            lambda n: in_child(f"records_point({n})"),
        ),
        "mailbox": (plan.items, lambda n: in_child(f"mailbox_point({n})")),
        "outbox": (plan.items, lambda n: in_child(f"outbox_point({n})")),
    }
    results, notes = {}, {}
    for name, (sizes, point) in points.items():
        if (name if name in FIGURES else "stores") in args.sections:
            budget = args.dht_budget if name == "dht" and args.dht_budget else plan.budget[name]
            results[name], notes[name] = ladder(name, sizes, budget, point)
    return results, notes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="small sizes, under 2 minutes")
    add("--tiny", action="store_true", help=argparse.SUPPRESS)  # the smoke test's
    add("--out", type=Path, default=ROOT / "bench", help="where the PNGs go (default bench/)")
    add("--json", action="store_true", help="print one JSON object instead of the report")
    add("--sections", nargs="+", choices=list(FIGURES), default=list(FIGURES), help="(all)")
    add("--dht-nodes", type=int, nargs="+", help="DHT network sizes, smallest first")
    add("--dht-budget", type=float, help="seconds for the DHT ladder (default 450)")
    args = parser.parse_args(argv)
    if args.dht_nodes and min(args.dht_nodes) < 3:
        parser.error("--dht-nodes at least 3")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    plan = PLANS["tiny" if args.tiny else "quick" if args.quick else "default"]
    started = time.monotonic()
    results, notes = run(args, plan)
    series = all_series(results)
    args.out.mkdir(parents=True, exist_ok=True)
    plots = [str(plot(name, series, args.out)) for name in FIGURES if name in args.sections]
    if args.json:
        everything = {"environment": environment(), "rows": results, "notes": notes}
        print(json.dumps({**everything, "series": series, "plots": plots}, indent=1))
        return
    lines = ["p2pmsg growth: how cost grows with work", environment(), ""]
    if "dht" in results:
        lines += [*dht_text(plan, results["dht"], notes["dht"]), ""]
    if "sim" in results:
        lines += [*sim_text(plan, results["sim"], notes["sim"]), ""]
    if "outbox" in results:
        lines += [*stores_text(results, notes), ""]
    lines += [*exponent_lines(series), "", f"plots: {', '.join(plots)}"]
    print("\n".join([*lines, f"total {time.monotonic() - started:.0f} s"]))


if __name__ == "__main__":
    main()
