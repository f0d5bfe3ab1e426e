"""Fuzz target: bytes into the scenario loader (TOML and schema).

Only a :class:`Scenario` or a :class:`ScenarioError` naming the file may
come out; anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_scenario.py fuzz/corpus/scenario
"""

from __future__ import annotations

from importlib import resources

from p2pmsg.sim.scenario import Scenario, ScenarioError, loads


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    text = data.decode("utf-8", errors="replace")
    try:
        scenario = loads(text, "fuzz.toml")
    except ScenarioError as exc:
        error = str(exc)
    else:
        assert isinstance(scenario, Scenario)
        assert scenario.topology.isps <= scenario.topology.users
        return
    assert error.startswith("fuzz.toml")


def seeds() -> dict[str, bytes]:
    """The shipped S1, and broken neighbours of it."""
    s1 = (resources.files("p2pmsg.sim") / "scenarios" / "s01_russia_2018.toml").read_bytes()
    return {
        "s1": s1,
        "s1_cut": s1[: len(s1) // 2],
        "minimal": b'id = "X"\ntitle = "t"\n',
        "unknown_action": b'id = "X"\ntitle = "t"\n[[censor]]\naction = "nuke"\n'
        b'target = "servers"\n',
        "bad_time": b'id = "X"\ntitle = "t"\n[run]\nduration = "soon"\n',
        "censor_not_array": b'id = "X"\ntitle = "t"\ncensor = 1\n',
        "table_is_number": b'id = "X"\ntitle = "t"\ntopology = 5\n',
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
