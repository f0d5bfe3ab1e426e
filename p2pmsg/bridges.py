"""Bridge distribution at work: a publisher that hands bridges out, nodes that ask.

Theory of operation
-------------------
:mod:`p2pmsg.distributor` holds the rules; this module runs them on a node.

:class:`Supply` is a publisher's side (``init --distribute``). Operators
offer bridge invites to it (``p2pmsg bridges offer``, or
:meth:`Supply.offer`); they are kept in the store with the time of their
offer, next to the ring's secret (among the store's secrets), and a running node reads them again at
most every :data:`RELOAD_EVERY` seconds, so an offer made while it runs is
handed out within a minute. A bridge request on any inbound link is
answered from the :class:`~p2pmsg.distributor.Distributor`, for the link's
authenticated peer: a node that asks through a bridge is still itself.

:class:`Keeper` is a node's side (``init --bridge-distributor``, with
``--use-bridge``): every :data:`~p2pmsg.distributor.ASK_EVERY` it opens a
link to each of its bridges (Tor's clients fetch each bridge's descriptor
the same way); when :func:`~p2pmsg.distributor.needs_more` says so, it
asks a distributor, through the bridges that work, for bridges other than
those that failed, and uses what it gets from then on. The bridges it was
given are kept in the store, so a restart starts with them; those of the
config are kept too, even failed (the user chose them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Final

import trio

from p2pmsg import distributor
from p2pmsg.abc import Link
from p2pmsg.dialer import DIAL_ERRORS, Dialer
from p2pmsg.distributor import ASK_EVERY, FRESH_FOR, MAX_BRIDGES, SECRET_BYTES, Distributor
from p2pmsg.endpoint import Invite
from p2pmsg.errors import BadInvite
from p2pmsg.keys import PublicIdentity
from p2pmsg.store import Store

log = logging.getLogger(__name__)

OFFERED_KEY: Final = "bridges.offered"
"""Store meta: JSON ``[[invite, offered], ...]``, oldest first."""
RING_SLOT: Final = "bridges.ring"
"""The store's secret that places requesters on the ring."""
GIVEN_KEY: Final = "bridges.given"
"""Store meta: JSON ``[invite, ...]``, the bridges a distributor gave us."""
RELOAD_EVERY: Final = 60.0
MAX_GIVEN: Final = 16
"""Bridges from distributors a node keeps (it asks when fewer than 3 work)."""
ASK_TIMEOUT: Final = 60.0


class Supply:
    """A publisher's bridges, handed out to those who ask."""

    def __init__(
        self, store: Store, wall_clock: Callable[[], float], rng: Callable[[int], bytes]
    ) -> None:
        self._store = store
        self._wall_clock = wall_clock
        self._rng = rng
        self._distributor: Distributor | None = None
        self._loaded = -RELOAD_EVERY
        self._by_key: dict[bytes, str] = {}
        self.requests = 0

    async def offers(self) -> list[tuple[str, float]]:
        """The offers the store holds, (invite, wall time offered), oldest
        first (malformed ones left out)."""
        return [(text, at) for text, at, _ in await self._read()]

    async def _read(self) -> list[tuple[str, float, bytes]]:
        """The offers with their bridges' keys."""
        raw = await self._store.get_meta(OFFERED_KEY)
        try:
            offered = json.loads(raw) if raw else []
        except ValueError:
            offered = None
        if not isinstance(offered, list):
            log.warning("the offered bridges in the store are unreadable; none are handed out")
            return []
        return [entry for entry in map(_entry, offered) if entry is not None]

    async def _secret(self) -> bytes:
        secret = await self._store.get_secret(RING_SLOT)
        if secret is None or len(secret) != SECRET_BYTES:
            secret = self._rng(SECRET_BYTES)
            await self._store.set_secret(RING_SLOT, secret)
        return secret

    async def offer(self, invite: Invite) -> bool:
        """Hand ``invite`` out from now on, for 7 days; False if it is out
        already. A bridge offered again with other endpoints is handed out
        with those; offers older than 7 days are forgotten."""
        now, text, key = self._wall_clock(), str(invite), invite.identity.key
        fresh = [entry for entry in await self._read() if now - entry[1] < FRESH_FOR]
        if text in (t for t, _, _ in fresh):
            return False
        offered = [(t, at) for t, at, k in fresh if k != key] + [(text, now)]
        await self._store.set_meta(OFFERED_KEY, json.dumps(offered[-MAX_BRIDGES:]))
        self._loaded = -RELOAD_EVERY
        return True

    async def ring(self) -> Distributor:
        """The ring, read again from the store when :data:`RELOAD_EVERY` has passed."""
        now = trio.current_time()
        if self._distributor is None or now - self._loaded >= RELOAD_EVERY:
            ring, self._by_key = Distributor(await self._secret()), {}
            for text, offered, key in await self._read():
                ring.offer(text, offered)
                self._by_key[key] = text
            self._distributor, self._loaded = ring, now
        return self._distributor

    async def answer(self, link: Link, peer: PublicIdentity, failed: Sequence[bytes]) -> None:
        """Answer ``peer``'s bridge request on ``link``; ``failed``: the keys
        of the bridges that failed for it (:func:`distributor.decode_request`)."""
        ring = await self.ring()
        skip = [self._by_key[k] for k in failed if k in self._by_key]
        self.requests += 1
        await link.send(distributor.encode_reply(ring.hand_out(peer.key, self._wall_clock(), skip)))


