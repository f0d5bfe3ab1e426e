"""Judging seeds of a scenario: figures, confidence intervals, the verdict, files.

A scenario's figures are computed per seed and summarised over seeds as a
mean with a 95% confidence interval (Student's t over the seeds' values; a
single seed gets Wilson's interval over its messages), because one run of a
network simulation says little. The verdict follows SCENARIOS.md: every pass
figure must hold **and** the control client must have failed as stated; a
control that did not fail means the censor model is wrong, reported as an
invalid censor, never as a pass.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pmsg.sim.result import STABLE_AFTER, SeedResult, heals
from p2pmsg.sim.scenario import Pass, Scenario

_T975: dict[int, float] = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042,
}  # fmt: skip
"""Student's t, two-sided 95%, by degrees of freedom (the next lower row is used)."""


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float

    def text(self, percent: bool = True) -> str:
        if percent:
            return f"{self.mean:.1%} [{self.low:.1%}, {self.high:.1%}]"
        return f"{self.mean:.3g} [{self.low:.3g}, {self.high:.3g}]"


def wilson(successes: int, trials: int) -> Estimate:
    """Wilson's 95% score interval for a proportion."""
    if trials == 0:
        return Estimate(math.nan, math.nan, math.nan)
    z, p = 1.96, successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    )
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half))


def over_seeds(values: Sequence[float]) -> Estimate:
    """Mean and Student's t 95% interval of per-seed values (n >= 2)."""
    n, mean = len(values), statistics.fmean(values)
    df = max(k for k in _T975 if k <= n - 1)
    half = _T975[df] * statistics.stdev(values) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half)


def _ratio(parts: Sequence[tuple[int, int]]) -> Estimate:
    """A share over seeds: per-seed (successes, trials)."""
    live = [(s, t) for s, t in parts if t]
    if not live:
        return Estimate(math.nan, math.nan, math.nan)
    if len(live) == 1:
        return wilson(*live[0])
    e = over_seeds([s / t for s, t in live])
    return Estimate(e.mean, max(0.0, e.low), min(1.0, e.high))


#: S12's switches are counted in windows of this many seconds.
SWITCH_WINDOW = 300.0


def stable_switches(
    switches: Sequence[Sequence[float]], events: Sequence[float], start: float, end: float
) -> tuple[int, int, float]:
    """Of per-user switch times (seconds after t0), those on a stable network:
    not within :data:`STABLE_AFTER` of a censor event at ``events``. Returns the
    most one user made in any :data:`SWITCH_WINDOW`, how many there were, and
    the stable seconds between ``start`` and ``end``."""
    unstable = sorted((e, e + STABLE_AFTER) for e in events)

    def stable(t: float) -> bool:
        return not any(a <= t < b for a, b in unstable)

    peak = total = 0
    for times in switches:
        kept = sorted(t for t in times if stable(t))
        total += len(kept)
        for i, t in enumerate(kept):
            peak = max(peak, bisect.bisect_left(kept, t + SWITCH_WINDOW) - i)
    covered, reach = 0.0, start
    for a, b in unstable:
        lo, hi = max(a, reach), min(b, end)
        if hi > lo:
            covered += hi - lo
            reach = hi
    return peak, total, max(0.0, end - start - covered)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


CONTROL_LABELS = {
    "fixed_servers": "control messenger delivered",
    "bootstrap_only": "control newcomers joined",
}


HEAL_DEADLINE = 300.0
"""S10: cross-border messages sent during the cut arrive this soon after the heal."""


def _healed_within(r: SeedResult, deadline: float) -> tuple[int, int]:
    """Cross-border messages sent before the heal: (arrived by ``deadline`` after it, all)."""
    if r.healed is None:
        return 0, 0
    before = [k for k in r.cross_border if r.sent[k] < r.healed]
    return sum(r.received.get(k, math.inf) <= r.healed + deadline for k in before), len(before)


def _joined_within(times: dict[str, float | None], deadline: float) -> tuple[int, int]:
    return sum(1 for t in times.values() if t is not None and t <= deadline), len(times)


@dataclass
class Check:
    name: str
    value: str
    wanted: str
    ok: bool


