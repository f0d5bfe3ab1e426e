"""PacketLinks (the relay's reused links) when the node stops mid-send."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from p2pmsg.dht.peer import Peer
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.relay import PacketLinks


class _Link:
    """The neighbour of the layer under test: a link that records what it saw.
    Its reader, once cancelled, lingers until ``linger`` is set."""

    def __init__(self, linger: trio.Event | None = None) -> None:
        self.sent: list[bytes] = []
        self.closed = False
        self.linger = linger

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def receive(self) -> bytes:
        try:
            await trio.sleep_forever()
        finally:
            if self.linger is not None:
                with trio.CancelScope(shield=True):
                    await self.linger.wait()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self.closed = True


async def test_a_send_that_completes_while_the_links_stop_keeps_no_link() -> None:
    """The node is stopping (PacketLinks.run cancelled, its link watchers still
    winding down) while a shielded relay send is dialling: when the dial
    completes the packet goes and the new link is closed at once. Keeping it
    meant starting a watcher in a nursery that closes to new arrivals as soon
    as the last watcher ends: a RuntimeError that crashed a stopping node (seen
    once in the churn simulation)."""
    dialling, release, linger = trio.Event(), trio.Event(), trio.Event()
    first, second = _Link(linger), _Link()

    async def connect(endpoints: Sequence[str], peer: PublicIdentity) -> tuple[Any, Any]:
        if endpoints == ("sim:second",):
            dialling.set()
            await release.wait()
            return second, None
        return first, None

    def peer(name: str) -> Peer:
        identity = Identity.generate()
        return Peer(identity.node_id, identity.public.key, (f"sim:{name}",), name)

    links = PacketLinks(connect)
    async with trio.open_nursery() as nursery:
        run_scope = trio.CancelScope()

        async def run_links(task_status: trio.TaskStatus[None]) -> None:
            with run_scope:
                await links.run(task_status=task_status)

        await nursery.start(run_links)
        await links.send(peer("first"), b"one")  # a link, and a watcher reading it

        async def shielded_send() -> None:
            with trio.CancelScope(shield=True):
                await links.send(peer("second"), b"two")

        nursery.start_soon(shielded_send)
        await dialling.wait()
        run_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()  # the watcher lingers
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        try:
            # Sent, and closed at once: no link is kept, so no watcher has to
            # be started in a nursery that may close to new arrivals any moment.
            assert second.sent == [b"two"]
            assert second.closed
            assert not first.closed  # its watcher still lingers
        finally:
            linger.set()
    assert first.closed
    assert len(links) == 0
