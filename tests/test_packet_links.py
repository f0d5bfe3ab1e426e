"""PacketLinks (the relay's reused links) when the node stops mid-send."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import trio

from p2pmsg.dht import rpc
from p2pmsg.dht.peer import Peer
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.packet_links import (
    MAX_RECENT,
    MAX_UNREACHABLE,
    PROBE_TIMEOUT,
    RESEND_WINDOW,
    PacketLinks,
)


class _Link:
    """The neighbour of the layer under test: a link that records what it saw
    and answers probes as a peer's node does (unless ``mute``: black-holed).
    Its reader, once cancelled, lingers until ``linger`` is set."""

    def __init__(self, linger: trio.Event | None = None, *, mute: bool = False) -> None:
        self.sent: list[bytes] = []
        self.probes = 0
        self.closed = False
        self.linger = linger
        self.mute = mute
        self._replies, self._inbox = trio.open_memory_channel[bytes | None](64)

    async def send(self, data: bytes) -> None:
        if data[1:2] != bytes([rpc.REQUEST_TYPE]):
            self.sent.append(data)
            return
        self.probes += 1
        if not self.mute:
            answer = rpc.Response(rpc.decode(data).rid, rpc.Status.OK)
            self._replies.send_nowait(rpc.encode_response(answer))

    def reset(self) -> None:
        """The connection is reset: the reader raises as a reset one's does."""
        self._replies.send_nowait(None)

    async def receive(self) -> bytes:
        try:
            data = await self._inbox.receive()
        except trio.Cancelled:
            if self.linger is not None:
                with trio.CancelScope(shield=True):
                    await self.linger.wait()
            raise
        if data is None:
            raise trio.BrokenResourceError("reset")
        return data

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


class _Inbound(_Link):
    """An inbound link whose peer is ``peer``; ``broken`` makes sends fail."""

    def __init__(self, who: PublicIdentity, *, broken: bool = False) -> None:
        super().__init__()
        self.peer = who
        self.broken = broken

    async def send(self, data: bytes) -> None:
        if self.broken:
            raise trio.BrokenResourceError
        await super().send(data)


async def test_packets_for_a_node_that_chose_us_as_gateway_go_back_over_its_link() -> None:
    """It cannot be dialled (it is behind a bridge); its own link is the way back,
    until that link breaks or ends, and then we dial as for anyone."""
    identity = Identity.generate()
    target = Peer(identity.node_id, identity.public.key, ("sim:unreachable",), "x")
    dialled = _Link()
    dials: list[Sequence[str]] = []

    async def connect(endpoints: Sequence[str], peer: PublicIdentity) -> tuple[Any, Any]:
        dials.append(endpoints)
        return dialled, None

    links = PacketLinks(connect)
    inbound = _Inbound(identity.public)
    links.attach(inbound)  # type: ignore[arg-type]
    await links.send(target, b"one")
    assert inbound.sent == [b"one"]
    assert dials == []
    links.detach(_Inbound(identity.public))  # type: ignore[arg-type]  # not the attached one
    await links.send(target, b"two")
    assert inbound.sent == [b"one", b"two"]

    broken = _Inbound(identity.public, broken=True)
    links.attach(broken)  # type: ignore[arg-type]  # a newer link replaces the older
    await links.send(target, b"three")  # it fails: we dial
    assert dials == [("sim:unreachable",)]
    assert dialled.sent == [b"three"]
    await links.close_all()


def breakable_links(*, mute: bool = True) -> tuple[PacketLinks, list[_Link], Peer]:
    """PacketLinks whose every dial makes a new link (listed in order; ``mute``
    by default, so that a reset, not a probe's answer, tells the fate of the
    last packets), and the peer to send to."""
    dialled: list[_Link] = []

    async def connect(endpoints: Sequence[str], peer: PublicIdentity) -> tuple[Any, Any]:
        dialled.append(_Link(mute=mute))
        return dialled[-1], None

    identity = Identity.generate()
    target = Peer(identity.node_id, identity.public.key, ("sim:next",), "x")
    return PacketLinks(connect), dialled, target


