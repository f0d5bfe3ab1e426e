"""No key, plaintext or peer address in logs above DEBUG, over whole scenario runs.

Two reduced scenarios run with every log record kept: S8 (obfs and ws
transports, an active prober, restarts) and S17 (connections reset every 20
s, tampering relays, restarts). Every record at INFO or above, formatted,
must hold none of: any node's secret seed or X25519 secret (hex), public key
(as printed or hex), node id (hex); any host's IP address or simulated
address; any message text.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pmsg.home import Home
from p2pmsg.sim import lab, runner
from p2pmsg.sim.world import seeded_scheduler
from transports.simstack import WRAPPERS

TEXT = re.compile(r"\b[uk]\d{4} to [ua]\d{4}\b")
"""What the runner's messages say: "u0003 to u0007 at 120"."""


def _run(scenario_id: str, root: Path) -> list[str]:
    """Run the scenario reduced, seed 1, with its homes kept under ``root``;
    the secrets and addresses its logs must not hold."""
    scenario = lab.resize(lab.find(scenario_id), nodes=12, duration=300.0)

    async def main() -> None:
        result = await runner.run_seed(scenario, 1, root, wrappers=WRAPPERS)
        assert result.sent and result.received

    with seeded_scheduler(1):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    secrets: list[str] = []
    for home_dir in sorted(p for p in root.iterdir() if (p / "identity.key").exists()):
        identity = Home(home_dir).load_identity()
        secrets += [
            identity.seed().hex(),
            identity.x25519_private.hex(),
            identity.public.encoded(),
            identity.public.key.hex(),
            identity.node_id.hex(),
            f"sim:{home_dir.name}",
        ]
    return secrets


IP = re.compile(r"\b(?:95|96|52|85|66|67)\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")
"""The simulated hosts' addresses (users, their second devices, the cloud,
abroad, Sybils)."""


def _leaks(message: str, secrets: list[str]) -> list[str]:
    found = [s for s in secrets if s in message]
    found += IP.findall(message) + TEXT.findall(message)
    return found


@pytest.mark.parametrize("scenario_id", ["S8", "S17"])
def test_logs_above_debug_hold_no_key_text_or_address(
    scenario_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = _run(scenario_id, tmp_path)
    assert len(secrets) >= 12 * 6
    shown = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert shown, "nothing was logged above DEBUG: the scan would be vacuous"
    for message in shown:
        assert not _leaks(message, secrets), message
    # the scan sees each kind of leak
    for planted in [secrets[0], secrets[2], "dial 95.1.0.7 failed", "u0003 to u0007 at 120"]:
        assert _leaks(f"a record holding {planted}", secrets)