@dataclass
class Verdict:
    scenario: Scenario
    results: list[SeedResult]
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    control_failed: bool = False

    @property
    def passed(self) -> bool:
        return self.control_failed and all(c.ok for c in self.checks)

    @property
    def outcome(self) -> str:
        if not self.control_failed:
            return "INVALID CENSOR (the control client did not fail)"
        return "PASS" if self.passed else "FAIL"


def judge(scenario: Scenario, results: list[SeedResult]) -> Verdict:
    """The figures of ``results`` and the scenario's verdict on them."""
    within = scenario.passes.within
    on_time: list[tuple[int, int]] = []
    eventual: list[tuple[int, int]] = []
    control: list[tuple[int, int]] = []
    degraded: list[tuple[int, int]] = []
    latencies: list[float] = []
    for r in results:
        got = {k: r.received[k] - t for k, t in r.sent.items() if k in r.received}
        latencies += got.values()
        # cross-border: in the end; sent while degraded: by their own deadline
        inside = [k for k in r.sent if k not in r.cross_border and k not in r.degraded]
        on_time.append((sum(1 for k in inside if got.get(k, math.inf) <= within), len(inside)))
        slow = scenario.passes.degraded_within
        degraded.append((sum(got.get(k, math.inf) <= slow for k in r.degraded), len(r.degraded)))
        eventual.append((len(got), len(r.sent)))
        if scenario.control.kind == "bootstrap_only":
            control.append(_joined_within(r.control_joined, scenario.passes.join_within))
        else:
            delivered = sum(
                1
                for k, t in r.control_sent.items()
                if r.control_received.get(k, math.inf) - t <= within
            )
            control.append((delivered, len(r.control_sent)))
    late = [_joined_within(r.late_joined, scenario.passes.join_within) for r in results]
    joined = [t for r in results for t in r.joined.values()]
    users = scenario.topology.users + scenario.topology.abroad  # "users" holds those abroad too
    browse = [(r.browse_broken, r.browse_ok + r.browse_broken) for r in results]
    failures: dict[str, int] = {}
    for r in results:
        for k, n in r.failure_classes.items():
            failures[k] = failures.get(k, 0) + n
    delivered_payload = sum(r.payload_bytes for r in results)
    v = Verdict(scenario, results)
    v.figures = {
        "seeds": [r.seed for r in results],
        "messages": sum(len(r.sent) for r in results),
        "delivered_within": _ratio(on_time),
        "delivered_eventually": _ratio(eventual),
        "delivered_degraded": _ratio(degraded),
        "latency_p50": _percentile(latencies, 0.5),
        "latency_p99": _percentile(latencies, 0.99),
        "duplicates": sum(r.duplicates for r in results),
        "control": _ratio(control),
        "newcomers_joined_within": _ratio(late),
        "joined": sum(len(r.joined) for r in results) / (users * len(results)),
        "time_to_bootstrap_p50": _percentile(joined, 0.5),
        "wire_bytes_per_payload_byte": (
            sum(r.wire_bytes for r in results) / delivered_payload
            if delivered_payload
            else math.nan
        ),
        "peak_rss_mib": max(r.peak_rss_kib for r in results) / 1024,
        "home_mib": max(r.home_bytes for r in results) / (1 << 20),
        "failure_classes": failures,
        "collateral_damage": _ratio(browse),
        "censor_events": results[0].censor_events,
        "dns_lookups": sum(r.dns_lookups for r in results),
        "outbox_refused": sum(r.outbox_refused for r in results),
        "burst": (
            sum(r.burst_refused for r in results),
            sum(len(r.burst) for r in results),
            sum(k not in r.received for r in results for k in r.burst),
        ),
        "clock_errors": (
            sum(sum(r.clock_errors) for r in results),
            sum(len(r.clock_errors) for r in results),
            sum(r.clock_false_alarms for r in results),
        ),
        "cross_border_after_heal": _ratio([_healed_within(r, HEAL_DEADLINE) for r in results]),
        "lookups_after_heal": _ratio([(sum(r.heal_lookups), len(r.heal_lookups)) for r in results]),
        "lan_found_within": _ratio(
            [
                (sum(t <= scenario.passes.lan_discovery for t in r.lan_found), len(r.lan_found))
                for r in results
            ]
        ),
        "probes": sum(r.probes for r in results),
        "probed_nodes_answering": sum(r.probed_nodes_answering for r in results),
        "restarts": sum(r.restarts for r in results),
        "ip_changes": sum(r.ip_changes for r in results),
        "path_p50": _percentile([t for r in results for t in r.path_times], 0.5),
        "path_p99": _percentile([t for r in results for t in r.path_times], 0.99),
        "dials": sum(len(r.path_times) for r in results),
        "switches": [
            stable_switches(
                r.switches,
                [t for t, _ in r.censor_events],
                -scenario.run.warmup,
                scenario.run.duration,
            )
            for r in results
        ],
        "node_probes": sum(r.node_probes for r in results),
        "node_probes_unlike_noise": sum(r.node_probes_unlike_noise for r in results),
        "restart_replays": sum(r.restart_replays for r in results),
        "restart_replays_answered": sum(r.restart_replays_answered for r in results),
        "tampered_twice": sum(r.tampered_twice for r in results),
        "tampered_replays": sum(r.tampered_replays for r in results),
        "layers_accepted_twice": sum(r.layers_accepted_twice for r in results),
        "volume": dict(sum((Counter(r.volume) for r in results), Counter())),
        "hunt": [r.hunt for r in results if r.hunt],
        "residual_retries": [n for r in results for n in r.residual_retries],
        "stale_lists": (
            sum(r.stale_lists for r in results),
            sum(r.stale_lists_refused for r in results),
        ),
        "lists_current": _ratio([(sum(r.lists_current), len(r.lists_current)) for r in results]),
        "victim_sybils": [t for r in results for t in r.victim_sybils],
        "sybil_pings_answered": sum(r.sybil_pings_answered for r in results),
        "victim_lookups": _ratio([(sum(r.victim_lookups), len(r.victim_lookups)) for r in results]),
        "user_lookups": _ratio([(sum(r.user_lookups), len(r.user_lookups)) for r in results]),
        "key_fetches": _ratio([(sum(r.key_fetches), len(r.key_fetches)) for r in results]),
        "forged": (
            sum(r.forged_accepted for r in results),
            sum(r.forgeries_served for r in results),
        ),
        "flood_tries": sum((Counter(r.flood_tries) for r in results), Counter()),
        "flood_nodes": [t for r in results for t in r.flood_nodes],
        "flood_refused": sum((Counter(r.flood_refused) for r in results), Counter()),
        "flooded_p99": _percentile([t for r in results for t in r.latencies(r.flooded)], 0.99),
        "baseline_p99": _percentile([t for r in results for t in r.baseline_latencies], 0.99),
        "mule": (
            sum(_carried_in_time(r) for r in results),
            sum(len(r.carried) for r in results),
            sum(r.mule_plaintext for r in results),
        ),
        "file": [
            (r.file[2], r.received[r.file[0]] - r.file[1] if r.file[0] in r.received else None)
            for r in results
            if r.file is not None
        ],
    }
    f, p = v.figures, scenario.passes
    in_time, in_end = f["delivered_within"], f["delivered_eventually"]
    v.checks = [
        Check(f"{'domestic pairs ' * bool(scenario.topology.abroad)}delivered within {within:g} s",
              in_time.text(), f">= {p.delivery:.1%}",
              in_time.mean >= p.delivery),
        Check("delivered in the end", in_end.text(), f">= {p.eventual:.1%}",
              in_end.mean >= p.eventual),
        Check("duplicates shown", str(f["duplicates"]), "0", f["duplicates"] == 0),
    ]  # fmt: skip
    v.checks += _scenario_checks(scenario, f) + _insider_checks(scenario, f)
    v.checks += _file_checks(scenario, f) + _mule_checks(scenario, f)
    v.checks += [Check(what, "not measured", "measured", False) for what in p.unmeasured]
    v.control_failed = p.control_min <= f["control"].mean <= p.control_max
    return v


