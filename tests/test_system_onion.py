"""Onion delivery through the ``p2pmsg`` command: twelve real nodes on 127.0.0.1.

Theory of operation. The cluster is the one of ``test_system_dht``: node 0 is
the only bootstrap server and every other home is ``init``-ed with its
invite. Nodes 0-9 are relays and stay up; node 10 is alice and node 11 bob,
who are never running at the same time:

1. bob runs until he has joined and published his prekeys (his log says on
   how many nodes), then stops;
2. alice starts, ``send bob ...`` (onion routing, the default), waits until
   the message has left (``outbox --json`` says ``sent``) and an exit relay
   has deposited it in bob's DHT mailbox (the relays' ``status --json``:
   ``mailbox_entries`` and the ``deposited`` count grow), then stops;
3. bob starts, fetches his mailbox right after joining (no poll interval to
   wait for), and ``inbox --json`` shows the message once, from ``alice``;
   he stays until his ack has been deposited in alice's mailbox, then stops;
4. alice starts, fetches her mailbox, and ``outbox --json`` says
   ``delivered``.

A relay's mailboxes live in its memory, so the relays never stop. Every
wait is a deadline (``syshelpers.poll``); nothing asserts on timing.
"""

from __future__ import annotations

import json
import random
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from syshelpers import poll, short_base
from test_system_dht import JOINED, RUNNING, Cluster, Member, cluster_of

pytestmark = pytest.mark.system

RELAYS = 10
CRASH_RELAYS = 6
CRASH_KILLS = 6
KILL_WITHIN = 2.0
"""Seconds after a ``send`` returns within which the victim is killed: a
random point of the message's life (route, relays, deposit, ack), not a wait."""
SETTLE = 600.0
"""Deadline for the last messages: a retry may be an hour away at worst, but
a few failed attempts put it minutes away (15 s, doubling)."""
ALICE, BOB = RELAYS, RELAYS + 1
PREKEYS = re.compile(r"published our prekeys on ([0-9]+) nodes")
ITEM_KEYS = {"id", "peer", "text", "state", "time"}


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    with short_base(tmp_path) as path:
        yield path


def prekeys_published(member: Member) -> int:
    """How many times the node's log says it stored its prekeys on some node."""
    try:
        text = member.process.log.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return sum(1 for found in PREKEYS.finditer(text) if int(found.group(1)) > 0)


async def status(cluster: Cluster, member: Member) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads((await cluster.ok(member, "status", "--json")).out)
    return reply


async def relay_totals(cluster: Cluster, relays: list[Member]) -> tuple[int, int, int]:
    """The relays' summed (mailbox_entries, deposited, relayed)."""
    found: dict[str, dict[str, Any]] = {}

    async def one(member: Member) -> None:
        found[member.name] = await status(cluster, member)

    async with trio.open_nursery() as nursery:
        for member in relays:
            nursery.start_soon(one, member)
    for reply in found.values():
        assert isinstance(reply["mailbox_entries"], int), reply
        assert isinstance(reply["relayed"], int), reply
    return (
        sum(r["mailbox_entries"] for r in found.values()),
        sum(r["onion"]["relay"]["deposited"] for r in found.values()),
        sum(r["relayed"] for r in found.values()),
    )


async def box(cluster: Cluster, member: Member, which: str) -> list[dict[str, Any]]:
    items = (await cluster.ok(member, which, "--json")).json_lines()
    for item in items:
        assert set(item) == ITEM_KEYS, item
    return items


async def stop(member: Member) -> None:
    code = await member.process.signal(signal.SIGTERM)
    assert code == 0, member.process.log_tail()


class Presence:
    """When alice and bob ran, by construction: each start asserts the other is down."""

    def __init__(self, alice: Member, bob: Member) -> None:
        self.pair = (alice, bob)
        self.runs: list[str] = []

    async def start(self, cluster: Cluster, member: Member) -> None:
        (other,) = [m for m in self.pair if m is not member]
        process = other.process.process
        assert process is None or process.returncode is not None, f"{other.name} is running"
        self.runs.append("alice" if member is self.pair[0] else "bob")
        await cluster.start([member], JOINED)


