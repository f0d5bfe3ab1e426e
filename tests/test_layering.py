"""The layering rules of DESIGN.md, enforced from the AST.

* ``p2pmsg`` never imports ``transports`` or ``cli`` (``p2pmsg/__main__.py``,
  the ``python -m p2pmsg`` entry point, is the one edge allowed to).
* A pure core imports no trio, socket, time, zeroconf or random: time and
  randomness come in as parameters.
* The command a node runs under loads neither the lab's plotting nor
  ``cryptography`` (for TLS certificates only): together they are about 60 MB
  of an idle node's memory (bench/RESULTS.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE_CORES = [
    "p2pmsg/endpoint.py",
    "p2pmsg/keys.py",
    "p2pmsg/puzzle.py",
    "p2pmsg/sized.py",
    "p2pmsg/distributor.py",
    "p2pmsg/link/noise.py",
    "p2pmsg/link/wire.py",
    "p2pmsg/link/replay.py",
    "p2pmsg/link/connection.py",
    "p2pmsg/delivery/frames.py",
    "p2pmsg/dht/peer.py",
    "p2pmsg/dht/table.py",
    "p2pmsg/dht/lookup.py",
    "p2pmsg/dht/records.py",
    "p2pmsg/dht/record_store.py",
    "p2pmsg/dht/rpc.py",
    "p2pmsg/dht/ratelimit.py",
    "p2pmsg/dht/known.py",
    "p2pmsg/dht/mailbox.py",
    "p2pmsg/discovery/txt.py",
    "p2pmsg/e2e/primitives.py",
    "p2pmsg/e2e/prekeys.py",
    "p2pmsg/e2e/ratchet.py",
    "p2pmsg/e2e/session.py",
    "p2pmsg/e2e/sealed.py",
    "p2pmsg/onion/sphinx.py",
    "p2pmsg/onion/header.py",
    "p2pmsg/onion/lioness.py",
    "p2pmsg/onion/replay.py",
    "p2pmsg/onion/route.py",
    "p2pmsg/delivery/onion_frames.py",
    "p2pmsg/sim/detectors.py",
    "transports/obfs_core.py",
    "transports/padding_core.py",
    "transports/pt_proto.py",
    "transports/socks5.py",
    "transports/ws_core.py",
]
FORBIDDEN_IN_CORES = {"trio", "socket", "time", "zeroconf", "random", "asyncio", "select"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def top_level(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("relative", PURE_CORES)
def test_pure_cores_import_no_io_time_or_randomness(relative: str) -> None:
    found = top_level(imported_modules(ROOT / relative)) & FORBIDDEN_IN_CORES
    assert not found, f"{relative} imports {sorted(found)}"


def library_files() -> list[Path]:
    return sorted(p for p in (ROOT / "p2pmsg").rglob("*.py") if p.name != "__main__.py")


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_never_imports_transports_or_cli(path: Path) -> None:
    found = top_level(imported_modules(path)) & {"transports", "cli"}
    assert not found, f"{path.relative_to(ROOT)} imports {sorted(found)}"


def test_the_rule_sees_an_offending_import(tmp_path: Path) -> None:
    offender = tmp_path / "bad.py"
    offender.write_text("import time\nfrom transports.tcp import TcpTransport\n")
    assert top_level(imported_modules(offender)) == {"time", "transports"}


def test_pure_core_list_is_current() -> None:
    missing = [p for p in PURE_CORES if not (ROOT / p).exists()]
    assert not missing


#: Modules that ``p2pmsg run`` must not load: the lab's plotting and TLS certificates.
HEAVY = ("matplotlib", "numpy", "cryptography", "p2pmsg.sim.runner")


def test_the_cli_loads_no_plotting_and_no_certificate_library() -> None:
    code = f"import cli, sys; print(*sorted(set({HEAVY!r}) & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == []
