"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from simworld import SimWorld


@pytest.fixture
def world(tmp_path: Path) -> SimWorld:
    """A simulated world; its tests also ask for ``autojump_clock`` (pytest-trio
    takes the clock from the test function's own arguments only)."""
    return SimWorld(tmp_path)
