"""The censorship lab: blocklists, the control client, seeded runs, the CLI and the demo."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import pytest
import trio

from cli import main
from p2pmsg import demo
from p2pmsg.admission import Admission
from p2pmsg.dht import records
from p2pmsg.onion.replay import ReplayTags
from p2pmsg.sim import control, lab, report, runner
from p2pmsg.sim.blocklist import Blocklist, Learner, widen
from p2pmsg.sim.censor import Censor
from p2pmsg.sim.net import SimNetwork
from p2pmsg.sim.result import SeedResult
from p2pmsg.sim.scenario import Scenario, ScenarioError, loads

TINY = """
id = "T1"
title = "six users, servers dropped at once, bootstrap nodes after 20 minutes"
[run]
duration = "1h"
warmup = "5m"
drain = "10m"
seeds = 1
[topology]
users = 6
isps = 3
bootstrap = 2
web = 2
[traffic]
pairs = 4
every = "10m"
[control]
servers = 1
[[censor]]
action = "drop"
target = "servers"
[[censor]]
at = "20m"
action = "drop"
target = "bootstrap"
[pass]
delivery = 0.0
eventual = 0.0
"""


def _net() -> SimNetwork:
    net = SimNetwork()
    net.add_host("a", ip="95.0.0.1", country="RU", isp="isp0")
    net.add_host("b", ip="95.1.0.1", country="RU", isp="isp1")
    net.add_host("abroad", ip="80.0.0.1", country="DE", isp="de")
    net.add_host("cloud1", ip="52.0.0.1", country="cloud", isp="cloud")
    net.add_host("cloud2", ip="52.0.9.9", country="cloud", isp="cloud")
    return net


def test_each_isp_applies_a_listing_at_its_own_time_and_only_at_home() -> None:
    net = _net()
    blocklist = Blocklist(net.host, "RU", ("isp0", "isp1"), rng=random.Random(7))
    assert blocklist.add(["52.0.0.1"], 100.0, propagation=3600.0, reason="test") == 1
    assert blocklist.add(["52.0.0.1"], 200.0, propagation=0.0, reason="again") == 0
    times = blocklist.entries[0].effective
    assert 100.0 <= min(times.values()) < max(times.values()) <= 3700.0
    for isp, client in (("isp0", "a"), ("isp1", "b")):
        assert not blocklist.blocks(net.host(client), net.host("cloud1"), times[isp] - 1)
        assert blocklist.blocks(net.host(client), net.host("cloud1"), times[isp])
    assert not blocklist.blocks(net.host("abroad"), net.host("cloud1"), 10_000.0)
    assert not blocklist.blocks(net.host("a"), net.host("cloud2"), 10_000.0)
    blocklist.add(widen(["52.0.0.1"], 16), 0.0, propagation=0.0, reason="level 2")
    assert blocklist.blocks(net.host("a"), net.host("cloud2"), 1.0)  # collateral


async def test_the_learner_names_addresses_that_enough_domestic_clients_reach(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = _net()
    learner = Learner(net.host, "RU")
    net.policy = Censor([learner])
    await net.listen("cloud1", 443)
    await net.listen("cloud2", 443)
    for client in ("a", "b", "abroad"):
        await net.connect(client, "cloud1", 443)
    await net.connect("a", "cloud2", 443)
    assert learner.popular(2) == ["52.0.0.1"]  # "abroad" does not count
    assert learner.popular(1) == ["52.0.0.1", "52.0.9.9"]


async def test_the_control_messenger_works_open_and_dies_when_its_servers_are_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = _net()
    blocklist = Blocklist(net.host, "RU", ("isp0", "isp1"))
    net.policy = Censor([blocklist])
    backend = control.Backend()
    a, b = control.Client(net, "a", ["cloud1"]), control.Client(net, "b", ["cloud1"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.serve, net, "cloud1", backend)
        nursery.start_soon(a.run)
        nursery.start_soon(b.run)
        a.send("b", "m1")
        await trio.sleep(60)
        assert list(b.received) == ["m1"]
        blocklist.add(["52.0.0.1"], trio.current_time(), propagation=0.0, reason="test")
        a.send("b", "m2")
        await trio.sleep(3600)
        assert list(b.received) == ["m1"]
        assert a.failures > 0
        nursery.cancel_scope.cancel()


def _seeded(seed: int) -> SeedResult:
    return runner.run(loads(TINY, "tiny.toml"), seed)


def test_one_seed_reproduces_a_run_and_another_seed_does_not() -> None:
    first, again, other = _seeded(1), _seeded(1), _seeded(2)
    assert first.sent and first.received
    assert (first.sent, first.received, first.wire_bytes) == (
        again.sent,
        again.received,
        again.wire_bytes,
    )
    assert (first.sent, first.received) != (other.sent, other.received)
    verdict = report.judge(loads(TINY, "tiny.toml"), [first])
    assert verdict.control_failed  # its only server was dropped before the first message
    assert verdict.figures["duplicates"] == 0
    assert [e for _, e in first.censor_events] == [
        "drop: 1 address (servers)",
        "drop: 2 addresses (bootstrap)",
    ]


def test_sim_run_prints_json_writes_results_and_exits_by_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    code = main(["sim", "run", str(scenario), "--out", str(tmp_path / "out"), "--json"])
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    sent = printed["figures"]["messages"]
    assert re.search(rf"seed 1: hour \d, \d+/{sent} delivered\n$", captured.err), captured.err
    assert printed == json.loads((tmp_path / "out" / "results.json").read_text())
    assert code == (0 if printed["passed"] else 1)
    assert printed["control_failed"]
    assert printed["scenario"]["id"] == "T1"
    assert (tmp_path / "out" / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_a_file_sent_under_a_policed_rate_is_judged_by_its_rate() -> None:
    policed = TINY.replace('every = "10m"', 'every = "10m"\nfile_kib = 96').replace(
        "[pass]", '[[censor]]\naction = "police"\nkbps = 130\n[pass]\nfile_rate = 0.8'
    )
    scenario = loads(policed, "file.toml")
    result = runner.run(scenario, 1)
    assert result.file is not None
    file_id, sent, size = result.file
    assert size == 96 * 1024
    took = result.received[file_id] - sent
    verdict = report.judge(scenario, [result])
    whole, rate = (c for c in verdict.checks if "file" in c.name)
    assert whole.ok
    assert rate.value.startswith(f"{size * 8 / 1000 / took:.0f} kbps")
    assert rate.ok == (size * 8 / 1000 / took >= 0.8 * 130)


def test_sim_run_on_a_bad_file_says_where_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text(TINY.replace("users = 6", "users = 'six'"))
    assert main(["sim", "run", str(scenario)]) == 1
    err = capsys.readouterr().err
    assert f"{scenario}:10: topology.users: expected int" in err
    assert "Traceback" not in err


def test_the_demo_tells_the_russia_2018_story_with_numbers(tmp_path: Path) -> None:
    lines: list[str] = []
    ok = demo.run_demo(lines.append, tmp_path)
    text = "\n".join(lines)
    assert ok, text
    assert "drop: 3 addresses (servers)" in text
    # The escalation of S1 within the demo's hours: learned addresses, then prefixes.
    assert re.search(r"t0\+\d:\d\d  blocklist_add: \d+ address(es)? \(learned\)", text), text
    assert re.search(r"t0\+\d:\d\d  blocklist_add: \d+ prefix(es)? \(learned\)", text), text
    assert "the control messenger (fixed servers) delivered 0 of" in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["control_failed"]
    assert f"report: {tmp_path / 'report.html'}" in text
    page = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert "verdict:" in page
    assert (tmp_path / "delivery.png").read_bytes()[:4] == b"\x89PNG"


def test_newcomers_join_through_a_friends_invite_and_the_list_alone_fails() -> None:
    """S2's mechanics: the bootstrap list is dropped at t0; newcomers with a
    friend's invite join, the control newcomers with the list alone do not."""
    text = (
        TINY.replace("users = 6", "users = 6\nlate_users = 2")
        .replace("[control]\nservers = 1", '[control]\nkind = "bootstrap_only"')
        .replace('at = "20m"\n', "")
    )
    scenario = loads(text, "tiny-s2.toml")
    result = runner.run(scenario, 1)
    assert len(result.late_joined) == len(result.control_joined) == 2
    assert all(t is not None and t <= 60 for t in result.late_joined.values())
    assert all(t is None for t in result.control_joined.values())
    verdict = report.judge(scenario, [result])
    assert verdict.control_failed
    assert verdict.figures["newcomers_joined_within"].mean == 1.0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--nodes", "1"], "--nodes: between 2 and"),
        (["--nodes", "10001"], "--nodes: between 2 and"),
        (["--seeds", "0"], "--seeds: between 1 and 1000"),
        (["--duration", "10s"], "--duration: between 1 minute and 30 days"),
    ],
)
def test_sim_run_refuses_impossible_sizes_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    assert main(["sim", "run", "S1", "--out", str(tmp_path), *args]) == 1
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


