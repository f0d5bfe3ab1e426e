"""Listening ports picked at init stay clear of the kernel's ephemeral range."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from p2pmsg.ports import DEFAULT_EPHEMERAL_LOW, LOWEST, ephemeral_low, free_listen_port


def test_the_port_is_below_the_ephemeral_range_and_free() -> None:
    port = free_listen_port("127.0.0.1")
    assert LOWEST <= port < ephemeral_low()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # still free: nothing kept it


def test_a_taken_port_is_skipped() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_listen_port("127.0.0.1")))
        busy = taken.getsockname()[1]
        other = free_listen_port("127.0.0.1")  # free now; ``busy`` is bound
        assert free_listen_port("127.0.0.1", rng=_Fixed([busy, other])) == other


class _Fixed(random.Random):
    """Candidates in a given order, the last one repeated (the test's neighbour)."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(0)
        self.ports = ports

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return self.ports.pop(0) if len(self.ports) > 1 else self.ports[0]


def test_the_range_file_is_read_and_a_bad_one_gives_the_default(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("40000\t60999\n")
    bad.write_text("garbage")
    assert ephemeral_low(good) == 40000
    assert ephemeral_low(bad) == DEFAULT_EPHEMERAL_LOW
    assert ephemeral_low(tmp_path / "missing") == DEFAULT_EPHEMERAL_LOW


def test_an_address_we_cannot_bind_raises() -> None:
    with pytest.raises(OSError):  # noqa: PT011 - the OS words it
        free_listen_port("192.0.2.1")  # TEST-NET-1: not ours
