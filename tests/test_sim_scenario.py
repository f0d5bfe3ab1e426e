"""Scenario files: the shipped ones load; every mistake names file, line and field."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmsg.sim import lab
from p2pmsg.sim.scenario import ScenarioError, loads, parse_time

HEAD = 'id = "X"\ntitle = "a test"\n'


def test_the_shipped_scenarios_load_and_have_distinct_ids() -> None:
    shipped = lab.shipped()
    assert [s.id for s in shipped][:1] == ["S1"]
    assert len({s.id for s in shipped}) == len(shipped)
    assert all(s.censor for s in shipped)


def test_a_minimal_scenario_takes_the_defaults() -> None:
    s = loads(HEAD)
    assert (s.id, s.title, s.censor) == ("X", "a test", ())
    assert s.run.seeds >= 1


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (HEAD + "[topology]\nusers = 'many'\n", "f.toml:4: topology.users: expected int"),
        (HEAD + "[topology]\n\nusers = 1\n", "f.toml:5: topology.users: 1 is out of range"),
        (HEAD + "[topology]\nusers = 3\nisps = 4\n", "f.toml:5: topology.isps: at most one"),
        (HEAD + "[run]\nduration = '5 weeks'\n", "f.toml:4: run.duration: '5 weeks' is not a time"),
        (HEAD + "[run]\nspeed = 2\n", "f.toml:4: run.speed: unknown field"),
        (HEAD + "colour = 'red'\n", "f.toml:3: colour: unknown field"),
        (HEAD + "[[censor]]\n", "f.toml:3: censor[0]: missing action"),
        (
            HEAD + "[[censor]]\naction = 'drop'\ntarget = 'learned'\n",
            "f.toml:5: censor[0].target: drop takes: bootstrap, servers, border, flows",
        ),
        (
            HEAD + "[topology]\ntransports = ['sim', 'carrier-pigeon']\n",
            "f.toml:4: topology.transports: 'carrier-pigeon' is not one this runner has",
        ),
        (HEAD + "[topology]\ntransports = []\n", "f.toml:4: topology.transports: at least one"),
        (
            HEAD + "[topology]\ntransports = ['ws', 'ws']\n",
            "f.toml:4: topology.transports: each at most once",
        ),
        (
            HEAD + "[[censor]]\naction = 'police'\nisp = 'isp3'\n",
            "f.toml:5: censor[0].isp: 'isp3' is not one of isp0..isp2",
        ),
        (
            HEAD + "[pass]\ncontrol_min = 0.5\ncontrol_max = 0.2\n",
            "f.toml:4: pass.control_min: above control_max",
        ),
        (
            HEAD + "[[censor]]\naction='drop'\ntarget='servers'\n[[censor]]\naction='nuke'\n",
            "f.toml:7: censor[1].action: 'nuke' is not one this runner has",
        ),
        (
            HEAD + "[topology]\nusers = 6\nisps = 3\n[traffic]\npairs = 4\nlocal = true\n",
            "f.toml:7: traffic.pairs: at most one per two users of one ISP",
        ),
        (HEAD + "[pass]\ndelivery = 1.5\n", "f.toml:4: pass.delivery: 1.5 is out of range"),
        (
            HEAD + "[traffic]\nburst = 50\n",
            "f.toml:4: traffic.burst: needs users abroad ([topology] abroad)",
        ),
        (
            HEAD + "[topology]\nmule = true\n",
            "f.toml:4: topology.mule: needs lan = true and two ISPs at least",
        ),
        (
            HEAD + "[traffic]\nmule_pairs = 2\n",
            "f.toml:4: traffic.mule_pairs: needs a mule ([topology] mule)",
        ),
        (HEAD + "censor = 3\n", "f.toml:3: censor: must be an array of tables"),
        ('title = "t"\n', "f.toml:1: id: missing"),
        (HEAD + "[run\n", "f.toml: not valid TOML"),
    ],
)
def test_a_mistake_names_the_file_line_and_field(text: str, where: str) -> None:
    with pytest.raises(ScenarioError) as info:
        loads(text, "f.toml")
    assert where in str(info.value)
    assert info.value.user_message().startswith("That scenario cannot be run.")


@pytest.mark.parametrize(
    ("text", "seconds"), [("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("6h", 21600.0), (2, 2.0)]
)
def test_times_take_units(text: str | int, seconds: float) -> None:
    assert parse_time(text) == seconds


@given(st.text(max_size=300))
def test_any_text_is_a_scenario_or_a_scenario_error(text: str) -> None:
    with contextlib.suppress(ScenarioError):
        loads(text, "f.toml")


@given(st.dictionaries(st.sampled_from(["users", "isps", "web", "latency"]), st.integers()))
def test_any_numbers_are_a_scenario_or_a_scenario_error(topology: dict[str, int]) -> None:
    body = "".join(f"{k} = {v}\n" for k, v in topology.items())
    try:
        s = loads(HEAD + "[topology]\n" + body, "f.toml")
    except ScenarioError:
        return
    assert s.topology.users >= 2
    assert 1 <= s.topology.isps <= s.topology.users


def test_the_documented_example_is_a_valid_scenario() -> None:
    text = (Path(__file__).parent.parent / "docs" / "scenarios.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert example is not None
    s = loads(example[1], "docs/scenarios.md")
    assert (s.id, len(s.censor)) == ("S1", 1)
