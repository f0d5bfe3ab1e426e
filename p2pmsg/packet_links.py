"""Secure links reused for onion packets, per next hop (the relay's and the sender's).

Theory of operation
-------------------
:class:`PacketLinks` keeps one link per next hop: bounded, idle ones closed.
A task reads each link we opened (from :meth:`PacketLinks.run`'s nursery) so
that a link the peer closed, or a peer that died, is dropped at once: a send
on a dead TCP connection succeeds into the kernel's buffer and the packet is
lost without a word.

A link that *breaks* (reset, not closed by us) takes with it the packets we
wrote in the last :data:`RESEND_WINDOW` seconds: a censor that resets
connections does so on seeing a packet (SCENARIOS S17, S19), and that packet
never arrives. Those packets are sent again over a new link, once. A copy
that did arrive is harmless: the next relay refuses a Sphinx packet whose replay tag
it has seen, and the destination shows a message once. At most
:data:`MAX_RECENT` packets per link are kept for this, for that long only.

A link can also die silently: a censor that black-holes a flow (S12's
drop verdicts) lets every write succeed and delivers nothing, and a kernel
retransmits into that for many minutes. So the first packet written on a
link after it last proved alive is followed by a probe (a DHT PING, which
every node answers on the link it came in on), and a link that leaves the
probe unanswered for :data:`PROBE_TIMEOUT` seconds is broken: the packets
written since it last answered go again over a new link, once.

Packets that come back on a link we opened go to
:attr:`PacketLinks.on_packet`: a node nobody can dial (behind a bridge or a
NAT) holds a link open to its *gateway* relay, the last hop of its reply
blocks, which sends them back over it (:meth:`PacketLinks.attach`), as a Nym
client's gateway does.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from p2pmsg.delivery import onion_frames
from p2pmsg.dht import rpc
from p2pmsg.dht.linkpool import Connect
from p2pmsg.dht.peer import Peer
from p2pmsg.dialer import DIAL_ERRORS
from p2pmsg.keys import PublicIdentity
from p2pmsg.link.secure import SecureLink

log = logging.getLogger(__name__)

RESEND_WINDOW = 2.0
"""Seconds after a write within which a link's break is taken to have lost it."""
MAX_RECENT = 16
PROBE_TIMEOUT = 10.0
"""Seconds a link has to answer its probe before it is taken as black-holed."""
MAX_UNREACHABLE = 1024
"""Peers remembered as failing our last dial to them (the oldest forgotten)."""


@dataclass
class _Held:
    """One link of ours: its peer, when it last carried a packet, and the
    packets it carried lately (when, what)."""

    link: SecureLink
    peer: Peer
    used: float
    recent: deque[tuple[float, bytes]] = field(default_factory=lambda: deque(maxlen=MAX_RECENT))
    probe: tuple[bytes, float] | None = None
    """The probe in flight: its request id and when it went."""
    silence: trio.CancelScope = field(default_factory=trio.CancelScope)
    """The scope of the watcher's receive, due when the probe is."""

    def wrote(self, data: bytes | None, now: float) -> None:
        """It carried ``data`` (None: a packet not to be sent again)."""
        self.used = now
        if data is not None:
            self.recent.append((now, data))

    def answered(self, rid: bytes) -> None:
        """A response came: if to the probe, what went before it arrived."""
        if self.probe is None or self.probe[0] != rid:
            return
        sent = self.probe[1]
        while self.recent and self.recent[0][0] <= sent:
            self.recent.popleft()
        self.probe = None
        self.silence.deadline = math.inf