MULE_DEADLINE = 10.0
"""Seconds after the mule's arrival that what it carries must be delivered (S11)."""


def _carried_in_time(r: SeedResult) -> int:
    """The mule's messages delivered within :data:`MULE_DEADLINE` of its arrival."""
    if r.mule_arrived is None:
        return 0
    due = r.mule_arrived + MULE_DEADLINE
    return sum(r.received.get(k, math.inf) <= due for k in r.carried)


def _mule_checks(scenario: Scenario, f: dict[str, Any]) -> list[Check]:
    """With a mule: what it carried arrived within 10 s of it, and none was readable there."""
    if not scenario.topology.mule:
        return []
    in_time, carried, plaintext = f["mule"]
    return [
        Check(f"the mule's messages delivered within {MULE_DEADLINE:g} s of its arrival",
              f"{in_time} of {carried}", f">= {scenario.passes.delivery:.1%}",
              carried > 0 and in_time >= scenario.passes.delivery * carried),
        Check("plaintext of the carried messages at the mule", str(plaintext), "0",
              plaintext == 0),
    ]  # fmt: skip


def _file_checks(scenario: Scenario, f: dict[str, Any]) -> list[Check]:
    """With ``traffic.file_kib``: the file arrived whole in every seed, and
    with ``file_rate`` fast enough for the policed rate."""
    if not scenario.traffic.file_kib:
        return []
    seeds, times = len(f["seeds"]), [t for _, t in f["file"] if t is not None]
    slowest = max(times) if len(times) == seeds else math.inf
    checks = [
        Check(f"a {scenario.traffic.file_kib:,} KiB file arrives whole",
              f"{len(times)} of {seeds} seeds" + (f", slowest {max(times):.0f} s" if times else ""),
              "every seed", len(times) == seeds)
    ]  # fmt: skip
    police = next((rule for rule in scenario.censor if rule.action == "police"), None)
    if scenario.passes.file_rate and police is not None:
        kbps = scenario.traffic.file_kib * 1024 * 8 / 1000 / slowest
        share = scenario.passes.file_rate
        checks.append(Check(f"the file's rate in its slowest seed, policed at {police.kbps:g} kbps",
                            f"{kbps:.0f} kbps ({kbps / police.kbps:.0%})", f">= {share:.0%}",
                            kbps >= share * police.kbps))  # fmt: skip
    return checks


