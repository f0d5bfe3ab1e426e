"""Picking a listening port that stays free across restarts.

``init --listen tcp:HOST:0`` picks the port once and writes it into the
node's config and invite, so the node must get the same port back on every
start. A port from the kernel's ephemeral range (what ``bind(HOST, 0)``
hands out) is also what every outgoing connection on the host takes as its
source port, so a restart can find it taken and the invite dead. So the
port is picked below that range, where only listeners bind, and checked
free by binding it; only when no such port is free does the kernel choose.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_LOW = 32768
"""Linux's default start of the range, used when the file cannot be read."""
LOWEST = 10000
"""Below this, well-known and commonly configured service ports crowd."""
TRIES = 32


def ephemeral_low(path: Path = EPHEMERAL_RANGE_FILE) -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def free_listen_port(host: str, *, rng: random.Random | None = None) -> int:
    """A port on ``host`` free now and outside the ephemeral range (else any
    free port). Raises ``OSError`` when ``host`` cannot be bound at all."""
    rng = rng or random.SystemRandom()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    high = ephemeral_low()
    candidates = [rng.randrange(LOWEST, high) for _ in range(TRIES)] if high > LOWEST else []
    for port in candidates:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
