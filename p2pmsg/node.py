"""The node: owns the nursery, wires links, store and delivery together.

``async with Node.open(home, transports) as node:`` starts one listener per
configured endpoint whose transport was handed in, the DHT (joined from
every seed source, see :mod:`p2pmsg.join`) and the outbox sender
(:mod:`p2pmsg.delivery.sender`); leaving the block cancels them all. Nothing
runs in the background that this nursery did not start.

Inbound links carry delivery frames, DHT requests and onion packets
(:mod:`p2pmsg.inbound`). A message goes over an onion route by default
(:mod:`p2pmsg.onion_service`) or, when sent ``direct``, over a secure link
to the contact. Either way it is committed to the outbox before anything leaves the host, and the
receiver commits to its inbox (deduplicated by sender and message id)
before it acks, so the application sees every message once, across crashes
on either side.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from p2pmsg import join
from p2pmsg.abc import Discovery, KeepsReplays, Transport
from p2pmsg.admission import Admission, Limits
from p2pmsg.bootstrap import BootstrapLists
from p2pmsg.bridges import Keeper, Supply
from p2pmsg.delivery import files, frames
from p2pmsg.delivery.frames import MessageKind, MsgFrame
from p2pmsg.delivery.liveness import NetworkWatch
from p2pmsg.delivery.onion_path import MAX_ONION_BODY
from p2pmsg.delivery.reorder import ReorderTimer
from p2pmsg.delivery.sender import Sender
from p2pmsg.dht.peer import Peer
from p2pmsg.dht.service import Dht, DhtOptions
from p2pmsg.dialer import DIAL_ERRORS, Dialer
from p2pmsg.discovery.mdns import MdnsDiscovery
from p2pmsg.endpoint import Endpoint, Invite
from p2pmsg.errors import (
    ListenError,
    NoSuchFile,
    P2PMsgError,
    UnknownContact,
)
from p2pmsg.home import Config, Home
from p2pmsg.inbound import Inbound
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.link import tunnel
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.network import local_network_label
from p2pmsg.onion_service import OnionService, OnionServiceOptions
from p2pmsg.pathscore import PathScores
from p2pmsg.puzzle import Pricing
from p2pmsg.store import (
    MAX_QUEUED,
    MAX_QUEUED_PER_PEER,
    InboxMessage,
    Offload,
    OutboxMessage,
    Store,
)
from p2pmsg.store_link import DurableReplay

log = logging.getLogger(__name__)

PATHS_KEY = "path_scores"
BRIDGED_MAILBOX_POLL = 60.0
NEARBY_FETCHES = 2
"""New LAN neighbours asked for our mailbox at once."""
"""How often a node that uses bridges fetches its mailbox: nobody can dial it,
so every message and ack for it waits there."""


@dataclass(frozen=True)
class NodeOptions:
    """Tunables; the defaults are what a headless node runs with."""

    dial_timeout: float = 10.0
    handshake_timeout: float = 30.0
    ack_timeout: float = 15.0
    idle_timeout: float = 120.0
    """Seconds a bridge's tunnel may stay silent before it is closed."""
    link_idle: float = 900.0
    """Seconds an inbound link may stay silent before it is closed. Relays'
    links are kept warm long after their last packet, as Tor keeps idle
    connections for 30 to 60 minutes: a dial on every hop of a rare sender's
    route slows its messages (S9, S18). Must be above the onion service's
    and the DHT pool's ``link_idle``, so that the side that opened a link
    closes it (a ``ValueError`` otherwise); an idle
    link gives way to a newcomer when the inbound links are full
    (:mod:`p2pmsg.admission`)."""
    message_ttl: float = 7 * 86400.0
    replay_window: float = 86400.0
    replay_capacity: int = 100_000
    admission: Limits = field(default_factory=Limits)
    """Limits on inbound links per address, per network and in all, and
    the memory their buffers may hold (:mod:`p2pmsg.admission`)."""
    max_parallel_peers: int = 16
    batch: int = 64
    app_queue: int = 256
    max_queued_per_contact: int = MAX_QUEUED_PER_PEER
    max_queued: int = MAX_QUEUED
    poll_interval: float = 60.0
    cache_every: float = 600.0
    bootstrap_every: float = 6 * 3600.0
    """How often the signed bootstrap lists of our publishers are looked up."""
    capabilities: frozenset[str] = frozenset()
    reorder_wait: float = 3.0
    """Longest a message is held back behind an earlier, missing one of its
    conversation before it is shown anyway (:mod:`p2pmsg.delivery.reorder`):
    longer than routes differ, shorter than a retry. ``math.inf`` for
    strict order."""
    lan_direct: bool = True
    """Send to contacts found on our LAN straight over it, as Briar does,
    instead of over an onion route (only with LAN discovery on)."""
    bridge: bool = False
    """Unlisted (set with ``dht.unlisted`` from the config), and carries
    tunnels for the nodes that hold our invite (:mod:`p2pmsg.link.tunnel`)."""
    max_tunnels: int = 192
    max_tunnels_per_peer: int = 64
    dht: DhtOptions = field(default_factory=DhtOptions)
    onion: OnionServiceOptions = field(default_factory=OnionServiceOptions)

    def __post_init__(self) -> None:
        # The side that opened a link must close it first: a link our peer
        # times out under our pool is a failed send on a route that was fine.
        for name, idle in (("onion.link_idle", self.onion.link_idle),
                           ("dht.link_idle", self.dht.link_idle)):  # fmt: skip
            if idle >= self.link_idle:
                raise ValueError(
                    f"{name} ({idle:g} s) must be under link_idle ({self.link_idle:g} s)"
                )


