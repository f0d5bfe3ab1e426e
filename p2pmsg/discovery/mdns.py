"""Discovery on the LAN over mDNS/DNS-SD: the one module that imports zeroconf.

Theory of operation. :class:`MdnsDiscovery` registers one DNS-SD service
whose TXT record carries the advertised bytes (split by
:mod:`p2pmsg.discovery.txt`), browses the same service type, and hands every
other instance's payload to the ``sightings`` channel. It is LAN-only: it
needs no internet, no DNS server and no router, only multicast to
224.0.0.251:5353 on the one interface whose address it is given, so it keeps
working when the WAN is gone (SCENARIOS S11). It never multicasts anywhere
else: zeroconf is always opened with ``interfaces=[interface_ip]``, because
its default is every interface of the host.

zeroconf runs its own asyncio loop in a thread of its own
(``use_asyncio=False``: never attach to an asyncio loop, there is none
under trio) plus one thread per browser. The bridge to trio:

* blocking zeroconf calls (open, register, resolve, close) run in
  ``trio.to_thread.run_sync``, never on the trio thread;
* the browser thread only posts the service *name* into trio with
  ``trio.from_thread.run_sync`` and the run's trio token, which waits for a
  few lines of trio code, never for a consumer: the name goes into a bounded
  queue of pending names (a name already pending is not queued twice, a full
  queue drops and counts);
* one trio task takes names from that queue and resolves them one at a time
  in a worker thread (a cache hit when the announcement carried the TXT,
  else a query of at most :data:`RESOLVE_TIMEOUT_MS`), decodes the TXT and
  ``send_nowait``\\ s the payload into ``sightings``.

Everything is bounded and counted: :attr:`MdnsDiscovery.dropped` (a full
``sightings`` channel or a full queue of pending names),
:attr:`MdnsDiscovery.malformed` (a TXT record that is not a valid one,
ignored), :attr:`MdnsDiscovery.unresolved` (an instance that did not answer in
time). The one store not bounded here is zeroconf's record cache, which
its TTLs expire. Our own instance is recognised by its name and skipped. What is
handed over is untrusted: the payload is whatever a device on the LAN put
there, to be verified by whoever reads ``sightings``.

The instance name is random per :class:`MdnsDiscovery` (``p2pmsg-`` and 16 hex
digits) unless one is given (letters, digits and hyphens), never the host's
name, and the SRV record points at ``<instance>.local.``, not at the host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import secrets
import socket
from dataclasses import dataclass, field
from functools import partial

import trio
from zeroconf import (
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from p2pmsg.discovery.txt import decode_txt, encode_txt
from p2pmsg.errors import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

DEFAULT_SERVICE_TYPE = "_p2pmsg._tcp.local."
#: How long one resolve may wait for an instance's records (milliseconds);
#: also the longest a cancellation waits for a resolve in progress.
RESOLVE_TIMEOUT_MS = 2000
# An SRV record must name a port. Ours says nothing (the endpoints are inside
# the signed payload), so it is the discard port.
_SRV_PORT = 9
# the instance doubles as the SRV record's host label: letters, digits, hyphens
_INSTANCE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.I)
# RFC 6763 section 7 with RFC 6335 service names: 1-15 letters, digits and
# inner single hyphens, at least one letter; no subtypes
_SERVICE_TYPE = re.compile(
    r"_(?=[a-z0-9-]*[a-z])(?!-)(?!.*--)[a-z0-9-]{1,15}(?<!-)\._(tcp|udp)\.local\.", re.I
)


@dataclass
class _Bridge:
    """What one run shares between the browser thread and trio."""

    token: trio.lowlevel.TrioToken
    own_name: str
    names: trio.MemorySendChannel[str]
    pending: set[str] = field(default_factory=set)


class MdnsDiscovery:
    """mDNS/DNS-SD discovery on the interface that has ``interface_ip``.

    The constructor checks its arguments (``ValueError``) and does no I/O.
    """

    def __init__(
        self,
        interface_ip: str,
        *,
        service_type: str = DEFAULT_SERVICE_TYPE,
        instance: str | None = None,
        max_queue: int = 64,
    ) -> None:
        address = ipaddress.ip_address(interface_ip)  # ValueError for a non-address
        if address.is_unspecified or address.is_multicast:
            # zeroconf would take the unspecified address as "the default
            # interface", i.e. the host's real network
            raise ValueError(f"{interface_ip} is not the address of one interface")
        if not _SERVICE_TYPE.fullmatch(service_type):
            raise ValueError(f"bad DNS-SD service type {service_type!r}")
        if instance is None:
            instance = f"p2pmsg-{secrets.token_hex(8)}"
        if not _INSTANCE.fullmatch(instance):
            raise ValueError(f"bad DNS-SD instance name {instance!r}")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.interface_ip = str(address)
        self.service_type = service_type
        self.instance = instance
        #: Our own service's full name (``instance.service_type``).
        self.name = f"{instance}.{service_type}"
        self._max_queue = max_queue
        self._running = False
        #: Sightings and pending names dropped because a bounded queue was full.
        self.dropped = 0
        #: Instances whose TXT record was not a valid advertisement (ignored).
        self.malformed = 0
        #: Instances that did not answer a resolve in time.
        self.unresolved = 0

    def __repr__(self) -> str:
        return f"MdnsDiscovery({self.instance!r}, {self.service_type!r})"

    async def run(
        self,
        advertise: bytes,
        sightings: trio.MemorySendChannel[bytes],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Advertise ``advertise`` and send others' payloads to ``sightings`` until cancelled.

        Reports started once the service is registered (about 1.6 s of
        probing and announcing) and the browser runs. Never blocks on
        ``sightings``: when it is full the sighting is dropped and counted.
        Raises :class:`LocalProtocolError` before any I/O when ``advertise``
        is empty or too large or this object is already running; ``OSError``
        when the interface cannot be used; zeroconf's ``Error``\\ s when the
        registration fails. On cancellation (or any error) it withdraws the
        service with goodbye packets and closes zeroconf, shielded, and
        returns only once zeroconf's threads have ended: a registration in
        progress is finished first (up to ~1.6 s) and a resolve in progress
        delays it by up to :data:`RESOLVE_TIMEOUT_MS`.
        """
        properties = encode_txt(advertise)
        if self._running:
            raise LocalProtocolError(f"{self!r} is already running")
        self._running = True
        try:
            await self._run(properties, sightings, task_status)
        finally:
            self._running = False

    async def _run(
        self,
        properties: dict[bytes, bytes],
        sightings: trio.MemorySendChannel[bytes],
        task_status: trio.TaskStatus[None],
    ) -> None:
        info = ServiceInfo(
            self.service_type,
            self.name,
            port=_SRV_PORT,
            properties=dict(properties),
            server=f"{self.instance}.local.",
            parsed_addresses=[self.interface_ip],
        )
        names_send, names_recv = trio.open_memory_channel[str](self._max_queue)
        bridge = _Bridge(trio.lowlevel.current_trio_token(), self.name.lower(), names_send)
        zc = await trio.to_thread.run_sync(self._open)
        browser: ServiceBrowser | None = None
        try:
            await trio.to_thread.run_sync(zc.register_service, info)
            handler = partial(self._on_state_change, bridge)
            browser = await trio.to_thread.run_sync(
                partial(ServiceBrowser, zc, self.service_type, handlers=[handler])
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._resolve_names, zc, bridge, names_recv, sightings)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close, zc, browser)

    def _open(self) -> Zeroconf:
        # in a worker thread: opening binds sockets and starts zeroconf's thread.
        # First fail cleanly (OSError) when no interface has the address:
        # zeroconf 0.154 would raise too, but leak its listening socket.
        family = socket.AF_INET6 if ":" in self.interface_ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((self.interface_ip, 0))
        return Zeroconf(interfaces=[self.interface_ip], use_asyncio=False)

    def _on_state_change(
        self,
        bridge: _Bridge,
        zeroconf: Zeroconf,  # the browser passes all four by keyword
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        # in the browser's thread: hand the name over and return at once
        if state_change is ServiceStateChange.Removed:
            return
        # RunFinishedError cannot happen: run() closes the browser before it returns
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._enqueue, bridge, name, trio_token=bridge.token)

    def _enqueue(self, bridge: _Bridge, name: str) -> None:
        # in trio: the queue holds exactly the pending names, so it never overflows
        if name.lower() == bridge.own_name or name in bridge.pending:
            return
        if len(bridge.pending) >= self._max_queue:
            self.dropped += 1
            return
        bridge.pending.add(name)
        bridge.names.send_nowait(name)

    async def _resolve_names(
        self,
        zc: Zeroconf,
        bridge: _Bridge,
        names: trio.MemoryReceiveChannel[str],
        sightings: trio.MemorySendChannel[bytes],
    ) -> None:
        async for name in names:
            # an update arriving from now on queues the name again
            bridge.pending.discard(name)
            found = await trio.to_thread.run_sync(
                partial(zc.get_service_info, self.service_type, name, timeout=RESOLVE_TIMEOUT_MS)
            )
            if found is None:
                self.unresolved += 1
                continue
            try:
                payload = decode_txt(found.properties)
            except RemoteProtocolError as exc:
                self.malformed += 1
                log.debug("ignoring %s: %s", name, exc)
                continue
            try:
                sightings.send_nowait(payload)
            except (trio.WouldBlock, trio.BrokenResourceError):
                self.dropped += 1


def _close(zc: Zeroconf, browser: ServiceBrowser | None) -> None:
    # in a worker thread: joins the browser's thread, sends goodbyes for our
    # service (Zeroconf.close unregisters all services), joins zeroconf's thread
    if browser is not None:
        browser.cancel()
    zc.close()