def test_a_size_that_leaves_no_pair_on_one_lan_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", "run", "S11", "--out", str(tmp_path), "--nodes", "3"]) == 1
    err = capsys.readouterr().err
    assert "--nodes: 3 users leave no two on one network" in err
    assert "Traceback" not in err


def test_a_report_that_cannot_be_written_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["sim", "run", str(scenario), "--out", str(blocker / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("p2pmsg: The report cannot be written there.")  # before simulating
    assert "Traceback" not in err


def test_the_demo_refuses_an_unwritable_report_folder_before_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["demo", "--out", str(blocker / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("p2pmsg: The report cannot be written there.")
    assert "Traceback" not in err


def test_the_control_clients_outbox_is_bounded_and_counts_what_it_drops() -> None:
    client = control.Client(_net(), "a", ["cloud1"], max_queue=3)
    for i in range(5):
        client.send("b", f"m{i}")
    assert [m for _, m in client.outbox] == ["m2", "m3", "m4"]
    assert client.dropped == 2


def test_a_transport_the_runner_was_not_given_is_a_clear_error() -> None:
    scenario = loads(TINY.replace("bootstrap = 2", "bootstrap = 2\ntransports = ['ws']"), "t.toml")
    with pytest.raises(ScenarioError, match=r"t.toml: topology.transports: .* only sim, not ws"):
        runner.run(scenario, 1)


def test_restarted_nodes_lose_and_repeat_nothing() -> None:
    """``topology.restarts``: each user's node stops and starts again from its
    home; what was queued or in flight then still arrives, once."""
    scenario = loads(TINY.replace("isps = 3", "isps = 3\nrestarts = 2"), "tiny-restarts.toml")
    result = runner.run(scenario, 1)
    assert result.restarts == 2 * 6
    assert result.sent
    assert set(result.received) == set(result.sent)
    assert result.duplicates == 0


def test_nodes_that_move_to_a_new_address_lose_and_repeat_nothing() -> None:
    """``topology.ip_changes`` (S18): each user's node comes back on a new
    host, so what its peers knew of its address is stale; every message
    still arrives, once."""
    scenario = loads(TINY.replace("isps = 3", "isps = 3\nip_changes = 2"), "tiny-moves.toml")
    result = runner.run(scenario, 1)
    assert result.ip_changes == result.restarts == 2 * 6
    assert result.sent
    assert set(result.received) == set(result.sent)
    assert result.duplicates == 0


def test_only_nodes_on_the_sim_transport_alone_move() -> None:
    text = TINY.replace("isps = 3", "isps = 3\nip_changes = 1\ntransports = ['sim', 'ws']")
    with pytest.raises(ScenarioError, match=r"m.toml:\d+: topology.ip_changes: only with"):
        loads(text, "m.toml")


TAMPERING = 'isps = 3\nrestarts = 2\ntampering = 0.5\nduplicate = 0.3\nreorder = "2s"'


def test_tampering_relays_get_no_layer_accepted_twice() -> None:
    """S17: relays that hold back, duplicate and resend after restarts."""
    scenario = loads(TINY.replace("isps = 3", TAMPERING), "tiny-tampering.toml")
    result = runner.run(scenario, 1)
    assert result.tampered_twice and result.tampered_replays
    assert result.layers_accepted_twice == 0
    assert set(result.received) == set(result.sent)
    assert result.duplicates == 0


def test_a_layer_accepted_twice_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same run with destinations that keep no replay tags (as before they did)."""
    monkeypatch.setattr(ReplayTags, "seen_anywhere_or_add", lambda self, epoch, tag: False)
    scenario = loads(TINY.replace("isps = 3", TAMPERING), "tiny-tampering.toml")
    assert runner.run(scenario, 1).layers_accepted_twice > 0


SYBILS = """
[[censor]]
action = "sybils"
target = "victim"
sybils = 10.0
prefixes = 2

[[censor]]
action = "sybils"
target = "random"
sybils = 0.5
"""


def test_sybils_near_a_victim_fill_three_slots_per_network_and_lookups_hold() -> None:
    """S14 in small: 60 Sybils from 2 networks around u0000, 3 more at random ids."""
    scenario = loads(TINY.replace("[pass]", SYBILS + "[pass]"), "tiny-sybils.toml")
    result = runner.run(scenario, 1)
    (entries, most), *_ = result.victim_sybils
    assert result.sybil_pings_answered > 0
    assert 0 < entries <= 3 * 2 and most <= 3
    assert all(result.victim_lookups) and len(result.victim_lookups) == 5
    assert all(result.user_lookups)


def test_without_the_per_network_limit_the_victims_table_fills_with_sybils(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dht = dataclasses.replace(runner.NODE_OPTIONS.dht, max_per_prefix_table=None,
                              max_per_prefix_bucket=None)  # fmt: skip
    monkeypatch.setattr(runner, "NODE_OPTIONS", dataclasses.replace(runner.NODE_OPTIONS, dht=dht))
    scenario = loads(TINY.replace("[pass]", SYBILS + "[pass]"), "tiny-sybils.toml")
    (entries, most), *_ = runner.run(scenario, 1).victim_sybils
    assert entries > 3 * 2 and most > 3


LIARS = """
[[censor]]
action = "sybils"
target = "keys"
sybils = 10
"""


def test_liars_at_a_users_keys_hide_nothing_and_forge_nothing() -> None:
    """S15 in small: 10 liars next to u0000's peer record and first prekey key."""
    scenario = loads(TINY.replace("[pass]", LIARS + "[pass]"), "tiny-liars.toml")
    result = runner.run(scenario, 1)
    assert result.forgeries_served > 0
    assert result.forged_accepted == 0
    assert all(result.key_fetches) and len(result.key_fetches) == 2 * 5


def test_under_one_key_the_liars_hide_the_newest_prekeys(monkeypatch: pytest.MonkeyPatch) -> None:
    """S15 at the CI size, with the bundle under its first key alone: the victim
    publishes a new one during the run, and only the liars are asked to keep it."""
    monkeypatch.setattr(records, "PREKEY_REPLICAS", 1)
    scenario = lab.resize(lab.find("S15"), nodes=12, duration=300.0)
    fetches = runner.run(scenario, 1).key_fetches
    assert 0 < sum(fetches) < len(fetches)


FLOOD = """
id = "T16"
title = "a flood of 1,000 ids from 10 addresses on one user"
[run]
duration = "2m"
warmup = "1m"
drain = "2m"
[topology]
users = 6
isps = 2
[traffic]
pairs = 3
every = "5s"
[control]
servers = 1
[[censor]]
action = "drop"
target = "servers"
[[censor]]
action = "flood"
target = "users"
ids = 1000
addresses = 10
victims = 1
[pass]
delivery = 0.99
"""


def _flood_checks(scenario: Scenario) -> dict[str, bool]:
    verdict = report.judge(scenario, [runner.run(scenario, 1)])
    return {c.name.split(" (")[0]: c.ok for c in verdict.checks}


def test_without_eviction_the_flood_takes_the_victims_links(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S16's flood (which passes in the reduced matrix, test_sim_matrix.py) in
    small, against a node that never evicts: its flooders' 10 addresses may
    hold 32 links each, which is more than its memory cap takes, so honest
    links wait for the flooders' to time out."""
    monkeypatch.setattr(Admission, "_evict_for", lambda self, address, *, pending, now: False)
    checks = _flood_checks(loads(FLOOD, "tiny-flood.toml"))
    assert checks["inbound memory under the flood"]  # the cap itself still holds
    assert not checks["latency p99 of the flooded users' messages"]


def test_a_volume_runs_the_replay_model_after_the_seed_and_any_replay_it_finds_fails() -> None:
    """S17 at scale: ``traffic.volume`` messages through :mod:`p2pmsg.sim.replays`."""
    scenario = loads(TINY.replace('every = "10m"', 'every = "10m"\nvolume = 200'), "tiny-v.toml")
    result = runner.run(scenario, 1)
    assert result.volume["messages"] == 200 and result.volume["injected"] > 0
    assert result.volume["lost"] == 0

    def check(r: SeedResult) -> report.Check:
        (found,) = [c for c in report.judge(scenario, [r]).checks if "replay model" in c.name]
        return found

    assert check(result).ok and check(result).value == "0 / 0 / 0 / 0"
    replayed = dataclasses.replace(result, volume={**result.volume, "accepted_twice": 1})
    assert not check(replayed).ok


def test_a_user_that_tries_a_blocked_three_tuple_twice_in_one_window_fails_s4s_figure() -> None:
    scenario = loads(TINY, "tiny.toml")
    scenario = dataclasses.replace(
        scenario, passes=dataclasses.replace(scenario.passes, residual_tries=1)
    )

    def check(tries: list[int]) -> report.Check:
        result = SeedResult(1, residual_retries=tries)
        (found,) = [c for c in report.judge(scenario, [result]).checks if "3-tuple" in c.name]
        return found

    assert check([0, 1, 1]).ok
    assert not check([0, 2]).ok and check([0, 2]).value == "2 at most (2 blocked)"
