"""Showing a conversation in order without holding a message back for long.

Every message carries its number in the conversation, and the store holds a
message back while an earlier number is missing (``Store.release``). A
missing message is usually on a slower route and comes within a second; a
lost one comes only with the sender's retry, many seconds later, and holding
everything after it that long turns one slow message into several late ones.
So a message waits at most ``wait`` seconds: :class:`ReorderTimer` shows what
has waited that long, with everything before it, gaps and all, and a missing
message is shown when it comes (late, never lost). Signal and Briar wait not
at all and sort by the sender's clock; the application can too (``sent``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from p2pmsg.store import InboxMessage, Store

MAX_PEERS_PER_PASS = 64
"""Conversations released per pass; the next pass takes the rest."""


class ReorderTimer:
    """Releases held-back messages once they have waited ``wait`` seconds.

    Call :meth:`held` whenever a new message stays held back; :meth:`run`
    sleeps until the oldest held message is due (the store is the truth, so
    messages held before a restart are released too).
    """

    def __init__(
        self,
        store: Store,
        show: Callable[[list[InboxMessage]], Awaitable[None]],
        *,
        wait: float,
        wall_clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._show = show
        self._wait = wait
        self._wall_clock = wall_clock
        self._wake = trio.Event()

    def held(self) -> None:
        """A message was held back: its deadline may be the nearest now."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            now = self._wall_clock()
            cutoff = now - self._wait  # the store compares with this very value
            oldest = await self._store.oldest_held()
            if oldest is None or oldest > cutoff:
                with trio.move_on_after(math.inf if oldest is None else oldest - cutoff):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            shown = 0
            for peer in await self._store.held_peers(cutoff, MAX_PEERS_PER_PASS):
                messages = await self._store.release(peer, 0, now, wait=self._wait)
                shown += len(messages)
                await self._show(messages)
            if not shown:  # the store compares with the same cutoff; never spin
                await trio.sleep(self._wait)
