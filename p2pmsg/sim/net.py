"""A deterministic simulated internet: hosts, listeners and TCP-like streams.

Theory of operation. A :class:`SimNetwork` is plain data plus trio parking
lots; it owns no task. Every byte moves inside the task that calls ``send``,
``receive``, ``connect`` or ``accept``, so nothing runs that a nursery did not
start, and under ``trio.testing.MockClock(autojump_threshold=0)`` an hour of
latency costs nothing.

A connection is a *flow* with two *directions* (``"c2s"`` from the dialler,
``"s2c"`` back). Each direction is a bounded FIFO of ``(deliver_at, data)``:

* ``send`` waits while the direction holds ``queue_packets`` packets (the
  receive window: back-pressure), then hands a :class:`Packet` to
  ``net.policy``, which returns a :class:`Verdict`. :class:`Deliver` queues
  the data (or the data it carries instead: a forged answer), due ``delay``
  seconds from now. :class:`Drop` black-holes the
  packet and the rest of that direction, as a censor does to a TCP flow: the
  receiver stalls after the data queued before, and the lost packets keep
  occupying the window, so the sender blocks once it is full. :class:`Reset`
  breaks the whole flow: every later or pending operation on either end
  raises ``trio.BrokenResourceError`` (the send that carried the packet
  returns, as a real send returns before the RST comes back).
* ``receive`` takes the head packet once ``trio.current_time()`` reaches its
  ``deliver_at`` (sleeping with a deadline, woken early by a reset or a
  close). Order is preserved: a packet never overtakes the one before it.
* ``connect`` sends a SYN and the listener's SYN/ACK through the same policy
  (kind ``"syn"``, empty data): dropped means ``connect`` hangs (the caller
  puts a timeout on it), reset means ``ConnectionRefusedError``, and so does
  a port nobody listens on or a full backlog.

Closing one end is a FIN: the peer's ``receive`` raises ``trio.EndOfChannel``
once the queued data is drained, its ``send`` raises
``trio.BrokenResourceError``. Operations on one's own closed end raise
``trio.ClosedResourceError``. Cancelled operations never take effect: a
cancelled ``receive`` loses no packet, a cancelled ``send`` queues none.

With ``capture=N`` the first N delivered packets (SYNs included) are kept in
``net.captured``; later ones are only counted in ``net.capture_overflow``.
"""

from __future__ import annotations

import errno
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import trio

Kind = Literal["syn", "data"]
Direction = Literal["c2s", "s2c"]
Address = tuple[str, int]

EPHEMERAL_PORTS = range(49152, 65536)
DEFAULT_QUEUE_PACKETS = 64
DEFAULT_BACKLOG = 4096
"""Linux's ``somaxconn`` on these machines: trio listens with the OS maximum.
(It was 16, which refused bursts of lookups that a real node accepts: S14.)"""
DEFAULT_MAX_PACKET = 1 << 20


@dataclass(frozen=True)
class Packet:
    """One packet as the network (and a censor) sees it."""

    src_host: str
    src_port: int
    dst_host: str
    dst_port: int
    flow: int
    direction: Direction
    data: bytes
    kind: Kind = "data"


@dataclass(frozen=True)
class Deliver:
    """Deliver the packet ``delay`` seconds after it was sent; with ``data``,
    deliver that instead (an on-path injector's answer, arriving first)."""

    delay: float = 0.0
    data: bytes | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError(f"bad delay {self.delay!r}")


@dataclass(frozen=True)
class Drop:
    """Black-hole the packet and the rest of its flow direction."""


@dataclass(frozen=True)
class Reset:
    """Break the flow: both ends see ``BrokenResourceError``."""


Verdict = Deliver | Drop | Reset
Policy = Callable[[Packet], Verdict]

DELIVER = Deliver()
DROP = Drop()
RESET = Reset()


def deliver_all(packet: Packet) -> Verdict:
    """The default policy: an uncensored network with no latency."""
    del packet
    return DELIVER


