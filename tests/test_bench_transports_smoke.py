"""The transport benchmark still runs: with tiny durations it prints its table.

No timing and no goal is asserted (rule 12: tests never assert on wall-clock
time); only that a run completes, closes what it opened (unclosed sockets or
processes would surface as warnings, which are errors here) and prints its
table. ``obfs4proxy`` is not a project dependency: without it the benchmark
leaves its two rows out with a note, which the second test forces, so both
paths run whether or not the binary is installed.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--seconds", "0.05", "--rounds", "1"]
OURS = ["tcp: TcpTransport", "ws: WsTransport", "tls: TlsTransport", "obfs: ObfsTransport"]
PROXY_ROWS = ["pt: PtTransport + obfs4proxy", "bare obfs4proxy, own harness"]


def _bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is not installed; run it from the checkout
    return importlib.import_module("bench.transports")


def _run(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> list[str]:
    bench.main(TINY)
    lines = capsys.readouterr().out.splitlines()
    header_lines = [line for line in lines if line.startswith("measurement")]
    assert len(header_lines) == 1
    assert header_lines[0].split("  ")[0] == "measurement"
    for column in ["MB/s", "x tcp", "x obfs4proxy"]:
        assert column in header_lines[0]
    assert "ratios (median of per-round ratios):" in lines
    for label in OURS:
        assert any(line.startswith(label) for line in lines)
    return lines


def test_benchmark_runs_and_prints_its_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _run(_bench(monkeypatch), capsys)
    if shutil.which("obfs4proxy") is not None:
        for label in PROXY_ROWS:
            assert any(line.startswith(label) for line in lines)
        assert any(line.startswith("  pt / bare obfs4proxy: ") for line in lines)


def test_without_obfs4proxy_its_rows_are_left_out_with_a_note(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _bench(monkeypatch)
    monkeypatch.setattr(bench, "obfs4proxy_binary", lambda: None)
    lines = _run(bench, capsys)
    assert bench.MISSING in lines
    for label in PROXY_ROWS:
        assert not any(line.startswith(label) for line in lines)