class PacketLinks:
    """Secure links reused for packets, per next hop: see the module docstring."""

    def __init__(self, connect: Connect, *, max_links: int = 64, idle: float = 60.0) -> None:
        self._connect = connect
        self.max_links = max_links
        self.idle = idle
        self.on_packet: Callable[[bytes], object] = lambda packet: None
        self._links: OrderedDict[bytes, _Held] = OrderedDict()
        self._reverse: dict[bytes, SecureLink] = {}
        self._watchers: trio.Nursery | None = None
        self._unreachable: OrderedDict[bytes, None] = OrderedDict()
        self._probes = 0
        self.silent = 0
        """Links broken because they left a probe unanswered."""
        self.last_silent = -math.inf
        """When a link last left its probe unanswered."""
        self.resent = 0
        """Packets sent again because their link broke right after."""

    def __len__(self) -> int:
        return len(self._links)

    def unreachable(self, node_id: bytes) -> bool:
        """Our last dial to ``node_id`` failed (and none worked since)."""
        return node_id in self._unreachable

    def reached(self, node_id: bytes) -> None:
        """``node_id`` answered us another way (a ping): the dial that failed
        last no longer counts against it."""
        self._unreachable.pop(node_id, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the links while this runs; closes them all when cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._watchers = nursery
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    # Before the nursery closes to new arrivals: a send that
                    # completes while the watchers wind down keeps no link.
                    self._watchers = None
        finally:
            await self.close_all()

    def attach(self, link: SecureLink) -> None:
        """An inbound link whose peer asked for its packets over it."""
        self._reverse[link.peer.node_id] = link

    def detach(self, link: SecureLink) -> None:
        if self._reverse.get(link.peer.node_id) is link:
            del self._reverse[link.peer.node_id]

    async def _watch(self, held: _Held) -> None:
        try:
            while True:
                with trio.CancelScope(deadline=held.silence.deadline) as held.silence:
                    data = await held.link.receive()
                if held.silence.cancelled_caught:
                    self.silent += 1
                    self.last_silent = trio.current_time()
                    await self._broken(held, silent=True)
                    return
                if len(data) > 1 and data[1] == onion_frames.PACKET_TYPE:
                    self.on_packet(onion_frames.decode_packet_message(data))
                elif len(data) > 1 and data[1] == rpc.RESPONSE_TYPE:
                    held.answered(rpc.decode(data).rid)
        except trio.ClosedResourceError:  # we closed it
            await self._drop(held)
        except DIAL_ERRORS:
            await self._broken(held)

    async def _probe(self, held: _Held, now: float) -> None:
        """Ask ``held``'s peer to answer, unless a probe is in flight already
        (or the link is gone); a link that breaks as we ask is broken."""
        if held.probe is not None or self._links.get(held.peer.node_id) is not held:
            return
        self._probes += 1
        rid = self._probes.to_bytes(rpc.RID_BYTES, "big")
        held.probe = (rid, now)
        held.silence.deadline = now + PROBE_TIMEOUT
        try:
            await held.link.send(rpc.encode_request(rpc.Request(rid, rpc.Method.PING)))
        except DIAL_ERRORS:
            await self._broken(held)

    async def send(self, peer: Peer, data: bytes) -> None:
        """Send one link message to ``peer``: over our link to it, else over the
        link it holds to us as its gateway, else a new one. Raises what
        dialling raises."""
        await self._send(peer, data, keep=True)

    async def _send(self, peer: Peer, data: bytes, *, keep: bool) -> None:
        """:meth:`send`; ``keep`` it for a resend should its link break."""
        now = trio.current_time()
        held = self._links.get(peer.node_id)
        if held is not None and now - held.used < self.idle:
            try:
                await held.link.send(data)
            except DIAL_ERRORS:
                await self._broken(held)
            else:
                if self._links.get(peer.node_id) is held:
                    held.wrote(data if keep else None, now)
                    self._links.move_to_end(peer.node_id)
                    await self._probe(held, now)
                    return
                if not keep:  # it broke as we wrote: a resend goes once only
                    return
        elif held is not None:
            await self._drop(held)
        reverse = self._reverse.get(peer.node_id)
        if reverse is not None:
            try:
                await reverse.send(data)
            except (*DIAL_ERRORS, trio.ClosedResourceError):
                self.detach(reverse)
            else:
                return
        await self._send_new(peer, data, now, keep=keep)

    async def _send_new(self, peer: Peer, data: bytes, now: float, *, keep: bool) -> None:
        try:
            link, _ = await self._connect(peer.endpoints, PublicIdentity(peer.public_key))
        except DIAL_ERRORS:
            self._unreachable[peer.node_id] = None
            self._unreachable.move_to_end(peer.node_id)
            while len(self._unreachable) > MAX_UNREACHABLE:
                self._unreachable.popitem(last=False)
            raise
        self._unreachable.pop(peer.node_id, None)
        try:
            await link.send(data)
        except BaseException:
            await link.aclose()
            raise
        if self._watchers is None:  # not running, or stopping: nobody would watch it
            await link.aclose()
            return
        old = self._links.pop(peer.node_id, None)
        held = self._links[peer.node_id] = _Held(link, peer, now)
        held.wrote(data if keep else None, now)
        self._watchers.start_soon(self._watch, held)
        if old is not None:
            await old.link.aclose()
        while len(self._links) > self.max_links:
            _, evicted = self._links.popitem(last=False)
            await evicted.link.aclose()
        await self._probe(held, now)

    async def _broken(self, held: _Held, *, silent: bool = False) -> None:
        """``held``'s link broke: drop it, and send again over a new link what
        it carried in the last :data:`RESEND_WINDOW` seconds, or since it last
        answered if it fell ``silent`` (unless we had let the link go already:
        evicted, replaced or stopping)."""
        if self._links.get(held.peer.node_id) is not held or self._watchers is None:
            await held.link.aclose()
            return
        now = trio.current_time()
        again = [data for when, data in held.recent if silent or now - when <= RESEND_WINDOW]
        held.recent.clear()
        await self._drop(held)
        for data in again:
            try:
                await self._send(held.peer, data, keep=False)
            except DIAL_ERRORS as exc:
                log.debug("could not resend a packet: %r", exc)
            else:
                self.resent += 1

    async def _drop(self, held: _Held) -> None:
        if self._links.get(held.peer.node_id) is held:
            del self._links[held.peer.node_id]
        await held.link.aclose()

    async def close_all(self) -> None:
        with trio.CancelScope(shield=True):
            while self._links:
                _, held = self._links.popitem()
                await held.link.aclose()
