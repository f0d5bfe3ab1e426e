"""``bench/run.py`` still runs every section and reports every metric.

No timing and no goal is asserted (rule 12: tests never assert on wall-clock
time): a tiny run must complete and print one JSON object with every metric
of the issue, each measured (a number) or missing with the command that
installs its peer. The peers (``kademlia``, ``obfs4proxy``) are not project
dependencies, so the second test hides them; the third breaks a section.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
METRICS = {
    "onion_throughput_ratio",
    "onion_latency_p50_ms",
    "onion_latency_p99_ms",
    "obfs_vs_obfs4proxy",
    "pt_overhead",
    "link_vs_raw_tcp",
    "dht_rpcs_vs_kademlia",
    "dht_rpcs_vs_kademlia_warm",
    "dht_lookup_success",
    "kademlia_lookup_success",
    "sim_nodes_per_gb",
    "sim_hour_wall_s",
    "idle_rss_mb",
    "startup_s",
}
PEERS = {"obfs_vs_obfs4proxy", "pt_overhead", "dht_rpcs_vs_kademlia", "dht_rpcs_vs_kademlia_warm"}


def _bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is not installed; run it from the checkout
    bench = importlib.import_module("bench.run")
    tiny = bench.Size(0.05, 1, 2, 2, 3, 12, 4, 2, (3, 5), 0.2, 0.1)
    monkeypatch.setattr(bench, "QUICK", tiny)
    return bench


def _run(bench: ModuleType, capsys: pytest.CaptureFixture[str], *only: str) -> dict[str, Any]:
    bench.main(["--quick", "--json", *(["--only", *only] if only else [])])
    out, err = capsys.readouterr()
    assert "verdict" in err  # the table goes to stderr with --json
    found: dict[str, Any] = json.loads(out)
    return found


def test_every_metric_is_measured_or_its_peer_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    found = _run(_bench(monkeypatch), capsys)
    assert set(found) == METRICS
    for key, metric in found.items():
        assert metric["key"] == key
        if metric["status"] == "missing":
            assert key in PEERS or key.endswith("lookup_success"), key
            continue
        assert metric["status"] == "ok", metric
        assert isinstance(metric["value"], float) and not math.isnan(metric["value"]), metric
        assert metric["verdict"] in {"met", "NOT met", "reported"}
    assert found["idle_rss_mb"]["value"] > 0
    assert found["startup_s"]["value"] > 0


def test_a_missing_peer_is_reported_with_its_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _bench(monkeypatch)
    monkeypatch.setattr(bench.transports, "obfs4proxy_binary", lambda: None)
    monkeypatch.setattr(bench.dht_vs_kademlia, "kademlia_available", lambda: False)
    found = _run(bench, capsys, "transports", "dht")
    assert {k for k, m in found.items() if m["status"] == "missing"} == {
        "obfs_vs_obfs4proxy",
        "pt_overhead",
        "dht_rpcs_vs_kademlia",
        "dht_rpcs_vs_kademlia_warm",
        "dht_lookup_success",
        "kademlia_lookup_success",
    }
    assert "apt-get install -y obfs4proxy" in found["pt_overhead"]["note"]
    assert "pip install kademlia" in found["dht_rpcs_vs_kademlia"]["note"]


def test_a_broken_section_is_an_error_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _bench(monkeypatch)

    def broken(size: object) -> list[object]:
        raise RuntimeError("no loopback today")

    monkeypatch.setitem(bench.SECTIONS, "link", (broken, ["link_vs_raw_tcp"]))
    found = _run(bench, capsys, "link", "node")
    assert found["link_vs_raw_tcp"]["status"] == "error"
    assert "no loopback today" in found["link_vs_raw_tcp"]["note"]
    assert found["startup_s"]["status"] == "ok"
