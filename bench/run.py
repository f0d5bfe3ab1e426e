"""Every performance goal of the project in one run: ``python bench/run.py [--quick] [--json]``.

Theory of operation: each section below runs one of the benchmarks in
``bench/`` with its peer or its limit *in the same run* (STYLE.md, rule 12)
and turns what it measured into metrics: our figure, the reference's, their
ratio, the goal and a verdict. The sections run one after another in this
process (the simulator rows and the idle node in child processes of their
own, so their memory is their own). A peer that needs software this machine
lacks (the ``kademlia`` package, Debian's ``obfs4proxy``) makes its metrics
``missing`` with the command that installs it; nothing is skipped silently.
A section that fails is reported as ``error`` with the exception, and the
others still run.

The table goes to stdout; with ``--json``, one JSON object keyed by metric
name goes to stdout instead and the table to stderr. The exit status is 0
whenever the run completed, met or not: goals are reported, never asserted
(``bench/RESULTS.md`` says which are met and what blocks the others).
``--quick`` shrinks every section so that the whole run takes a few minutes
on a two-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio
from trio.testing import MockClock

from bench import dht_vs_kademlia, link_goodput, onion, sim_scale, transports
from bench._common import (
    Measure,
    environment,
    median,
    paired_ratio,
    run_rounds,
    sync_measure,
    table,
)
from p2pmsg.endpoint import Invite
from p2pmsg.errors import HandshakeError
from p2pmsg.keys import Identity
from p2pmsg.link import wire
from p2pmsg.link.secure import connect_secure
from transports.tcp import TcpTransport

MB = 1_000_000
#: The goal's simulator run: 10,000 nodes for one simulated hour.
GOAL_NODES, GOAL_MINUTES = 10_000, 60.0
#: Every sim_scale row adds 3 simulated minutes of warm-up and drain.
SIM_EXTRA_MINUTES = 3.0
STARTUP_DEADLINE = 60.0


@dataclass
class Metric:
    """One line of the report; ``value`` is what the goal is judged on."""

    key: str
    label: str
    value: float | None
    unit: str = ""
    ours: float | None = None
    reference: float | None = None
    reference_name: str = ""
    goal: str = ""
    met: bool | None = None
    status: str = "ok"  # ok, missing, error
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.status != "ok":
            return self.status
        if self.met is None:
            return "reported"
        return "met" if self.met else "NOT met"


@dataclass(frozen=True)
class Size:
    """How much each section measures."""

    seconds: float
    rounds: int
    onion_messages: int
    onion_sequential: int
    onion_relays: int
    dht_nodes: int
    dht_lookups: int
    dht_warm_up: int
    """Unreported lookups per side between the cold and the warm ones."""
    sim_nodes: tuple[int, int]
    sim_minutes: float
    idle_seconds: float


QUICK = Size(0.3, 3, 40, 10, 3, 100, 60, 240, (20, 60), 1.0, 5.0)
FULL = Size(1.0, 5, 200, 20, 6, 300, 1000, 1000, (30, 100), 5.0, 30.0)


def _at_most(
    key: str, label: str, value: float, limit: float, unit: str, *, note: str = ""
) -> Metric:
    """A figure judged against a limit the issue sets."""
    return Metric(
        key,
        label,
        value,
        unit,
        ours=value,
        reference=limit,
        reference_name="goal",
        goal=f"<= {limit:g} {unit}",
        met=value <= limit,
        note=note,
    )


def _unavailable(keys: Sequence[str], status: str, note: str) -> list[Metric]:
    return [Metric(key, key, None, status=status, note=note) for key in keys]


# -- onion: throughput against the crypto-bound limit, latency ----------------------------


def onion_section(size: Size) -> list[Metric]:
    args = onion.parse_args(
        [
            f"--seconds={size.seconds}",
            f"--rounds={size.rounds}",
            f"--messages={size.onion_messages}",
            f"--sequential={size.onion_sequential}",
            f"--relays={size.onion_relays}",
        ]
    )
    onion.check_formula()
    results = trio.run(onion.run, args)
    samples = results.samples
    limit = onion.round_limits(samples, onion.sphinx_costs(onion.RELAYS_ON_ROUTE))
    single = [v * 1000 for v in results.latencies["single"]]
    p50, p99 = (onion.quantile(single, q) for q in (0.5, 0.99))
    return [
        Metric(
            "onion_throughput_ratio",
            "onion msgs/s, 3 relays, real nodes / crypto limit",
            paired_ratio(samples["burst"], limit),
            ours=median(samples["burst"]),
            reference=median(limit),
            reference_name="crypto-bound limit (X25519, AEAD, BLAKE2b rates)",
            goal=">= 0.5",
            met=paired_ratio(samples["burst"], limit) >= 0.5,
            note=f"pipeline alone: {paired_ratio(samples['pipeline'], limit):.2f} of the limit",
        ),
        _at_most(
            "onion_latency_p50_ms",
            "onion one-way latency p50, 3 relays",
            p50,
            2.0,
            "ms",
            note=f"{len(single)} messages sent one at a time",
        ),
        Metric("onion_latency_p99_ms", "onion one-way latency p99", p99, "ms", ours=p99),
    ]


# -- transports: obfs and pt against bare obfs4proxy --------------------------------------


def transport_section(size: Size) -> list[Metric]:
    binary = transports.obfs4proxy_binary()
    if binary is None:
        note = "no obfs4proxy: apt-get install -y obfs4proxy"
        return _unavailable(SECTIONS["transports"][1], "missing", note)
    with tempfile.TemporaryDirectory(prefix="p2pmsg-bench-") as state:
        measures = transports.build_measures(Path(state), binary)
        chosen = {key: measures[key] for key in ("obfs", "pt", "bare")}
        samples = trio.run(run_rounds, chosen, size.seconds, size.rounds)
    bare = samples["bare"]
    return [
        Metric(
            key,
            label,
            paired_ratio(samples[subject], bare),
            ours=median(samples[subject]),
            reference=median(bare),
            reference_name="bare obfs4proxy, MB/s",
            goal=f">= {goal}",
            met=paired_ratio(samples[subject], bare) >= goal,
        )
        for key, subject, goal, label in (
            ("obfs_vs_obfs4proxy", "obfs", 1.0, "obfs transport goodput / bare obfs4proxy"),
            ("pt_overhead", "pt", 0.9, "pt transport over obfs4proxy / bare obfs4proxy"),
        )
    ]


# -- the secure link against raw TCP --------------------------------------------------------


def link_section(size: Size) -> list[Metric]:
    big = 1 << 16
    measures: dict[str, Measure] = {
        "raw": partial(link_goodput.raw_tcp, big),
        "secure": partial(link_goodput.secure_link, big),
    }
    # The crypto's ceiling with our cells and with 64 KiB ones: both ends seal
    # and open in this one process.
    for cell in (wire.CELL_PLAINTEXT, big):
        for decrypt in (False, True):
            rate = partial(link_goodput.aead_rate, decrypt=decrypt, size=cell)
            measures[f"{cell}{decrypt}"] = sync_measure(rate)
    samples = trio.run(run_rounds, measures, size.seconds, size.rounds)
    ceiling = {
        cell: [
            1 / (1 / e + 1 / d)
            for e, d in zip(samples[f"{cell}False"], samples[f"{cell}True"], strict=True)
        ]
        for cell in (wire.CELL_PLAINTEXT, big)
    }
    ratio = paired_ratio(samples["secure"], samples["raw"])
    return [
        Metric(
            "link_vs_raw_tcp",
            "secure-link goodput over tcp / raw trio TCP, 64 KiB messages",
            ratio,
            ours=median(samples["secure"]),
            reference=median(samples["raw"]),
            reference_name="raw trio TCP, MB/s",
            goal="report (aim >= 0.5)",
            note=(
                "AEAD seal+open / raw TCP, the most a link in one process can reach: "
                f"{paired_ratio(ceiling[wire.CELL_PLAINTEXT], samples['raw']):.3f} with our "
                f"{wire.CELL_PLAINTEXT} B cells, {paired_ratio(ceiling[big], samples['raw']):.3f}"
                " with 64 KiB cells; the link reaches "
                f"{paired_ratio(samples['secure'], ceiling[wire.CELL_PLAINTEXT]):.2f} of its own"
            ),
        )
    ]


# -- the DHT against the kademlia package ----------------------------------------------------


def dht_section(size: Size) -> list[Metric]:
    if not dht_vs_kademlia.kademlia_available():
        return _unavailable(SECTIONS["dht"][1], "missing", dht_vs_kademlia.INSTALL_HINT)
    args = dht_vs_kademlia.parse_args(
        [
            f"--nodes={size.dht_nodes}",
            f"--lookups={size.dht_lookups}",
            f"--rounds={size.rounds}",
            f"--warm-up={size.dht_warm_up}",
            f"--warm-lookups={size.dht_lookups}",
        ]
    )
    peer = dht_vs_kademlia.KademliaPeer(args.nodes, args.seed)
    clock = MockClock(autojump_threshold=0)
    try:
        ours, theirs, info = trio.run(dht_vs_kademlia.measure, args, clock, peer, clock=clock)
    finally:
        peer.close()
    warm_ours, warm_theirs = info["warm"]

    def mean(side: list[list[dict[str, Any]]], key: str) -> float:
        values = [float(r[key]) for batch in side for r in batch]
        return sum(values) / len(values)

    def rpc_ratio(ours: list[list[dict[str, Any]]], theirs: list[list[dict[str, Any]]]) -> float:
        """The median of the rounds' ratios of mean RPCs per lookup."""
        return median(
            [mean([a], "rpcs") / mean([b], "rpcs") for a, b in zip(ours, theirs, strict=True)]
        )

    cold = rpc_ratio(ours, theirs)
    success = {"ours": mean(ours, "exact_k"), "theirs": mean(theirs, "exact_k")}
    lookups = f"{size.dht_lookups} lookups per side on {size.dht_nodes} nodes"
    later = size.dht_lookups + size.dht_warm_up
    return [
        Metric(
            "dht_rpcs_vs_kademlia",
            "RPCs per lookup, whole network / kademlia's",
            cold,
            ours=mean(ours, "rpcs"),
            reference=mean(theirs, "rpcs"),
            reference_name="kademlia 2.2.3, same size",
            goal="<= 1.0, success >= 99.9%",
            met=cold <= 1.0 and success["ours"] >= 0.999,
            note=f"searcher's FIND_NODEs alone: {mean(ours, 'find_node'):.1f}"
            f" vs {mean(theirs, 'find_node'):.1f}; {lookups}, fresh from their joins",
        ),
        Metric(
            "dht_rpcs_vs_kademlia_warm",
            "the same, on the networks after their first lookups",
            rpc_ratio(warm_ours, warm_theirs),
            ours=mean(warm_ours, "rpcs"),
            reference=mean(warm_theirs, "rpcs"),
            reference_name="kademlia 2.2.3, same size",
            note=f"{size.dht_lookups} more lookups per side after {later};"
            f" true k closest: ours {mean(warm_ours, 'exact_k'):.3f},"
            f" kademlia's {mean(warm_theirs, 'exact_k'):.3f}",
        ),
        Metric(
            "dht_lookup_success",
            "our lookups returning the true k closest",
            success["ours"],
            ours=success["ours"],
            goal=">= 0.999",
            met=success["ours"] >= 0.999,
            note=lookups,
        ),
        Metric(
            "kademlia_lookup_success",
            "kademlia's lookups returning the true k closest",
            success["theirs"],
            ours=success["theirs"],
            note="the peer, judged without the target (it never returns it)",
        ),
    ]


