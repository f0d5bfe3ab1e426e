"""The growth benchmark still runs: its tiny plan prints its tables and writes its plots.

No timing, count or exponent is asserted (rule 12: tests never assert on
wall-clock time); only that the run completes, prints each table's header
and the fitted exponents, and writes three non-empty PNG files. It starts
child processes (every point runs in one, and the DHT points start the
``kademlia`` peer when it is installed); about 20 s.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLOTS = ("growth_dht_lookups.png", "growth_sim.png", "growth_stores.png")


def test_growth_runs_prints_its_tables_and_writes_its_plots(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is not installed; run it from the checkout
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the child processes import bench/ too
    importlib.import_module("bench.growth").main(["--tiny", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    headers = [line.split("  ")[0] for line in lines if line.endswith(("point s", "files MiB"))]
    assert headers == ["nodes", "nodes", "store, items"]
    assert any(line.startswith("growth exponents b") for line in lines)
    for name in PLOTS:
        assert (tmp_path / name).stat().st_size > 0