@dataclass(frozen=True)
class ReceivedMessage:
    """A message as the application sees it, exactly once."""

    id: bytes
    peer: bytes
    contact: str | None
    kind: MessageKind
    body: bytes = field(repr=False)
    sent: float
    received: float
    filename: str | None = None
    """A file's name as its sender gave it (``kind`` FILE); never a path,
    but check it before saving under it."""
    file_size: int = 0
    """A file's size in bytes. Its contents are read with
    :meth:`Node.read_file` (``body`` is empty), so that files waiting in the
    bounded channel hold no memory."""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class NodeStats:
    delivered: int = 0
    received: int = 0
    duplicates: int = 0
    refused_handshakes: int = 0
    bad_frames: int = 0
    app_queue_overflow: int = 0
    inbound_refused: int = 0


class Node:
    """A running p2pmsg node; create it with :meth:`Node.open`."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        transports: Sequence[Transport],
        *,
        options: NodeOptions,
        wall_clock: Callable[[], float],
        rng: Callable[[int], bytes],
        bridges: Sequence[Invite] = (),
        network: str | Callable[[], str] = "default",
        publishers: Iterable[bytes] = (),
    ) -> None:
        self.identity = identity
        self.store = store
        self.bootstrap = BootstrapLists(store, publishers, wall_clock)
        """The signed bootstrap lists of the publishers we trust (:mod:`p2pmsg.bootstrap`)."""
        self.transports = list(transports)
        self.options = options
        self.stats = NodeStats()
        self.listening: list[Endpoint] = []
        self._wall_clock = wall_clock
        self._rng = rng
        self._replay = DurableReplay(
            ReplayWindow(options.replay_window, options.replay_capacity, journal=True),
            store,
            wall_clock,
        )
        for transport in self.transports:
            if isinstance(transport, KeepsReplays):  # obfs: its hellos' tags saved too
                transport.keep_replays(self._replay)
        self.admission = Admission(options.admission)
        self._app_send, self._app_receive = trio.open_memory_channel[ReceivedMessage](
            options.app_queue
        )
        self._delivered_send, self._delivered_receive = trio.open_memory_channel[bytes](
            options.app_queue
        )
        self.started = wall_clock()
        self._dialer = Dialer(
            identity,
            transports,
            dial_timeout=options.dial_timeout,
            handshake_timeout=options.handshake_timeout,
            bridges=bridges,
            network=network,
            wall_clock=wall_clock,
            rng=rng,
        )
        self.tunnels = tunnel.TunnelServer(
            identity.public,
            self._dialer.dial_raw,
            enabled=options.bridge,
            max_tunnels=options.max_tunnels,
            max_per_peer=options.max_tunnels_per_peer,
            idle=options.idle_timeout,
        )
        self.dht = Dht(
            identity, self._dialer.connect, options=options.dht, wall_clock=wall_clock, rng=rng,
            clock=self._dialer.clock,
        )  # fmt: skip
        self.joined = trio.Event()
        self.onion = OnionService(
            identity, store, self.dht, self._dialer.connect, self._received, self._acked,
            options=options.onion, wall_clock=wall_clock, rng=rng,
        )  # fmt: skip
        self._sender = Sender(
            store,
            self._dialer,
            self.dht,
            batch=options.batch,
            max_parallel_peers=options.max_parallel_peers,
            ack_timeout=options.ack_timeout,
            poll_interval=options.poll_interval,
            on_acked=self._acked,
            onion=self.onion.path,
            wall_clock=wall_clock,
            rng=rng,
        )
        self.onion.path.on_retry = self._sender.wake
        self._watch = NetworkWatch(
            self.dht, store, self._sender.wake, wall_clock=wall_clock, rng=rng
        )
        self._reorder = ReorderTimer(
            store, self._show, wait=options.reorder_wait, wall_clock=wall_clock
        )
        self._joiner: join.Joiner | None = None
        self._nearby = trio.CapacityLimiter(NEARBY_FETCHES)
        self._inbound = Inbound(
            identity, self._replay, self.stats, dht=self.dht, onion=self.onion,
            tunnels=self.tunnels, commit=self._commit_received,
            handshake_timeout=options.handshake_timeout, link_idle=options.link_idle,
            admission=self.admission, pricing=Pricing(rng),
            wall_clock=wall_clock, rng=rng,
        )  # fmt: skip
        self.bridge_keeper: Keeper | None = None
        """With ``init --bridge-distributor``: our bridges, checked and replaced."""

    def __repr__(self) -> str:
        return f"Node(node_id={self.identity.node_id.hex()[:16]}…)"

    @property
    def handshake_pricing(self) -> Pricing:
        """Work asked of inbound handshakes under load (:mod:`p2pmsg.puzzle`)."""
        return self._inbound.pricing

    @handshake_pricing.setter
    def handshake_pricing(self, pricing: Pricing) -> None:
        self._inbound.pricing = pricing

    @property
    def dialer(self) -> Dialer:
        """How this node reaches peers: path scores, transport health, observers."""
        return self._dialer

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        home: Path | str,
        transports: Sequence[Transport],
        *,
        options: NodeOptions | None = None,
        offload: Offload | None = None,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        network: str | Callable[[], str] = local_network_label,
        lan: Callable[[], Discovery] | None = None,
    ) -> AsyncIterator[Node]:
        """Open the node in ``home`` and run it for the ``async with`` block.

        Raises :class:`HomeError` or :class:`StoreError` when the home cannot
        be used. ``offload`` runs the store's blocking calls (default: a
        worker thread). ``network`` labels the network we are on (path scores
        are kept per network): a fixed label, or a function asked now and then.
        ``lan`` makes the LAN discovery to run (default: mDNS on the
        interface of the config's ``mdns`` address, when it has one).
        """
        where = Home(Path(home))
        identity = where.load_identity()
        config = where.load_config()
        store = await (
            Store.open(where.db_file)
            if offload is None
            else Store.open(where.db_file, offload=offload)
        )
        try:
            await store.set_identity(identity.public.key, wall_clock())
            options = options or NodeOptions()
            if config.limits is not None:
                options = replace(options, admission=config.limits)
            if config.bridge:
                options = replace(options, bridge=True, dht=replace(options.dht, unlisted=True))
            if config.use_bridges:  # nobody can dial us: no relaying; replies via a gateway
                poll = min(options.onion.mailbox_poll, BRIDGED_MAILBOX_POLL)
                onion = replace(options.onion, mailbox_poll=poll, gateway=True, relay=False)
                options = replace(options, onion=onion)
            node = cls(
                identity,
                store,
                transports,
                options=options,
                wall_clock=wall_clock,
                rng=rng,
                bridges=config.use_bridges,
                network=network,
                publishers=config.publisher_keys(),
            )
            await node._load(config)
            async with trio.open_nursery() as nursery:
                for endpoint in config.listen:
                    await node._listen(nursery, endpoint)
                listening = [str(e) for e in node.listening]
                await node.onion.start(listening, node.options.capabilities)
                await nursery.start(node.dht.run)
                await nursery.start(node.onion.run, node.joined)
                joiner = node._joiner = join.Joiner(
                    node.dht, node.store, node.joined, config, on_cache=node._save_paths,
                    bootstrap=node.bootstrap,
                )  # fmt: skip
                nursery.start_soon(joiner.stay_joined, node.options.cache_every)
                if node.bootstrap.publishers:
                    nursery.start_soon(
                        node.bootstrap.keep_fresh,
                        node.dht,
                        node.joined,
                        node.options.bootstrap_every,
                    )
                if lan is None and config.mdns is not None:
                    lan = partial(MdnsDiscovery, config.mdns)
                if lan is not None and not config.bridge:
                    if node.options.lan_direct:
                        node._sender.lan = joiner.lan_peers
                    joiner.on_lan_peer = lambda peer: nursery.start_soon(node._fetch_nearby, peer)
                    await nursery.start(joiner.lan, lan)
                await nursery.start(node._sender.run)
                await nursery.start(node._reorder.run)
                await nursery.start(node._watch.run)
                nursery.start_soon(node._retry_once_joined)
                if node.bridge_keeper is not None:
                    await nursery.start(node.bridge_keeper.run)
                yield node
                nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await node._save_paths()
        finally:
            with trio.CancelScope(shield=True):
                await store.close()

    async def _fetch_nearby(self, peer: Peer) -> None:
        """A new LAN neighbour: what waits for a retry goes now (it may be
        the contact, or carry to it), and it is asked for our mailbox
        entries (a few neighbours at a time)."""
        if await self.store.retry_all_sooner(self._wall_clock()):
            self._sender.wake()
        async with self._nearby:
            try:
                await self.onion.fetch_nearby(peer)
            except (*DIAL_ERRORS, P2PMsgError) as exc:
                log.debug("a LAN neighbour's mailbox fetch failed: %r", exc)

    async def _retry_once_joined(self) -> None:
        """A start is a change of network (a move, a reconnect): once joined,
        every waiting message is due now, as Signal and Briar retry at once
        when the network comes back. An attempt cut short by the stop would
        otherwise wait out its backoff."""
        await self.joined.wait()
        if await self.store.retry_all_sooner(self._wall_clock()):
            self._sender.wake()

    # -- public API ----------------------------------------------------------

    def messages(self) -> trio.MemoryReceiveChannel[ReceivedMessage]:
        """New messages as they are committed; iterate with ``async for``.

        A conversation comes in its sender's order; a message waits at most
        ``options.reorder_wait`` for a missing earlier one, which then comes
        late (sort by ``sent`` to place it). The channel is bounded: when the
        application falls behind, messages still land in the inbox
        (``store.list_inbox``) and the overflow is counted in
        ``stats.app_queue_overflow``.
        """
        return self._app_receive

    def lan_peers(self) -> list[join.LanPeer]:
        """The nodes found on our LAN (empty with LAN discovery off)."""
        return self._joiner.lan_peers.entries() if self._joiner is not None else []

    def deliveries(self) -> trio.MemoryReceiveChannel[bytes]:
        """Ids of sent messages as their acks arrive (bounded like :meth:`messages`)."""
        return self._delivered_receive

    async def send(self, contact: str, data: bytes | str, *, direct: bool = False) -> bytes:
        """Queue ``data`` for the contact named ``contact``; return its id.

        The message goes over an onion route unless ``direct`` (a secure link
        straight to the contact, which then learns our address). Returns once
        the message is durably in the outbox. Raises :class:`UnknownContact`,
        :class:`OutboxFull` (``max_queued_per_contact`` messages wait for that
        contact, or ``max_queued`` in all: nothing is dropped, the caller is
        told) or ``ValueError`` (too large).
        """
        kind, body = (
            (MessageKind.TEXT, data.encode())
            if isinstance(data, str)
            else (MessageKind.BYTES, data)
        )
        limit = frames.MAX_BODY if direct else MAX_ONION_BODY
        if len(body) > limit:
            raise ValueError(f"message larger than {limit} bytes")
        message_id = self._rng(frames.ID_BYTES)
        await self._enqueue(contact, [(message_id, kind, body)], direct)
        return message_id

    async def send_file(
        self, contact: str, data: bytes, name: str, *, direct: bool = False
    ) -> bytes:
        """Queue the file ``data`` called ``name`` for ``contact``; return its id.

        The file goes in parts (:mod:`p2pmsg.delivery.files`), each an
        outbox message of its own, a few at a time: a transfer cut off by a
        reset or a restart goes on from the parts not yet acked. Once every
        part is acked, :meth:`deliveries` reports the file's id (never the
        parts'). The recipient sees one message of kind FILE with
        ``filename`` and ``file_size``, and reads it with :meth:`read_file`.
        Raises as :meth:`send` does; ``OutboxFull`` when the parts do not
        fit, ``ValueError`` for a bad name or a file over
        :data:`~p2pmsg.delivery.files.MAX_FILE_BYTES`.
        """
        file_id = self._rng(files.FILE_ID_BYTES)
        parts = files.split(file_id, name, data)
        await self._enqueue(
            contact,
            [(self._rng(frames.ID_BYTES), MessageKind.FILE_PART, part) for part in parts],
            direct,
        )
        return file_id

    async def read_file(self, file_id: bytes) -> bytes:
        """The contents of a received file (a FILE message's ``id``); raises
        :class:`NoSuchFile` for an id of no file received."""
        found = await self.store.get_file(file_id)
        if found is None:
            raise NoSuchFile(file_id.hex())
        return files.decode_file(found.body)[1]

    async def _enqueue(
        self, contact: str, bodies: list[tuple[bytes, MessageKind, bytes]], direct: bool
    ) -> None:
        """Commit ``(id, kind, body)`` messages for ``contact``, all or none."""
        found = await self.store.get_contact(contact)
        if found is None:
            raise UnknownContact(contact)
        now = self._wall_clock()
        messages = [
            OutboxMessage(
                id=message_id,
                peer=found.node_id,
                kind=kind,
                body=body,
                created=now,
                expires=now + self.options.message_ttl,
                attempts=0,
                next_attempt=now,
                delivered=None,
                direct=direct,
            )
            for message_id, kind, body in bodies
        ]
        await self.store.enqueue_all(
            messages,
            max_for_peer=self.options.max_queued_per_contact,
            max_total=self.options.max_queued,
        )
        self._sender.wake()

    async def status(self) -> dict[str, Any]:
        return {
            "node_id": self.identity.node_id.hex(),
            "listening": [str(e) for e in self.listening],
            "queued": await self.store.count_queued(),
            "inbox": await self.store.count_inbox(),
            "contacts": len(await self.store.list_contacts()),
            "clock": self._clock(),
            "lan_peers": len(self.lan_peers()),
            "lan_sent": self._sender.lan_sent,
            "network_returns": self._watch.hurries,
            "uptime": round(self._wall_clock() - self.started, 3),
            "stats": vars(self.stats).copy(),
            "relayed": self.onion.relay.stats.relayed,
            "mailbox_entries": len(self.dht.mailboxes.store),
            "network": self._dialer.network,
            "transports": self._dialer.health_report(),
            "tunnels": vars(self._dialer.tunnels).copy(),
            "tunnels_carried": vars(self.tunnels.stats).copy(),
            "onion": self.onion.stats(),
            "dht": self.dht.stats(),
            "bootstrap_lists": self.bootstrap.stats(),
            "inbound": self.admission.stats(),
            "handshake_pricing": self.handshake_pricing.stats(),
            "bridges": self._bridge_stats(),
        }

    def _bridge_stats(self) -> dict[str, int]:
        keeper, supply = self.bridge_keeper, self.bridge_supply
        failed = keeper.failed if keeper else {}
        return {
            "using": len(self._dialer.bridges),
            "failed": sum(b.identity.key in failed for b in self._dialer.bridges),
            "asked": keeper.requests if keeper else 0,
            "given": keeper.given if keeper else 0,
            "requests_answered": supply.requests if supply else 0,
        }

    # -- path scores -----------------------------------------------------------

    def _clock(self) -> dict[str, Any]:
        v = self.dht.clock.verdict()
        offset = None if v.offset is None else round(v.offset, 1)
        return {"offset": offset, "peers": v.peers, "error": v.error, "warning": v.warning}

    async def _load_paths(self) -> None:
        """The path scores saved last time, aged by the time we were away."""
        raw = await self.store.get_meta(PATHS_KEY)
        if raw is None:
            return
        try:
            saved = json.loads(raw)
            away = max(0.0, self._wall_clock() - float(saved["saved"]))
            scores = PathScores.from_dict(saved["scores"], now=trio.current_time() - away)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("the saved path scores are unreadable; starting afresh (%s)", exc)
            return
        self._dialer.scores = scores

    async def _save_paths(self) -> None:
        scores = self._dialer.scores.to_dict(trio.current_time())
        await self.store.set_meta(
            PATHS_KEY, json.dumps({"saved": self._wall_clock(), "scores": scores})
        )

    # -- listening -----------------------------------------------------------

    async def _listen(self, nursery: trio.Nursery, endpoint: Endpoint) -> None:
        transport = next((t for t in self.transports if t.name == endpoint.transport), None)
        if transport is None:
            log.warning("no transport %r here; not listening on it", endpoint.transport)
            return
        try:
            bound = await nursery.start(transport.serve, endpoint, self._inbound.handle)
        except OSError as exc:
            raise ListenError(f"{endpoint}: {exc.strerror or exc}") from exc
        self.listening.append(bound)
        log.info("listening on a %s endpoint", endpoint.transport)

    async def _load(self, config: Config) -> None:
        """What the store keeps for a start: path scores, replay tags, bridges."""
        await self._load_paths()
        await self._replay.load()
        if config.distribute:
            self._inbound.supply = Supply(self.store, self._wall_clock, self._rng)
        if config.use_bridges and config.distributors:
            keeper = Keeper(self._dialer, config.distributors, self.store, config.use_bridges)
            await keeper.load()
            self.bridge_keeper = keeper

    async def offer_bridge(self, invite: Invite) -> bool:
        """Hand ``invite`` out to those who ask (``init --distribute``); False
        if it is out already. Raises ``ValueError`` on a node that does not distribute."""
        if self.bridge_supply is None:
            raise ValueError("this node does not hand out bridges (init --distribute)")
        return await self.bridge_supply.offer(invite)

    @property
    def bridge_supply(self) -> Supply | None:
        """With ``init --distribute``: the bridges this node hands out."""
        return self._inbound.supply

    async def _commit_received(self, peer: PublicIdentity, frame: MsgFrame) -> None:
        message = InboxMessage.of_frame(peer.node_id, frame, self._wall_clock())
        new = await self.store.add_received(message)
        await self._received(message, new, frame.low)

    async def _received(self, message: InboxMessage, new: bool, low: int) -> None:
        """A message is committed (``new``) or was seen before: count it, and
        show the application whatever is now next in that conversation."""
        if new:
            self.stats.received += 1
        else:
            self.stats.duplicates += 1
        if message.kind is MessageKind.FILE_PART:
            shown = await self.store.release_files(message.peer, self._wall_clock()) if new else []
        elif not message.seq:
            shown = [message] if new else []
        else:
            wait = self.options.reorder_wait
            shown = await self.store.release(message.peer, low, self._wall_clock(), wait=wait)
            if new and all(m.id != message.id for m in shown):
                self._reorder.held()
        await self._show(shown)

    async def _show(self, shown: list[InboxMessage]) -> None:
        for m in shown:
            contact = await self.store.contact_by_node_id(m.peer)
            body, filename, size = m.body, None, 0
            if m.kind is MessageKind.FILE:
                filename, data = files.decode_file(m.body)
                body, size = b"", len(data)
            seen = ReceivedMessage(
                m.id,
                m.peer,
                contact.name if contact else None,
                m.kind,
                body,
                m.sent,
                m.received,
                filename,
                size,
            )
            self._report(self._app_send, seen)

    async def _acked(self, message_id: bytes) -> None:
        """A message's ack came: report it once (a file's part, only the
        file's id once the last part is acked)."""
        delivered = await self.store.mark_acked(message_id, self._wall_clock())
        if delivered is not None:
            self.stats.delivered += 1
            self._report(self._delivered_send, delivered)

    def _report(self, channel: trio.MemorySendChannel[Any], item: object) -> None:
        try:
            channel.send_nowait(item)
        except trio.WouldBlock:
            self.stats.app_queue_overflow += 1

    # -- the DHT -------------------------------------------------------------

    async def import_bootstrap(self, line: str) -> bool:
        """Take a signed bootstrap list pasted as text: True if it is newer than
        ours (:meth:`~p2pmsg.bootstrap.BootstrapLists.take`)."""
        return await self.bootstrap.take(line, self.dht if self.joined.is_set() else None)

    async def refresh_bootstrap(self) -> int:
        """Our publishers' lists from the DHT (:meth:`~p2pmsg.bootstrap.BootstrapLists.refresh`)."""
        return await self.bootstrap.refresh(self.dht)

    async def find(self, node_id: bytes) -> Peer | None:
        """The current peer record of ``node_id`` in the DHT, as a Peer."""
        return await self.dht.find_peer(node_id)
