"""``p2pmsg demo``: Russia, April 2018, on a simulated internet, told with numbers.

The demo runs a small version of scenario S1 (:mod:`p2pmsg.sim`): real
p2pmsg nodes of users in one country, bootstrap nodes and a fixed-server
messenger (the control client) in the cloud abroad, and a censor that drops
the servers, then lists every foreign address its users contact, then whole
cloud ranges, each ISP applying the list late. It prints what the censor
did, what the control client lost, what p2pmsg users still delivered, and
where the report went. One seed, about half a minute on two cores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from p2pmsg.sim import lab, plots, report, runner
from p2pmsg.sim.scenario import Scenario

Out = Callable[[str], None]


def demo_scenario() -> Scenario:
    """S1, smaller and shorter: 16 users on 3 ISPs for 3 simulated hours, the
    censor's calendar halved with the run, so that it learns addresses and then
    widens them to cloud ranges within it (S1 takes 6 hours)."""
    s1 = lab.find("S1")
    scale = 3 * 3600.0 / s1.run.duration
    censor = tuple(
        dataclasses.replace(
            rule, at=rule.at * scale, every=rule.every * scale, propagation=rule.propagation * scale
        )
        for rule in s1.censor
    )
    return dataclasses.replace(
        s1,
        run=dataclasses.replace(s1.run, duration=3 * 3600.0, drain=1800.0, seeds=1),
        topology=dataclasses.replace(s1.topology, users=16),
        traffic=dataclasses.replace(s1.traffic, pairs=8, every=900.0),
        censor=censor,
    )


def _clock(seconds: float) -> str:
    return f"t0+{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}"


def run_demo(out: Out, out_dir: Path, *, progress: Out | None = None) -> bool:
    """Run the demo; True when p2pmsg users delivered everything and the control failed."""
    scenario = demo_scenario()
    topo = scenario.topology
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise lab.ReportError(f"{out_dir}: {exc.strerror or exc}") from exc
    out(f"p2pmsg demo: {scenario.title.lower()} (S1, after Russia vs Telegram, April 2018)")
    out(
        f"  {topo.users} p2pmsg users in {topo.country} on {topo.isps} ISPs; in the cloud abroad: "
        f"{topo.bootstrap} bootstrap nodes, the {scenario.control.servers} servers of a "
        f"fixed-server messenger (the control) and {topo.web} unrelated web sites"
    )
    out(f"  {scenario.run.duration / 3600:g} simulated hours of conversations, censored from t0")
    result = runner.run(scenario, 1, progress=progress)
    verdict = report.judge(scenario, [result])
    f = verdict.figures
    out("")
    out("what the censor did:")
    for when, what in result.censor_events:
        out(f"  {_clock(when)}  {what}")
    out("")
    sent = len(result.control_sent)
    got = sum(1 for k in result.control_sent if k in result.control_received)
    share = f["control"].mean
    out(f"the control messenger (fixed servers) delivered {got} of {sent} messages ({share:.0%})")
    sent = len(result.sent)
    got = sum(1 for k in result.sent if k in result.received)
    out(
        f"p2pmsg users delivered {got} of {sent} ({got / sent:.1%}), "
        f"{f['delivered_within'].mean:.1%} within {scenario.passes.within:g} s; "
        f"latency p50 {f['latency_p50']:.1f} s; {f['duplicates']} shown twice"
    )
    broken = f["collateral_damage"].mean
    out(f"the censor also broke {broken:.0%} of unrelated fetches from cloud web sites")
    report.write(verdict, out_dir)
    page = plots.write_all(verdict, out_dir)
    out("")
    out(f"report: {page}  (the full scenario: p2pmsg sim run S1)")
    return got == sent and verdict.control_failed
