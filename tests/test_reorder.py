"""The reorder timer: a message held back behind a missing one is shown after
``wait`` seconds, not when the missing one finally comes (real SQLite store,
trio's autojump clock as the wall clock)."""

from __future__ import annotations

import math
from pathlib import Path

import trio
import trio.testing

from p2pmsg.delivery.frames import MessageKind
from p2pmsg.delivery.reorder import MAX_PEERS_PER_PASS, ReorderTimer
from p2pmsg.store import InboxMessage, Store, run_inline

PEER = bytes(range(32))
WAIT = 3.0


def arrived(seq: int, received: float, peer: bytes = PEER) -> InboxMessage:
    return InboxMessage(
        peer=peer, id=peer[:8] + bytes([seq]) * 8, kind=MessageKind.TEXT, body=b"b", sent=0.0,
        received=received, seq=seq,
    )  # fmt: skip


class Shown:
    def __init__(self) -> None:
        self.seqs: list[tuple[int, float]] = []
        self.changed = trio.Event()

    async def __call__(self, messages: list[InboxMessage]) -> None:
        self.seqs += [(m.seq, trio.current_time()) for m in messages]
        if messages:
            self.changed.set()
            self.changed = trio.Event()


async def hold(store: Store, timer: ReorderTimer, seq: int) -> None:
    now = trio.current_time()
    await store.add_received(arrived(seq, now))
    assert await store.release(PEER, 1, now, wait=WAIT) == []
    timer.held()


async def test_a_held_message_is_shown_once_it_has_waited(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        shown = Shown()
        timer = ReorderTimer(store, shown, wait=WAIT, wall_clock=trio.current_time)
        async with trio.open_nursery() as nursery:
            await nursery.start(timer.run)
            await trio.sleep(10.0)
            await hold(store, timer, 2)  # at 10: 1 is missing
            await trio.sleep(1.0)
            await hold(store, timer, 4)  # at 11: 3 is missing
            with trio.fail_after(60):
                await shown.changed.wait()
            assert shown.seqs == [(2, 13.0)]
            with trio.fail_after(60):
                await shown.changed.wait()
            assert shown.seqs == [(2, 13.0), (4, 14.0)]
            nursery.cancel_scope.cancel()


async def test_messages_held_before_a_restart_are_shown_by_the_next_timer(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "db"
    async with await Store.open(path, offload=run_inline) as store:
        await store.add_received(arrived(5, 0.0))
    await trio.sleep(10.0)  # the node was down
    async with await Store.open(path, offload=run_inline) as store:
        shown = Shown()
        timer = ReorderTimer(store, shown, wait=WAIT, wall_clock=trio.current_time)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            with trio.fail_after(60):
                await shown.changed.wait()
            assert shown.seqs == [(5, 10.0)]  # overdue already: shown at once
            nursery.cancel_scope.cancel()


async def test_an_infinite_wait_holds_until_the_gap_fills(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        shown = Shown()
        timer = ReorderTimer(store, shown, wait=math.inf, wall_clock=trio.current_time)
        async with trio.open_nursery() as nursery:
            await nursery.start(timer.run)
            await store.add_received(arrived(2, 0.0))
            timer.held()
            await trio.sleep(86400.0)
            assert shown.seqs == []
            await store.add_received(arrived(1, 86400.0))
            assert [m.seq for m in await store.release(PEER, 1, 86400.0)] == [1, 2]
            nursery.cancel_scope.cancel()


async def test_more_conversations_than_one_pass_takes_are_all_shown(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    peers = [bytes([i]) * 32 for i in range(MAX_PEERS_PER_PASS + 6)]
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        for peer in peers:
            await store.add_received(arrived(2, 0.0, peer))  # each misses its 1
        shown = Shown()
        timer = ReorderTimer(store, shown, wait=WAIT, wall_clock=trio.current_time)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            with trio.fail_after(60):
                while len(shown.seqs) < len(peers):
                    await shown.changed.wait()
            assert await store.oldest_held() is None
            nursery.cancel_scope.cancel()