async def test_a_message_waits_in_mailboxes_while_sender_and_recipient_take_turns(
    base: Path,
) -> None:
    async with cluster_of(base, RELAYS + 2) as cluster:
        relays = cluster.members[:RELAYS]
        alice, bob = cluster[ALICE], cluster[BOB]
        logs = cluster.processes
        await cluster.ok(alice, "contacts", "add", "bob", bob.link)
        await cluster.ok(bob, "contacts", "add", "alice", alice.node_id)  # by id: no seed
        turns = Presence(alice, bob)

        await cluster.start(relays[:1], RUNNING)
        await cluster.start(relays[1:], JOINED)

        # 1. bob joins and publishes his prekeys, then goes away.
        await turns.start(cluster, bob)

        async def bob_published() -> bool | None:
            return True if prekeys_published(bob) else None

        await poll(bob_published, "bob's prekeys in the DHT", node_logs=[bob.process])
        await stop(bob)

        # 2. alice sends; the exit relay finds bob gone and deposits the packet.
        entries_before, deposited_before, _ = await relay_totals(cluster, relays)
        await turns.start(cluster, alice)
        done = await cluster.ok(alice, "send", "bob", "while you were away")
        (message_id,) = done.lines
        assert len(message_id) == 32, str(done)

        async def left() -> list[dict[str, Any]] | None:
            outbox = await box(cluster, alice, "outbox")
            return outbox if [m["state"] for m in outbox] == ["sent"] else None

        outbox = await poll(left, "the message to leave alice", node_logs=[alice.process])
        assert [(m["id"], m["peer"]) for m in outbox] == [(message_id, "bob")]

        async def deposited() -> tuple[int, int, int] | None:
            totals = await relay_totals(cluster, relays)
            entries, count, _ = totals
            return totals if entries > entries_before and count > deposited_before else None

        await poll(deposited, "a relay to hold the message", node_logs=logs)
        await stop(alice)
        _, deposited_by_alice, _ = await relay_totals(cluster, relays)

        # 3. bob comes back, finds the message in his mailbox, and acks it.
        await turns.start(cluster, bob)

        async def received() -> list[dict[str, Any]] | None:
            inbox = await box(cluster, bob, "inbox")
            return inbox or None

        inbox = await poll(received, "the message in bob's inbox", node_logs=[bob.process])
        assert [(m["id"], m["peer"], m["text"], m["state"]) for m in inbox] == [
            (message_id, "alice", "while you were away", "received")
        ]

        async def ack_deposited() -> bool | None:
            bob_status = await status(cluster, bob)
            if bob_status["onion"]["receiver"]["acks_sent"] < 1:
                return None
            _, count, _ = await relay_totals(cluster, relays)
            return True if count > deposited_by_alice else None

        await poll(ack_deposited, "bob's ack in alice's mailbox", node_logs=logs)
        inbox = await box(cluster, bob, "inbox")
        assert [m["id"] for m in inbox] == [message_id], "a retry of alice's was shown again"
        await stop(bob)

        # 4. alice comes back and learns that the message was delivered.
        await turns.start(cluster, alice)

        async def delivered() -> list[dict[str, Any]] | None:
            outbox = await box(cluster, alice, "outbox")
            return outbox if outbox and outbox[0]["state"] == "delivered" else None

        outbox = await poll(delivered, "alice's outbox to say delivered", node_logs=logs)
        assert [(m["id"], m["peer"], m["state"]) for m in outbox] == [
            (message_id, "bob", "delivered")
        ]
        await stop(alice)
        assert turns.runs == ["bob", "alice", "bob", "alice"]
        _, _, relayed = await relay_totals(cluster, relays)
        assert relayed >= 4, "two hops forwarded each way (the exits deposited)"
        for member in cluster.members:
            assert "Traceback" not in member.process.log_tail(chars=10**7), member.name


# crash safety with real processes


async def test_sigkill_at_random_points_loses_and_doubles_nothing(base: Path) -> None:
    rng = random.Random(4417)
    async with cluster_of(base, CRASH_RELAYS + 2) as cluster:
        relays = cluster.members[:CRASH_RELAYS]
        alice, bob = cluster[CRASH_RELAYS], cluster[CRASH_RELAYS + 1]
        logs = cluster.processes
        await cluster.ok(alice, "contacts", "add", "bob", bob.link)
        await cluster.ok(bob, "contacts", "add", "alice", alice.node_id)
        await cluster.start(relays[:1], RUNNING)
        await cluster.start([*relays[1:], alice, bob], JOINED)

        async def bob_published() -> bool | None:
            return True if prekeys_published(bob) else None

        await poll(bob_published, "bob's prekeys in the DHT", node_logs=[bob.process])

        # Node 0 is the only bootstrap server; it stays up (see test_system_dht).
        victims = [alice, bob, *relays[1:]]
        sent: dict[str, str] = {}
        kills: list[str] = []

        async def send(text: str) -> None:
            (message_id,) = (await cluster.ok(alice, "send", "bob", text)).lines
            sent[message_id] = text

        for index in range(CRASH_KILLS):
            victim = rng.choice(victims)
            await send(f"{index}: before {victim.name} dies")
            await trio.sleep(rng.uniform(0.0, KILL_WITHIN))  # the kill point, chosen at random
            await victim.process.kill9()
            kills.append(victim.name)
            if victim is not alice:
                await send(f"{index}: while {victim.name} is down")
            await cluster.start([victim], JOINED)
            if victim is alice:
                await send(f"{index}: after alice came back")

        async def all_delivered() -> list[dict[str, Any]] | None:
            outbox = await box(cluster, alice, "outbox")
            states = {m["id"]: m["state"] for m in outbox}
            return outbox if states == dict.fromkeys(sent, "delivered") else None

        what = f"every message delivered (kills: {kills})"
        await poll(all_delivered, what, node_logs=logs, within=SETTLE)
        inbox = await box(cluster, bob, "inbox")
        assert sorted((m["id"], m["text"]) for m in inbox) == sorted(sent.items()), kills
        assert {m["peer"] for m in inbox} == {"alice"}
        assert {alice.name, bob.name} & set(kills), "neither end was ever killed"
        for member in cluster.members:
            assert "Traceback" not in member.process.log_tail(chars=10**7), member.name
