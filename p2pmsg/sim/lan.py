"""A simulated LAN segment: mDNS discovery for nodes in the simulator.

Real zeroconf needs real multicast and threads, neither of which runs under
trio's mock clock, so a :class:`SimLan` stands in for one LAN's multicast
group. Each member's :class:`SimLanDiscovery` has the shape of
:class:`p2pmsg.discovery.mdns.MdnsDiscovery` (the :class:`p2pmsg.abc.Discovery`
protocol) and is timed like it: registering takes :data:`REGISTER` seconds of
probing and announcing, after which the newcomer's advertisement reaches every
member and every member's reaches the newcomer, :data:`ANSWER` seconds later
(a browser's query and its answers). Leaving withdraws the advertisement.
Sightings are sent without blocking and dropped when the channel is full, as
the real one does. Only the nodes' own code decides what a sighting is worth.
"""

from __future__ import annotations

import itertools

import trio

REGISTER = 1.6
"""Seconds from start to a registered, announced service (zeroconf's probing)."""
ANSWER = 0.12
"""Seconds for an announcement or a query's answers to reach a browser."""


class SimLan:
    """One LAN's multicast group; make each member's discovery with :meth:`discovery`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._members: dict[int, tuple[bytes, trio.MemorySendChannel[bytes]]] = {}
        self._ids = itertools.count()
        self.dropped = 0

    def __repr__(self) -> str:
        return f"SimLan({self.name!r}, members={len(self._members)})"

    def discovery(self) -> SimLanDiscovery:
        return SimLanDiscovery(self)

    def _tell(self, sightings: trio.MemorySendChannel[bytes], payload: bytes) -> None:
        try:
            sightings.send_nowait(payload)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1

    async def _deliver_later(
        self, sightings: trio.MemorySendChannel[bytes], payload: bytes
    ) -> None:
        await trio.sleep(ANSWER)
        self._tell(sightings, payload)


class SimLanDiscovery:
    """One member's discovery on a :class:`SimLan` (see the module docstring)."""

    def __init__(self, lan: SimLan) -> None:
        self.lan = lan
        self._nursery: trio.Nursery | None = None
        self._joined: tuple[int, bytes, trio.MemorySendChannel[bytes]] | None = None

    async def run(
        self,
        advertise: bytes,
        sightings: trio.MemorySendChannel[bytes],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Advertise ``advertise`` and send others' payloads to ``sightings`` until cancelled."""
        await trio.sleep(REGISTER)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._join(advertise, sightings)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._leave()

    def _join(self, advertise: bytes, sightings: trio.MemorySendChannel[bytes]) -> None:
        assert self._nursery is not None
        lan, me = self.lan, next(self.lan._ids)
        for payload, theirs in lan._members.values():
            self._nursery.start_soon(lan._deliver_later, sightings, payload)
            self._nursery.start_soon(lan._deliver_later, theirs, advertise)
        lan._members[me] = (advertise, sightings)
        self._joined = me, advertise, sightings

    def _leave(self) -> None:
        if self._joined is not None:
            self.lan._members.pop(self._joined[0], None)
            self._joined = None

    def move(self, lan: SimLan) -> None:
        """The device is carried to ``lan``: it leaves this LAN's group at
        once and announces on the new one :data:`REGISTER` seconds later (a
        no-op for a discovery not running)."""
        if self._joined is None or self._nursery is None:
            self.lan = lan
            return
        _, advertise, sightings = self._joined
        self._leave()
        self.lan = lan
        self._nursery.start_soon(self._rejoin, advertise, sightings)

    async def _rejoin(self, advertise: bytes, sightings: trio.MemorySendChannel[bytes]) -> None:
        await trio.sleep(REGISTER)
        self._join(advertise, sightings)
