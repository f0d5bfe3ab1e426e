"""The node's onion side, wired: relay, sender path, receiver, keys, mailbox.

Theory of operation
-------------------
:class:`OnionService` owns the parts of onion delivery and the tasks that
keep them current, all started by :meth:`OnionService.run` in the node's
nursery:

* the relay worker (:class:`p2pmsg.relay.Relay`), fed by the node's inbound
  links and by our mailbox;
* key upkeep: at each onion-key epoch the new keys are made, the peer record
  re-signed with them, old keys and their replay tags dropped;
* prekeys: our signed prekey bundle is published in the DHT once joined,
  again when a one-time key was used, and before the record expires; the
  signed prekey rotates weekly;
* the mailbox: on start and every ``mailbox_poll`` seconds we fetch our DHT
  mailbox for every epoch a message could still wait in and feed the packets
  to the relay, which opens them like any other packet for us. Entries are
  cleared at the holders one poll later, once they have surely been
  processed; the inbox deduplicates what comes twice. A new LAN neighbour
  is also asked straight for what it holds of our mailbox (:meth:`fetch_nearby`).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pmsg.delivery import onion_frames
from p2pmsg.delivery.mailbox_onion import OnionMailbox
from p2pmsg.delivery.onion_path import OnionOptions, OnionPath
from p2pmsg.delivery.receiver import Receiver
from p2pmsg.dht import mailbox
from p2pmsg.dht import records as rec
from p2pmsg.dht.linkpool import Connect
from p2pmsg.dht.peer import Peer
from p2pmsg.dht.service import Dht
from p2pmsg.dialer import DIAL_ERRORS
from p2pmsg.e2e import prekeys
from p2pmsg.keys import Identity
from p2pmsg.onion.route import RELAY_CAPABILITY, NoRoute, RelayScores, select_route
from p2pmsg.packet_links import PacketLinks
from p2pmsg.relay import OnionKeys, Relay, RelayOptions, Resolver
from p2pmsg.store import InboxMessage, Store

log = logging.getLogger(__name__)

PREKEY_TTL = 7 * 86_400
SIGNED_PREKEY_LIFETIME = 7 * 86_400.0
ONE_TIME_PREKEYS = 32
PREKEY_COPIES = 3
"""A prekey bundle stored on fewer nodes than this is published again soon."""
PREKEY_RETRY = 30.0
"""The first wait before publishing a poorly stored bundle again; it doubles."""
PENDING_CLEAR = "mailbox_pending_clear"
MAX_PENDING = 4 * mailbox.DEFAULT_MAX_PER_KEY
GATEWAY_REFRESH = 30.0
"""Seconds between a gateway request and the next: within the relay's idle
timeout and our packet links' reuse window."""
GATEWAY_RETRY = 5.0
MAILBOX_EPOCHS = 31
"""Epochs fetched back: a message waits at most 30 days in a mailbox."""


@dataclass(frozen=True)
class OnionServiceOptions:
    relay: bool = True
    """Offer to relay others' packets (the ``relay`` capability)."""
    mailbox_poll: float = 300.0
    gateway: bool = False
    """Nobody can dial us (we use bridges): hold a link open to a gateway
    relay, the last hop of our reply blocks, and take packets back over it."""
    key_check: float = 600.0
    link_idle: float = 840.0
    """Seconds a next-hop link of ours may go unused before it is closed:
    a minute under the peers' ``NodeOptions.link_idle``, so we close first."""
    route: OnionOptions = field(default_factory=OnionOptions)
    relay_options: RelayOptions = field(default_factory=RelayOptions)


