"""``p2pmsg sim``: the shipped scenarios, and running one over seeds.

``run`` resolves a scenario by file name or id (``S1``), runs its seeds one
after another (each in a fresh simulated world, see
:mod:`p2pmsg.sim.runner`), prints progress and the summary table, writes
``results.json``, two PNG plots and ``report.html`` into ``--out``, and
returns the exit status: 0 only when every pass figure holds and the control
client failed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

from p2pmsg.errors import P2PMsgError
from p2pmsg.sim import plots, report, runner
from p2pmsg.sim.scenario import (
    MAX_USERS,
    CensorRule,
    Scenario,
    ScenarioError,
    load,
    loads,
    local_pairs,
)
from p2pmsg.sim.world import SimWrapper

Out = Callable[[str], None]


class ReportError(P2PMsgError):
    """The report cannot be written there."""


def shipped() -> list[Scenario]:
    """The scenarios that come with p2pmsg, in id order."""
    folder = resources.files("p2pmsg.sim") / "scenarios"
    found = [
        loads(entry.read_text(encoding="utf-8"), f"scenarios/{entry.name}")
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    ]
    return sorted(found, key=lambda s: (len(s.id), s.id))


def find(name: str) -> Scenario:
    """A scenario by file path, or the id of a shipped one. Raises :class:`ScenarioError`."""
    if Path(name).exists() or name.endswith(".toml"):
        return load(name)
    for scenario in shipped():
        if scenario.id.lower() == name.lower():
            return scenario
    known = ", ".join(s.id for s in shipped())
    raise ScenarioError(f"{name}: no such file, and no shipped scenario has that id ({known})")


def list_scenarios(out: Out) -> int:
    for s in shipped():
        out(f"{s.id:<4} {s.title}  ({s.path})")
    return 0


MIN_FILE_KIB = 1024
"""The smallest file a compressed timeline shrinks ``traffic.file_kib`` to."""


def resize(scenario: Scenario, *, nodes: int | None, duration: float | None) -> Scenario:
    """``scenario`` with ``nodes`` users (those abroad in proportion, pairs
    kept as far as they fit), its timeline compressed or stretched to
    ``duration`` simulated seconds.

    A new timeline scales what the scenario times (when rules start, repeat,
    end, flap and propagate; how often users write and browse) and keeps
    what physics or a protocol fixes (latency, timeouts, residual blocks,
    connection lifetimes, the pass deadlines); the warm-up and the drain are
    cut to at most 2 minutes each when compressed. ``traffic.volume`` shrinks
    with fewer users and a shorter timeline, and never grows; so does
    ``traffic.file_kib``, with the timeline, to no less than
    :data:`MIN_FILE_KIB`. Raises :class:`ScenarioError`.
    """
    if nodes is not None:
        if not 2 <= nodes <= MAX_USERS:
            raise ScenarioError(f"--nodes: between 2 and {MAX_USERS}")
        topo = scenario.topology
        abroad = round(topo.abroad * nodes / topo.users)
        users = nodes + abroad
        topo = dataclasses.replace(topo, users=nodes, isps=min(topo.isps, nodes), abroad=abroad)
        room = local_pairs(topo) if scenario.traffic.local else users * (users - 1) // 2
        if not room:
            raise ScenarioError(f"--nodes: {nodes} users leave no two on one network")
        pairs = min(scenario.traffic.pairs, room)
        volume = _shrunk(scenario.traffic.volume, nodes / scenario.topology.users)
        scenario = dataclasses.replace(
            scenario,
            topology=topo,
            traffic=dataclasses.replace(scenario.traffic, pairs=pairs, volume=volume),
        )
    if duration is None:
        return scenario
    if not 60 <= duration <= 30 * 86400:
        raise ScenarioError("--duration: between 1 minute and 30 days")
    k = duration / scenario.run.duration

    def scaled(rule: CensorRule) -> CensorRule:
        return dataclasses.replace(
            rule, at=rule.at * k, every=rule.every * k, until=rule.until * k,
            flap=rule.flap * k, propagation=rule.propagation * k,
        )  # fmt: skip

    run, traffic = scenario.run, scenario.traffic
    cut = min(k, 1.0)
    return dataclasses.replace(
        scenario,
        run=dataclasses.replace(
            run,
            duration=duration,
            warmup=run.warmup if k >= 1 else min(run.warmup, 120.0),
            drain=run.drain if k >= 1 else min(run.drain, 120.0),
        ),
        traffic=dataclasses.replace(
            traffic,
            every=traffic.every * cut,
            browse_every=traffic.browse_every * cut,
            volume=_shrunk(traffic.volume, k),
            file_kib=min(traffic.file_kib, max(MIN_FILE_KIB, round(traffic.file_kib * k))),
        ),
        censor=tuple(scaled(rule) for rule in scenario.censor),
    )


def _shrunk(volume: int, k: float) -> int:
    return max(1, round(volume * k)) if volume and k < 1 else volume


def run(
    name: str,
    *,
    seeds: int | None,
    nodes: int | None,
    out_dir: Path,
    as_json: bool,
    out: Out,
    progress: Out,
    duration: float | None = None,
    wrappers: Mapping[str, SimWrapper] | None = None,
) -> int:
    scenario = resize(find(name), nodes=nodes, duration=duration)
    count = scenario.run.seeds if seeds is None else seeds
    if not 1 <= count <= 1000:
        raise ScenarioError("--seeds: between 1 and 1000")
    try:  # before hours of simulation, not after
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out_dir}: {exc.strerror or exc}") from exc
    results = []
    for seed in range(1, count + 1):
        hours, users = scenario.run.duration / 3600, scenario.topology.users
        progress(f"{scenario.id}: seed {seed} of {count} ({users} users, {hours:.3g} h simulated)")
        results.append(runner.run(scenario, seed, progress=progress, wrappers=wrappers))
    verdict = report.judge(scenario, results)
    try:
        path = report.write(verdict, out_dir)
        page = plots.write_all(verdict, out_dir)
    except OSError as exc:
        raise ReportError(f"{out_dir}: {exc.strerror or exc}") from exc
    if as_json:
        out(json.dumps(report.to_json(verdict)))
    else:
        out(report.table(verdict))
        out(f"  results: {path}")
        out(f"  report:  {page} (with delivery.png and latency.png)")
    return 0 if verdict.passed else 1