# -- the simulator: nodes per GB, an hour of 10,000 nodes ------------------------------------


def sim_section(size: Size) -> list[Metric]:
    small, large = size.sim_nodes
    minutes, longer = size.sim_minutes, 3 * size.sim_minutes
    rows = {n: sim_scale.measure(n, minutes) for n in (small, large)}
    wall_longer = sim_scale.measure(large, longer)["wall"]
    # At the larger size, a run costs a fixed part (start, join, warm-up, drain)
    # and a part per simulated minute of traffic: fit both on two durations and
    # make an hour of it (a lower bound: the hourly upkeep and the 30-minute
    # mailbox poll are not in these runs). Cost grows as a power of the node
    # count: fit it on the two sizes and scale the hour to 10,000 nodes.
    per_minute = max(0.0, (wall_longer - rows[large]["wall"]) / (longer - minutes))
    fixed = max(0.0, rows[large]["wall"] - per_minute * minutes)
    exponent = math.log(rows[large]["wall"] / rows[small]["wall"]) / math.log(large / small)
    at_large = fixed + per_minute * (GOAL_MINUTES - SIM_EXTRA_MINUTES)
    hour = at_large * (GOAL_NODES / large) ** max(1.0, exponent)
    peak_gb = {n: row["peak_mib"] * (1 << 20) / 1e9 for n, row in rows.items()}
    per_gb = large / peak_gb[large]  # the interpreter's own memory included
    growth = (peak_gb[large] - peak_gb[small]) / (large - small)  # GB per added node
    at_goal = f"~{peak_gb[large] + (GOAL_NODES - large) * growth:.1f} GB" if growth > 0 else "?"
    measured = f"{small} and {large} nodes x {size.sim_minutes:g}+3 simulated min"
    return [
        Metric(
            "sim_nodes_per_gb",
            "real nodes simulated per GB of peak memory",
            per_gb,
            ours=per_gb,
            reference=GOAL_NODES / 4,
            reference_name="goal: 10,000 nodes in < 4 GB",
            goal=">= 2500 (10,000 nodes < 4 GB)",
            met=per_gb >= GOAL_NODES / 4,
            note=f"{measured}; 10,000 nodes at the added cost per node: {at_goal}",
        ),
        _at_most(
            "sim_hour_wall_s",
            "wall s for 10,000 nodes x 1 simulated hour (extrapolated)",
            hour,
            600.0,
            "s",
            note=f"from {measured} and {large} x {longer:g}+3: {fixed:.0f} s fixed"
            f" + {per_minute:.1f} s per minute of traffic at {large} nodes, ~ nodes^{exponent:.2f}",
        ),
    ]


