"""The onion benchmark still runs: tiny sizes, and it prints its figures.

No timing is asserted (rule 12: tests never assert on wall-clock time):
only that a run completes, closes what it opened (an unclosed socket would
surface as a warning, which is an error here) and prints its table, the
formula, the ratios and, with real nodes, the latencies. The run with nodes
takes about half a minute: the nodes' first mailbox polls are waited for.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--seconds", "0.02", "--rounds", "1"]
TINY_NODES = [*TINY, "--relays", "3", "--messages", "3", "--sequential", "2"]


def _run(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> list[str]:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is not installed; run it from the checkout
    importlib.import_module("bench.onion").main(argv)
    return capsys.readouterr().out.splitlines()


def _check_table(lines: list[str]) -> None:
    header_lines = [line for line in lines if line.startswith("measurement")]
    assert len(header_lines) == 1
    for column in ("per s", "x limit", "x limit+ack"):
        assert column in header_lines[0]
    assert any(line.startswith("limit: one message, crypto-bound") for line in lines)
    assert any(line.startswith("pipeline: create_packet + 4 peels") for line in lines)
    assert any(line.startswith("limit = 1 / (20/dh + 1/base") for line in lines)
    assert "ratios (median of per-round ratios):" in lines
    assert any("pipeline / crypto-bound limit: " in line for line in lines)


def test_crypto_and_pipeline_rows(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _run([*TINY, "--no-nodes"], monkeypatch, capsys)
    _check_table(lines)
    assert not any(line.startswith("nodes/TCP") for line in lines)


def test_real_nodes_deliver_and_the_figures_are_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _run(TINY_NODES, monkeypatch, capsys)
    _check_table(lines)
    assert any(line.startswith("nodes/TCP: burst, until all acked") for line in lines)
    assert any(line.startswith("nodes/TCP: one at a time") for line in lines)
    assert any("nodes, burst / crypto-bound limit: " in line for line in lines)
    assert any(line.startswith("  burst of 3: p50 ") and " p99 " in line for line in lines)
    assert any(line.startswith("  one at a time: p50 ") for line in lines)
    assert any(line.startswith("primitive calls per message on the node path") for line in lines)