async def test_packets_written_just_before_a_link_breaks_go_again_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A censor resets a connection on seeing a packet, which then never
    arrives: what the link carried in the last RESEND_WINDOW seconds goes
    again over a new link, once; older packets do not."""
    links, dialled, target = breakable_links()
    async with trio.open_nursery() as nursery:
        await nursery.start(links.run)
        await links.send(target, b"old")
        await trio.sleep(RESEND_WINDOW + 1)
        await links.send(target, b"new")
        dialled[0].reset()
        await trio.testing.wait_all_tasks_blocked()
        assert [link.sent for link in dialled] == [[b"old", b"new"], [b"new"]]
        assert links.resent == 1
        dialled[1].reset()  # the resent packet is not sent a third time
        await trio.testing.wait_all_tasks_blocked()
        assert len(dialled) == 2
        assert len(links) == 0
        nursery.cancel_scope.cancel()


async def test_at_most_max_recent_packets_of_a_link_go_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links, dialled, target = breakable_links()
    async with trio.open_nursery() as nursery:
        await nursery.start(links.run)
        packets = [b"p%d" % i for i in range(MAX_RECENT + 4)]
        for packet in packets:
            await links.send(target, packet)
        dialled[0].reset()
        await trio.testing.wait_all_tasks_blocked()
        assert dialled[1].sent == packets[-MAX_RECENT:]  # the newest, in order
        assert links.resent == MAX_RECENT
        nursery.cancel_scope.cancel()


async def test_a_peer_whose_last_dial_failed_is_remembered_until_one_works() -> None:
    """Route selection skips relays we cannot reach (a border block cuts off
    our country's relays from them too): the links remember a failed dial
    until the next one to that peer works, for at most MAX_UNREACHABLE peers."""
    refuse = True

    async def connect(endpoints: Sequence[str], peer: PublicIdentity) -> tuple[Any, Any]:
        if refuse:
            raise OSError("blocked")
        return _Link(), None

    peers = [Identity.generate() for _ in range(MAX_UNREACHABLE + 1)]

    def peer(n: int) -> Peer:
        return Peer(peers[n].node_id, peers[n].public.key, ("sim:x",), "x")

    links = PacketLinks(connect)
    async with trio.open_nursery() as nursery:
        await nursery.start(links.run)
        assert not links.unreachable(peer(0).node_id)
        for n in range(MAX_UNREACHABLE + 1):
            with pytest.raises(OSError, match="blocked"):
                await links.send(peer(n), b"p")
        assert not links.unreachable(peer(0).node_id)  # the oldest forgotten
        assert links.unreachable(peer(1).node_id) and links.unreachable(
            peer(MAX_UNREACHABLE).node_id
        )
        refuse = False
        await links.send(peer(1), b"p")
        assert not links.unreachable(peer(1).node_id)
        nursery.cancel_scope.cancel()


async def test_a_black_holed_link_is_found_by_its_probe_and_its_packets_go_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A censor that drops a flow silently lets every write succeed: the first
    packet after the link last answered brings one probe, and when the probe
    stays unanswered PROBE_TIMEOUT seconds, everything written since goes
    again over a new link, once."""
    links, dialled, target = breakable_links()
    async with trio.open_nursery() as nursery:
        await nursery.start(links.run)
        start = trio.current_time()
        for packet in (b"a", b"b", b"c"):
            await links.send(target, packet)
            await trio.sleep(RESEND_WINDOW)  # older than a reset would resend
        assert dialled[0].probes == 1  # one in flight at a time
        await trio.sleep(PROBE_TIMEOUT)
        assert links.silent == 1 and dialled[0].closed
        assert links.last_silent == start + PROBE_TIMEOUT  # the sender's cut-off sees when
        assert dialled[1].sent == [b"a", b"b", b"c"]
        assert links.resent == 3
        nursery.cancel_scope.cancel()


async def test_a_link_that_answers_is_kept_and_what_it_confirmed_is_not_resent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links, dialled, target = breakable_links(mute=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(links.run)
        await links.send(target, b"a")
        await trio.sleep(PROBE_TIMEOUT * 3)
        await links.send(target, b"b")
        assert links.silent == 0 and len(dialled) == 1 and links.last_silent == -math.inf
        assert dialled[0].probes == 2  # one per packet after the link answered
        await trio.testing.wait_all_tasks_blocked()  # the answer is read
        dialled[0].reset()  # at once: "b" was answered for, nothing to resend
        await trio.testing.wait_all_tasks_blocked()
        assert links.resent == 0 and len(dialled) == 1
        nursery.cancel_scope.cancel()