def _scenario_checks(scenario: Scenario, f: dict[str, Any]) -> list[Check]:
    """The checks only some scenarios have, by what their topology and censor do."""
    p = scenario.passes
    checks: list[Check] = []
    if scenario.topology.ip_changes:  # their messages are in the checks of all messages
        moves = f["ip_changes"]
        checks.append(Check("moves of users to a new address", str(moves), ">= 1", moves >= 1))
    if scenario.topology.late_users:
        newcomers = f["newcomers_joined_within"]
        checks.append(Check(f"newcomers joined within {p.join_within:g} s", newcomers.text(),
                          f">= {p.joined:.1%}", newcomers.mean >= p.joined))  # fmt: skip
    if any(heals(rule) for rule in scenario.censor):
        crossed, found = f["cross_border_after_heal"], f["lookups_after_heal"]
        checks.append(Check("cross-border delivered within 5 min of the heal", crossed.text(),
                          f">= {p.delivery:.1%}", crossed.mean >= p.delivery))  # fmt: skip
        checks.append(Check("lookups 10 min after the heal", found.text(),
                          f">= {p.delivery:.1%}", found.mean >= p.delivery))  # fmt: skip
    delay = next((rule for rule in scenario.censor if rule.action == "delay"), None)
    if delay is not None:  # one figure for all delay rules, named after the first
        hit = f["delivered_degraded"]
        worse = f"{delay.loss:.0%} more lost" + (f", +{delay.latency:g} s" if delay.latency else "")
        checks.append(Check(f"sent with {worse}: within {p.degraded_within:g} s", hit.text(),
                            f">= {p.degraded:.1%}", hit.mean >= p.degraded))  # fmt: skip
    if scenario.traffic.burst:
        refused, taken, lost = f["burst"]
        # each seed's outbox holds `outbox` for that contact: the rest must be refused
        overflow = len(f["seeds"]) * max(0, scenario.traffic.burst - scenario.traffic.outbox)
        checks.append(Check("outbox overflow reported, never silent",
                          f"{refused} refused, {taken} taken, {lost} of them lost",
                          f">= {overflow} refused, 0 lost",
                          refused >= overflow and not lost))  # fmt: skip
    if scenario.topology.bad_clocks:
        told, skewed, false = f["clock_errors"]
        checks.append(Check("a clear error beyond 24 h of skew",
                          f"{told} of {skewed}, {false} false alarms",
                          "all, 0 false", told == skewed and not false))  # fmt: skip
    checks += _path_checks(p, f)
    if scenario.topology.lan:
        found = f["lan_found_within"]
        checks.append(Check(f"LAN neighbours found within {p.lan_discovery:g} s", found.text(),
                          ">= 100.0%", found.mean >= 1.0))  # fmt: skip
    if any(rule.action == "inject_dns" for rule in scenario.censor):
        lookups = f["dns_lookups"]
        checks.append(Check("cleartext DNS lookups by p2pmsg nodes", str(lookups), "0",
                          lookups == 0))  # fmt: skip
    if any(rule.action == "probe" for rule in scenario.censor):
        answering = f["probed_nodes_answering"]
        checks.append(Check(f"p2pmsg nodes answering probes (of {f['probes']} probes)",
                          str(answering), "0", answering == 0))  # fmt: skip
        probed, unlike = f["node_probes"], f["node_probes_unlike_noise"]
        checks.append(Check(f"reactions to probes unlike noise's (of {probed} at p2pmsg nodes)",
                          str(unlike) if probed else "none probed", "0",
                          probed > 0 and unlike == 0))  # fmt: skip
        if scenario.topology.restarts:
            replays, answered = f["restart_replays"], f["restart_replays_answered"]
            checks.append(Check(f"replays answered after a restart (of {replays} replayed)",
                              str(answered) if replays else "none replayed", "0",
                              replays > 0 and answered == 0))  # fmt: skip
    return checks