def _entry(offer: object) -> tuple[str, float, bytes] | None:
    """A stored offer ``[invite, wall time]`` with its bridge's key; None if malformed."""
    if not (isinstance(offer, list) and len(offer) == 2):
        return None
    text, at = offer
    if not (isinstance(text, str) and isinstance(at, (int, float))):
        return None
    try:
        return text, float(at), Invite.parse(text).identity.key
    except BadInvite:
        return None


class Keeper:
    """A node's bridges, tended: checked hourly, replaced before they run out."""

    def __init__(
        self,
        dialer: Dialer,
        distributors: Sequence[Invite],
        store: Store,
        chosen: Sequence[Invite],
    ) -> None:
        self._dialer = dialer
        self._distributors = list(distributors)
        self._store = store
        self._chosen = {b.identity.key for b in chosen}
        self.failed: dict[bytes, None] = {}
        """Keys of the bridges that failed, latest last (at most MAX_FAILED)."""
        self._asked = -ASK_EVERY
        self.requests = 0
        self.given = 0

    async def load(self) -> None:
        """Add the bridges distributors gave us before to the dialer's."""
        raw = await self._store.get_meta(GIVEN_KEY)
        try:
            texts = json.loads(raw) if raw else []
        except ValueError:
            texts = []
        for text in texts if isinstance(texts, list) else []:
            try:
                self._add(Invite.parse(text))
            except (BadInvite, TypeError, AttributeError):
                log.warning("a saved bridge is unreadable; it is left out")

    def _add(self, invite: Invite) -> bool:
        if any(b.identity.key == invite.identity.key for b in self._dialer.bridges):
            return False
        self._dialer.bridges.append(invite)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.tend()
            await trio.sleep(ASK_EVERY)

    async def tend(self) -> int:
        """Check every bridge; ask for more when the node should. The bridges gained."""
        for bridge in list(self._dialer.bridges):
            key = bridge.identity.key
            self.failed.pop(key, None)
            if not await self._reaches(bridge):
                self.failed[key] = None  # latest last
        while len(self.failed) > distributor.MAX_FAILED:
            del self.failed[next(iter(self.failed))]
        down = [b.identity.key in self.failed for b in self._dialer.bridges]
        now = trio.current_time()
        if not self._distributors or not distributor.needs_more(down, now, self._asked):
            return 0
        self._asked = now
        gained = 0
        for source in self._distributors:
            texts = await self._ask(source)
            if texts is None:
                continue
            self._drop_failed()
            for text in texts:
                try:
                    gained += self._add(Invite.parse(text))
                except BadInvite:
                    log.info("a distributor sent an unreadable invite; it is left out")
            break
        await self._save()
        self.given += gained
        return gained

    async def _dial(self, invite: Invite) -> Link:
        link, _ = await self._dialer.connect([str(e) for e in invite.endpoints], invite.identity)
        return link

    async def _reaches(self, bridge: Invite) -> bool:
        try:
            link = await self._dial(bridge)
        except DIAL_ERRORS:
            return False
        with trio.CancelScope(shield=True):
            await link.aclose()
        return True

    async def _ask(self, source: Invite) -> tuple[str, ...] | None:
        """Ask ``source`` for bridges, through ours; None when it cannot be reached."""
        self.requests += 1
        try:
            with trio.fail_after(ASK_TIMEOUT):
                link = await self._dial(source)
                try:
                    await link.send(distributor.encode_request(list(self.failed)))
                    return distributor.decode_reply(await link.receive())
                finally:
                    with trio.CancelScope(shield=True):
                        await link.aclose()
        except DIAL_ERRORS as exc:
            log.info("a bridge distributor could not be asked: %s", type(exc).__name__)
            return None

    def _drop_failed(self) -> None:
        """Forget failed bridges a distributor gave (the config's stay: the user chose them)."""
        self._dialer.bridges[:] = [
            b for b in self._dialer.bridges
            if b.identity.key in self._chosen or b.identity.key not in self.failed
        ]  # fmt: skip

    async def _save(self) -> None:
        given = [str(b) for b in self._dialer.bridges if b.identity.key not in self._chosen]
        await self._store.set_meta(GIVEN_KEY, json.dumps(given[-MAX_GIVEN:]))
