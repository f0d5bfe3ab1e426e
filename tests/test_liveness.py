"""The network watch: while messages wait, peers that stopped answering are
pinged, and when enough answer again every waiting message is due now (S10's
heal). Real SQLite store and routing table; the DHT's ping is a fake
neighbour that answers for the peers named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from p2pmsg.delivery.frames import MessageKind
from p2pmsg.delivery.liveness import PINGS, TICK, NetworkWatch
from p2pmsg.dht.peer import Peer
from p2pmsg.dht.table import RoutingTable
from p2pmsg.keys import node_id_of
from p2pmsg.store import OutboxMessage, Store, run_inline

NOW = 10_000.0


def peer(i: int) -> Peer:
    key = bytes([i]) * 32
    return Peer(node_id_of(key), key, ("sim:a",), f"v4:10.{i}")


class PingingDht:
    """A routing table whose first ``lost`` peers stopped answering; pings answer for ``back``."""

    def __init__(self, lost: int, back: int) -> None:
        self.table = RoutingTable(bytes(32), max_per_prefix_bucket=None, max_per_prefix_table=None)
        self.peers = [peer(i) for i in range(1, 9)]
        for p in self.peers:
            self.table.offer(p, 0.0)
        for p in self.peers[:lost]:
            self.table.on_failure(p.node_id)
        self.back = {p.node_id for p in self.peers[:back]}
        self.pinged: list[bytes] = []

    async def ping(self, p: Peer) -> bool:
        """As the real DHT's: an answer is an offer to the table, silence a failure."""
        self.pinged.append(p.node_id)
        if p.node_id not in self.back:
            self.table.on_failure(p.node_id)
            return False
        self.table.offer(p, NOW)
        return True


async def queue(store: Store, n: int, next_attempt: float) -> None:
    await store.enqueue(
        OutboxMessage(
            id=bytes([n]) * 16, peer=bytes(32), kind=MessageKind.TEXT, body=b"hello",
            created=NOW - 600, expires=NOW + 86_400, next_attempt=next_attempt,
        )
    )  # fmt: skip


def watch(dht: PingingDht, store: Store, on_hurry: Callable[[], None]) -> NetworkWatch:
    fake: Any = dht
    return NetworkWatch(fake, store, on_hurry, wall_clock=lambda: NOW, rng=bytes)


async def test_waiting_messages_are_due_now_once_enough_lost_peers_answer(
    tmp_path: Path,
) -> None:
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        await queue(store, 1, NOW + 3000)
        await queue(store, 2, NOW - 1)  # due already: stays as it is
        dht, woken = PingingDht(lost=3, back=3), list[int]()
        w = watch(dht, store, lambda: woken.append(1))
        assert await w.check() == 1
        assert len(dht.pinged) == PINGS
        assert {m.id[0] for m in await store.due_messages(NOW)} == {1, 2}
        assert (w.hurries, woken) == (1, [1])
        assert dht.table.unreachable() == []  # the answers took them off the list


async def test_one_peer_back_is_churn_not_a_heal(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        await queue(store, 1, NOW + 3000)
        dht, woken = PingingDht(lost=3, back=1), list[int]()
        w = watch(dht, store, lambda: woken.append(1))
        assert await w.check() == 0
        assert await store.due_messages(NOW) == []
        assert (w.hurries, woken) == (0, [])


async def test_the_only_lost_peer_answering_is_enough(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        await queue(store, 1, NOW + 3000)
        dht = PingingDht(lost=1, back=1)
        assert await watch(dht, store, lambda: None).check() == 1


async def test_peers_back_through_other_traffic_count_too(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        await queue(store, 1, NOW + 3000)
        dht = PingingDht(lost=5, back=0)
        w = watch(dht, store, lambda: None)
        assert await w.check() == 0
        for p in dht.peers[3:5]:  # not among the pinged: they called us
            dht.table.offer(p, NOW)
        assert await w.check() == 1


async def test_with_no_peer_lost_those_heard_from_least_lately_are_pinged(
    tmp_path: Path,
) -> None:
    """A cut may hide peers we had no reason to call: their silence is news,
    and so is their answer once the cut heals."""
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        await queue(store, 1, NOW + 3000)
        dht = PingingDht(lost=0, back=0)
        w = watch(dht, store, lambda: None)
        assert await w.check() == 0
        stalest = {p.node_id for p in dht.peers[:PINGS]}  # all offered at 0.0: by order
        assert set(dht.pinged) == stalest
        assert {p.node_id for p in dht.table.unreachable()} == stalest
        dht.back = stalest
        assert await w.check() == 1


async def test_nothing_is_pinged_while_no_message_waits(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        await queue(store, 1, NOW + TICK / 2)  # its retry comes before the next tick anyway
        dht = PingingDht(lost=3, back=3)
        assert await watch(dht, store, lambda: None).check() == 0
        assert dht.pinged == []


async def test_the_watch_checks_every_tick(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        await queue(store, 1, NOW + 3000)
        dht, hurried = PingingDht(lost=2, back=0), trio.Event()
        w = watch(dht, store, hurried.set)
        async with trio.open_nursery() as nursery:
            await nursery.start(w.run)
            await trio.sleep(TICK * 3 + 1)
            assert len(dht.pinged) == 3 * PINGS  # each tick
            dht.back = {p.node_id for p in dht.peers[:2]}
            with trio.fail_after(TICK + 1):
                await hurried.wait()
            nursery.cancel_scope.cancel()