class OnionService:
    def __init__(  # noqa: PLR0917 - the node's parts
        self,
        identity: Identity,
        store: Store,
        dht: Dht,
        connect: Connect,
        on_message: Callable[[InboxMessage, bool, int], Awaitable[None]],
        on_acked: Callable[[bytes], Awaitable[None]],
        *,
        options: OnionServiceOptions,
        wall_clock: Callable[[], float],
        rng: Callable[[int], bytes],
    ) -> None:
        self.identity = identity
        self.store = store
        self.dht = dht
        self.options = options
        self._wall_clock = wall_clock
        self._rng = rng
        self.keys = OnionKeys(store, rng)
        self.links = PacketLinks(connect, idle=options.link_idle)
        self.resolver = Resolver(dht)
        self.scores = RelayScores()
        self.path = OnionPath(
            identity, store, dht, self.links, self.resolver, self.scores,
            options=options.route, wall_clock=wall_clock, rng=rng,
        )  # fmt: skip
        self.receiver = Receiver(
            identity, store, self.path, on_message, on_acked, wall_clock=wall_clock, rng=rng
        )
        self.mailbox = OnionMailbox(identity, dht, self.path, wall_clock=wall_clock, rng=rng)
        self.receiver.mailbox = self.mailbox
        self.relay = Relay(
            identity, store, self.keys, self.links, dht, self.resolver, self.receiver.deliver,
            options=options.relay_options, wall_clock=wall_clock,
        )  # fmt: skip
        self.links.on_packet = self.relay.submit
        self._endpoints: list[str] = []
        self._capabilities: frozenset[str] = frozenset()
        self._fetched: OrderedDict[bytes, int] = OrderedDict()
        self._signed_prekey_at = 0.0
        self.prekeys_published = trio.Event()
        self.prekey_record: rec.Record | None = None
        """The prekey record we published last."""

    def stats(self) -> dict[str, Any]:
        return {
            "relay": vars(self.relay.stats).copy(),
            "receiver": vars(self.receiver.stats).copy(),
            "mailbox": vars(self.mailbox.stats).copy(),
            "fragments": {
                **vars(self.receiver.fragments.stats),
                "incomplete": len(self.receiver.fragments),
            },
            "replay_tags": len(self.relay.replay),
            "packet_links": len(self.links),
            "packets_resent": self.links.resent,
            "silent_links": self.links.silent,
            "ack_timeout": round(self.path.timer.rto(trio.current_time()), 3),
        }

    async def start(self, endpoints: list[str], capabilities: frozenset[str]) -> None:
        """Load keys, replay tags and prekeys; sign our peer record. Before the DHT runs."""
        now = self._wall_clock()
        self._endpoints = endpoints
        caps = set(capabilities)
        if self.options.relay and endpoints:
            caps.add(RELAY_CAPABILITY)
        self._capabilities = frozenset(caps)
        await self.keys.refresh(now)
        await self.relay.load_replay_tags(now)
        await self.receiver.load_prekeys(ONE_TIME_PREKEYS)
        signed_at = await self.store.get_meta("signed_prekey_at")
        if signed_at is None:
            await self.store.set_meta("signed_prekey_at", str(now))
        self._signed_prekey_at = float(signed_at or now)
        self._publish_peer_record()

    def _publish_peer_record(self) -> None:
        onion_keys = self.keys.published() if RELAY_CAPABILITY in self._capabilities else ()
        self.dht.publish_local(self._endpoints, self._capabilities, onion_keys)

    async def run(
        self, joined: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.links.run)
                await nursery.start(self.relay.run)
                nursery.start_soon(self._key_upkeep)
                nursery.start_soon(self._prekey_upkeep, joined)
                nursery.start_soon(self._mailbox_poll, joined)
                if self.options.gateway:
                    nursery.start_soon(self._keep_gateway, joined)
                task_status.started()
        finally:
            await self.links.close_all()

    async def _key_upkeep(self) -> None:
        while True:
            await trio.sleep(self.options.key_check)
            now = self._wall_clock()
            await self.store.expire_surbs(now)
            if await self.keys.refresh(now):
                self._publish_peer_record()
                await self.relay.forget_before(now)

    async def _keep_gateway(self, joined: trio.Event) -> None:
        """Keep a link open to one relay and ask it, every
        :data:`GATEWAY_REFRESH` seconds, to send our packets back over it; pick
        another when it fails. Without one, replies wait in our mailbox."""
        await joined.wait()
        while True:
            gateway = self.path.gateway
            try:
                if gateway is None:
                    now = self._wall_clock()
                    pick = select_route(
                        self.path.candidates(now), hops=1, exclude=(self.identity.node_id,),
                        scores=self.scores, now=now, rng=self._rng,
                    )  # fmt: skip
                    gateway = pick[0]
                peer = await self.resolver.resolve(gateway.node_id)
                if peer is None:
                    raise NoRoute("the gateway is gone")
                await self.links.send(peer, onion_frames.GATEWAY_MESSAGE)
            except (*DIAL_ERRORS, NoRoute) as exc:
                log.debug("no gateway relay: %r", exc)
                if gateway is not None:
                    self.scores.route_failed([gateway.node_id], self._wall_clock())
                self.path.gateway = None
                await trio.sleep(GATEWAY_RETRY)
            else:
                self.path.gateway = gateway
                await trio.sleep(GATEWAY_REFRESH)

    # -- prekeys -----------------------------------------------------------------

    async def _prekey_upkeep(self, joined: trio.Event) -> None:
        """Publish our bundle every quarter of its lifetime and whenever a
        one-time key was used; sooner, backing off, while it reaches fewer than
        :data:`PREKEY_COPIES` nodes (just after joining a young network, or when
        a censor took the nodes that held it), since nobody can write to us first
        without it."""
        await joined.wait()
        retry = PREKEY_RETRY
        while True:
            self.receiver.prekeys_changed = trio.Event()  # before: a use meanwhile counts
            await self._refresh_prekeys()
            if await self._publish_prekeys() >= PREKEY_COPIES:
                wait, retry = PREKEY_TTL / 4, PREKEY_RETRY
            else:
                wait, retry = retry, min(2 * retry, PREKEY_TTL / 4)
            with trio.move_on_after(wait):
                await self.receiver.prekeys_changed.wait()

    async def _refresh_prekeys(self) -> None:
        now = self._wall_clock()
        rotate = now - self._signed_prekey_at > SIGNED_PREKEY_LIFETIME

        def change(secrets: prekeys.PrekeySecrets) -> None:
            secrets.replenish(self._rng, ONE_TIME_PREKEYS)
            if rotate:
                secrets.rotate_signed(self.identity, self._rng)

        await self.receiver.update_prekeys(change)
        if rotate:
            self._signed_prekey_at = now
            await self.store.set_meta("signed_prekey_at", str(now))

    async def _publish_prekeys(self) -> int:
        """Store our current bundle in the DHT under each of its keys; on how
        many nodes, at the key that reached the fewest."""
        bundle = prekeys.encode_bundle(self.receiver.secrets().bundle(self.identity))
        now = self._wall_clock()
        copies = [
            rec.make_prekey_record(
                self.identity, bundle, int(now * 1000), int(now) + PREKEY_TTL, replica
            )
            for replica in range(rec.PREKEY_REPLICAS)
        ]
        self.prekey_record = copies[0]
        reached = [0] * len(copies)

        async def put(i: int) -> None:
            reached[i] = await self.dht.put(copies[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(copies)):
                nursery.start_soon(put, i)
        stored = min(reached)
        log.info("published our prekeys on %d nodes", stored)
        if stored:
            self.prekeys_published.set()
        return stored

    # -- mailbox -----------------------------------------------------------------

    async def _mailbox_poll(self, joined: trio.Event) -> None:
        await joined.wait()
        pending = _decode_pending(await self.store.get_meta(PENDING_CLEAR))
        for epoch, ids in pending.items():  # fetched before a restart: seen
            self._fetched.update(dict.fromkeys(ids, epoch))
        while True:
            for epoch, ids in pending.items():
                await self.mailbox.clear(epoch, ids)
            pending = await self._fetch_mailbox()
            await self.store.set_meta(PENDING_CLEAR, _encode_pending(pending))
            await trio.sleep(self.options.mailbox_poll)

    async def _fetch_mailbox(self) -> dict[int, list[bytes]]:
        now = self._wall_clock()
        current = mailbox.epoch_of(now)
        start = await self._first_epoch(current)
        fetched: dict[int, list[bytes]] = {}
        for epoch in range(start, current + 1):
            seen = {entry for entry, e in self._fetched.items() if e == epoch}
            for blob in await self.mailbox.fetch(epoch, seen):
                entry = mailbox.entry_id(blob)
                fetched.setdefault(epoch, []).append(entry)
                if entry not in self._fetched:
                    self._fetched[entry] = epoch
                    self.relay.submit(blob)
        count = sum(len(ids) for ids in fetched.values())
        if count:
            log.info("fetched %d entries from our mailbox", count)
        while len(self._fetched) > 4 * mailbox.DEFAULT_MAX_PER_KEY:
            self._fetched.popitem(last=False)
        await self.store.set_meta("mailbox_epoch", str(current))
        return fetched

    async def fetch_nearby(self, peer: Peer) -> int:
        """Our mailbox entries that ``peer``, a new LAN neighbour, holds:
        fetched from it straight and handled like a poll's; how many were new.
        A neighbour just come may have been carried from a LAN where senders
        left them (SCENARIOS S11's mule, :meth:`p2pmsg.delivery.sender.Sender._deposit`)."""
        current = mailbox.epoch_of(self._wall_clock())
        new = 0
        for epoch in (current - 1, current):
            for blob in await self.dht.mailboxes.fetch_at(peer, self.identity.node_id, epoch):
                entry = mailbox.entry_id(blob)
                if entry not in self._fetched:
                    self._fetched[entry] = epoch
                    self.relay.submit(blob)
                    new += 1
        while len(self._fetched) > 4 * mailbox.DEFAULT_MAX_PER_KEY:
            self._fetched.popitem(last=False)
        if new:
            log.info("fetched %d entries from our mailbox at a new LAN neighbour", new)
        return new

    async def _first_epoch(self, current: int) -> int:
        stored = await self.store.get_meta("mailbox_epoch")
        if stored is None or not stored.isdigit():
            return current - 1  # a new node: nothing can wait for it from before
        return max(current - MAILBOX_EPOCHS + 1, min(current, int(stored)))


def _encode_pending(pending: dict[int, list[bytes]]) -> str:
    return json.dumps({str(epoch): [i.hex() for i in ids] for epoch, ids in pending.items()})


def _decode_pending(text: str | None) -> dict[int, list[bytes]]:
    """The entries fetched at the last poll; ``{}`` for anything unreadable."""
    try:
        raw = json.loads(text or "{}")
        return {int(e): [bytes.fromhex(i) for i in ids][:MAX_PENDING] for e, ids in raw.items()}
    except (ValueError, TypeError, AttributeError):
        return {}
