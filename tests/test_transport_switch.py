"""Switching transports under censorship, on the simulated network (issue 5, item 5).

Two real nodes, alice and bob, each listening on the raw ``sim`` transport
(our stand-in for tcp) and on ``ws`` over the same network. Alice keeps
sending bob direct messages while a censor on the path changes its mind:

(i) a DPI rule (the S5 fully-encrypted detector, which flags the raw link's
    random-looking first packet) kills the raw flows mid-conversation:
    delivery continues on ``ws`` within 60 simulated seconds, with nothing
    lost and nothing shown twice;
(ii) every connection is reset every 20 s on a policed path: a 10 MiB
    transfer still completes, exactly once;
(iii) after a reset, the same (client, server, port) is tried again at most
    once within the 180 s residual window.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from simworld import EPOCH, sim_wall_clock
from trio.testing import MockClock

from p2pmsg.abc import Transport
from p2pmsg.endpoint import Endpoint
from p2pmsg.home import Config, Home
from p2pmsg.keys import Identity
from p2pmsg.node import Node
from p2pmsg.sim.censor import (
    Censor,
    MatchPayload,
    Police,
    ResetEvery,
    ResidualBlock,
    fully_encrypted_first,
)
from p2pmsg.sim.net import DROP, RESET, SimNetwork, Verdict
from p2pmsg.store import Contact, run_inline
from transports.sim import SimTransport
from transports.ws import WsTransport

RAW_PORT = 7000
WS_PORT = 8080


def endpoints(name: str, *, raw_only: bool) -> tuple[Endpoint, ...]:
    raw = Endpoint.parse(f"sim:{name}:{RAW_PORT}")
    return (raw,) if raw_only else (raw, Endpoint.parse(f"ws:{name}:{WS_PORT}/chat"))


def transports(net: SimNetwork, name: str) -> list[Transport]:
    return [SimTransport(net, name), WsTransport(SimTransport(net, name))]


@dataclass
class Pair:
    net: SimNetwork
    censor: Censor
    alice: Node
    bob: Node
    shown: list[bytes] = field(default_factory=list)

    async def collect(self) -> None:
        async for message in self.bob.messages():
            self.shown.append(message.id)


@asynccontextmanager
async def pair(root: Path, *, raw_only: bool = False) -> AsyncIterator[Pair]:
    net = SimNetwork()
    censor = Censor([])
    net.policy = censor
    homes = {}
    for name in ("bob", "alice"):
        home = Home(root / name)
        boot = () if name == "bob" else (str(homes["bob"].invite()),)
        home.init(
            Config(listen=endpoints(name, raw_only=raw_only), bootstrap=boot), Identity.generate()
        )
        homes[name] = home

    def contact(name: str) -> Contact:
        invite = homes[name].invite()
        eps = tuple(str(e) for e in invite.endpoints)
        return Contact(name, invite.identity.node_id, invite.identity.key, eps, EPOCH)

    async with (
        Node.open(
            homes["bob"].path, transports(net, "bob"),
            offload=run_inline, wall_clock=sim_wall_clock,
        ) as bob,
        Node.open(
            homes["alice"].path, transports(net, "alice"),
            offload=run_inline, wall_clock=sim_wall_clock,
        ) as alice,
        trio.open_nursery() as nursery,
    ):  # fmt: skip
        await alice.store.add_contact(contact("bob"))
        await bob.store.add_contact(contact("alice"))
        with trio.fail_after(300):
            await alice.joined.wait()
        found = Pair(net, censor, alice, bob)
        nursery.start_soon(found.collect)
        yield found
        nursery.cancel_scope.cancel()


async def wait_delivered(node: Node, ids: set[bytes], timeout: float) -> None:
    """Wait, in simulated time, until every message of ``ids`` is acked."""
    pending = set(ids)
    with trio.fail_after(timeout):
        async for acked in node.deliveries():
            pending.discard(acked)
            if not pending:
                return


def raw_flows(world: Pair, since: float) -> list[float]:
    """When alice's flows to bob's raw port began (SYNs refused included)."""
    return sorted(
        f.started
        for f in world.censor.flows()
        if f.client == ("alice", "bob", RAW_PORT) and f.started >= since
    )


@pytest.mark.parametrize("verdict", [RESET, DROP], ids=["reset", "drop"])
async def test_a_dpi_rule_mid_conversation_moves_traffic_to_ws(
    tmp_path: Path, autojump_clock: MockClock, verdict: Verdict
) -> None:
    async with pair(tmp_path) as world:
        sent: dict[bytes, float] = {}
        blocked_at = 0.0
        for i in range(40):
            if i == 10:
                world.censor.rules.append(MatchPayload(fully_encrypted_first, verdict))
                blocked_at = trio.current_time()
            sent[await world.alice.send("bob", f"message {i}", direct=True)] = trio.current_time()
            await trio.sleep(5.0)
        await wait_delivered(world.alice, set(sent), timeout=3600)
        received = {m.id: m.received - EPOCH for m in await world.bob.store.list_inbox(limit=100)}
        assert set(received) == set(sent)
        assert sorted(world.shown) == sorted(sent)  # each shown exactly once
        latency = [received[i] - at for i, at in sent.items() if at >= blocked_at]
        assert max(latency) <= 60.0
        # the raw path is given up on at once: at most one new flow tries it
        assert len(raw_flows(world, blocked_at)) <= 1
        health = (await world.alice.status())["transports"]
        assert health["ws"]["last_working"]
        assert health["ws"]["successes"] >= 30
        assert not health["sim"]["last_working"]


async def test_every_connection_reset_every_20_s_a_10_mib_transfer_completes(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    reset = ResetEvery(20.0)
    async with pair(tmp_path) as world:
        world.censor.rules.append(reset)
        police = world.censor.police = Police(rate=64 * 1024)
        start = trio.current_time()
        chunk = bytes(64_000)
        count = -(-10 * 1024 * 1024 // len(chunk))
        sent = [await world.alice.send("bob", chunk, direct=True) for _ in range(count)]
        await wait_delivered(world.alice, set(sent), timeout=4 * 3600)
        inbox = await world.bob.store.list_inbox(limit=1000)
        assert sorted(m.id for m in inbox) == sorted(sent)
        assert sum(len(m.body) for m in inbox) >= 10 * 1024 * 1024
        assert sorted(world.shown) == sorted(sent)
        assert reset.resets >= 2  # the transfer outlived several connections
        # measured in simulated time: about 0.9 of the policed rate
        assert count * len(chunk) / (trio.current_time() - start) >= 0.5 * police.rate


async def test_a_reset_three_tuple_is_retried_at_most_once_per_residual_window(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    """Bob is reachable on the raw port only. A censor resets it for a minute
    and keeps the 3-tuple blocked for 180 s after each reset (S4); alice's
    retries must not walk into that window, and deliver once it is over."""
    residual = ResidualBlock(180.0)
    async with pair(tmp_path, raw_only=True) as world:
        await trio.sleep(1.0)  # the links made while joining are older than the block
        rule = MatchPayload(fully_encrypted_first, RESET, residual=residual)
        world.censor.rules += [rule, residual]
        blocked_at = trio.current_time()
        sent = []
        for i in range(12):
            if i == 2:
                world.censor.rules.remove(rule)  # the block lifts; its residual stays
            sent.append(await world.alice.send("bob", f"message {i}", direct=True))
            await trio.sleep(30.0)
        await wait_delivered(world.alice, set(sent), timeout=3600)
        assert sorted(world.shown) == sorted(sent)
        first, retry, *_ = raw_flows(world, blocked_at)
        assert first == blocked_at  # reset at once, starting the residual window
        assert retry >= first + 180.0  # not tried again inside it
        assert rule.matched >= 1