class _Direction:
    """One direction of a flow: a bounded queue and the state both ends watch."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.queue: deque[tuple[float, bytes]] = deque()
        self.lost = 0  # black-holed packets: they never leave the window
        self.blackholed = False
        self.fin = False  # the sending end closed
        self.receiver_closed = False
        self.lot = trio.lowlevel.ParkingLot()

    def has_room(self) -> bool:
        return len(self.queue) + self.lost < self.capacity


class _Flow:
    def __init__(self, flow_id: int, capacity: int) -> None:
        self.id = flow_id
        self.broken = False
        self.c2s = _Direction(capacity)
        self.s2c = _Direction(capacity)

    def reset(self) -> None:
        self.broken = True
        for direction in (self.c2s, self.s2c):
            direction.queue.clear()
            direction.lot.unpark_all()


class SimStream(trio.abc.Channel[bytes]):
    """One end of a simulated, frame-preserving, TCP-like connection."""

    def __init__(
        self, net: SimNetwork, flow: _Flow, role: Direction, local: Address, remote: Address
    ) -> None:
        self.local = local
        self.remote = remote
        self._net = net
        self._flow = flow
        self._role: Direction = role
        self._out = flow.c2s if role == "c2s" else flow.s2c
        self._in = flow.s2c if role == "c2s" else flow.c2s
        self._closed = False

    @property
    def flow_id(self) -> int:
        return self._flow.id

    @property
    def remote_host(self) -> str:
        """The peer's host, for per-address limits (:func:`p2pmsg.abc.remote_host`)."""
        return self.remote[0]

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this end of the stream was closed")
        if self._flow.broken:
            raise trio.BrokenResourceError("the connection was reset")

    async def send(self, value: bytes) -> None:
        """Queue one packet. Blocks while the window is full.

        Raises ``ClosedResourceError`` after our ``aclose``,
        ``BrokenResourceError`` after a reset or the peer's close, and
        ``ValueError`` above ``max_packet``. Cancelled: nothing was sent.
        """
        data = bytes(value)
        if len(data) > self._net.max_packet:
            raise ValueError(f"packet of {len(data)} bytes > {self._net.max_packet}")
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check_usable()
            if self._out.receiver_closed:
                raise trio.BrokenResourceError("the peer closed the stream")
            if self._out.has_room():
                break
            await self._out.lot.park()
        self._net._carry(self._packet(data), self._flow, self._out)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _packet(self, data: bytes) -> Packet:
        (src_host, src_port), (dst_host, dst_port) = self.local, self.remote
        return Packet(src_host, src_port, dst_host, dst_port, self._flow.id, self._role, data)

    async def receive(self) -> bytes:
        """The next packet, once due. Raises ``EndOfChannel`` after the peer's
        close and the queued data; ``BrokenResourceError`` after a reset;
        ``ClosedResourceError`` after our ``aclose``. Cancelled: nothing lost.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        inbox = self._in
        while True:
            self._check_usable()
            if inbox.queue:
                due, data = inbox.queue[0]
                if trio.current_time() >= due:
                    inbox.queue.popleft()
                    inbox.lot.unpark_all()
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                with trio.move_on_at(due):
                    await inbox.lot.park()
            elif inbox.fin and not inbox.blackholed:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise trio.EndOfChannel
            else:
                await inbox.lot.park()

    async def aclose(self) -> None:
        """Close our end (idempotent). Pending operations on it are woken."""
        if not self._closed:
            self._closed = True
            self._out.fin = True
            self._in.receiver_closed = True
            self._in.queue.clear()
            self._out.lot.unpark_all()
            self._in.lot.unpark_all()
        await trio.lowlevel.checkpoint()


class SimListener(trio.abc.Listener[SimStream]):
    """A listening port with a bounded backlog of established connections."""

    def __init__(self, net: SimNetwork, address: Address, backlog: int) -> None:
        self.address = address
        self._net = net
        self._backlog = backlog
        self._pending: deque[SimStream] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    @property
    def port(self) -> int:
        return self.address[1]

    def _offer(self, stream: SimStream) -> bool:
        if self._closed or len(self._pending) >= self._backlog:
            return False
        self._pending.append(stream)
        self._lot.unpark_all()
        return True

    async def accept(self) -> SimStream:
        """The next connection. Raises ``ClosedResourceError`` once closed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the listener was closed")
            if self._pending:
                stream = self._pending.popleft()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return stream
            await self._lot.park()

    async def aclose(self) -> None:
        """Stop listening (idempotent); connections not yet accepted are reset."""
        if not self._closed:
            self._closed = True
            self._net._unlisten(self)
            for stream in self._pending:
                stream._flow.reset()
            self._pending.clear()
            self._lot.unpark_all()
        await trio.lowlevel.checkpoint()


@dataclass
class SimHost:
    """A named host, with where it sits on the internet (for censors' scopes)."""

    name: str
    ip: str = ""
    asn: int = 0
    country: str = ""
    isp: str = ""
    next_port: int = EPHEMERAL_PORTS.start