def _path_checks(p: Pass, f: dict[str, Any]) -> list[Check]:
    """S12's: how soon users' dials find a working path, how often they switch."""
    checks: list[Check] = []
    if p.path_median:
        checks.append(Check(f"working path: median of {f['dials']} dials",
                          f"{f['path_p50']:.1f} s", f"<= {p.path_median:g} s",
                          f["path_p50"] <= p.path_median))  # fmt: skip
    if p.path_p99:
        checks.append(Check("working path: p99 of the dials", f"{f['path_p99']:.1f} s",
                          f"<= {p.path_p99:g} s", f["path_p99"] <= p.path_p99))  # fmt: skip
    if p.switches:
        peak, window = max(s[0] for s in f["switches"]), SWITCH_WINDOW / 60
        made, stable = sum(s[1] for s in f["switches"]), sum(s[2] for s in f["switches"])
        checks.append(Check(f"transport switches by a user in {window:g} min, stable network",
                          f"{peak} ({made} in {stable / 60:.0f} stable min)" if stable
                          else "no stable period", f"<= {p.switches}",
                          stable > 0 and peak <= p.switches))  # fmt: skip
    return checks


def _insider_checks(scenario: Scenario, f: dict[str, Any]) -> list[Check]:
    """The checks of S14's Sybils, S17's tampering relays and S20's stale bootstrap lists."""
    checks: list[Check] = []
    for rule in scenario.censor:
        if rule.action == "sybils" and rule.target == "victim":
            counts, pinged = f["victim_sybils"], f["sybil_pings_answered"]
            most = max((total for total, _ in counts), default=0)
            per = max((one for _, one in counts), default=0)
            checks.append(Check(f"Sybils in the victim's table ({rule.sybils:g} per user "
                                f"from {rule.prefixes} networks)",
                                f"{most}, at most {per} from one network",
                                f"<= {3 * rule.prefixes}, <= 3 from one",
                                pinged > 0 and most <= 3 * rule.prefixes and per <= 3))  # fmt: skip
            found = f["victim_lookups"]
            checks.append(Check("the victim's lookups of users under the eclipse", found.text(),
                                ">= 99.0%", found.mean >= 0.99))  # fmt: skip
        if rule.action == "sybils" and rule.target == "keys":
            found, (accepted, served) = f["key_fetches"], f["forged"]
            checks.append(Check(f"fetches of the victim's records, newest within 10 s "
                                f"({rule.sybils:g} liars at its keys)", found.text(),
                                ">= 99.0%", found.mean >= 0.99))  # fmt: skip
            checks.append(Check(f"forged records accepted (of {served} served)", str(accepted),
                                "0", served > 0 and accepted == 0))  # fmt: skip
        if rule.action == "sybils" and rule.target == "random":
            found, share = f["user_lookups"], rule.sybils / (1 + rule.sybils)
            checks.append(Check(f"lookups with {share:.0%} of the DHT's nodes Sybils",
                                found.text(), ">= 95.0%", found.mean >= 0.95))  # fmt: skip
    if any(rule.action == "stale_lists" for rule in scenario.censor):
        served, refused = f["stale_lists"]
        checks.append(Check("expired, rolled-back or untrusted bootstrap lists refused",
                            f"{refused} of {served}", "all",
                            served > 0 and refused == served))  # fmt: skip
        current = f["lists_current"]
        checks.append(Check("users holding the publisher's newest list", current.text(),
                            ">= 100.0%", current.mean >= 1.0))  # fmt: skip
    if any(rule.action == "flood" for rule in scenario.censor):
        checks += _flood_checks(f)
    if scenario.topology.tampering:
        twice, again = f["tampered_twice"], f["tampered_replays"]
        accepted = f["layers_accepted_twice"]
        checks.append(Check(f"onion layers accepted twice ({twice} forwarded twice, "
                            f"{again} sent again after a restart)",
                            str(accepted), "0",
                            twice > 0 and accepted == 0
                            and (again > 0 or not scenario.topology.restarts)))  # fmt: skip
    if scenario.traffic.volume:
        checks.append(_volume_check(f["volume"]))
    if days := scenario.traffic.bridge_days:
        checks += _hunt_checks(days, scenario.passes.open_entries, f["hunt"])
    if allowed := scenario.passes.residual_tries:
        residual = max((rule.residual for rule in scenario.censor), default=0.0)
        retries = f["residual_retries"]
        most = max(retries, default=0)
        checks.append(Check(f"users' tries of one 3-tuple in a residual block of {residual:g} s",
                            f"{most} at most ({len(retries)} blocked)", f"<= {allowed}",
                            most <= allowed))  # fmt: skip
    return checks


