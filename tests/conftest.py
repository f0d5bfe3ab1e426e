"""Shared fixtures (and the simnet kit shipped to users, tested as they use it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from simworld import SimWorld

pytest_plugins = ["p2pmsg.testing.simnet"]


@pytest.fixture
def world(tmp_path: Path) -> SimWorld:
    """A simulated world; its tests also ask for ``autojump_clock`` (pytest-trio
    takes the clock from the test function's own arguments only)."""
    return SimWorld(tmp_path)