class SimNetwork:
    """Named hosts, their listeners and the policy every packet passes."""

    def __init__(
        self,
        *,
        queue_packets: int = DEFAULT_QUEUE_PACKETS,
        backlog: int = DEFAULT_BACKLOG,
        max_packet: int = DEFAULT_MAX_PACKET,
        capture: int = 0,
    ) -> None:
        if min(queue_packets, backlog, max_packet) < 1 or capture < 0:
            raise ValueError("sizes must be positive")
        self.queue_packets = queue_packets
        self.backlog = backlog
        self.max_packet = max_packet
        self.policy: Policy = deliver_all
        self.capture_limit = capture
        self.captured: list[Packet] = []
        self.capture_overflow = 0
        self._hosts: dict[str, SimHost] = {}
        self._listeners: dict[Address, SimListener] = {}
        self._flows = 0

    @property
    def hosts(self) -> dict[str, SimHost]:
        """A copy of the name -> host table."""
        return dict(self._hosts)

    def add_host(
        self, name: str, *, ip: str = "", asn: int = 0, country: str = "", isp: str = ""
    ) -> SimHost:
        """Add a host. Raises ``ValueError`` if the name is taken or empty."""
        if not name or name in self._hosts:
            raise ValueError(f"host name {name!r} is empty or taken")
        self._hosts[name] = SimHost(name, ip, asn, country, isp)
        return self._hosts[name]

    def host(self, name: str) -> SimHost:
        """The host called ``name``, added if it does not exist yet."""
        return self._hosts.get(name) or self.add_host(name)

    async def listen(self, host: str, port: int = 0, *, backlog: int | None = None) -> SimListener:
        """Listen on ``host:port`` (0 picks a free ephemeral port).

        Raises ``OSError(EADDRINUSE)`` if someone listens there already.
        """
        await trio.lowlevel.checkpoint()
        if not 0 <= port <= 65535:
            raise ValueError(f"bad port {port}")
        port = port or self._ephemeral_port(self.host(host))
        self.host(host)  # port given: the host may still be new
        if (host, port) in self._listeners:
            raise OSError(errno.EADDRINUSE, f"{host}:{port} is in use")
        listener = SimListener(self, (host, port), backlog or self.backlog)
        self._listeners[host, port] = listener
        return listener

    def _unlisten(self, listener: SimListener) -> None:
        if self._listeners.get(listener.address) is listener:
            del self._listeners[listener.address]

    def _ephemeral_port(self, host: SimHost) -> int:
        for _ in EPHEMERAL_PORTS:
            port = host.next_port
            host.next_port = port + 1 if port + 1 in EPHEMERAL_PORTS else EPHEMERAL_PORTS.start
            if (host.name, port) not in self._listeners:
                return port
        raise OSError(errno.EADDRNOTAVAIL, f"no free port on {host.name}")

    async def connect(
        self, src_host: str, dst_host: str, dst_port: int, *, window: int | None = None
    ) -> SimStream:
        """Open a stream from ``src_host`` to ``dst_host:dst_port``.

        ``window`` is this flow's ``queue_packets`` (the network's by default).
        Raises ``ConnectionRefusedError`` (nobody listens, full backlog, reset
        SYN), ``OSError(EHOSTUNREACH)`` for an unknown host; hangs while the
        policy drops the SYN. Cancelled: no connection was made.
        """
        if window is not None and window < 1:
            raise ValueError("window must be positive")
        src = self.host(src_host)
        if dst_host not in self._hosts:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EHOSTUNREACH, f"no route to host {dst_host!r}")
        local = (src.name, self._ephemeral_port(src))
        remote = (dst_host, dst_port)
        self._flows += 1
        flow = _Flow(self._flows, window or self.queue_packets)
        await self._carry_syn(Packet(*local, *remote, flow.id, "c2s", b"", "syn"))
        self._listener_at(remote)
        await self._carry_syn(Packet(*remote, *local, flow.id, "s2c", b"", "syn"))
        server = SimStream(self, flow, "s2c", remote, local)
        if not self._listener_at(remote)._offer(server):
            raise ConnectionRefusedError(errno.ECONNREFUSED, "the listen backlog is full")
        return SimStream(self, flow, "c2s", local, remote)

    def _listener_at(self, address: Address) -> SimListener:
        listener = self._listeners.get(address)
        if listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "nobody listens on that port")
        return listener

    async def _carry_syn(self, packet: Packet) -> None:
        match self.policy(packet):
            case Drop():
                await trio.sleep_forever()
            case Reset():
                await trio.lowlevel.checkpoint()
                raise ConnectionRefusedError(errno.ECONNREFUSED, "the connection was reset")
            case Deliver(delay=delay):
                self._record(packet)
                await trio.sleep(delay)

    def _carry(self, packet: Packet, flow: _Flow, out: _Direction) -> None:
        """Judge a data packet and queue it, lose it or break its flow."""
        match self.policy(packet):
            case Reset():
                flow.reset()
                return
            case Drop():
                out.blackholed = True
            case Deliver(delay=delay, data=data) if not out.blackholed:
                out.queue.append(
                    (trio.current_time() + delay, packet.data if data is None else data)
                )
                self._record(packet)
        if out.blackholed:
            out.lost += 1
        out.lot.unpark_all()

    def _record(self, packet: Packet) -> None:
        if len(self.captured) < self.capture_limit:
            self.captured.append(packet)
        elif self.capture_limit:
            self.capture_overflow += 1
