"""How many real nodes one process simulates: wall time and peak memory.

Each row runs the real node code on the simulated internet (an uncensored
scenario: users, bootstrap nodes and pairs writing every minute) for a
number of simulated minutes, in a child process of its own so its peak
memory (``ru_maxrss``) is its own; the nodes' files count as memory too when
the runner puts them on the RAM disk (``/dev/shm``). It prints, per row, the
wall time, the peak memory and two ratios against limits measured in the
same run:

* ``x real time``: simulated seconds per wall second (above 1: faster than
  the network it simulates);
* ``x goal``: this row's node-seconds per wall second divided by the goal's
  (10,000 nodes for one simulated hour in 10 minutes: 60,000 node-seconds
  per wall second). The goal is met at 1.0.

``--nodes`` and ``--minutes`` pick the grid (default 10, 30 and 100 nodes;
1 and 10 minutes); the issue's full grid is ``--nodes 100 1000 10000
--minutes 1 10 60``, hours of wall time on two cores. Run from the checkout:
``python3 -m bench.sim_scale``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

from bench._common import environment, table
from p2pmsg.sim import replays, runner
from p2pmsg.sim.scenario import loads

GOAL_NODE_SECONDS_PER_SECOND = 10_000 * 3600 / 600
"""10,000 nodes for one simulated hour in 10 minutes."""
SCENARIO = """
id = "scale"
title = "uncensored: users, bootstrap nodes, pairs writing every minute"
[run]
warmup = "2m"
drain = "1m"
seeds = 1
[topology]
users = 10
isps = 3
[traffic]
pairs = 5
every = "1m"
[control]
servers = 1
[pass]
delivery = 0.0
eventual = 0.0
control_max = 1.0
"""


def one_row(nodes: int, minutes: float) -> dict[str, float]:
    """Run one size in this process; what it cost."""
    base = loads(SCENARIO, "scale.toml")
    scenario = dataclasses.replace(
        base,
        run=dataclasses.replace(base.run, duration=minutes * 60),
        topology=dataclasses.replace(base.topology, users=nodes),
        traffic=dataclasses.replace(base.traffic, pairs=max(1, nodes // 2)),
    )
    start = time.perf_counter()
    result = runner.run(scenario, 1)
    wall = time.perf_counter() - start
    simulated = scenario.run.warmup + scenario.run.duration + scenario.run.drain
    # the nodes' files are memory too when the runner put them on the RAM disk
    files = result.home_bytes if replays.SCRATCH.is_dir() else 0
    return {
        "wall": wall,
        "simulated": simulated,
        "peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 + files) / (1 << 20),
        "delivered": len(result.received) / max(1, len(result.sent)),
    }


def measure(nodes: int, minutes: float) -> dict[str, float]:
    """:func:`one_row` in a child process (its own peak memory)."""
    code = f"import json, bench.sim_scale as b; print(json.dumps(b.one_row({nodes}, {minutes})))"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    row: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    args = parser.parse_args(argv)
    if min(args.nodes) < 2 or min(args.minutes) <= 0:
        parser.error("--nodes at least 2, --minutes positive")
    print(environment())
    rows = []
    for nodes in args.nodes:
        for minutes in args.minutes:
            r = measure(nodes, minutes)
            speed = r["simulated"] / r["wall"]
            goal = nodes * speed / GOAL_NODE_SECONDS_PER_SECOND
            rows.append(
                [
                    f"{nodes} nodes, {minutes:g} min (+3 min warm-up and drain)",
                    f"{r['wall']:.1f}",
                    f"{r['peak_mib']:.0f}",
                    f"{speed:.1f}",
                    f"{goal:.4f}",
                    f"{r['delivered']:.1%}",
                ]
            )
    header = ["measurement", "wall s", "peak MiB", "x real time", "x goal", "delivered"]
    print(table(header, rows))


if __name__ == "__main__":
    main()