def _volume_check(v: dict[str, int]) -> Check:
    """S17 at scale: the replay model's messages (:mod:`p2pmsg.sim.replays`)."""
    bad = [v.get(k, 0) for k in ("duplicated", "accepted_twice", "over_cap", "misdelivered")]
    return Check(
        f"over {v.get('messages', 0):,} messages of the replay model ({v.get('injected', 0):,}"
        " copies injected): deliveries duplicated, layers accepted twice, caches past"
        " their cap, deliveries to the wrong node",
        " / ".join(map(str, bad)),
        "0 / 0 / 0 / 0",
        v.get("injected", 0) > 0 and not any(bad),
    )


def _hunt_checks(days: int, wanted: float, seeds: list[dict[str, Any]]) -> list[Check]:
    """S13 over ``days`` days (:mod:`p2pmsg.sim.hunt`): the honest users that
    still have a working bridge, and how soon the censor knew half of them."""
    users = sum(s["users"] for s in seeds)
    kept = sum(s["open_at_end"] for s in seeds) / users if users else 0.0
    control = sum(s["control_open_at_end"] for s in seeds) / users if users else 0.0
    half = ", ".join("never" if s["days_to_half"] is None else f"{s['days_to_half']:.1f}"
                     for s in seeds)  # fmt: skip
    total = {k: sum(s[k] for s in seeds) for k in ("bridges", "found", "blocked")}
    return [
        Check(f"honest users with a working bridge after {days} days of bridge hunting",
              f"{kept:.1%} ({control:.1%} had they not asked for more)", f">= {wanted:.0%}",
              bool(seeds) and kept >= wanted),
        Check("the censor's days to find half the bridges, per seed",
              f"{half or 'none'} ({total['found']} of {total['bridges']} found, "
              f"{total['blocked']} blocked)", "reported", bool(seeds)),
    ]  # fmt: skip