# -- an idle node: start-up time and memory -------------------------------------------------


async def _first_handshake(invite: Invite, deadline: float) -> None:
    """Dial ``invite`` until a secure handshake completes (the node accepts links)."""
    me, endpoint = Identity.generate(), invite.endpoints[0]
    transport = TcpTransport()
    with trio.fail_after(deadline):
        while True:
            try:
                link = await transport.dial(endpoint)
                secure = await connect_secure(link, me, invite.identity, timeout=5.0)
            except (OSError, HandshakeError):
                await trio.sleep(0.005)  # not listening yet: poll the port
                continue
            await secure.aclose()
            return


def _rss_mb(status: str) -> float:
    """VmRSS from a ``/proc/PID/status`` text, in MB."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MB
    raise RuntimeError("no VmRSS in /proc status")


async def _idle_node(home: Path, invite: Invite, idle: float) -> tuple[float, float]:
    """Start ``p2pmsg run`` on ``home``: seconds until it completes a handshake,
    and its RSS after ``idle`` more seconds."""
    command = [sys.executable, "-m", "p2pmsg", "--home", str(home), "run"]
    start = time.perf_counter()
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await _first_handshake(invite, STARTUP_DEADLINE)
        startup = time.perf_counter() - start
        await trio.sleep(idle)
        if process.poll() is not None:
            raise RuntimeError(f"p2pmsg run exited with {process.returncode}")
        rss = _rss_mb(await trio.Path(f"/proc/{process.pid}/status").read_text())
    finally:
        process.send_signal(signal.SIGINT)
        with trio.move_on_after(10):
            await process.wait()
        if process.poll() is None:
            process.kill()
            await process.wait()
    return startup, rss


#: The floor under an idle node's memory: the interpreter with what every node imports.
FLOOR = "import trio, nacl.bindings, sqlite3; print(open('/proc/self/status').read())"


def node_section(size: Size) -> list[Metric]:
    with tempfile.TemporaryDirectory(prefix="p2b", dir="/tmp") as base:
        home = Path(base) / "n"  # short: the control socket's path must fit
        init = [sys.executable, "-m", "p2pmsg", "--home", str(home), "init"]
        done = subprocess.run(
            [*init, "--listen", "tcp:127.0.0.1:0"], capture_output=True, text=True, check=True
        )
        invite = Invite.parse(done.stdout)
        startup, rss = trio.run(_idle_node, home, invite, size.idle_seconds)
    floor = subprocess.run(
        [sys.executable, "-c", FLOOR], capture_output=True, text=True, check=True
    )
    floor_mb = _rss_mb(floor.stdout)
    return [
        _at_most(
            "idle_rss_mb",
            f"idle `p2pmsg run` node's RSS after {size.idle_seconds:g} s",
            rss,
            50.0,
            "MB",
            note=f"the interpreter with trio, pynacl and sqlite3 alone: {floor_mb:.1f} MB",
        ),
        _at_most(
            "startup_s", "`p2pmsg run`: start to the first handshake it accepts", startup, 1.0, "s"
        ),
    ]


# -- the run and the report --------------------------------------------------------------------

SECTIONS: dict[str, tuple[Callable[[Size], list[Metric]], list[str]]] = {
    "onion": (
        onion_section,
        ["onion_throughput_ratio", "onion_latency_p50_ms", "onion_latency_p99_ms"],
    ),
    "transports": (transport_section, ["obfs_vs_obfs4proxy", "pt_overhead"]),
    "link": (link_section, ["link_vs_raw_tcp"]),
    "dht": (
        dht_section,
        [
            "dht_rpcs_vs_kademlia",
            "dht_rpcs_vs_kademlia_warm",
            "dht_lookup_success",
            "kademlia_lookup_success",
        ],
    ),
    "sim": (sim_section, ["sim_nodes_per_gb", "sim_hour_wall_s"]),
    "node": (node_section, ["idle_rss_mb", "startup_s"]),
}


def run_sections(names: Sequence[str], size: Size, log: Callable[[str], None]) -> list[Metric]:
    metrics: list[Metric] = []
    for name in names:
        section, keys = SECTIONS[name]
        start = time.perf_counter()
        try:
            found = section(size)
        except Exception as exc:  # one broken section must not hide the others
            log(traceback.format_exc())
            found = _unavailable(keys, "error", f"{type(exc).__name__}: {exc}")
        log(f"{name}: {time.perf_counter() - start:.0f} s")
        metrics += found
    return metrics


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"


def report(metrics: Sequence[Metric]) -> str:
    header = ("metric", "ours", "peer or limit", "ratio/value", "goal", "verdict")
    rows = [
        [m.key, _number(m.ours), _number(m.reference), _number(m.value), m.goal, m.verdict]
        for m in metrics
    ]
    notes = [
        f"  {m.key}: {m.label}; {m.note}" if m.note else f"  {m.key}: {m.label}" for m in metrics
    ]
    return "\n".join([environment(), "", table(header, rows), "", "notes:", *notes])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS), help="these sections"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    size = QUICK if args.quick else FULL

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    metrics = run_sections(args.only, size, log)
    if args.json:
        log(report(metrics))
        print(json.dumps({m.key: {**asdict(m), "verdict": m.verdict} for m in metrics}))
    else:
        print(report(metrics))


if __name__ == "__main__":
    main()
