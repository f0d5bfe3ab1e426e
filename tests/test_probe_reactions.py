"""S8's reference figure: a p2pmsg obfs server reacts to every class of
probe exactly as to random bytes of the same length, over 10,000 probes.

The GFW's prober (Ensafi et al. 2015; Alice et al. 2020) sends replays of a
recorded first payload, replays with bytes changed, and random bytes, and
blocks a server whose reaction to any of them differs from what a service
that does not speak to strangers shows. The reference here is the same
server's reaction to noise of the same length, sent at the same moment: a
probe class that changes the answer, the way the connection ends (close,
reset) or when it ends is a fingerprint. A real obfs server on the
simulated network, the simulator's prober (:func:`p2pmsg.sim.topology.reaction`),
the autojump clock.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import trio
from trio.testing import MockClock

from p2pmsg.abc import Link
from p2pmsg.endpoint import Endpoint
from p2pmsg.sim.net import SimNetwork
from p2pmsg.sim.topology import PROBE_HORIZON, Reaction, reaction
from p2pmsg.sim.transport import SimTransport
from transports.obfs import ObfsTransport, load_or_create_key
from transports.obfs_core import ALPHABET, REPLAY_WINDOW, ClientHandshake

NOW = 1_800_000_000.0
PROBES = 10_000
AT_ONCE = 8  # probe and noise: 16 connections at once


def probe_classes(key: bytes, recorded: bytes, budget: int, rng: random.Random) -> list[bytes]:
    """One probe of each class the prober has, and some it might try."""
    flip = rng.randrange(len(recorded))
    changed = recorded[:flip] + bytes([recorded[flip] ^ 0x20]) + recorded[flip + 1 :]
    stale = ClientHandshake(key, now=NOW - 2 * REPLAY_WINDOW, rng=rng.randbytes).hello
    wrong_key = ClientHandshake(rng.randbytes(32), now=NOW, rng=rng.randbytes).hello
    size = rng.randrange(2 * budget + 2)
    return [
        recorded,  # the replay
        changed,  # the replay with a byte changed
        recorded[: rng.randrange(1, len(recorded))],  # a replay cut short
        recorded + rng.randbytes(rng.randrange(1, budget)),  # a replay with more behind
        stale,
        wrong_key,
        rng.randbytes(size),  # noise
        bytes(rng.choice(ALPHABET) for _ in range(size)),  # obfs's letters, any
        b"",  # a connection and nothing
    ]


async def test_every_probe_class_meets_the_reaction_noise_meets(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    net = SimNetwork()
    transport = ObfsTransport(SimTransport(net, "a"), state_dir=tmp_path, wall_clock=lambda: NOW)
    accepted: list[Link] = []

    async def handler(link: Link) -> None:
        accepted.append(link)

    rng = random.Random(8)
    unlike: list[tuple[bytes, Reaction, Reaction]] = []
    answered = 0

    async def probe(payload: bytes) -> None:
        nonlocal answered
        seen, noise = await _both(net, payload, rng.randbytes(len(payload)))
        answered += seen.answered or noise.answered
        if seen != noise:
            unlike.append((payload, seen, noise))

    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve, Endpoint.parse("obfs:a:443"), handler)
        key = load_or_create_key(tmp_path, rng=os.urandom)
        _, budget = key.close_policy
        recorded = ClientHandshake(key.public, now=NOW, rng=rng.randbytes).hello
        honest = await _both(net, recorded, b"")
        assert honest[0].answered and len(accepted) == 1  # recorded: the server took it
        batch: list[bytes] = []
        for sent in range(PROBES):
            if not batch:
                batch = probe_classes(key.public, recorded, budget, rng)
            if sent % AT_ONCE == 0:
                await trio.sleep(PROBE_HORIZON)  # the last ones are over
            nursery.start_soon(probe, batch.pop())
        await trio.sleep(PROBE_HORIZON)
        nursery.cancel_scope.cancel()
    assert len(accepted) == 1
    assert answered == 0
    assert unlike == []


async def _both(net: SimNetwork, payload: bytes, noise: bytes) -> tuple[Reaction, Reaction]:
    """The reactions to ``payload`` and to ``noise``, sent at the same moment."""
    seen: dict[bytes, Reaction] = {}

    async def one(label: bytes, data: bytes) -> None:
        seen[label] = await reaction(net, "a", 443, data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, b"p", payload)
        nursery.start_soon(one, b"n", noise)
    return seen[b"p"], seen[b"n"]