def _flood_checks(f: dict[str, Any]) -> list[Check]:
    """S16: the flood reached the nodes, their inbound memory stayed under its
    cap, and honest latency stayed within twice the same seeds' without it."""
    tries, nodes = f["flood_tries"], f["flood_nodes"]
    peak = max((p for p, _ in nodes), default=0)
    cap = min((c for _, c in nodes), default=0)
    refused = sum(f["flood_refused"].values())
    p99, base = f["flooded_p99"], f["baseline_p99"]
    return [
        Check(f"inbound memory under the flood ({sum(tries.values())} tries, "
              f"{refused} links refused)", f"{peak / 2**20:.1f} MiB", f"<= {cap / 2**20:g} MiB",
              refused > 0 and peak <= cap),
        Check("latency p99 of the flooded users' messages", f"{p99:.2f} s",
              f"<= 2 x {base:.2f} s (without it)", p99 <= 2 * base),
    ]  # fmt: skip


def table(v: Verdict) -> str:
    """The summary the CLI prints."""
    f = v.figures
    rows = [(c.name, c.value, c.wanted, "ok" if c.ok else "FAILED") for c in v.checks]
    rows.append(
        (
            _control_label(v.scenario),
            f["control"].text(),
            _control_wanted(v.scenario),
            "failed as it must" if v.control_failed else "DID NOT FAIL",
        )
    )
    classes = ", ".join(f"{k} {n}" for k, n in sorted(f["failure_classes"].items()))
    joined = f"{f['joined']:.1%} (time to bootstrap p50 {f['time_to_bootstrap_p50']:.1f} s)"
    info = [
        ("messages", str(f["messages"])),
        ("latency p50 / p99", f"{f['latency_p50']:.2f} s / {f['latency_p99']:.2f} s"),
        ("users joined", joined),
        ("sends refused (outbox full)", str(f["outbox_refused"])),
        ("wire bytes per payload byte", f"{f['wire_bytes_per_payload_byte']:.0f}"),
        ("collateral damage (unrelated fetches broken)", f["collateral_damage"].text()),
        ("failure classes (OONI)", classes or "none"),
        ("peak memory", f"{f['peak_rss_mib']:.0f} MiB, and {f['home_mib']:.0f} MiB of node files"),
    ]
    width = max(len(r[0]) for r in [*rows, *info])
    lines = [f"{v.scenario.id}  {v.scenario.title}   seeds {', '.join(map(str, f['seeds']))}", ""]
    lines += [f"  {n:<{width}}  {val:<28} {want:<10} {ok}" for n, val, want, ok in rows]
    lines += [""] + [f"  {n:<{width}}  {val}" for n, val in info]
    lines += ["", f"  verdict: {v.outcome}"]
    return "\n".join(lines)


def _control_label(scenario: Scenario) -> str:
    within = (
        scenario.passes.join_within
        if scenario.control.kind == "bootstrap_only"
        else (scenario.passes.within)
    )
    return f"{CONTROL_LABELS[scenario.control.kind]} within {within:g} s"


def _control_wanted(scenario: Scenario) -> str:
    low, high = scenario.passes.control_min, scenario.passes.control_max
    return f"{low:.1%} to {high:.1%}" if low else f"<= {high:.1%}"


def to_json(v: Verdict) -> dict[str, Any]:
    def plain(x: Any) -> Any:
        if isinstance(x, Estimate):
            return {"mean": x.mean, "low95": x.low, "high95": x.high}
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x

    return {
        "scenario": {"id": v.scenario.id, "title": v.scenario.title, "file": v.scenario.path},
        "outcome": v.outcome,
        "passed": v.passed,
        "control_failed": v.control_failed,
        "checks": [c.__dict__ for c in v.checks],
        "figures": {k: plain(x) for k, x in v.figures.items()},
        "seeds": [
            {
                "seed": r.seed,
                "sent": len(r.sent),
                "delivered": sum(1 for k in r.sent if k in r.received),
                "duplicates": r.duplicates,
                "control_sent": len(r.control_sent),
                "control_delivered": sum(1 for k in r.control_sent if k in r.control_received),
                "control_duplicates": r.control_duplicates,
                "latencies": sorted(
                    r.received[k] - t for k, t in r.sent.items() if k in r.received
                ),
                "censor_events": r.censor_events,
            }
            for r in v.results
        ],
    }


def write(v: Verdict, out: Path) -> Path:
    """Write ``results.json`` into ``out``; its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(to_json(v), indent=2) + "\n", encoding="utf-8")
    return path
