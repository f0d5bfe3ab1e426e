"""Receiving onion packets addressed to us: messages and the acks of ours.

Theory of operation
-------------------
The relay (:mod:`p2pmsg.relay`) hands over every packet whose last layer our
identity key opened. A reply through one of our SURBs carries acks
(:meth:`p2pmsg.delivery.onion_path.OnionPath.open_reply`), or the parts of a
mailbox entry a relay fetched for us (:mod:`p2pmsg.delivery.mailbox_onion`),
which also serves such fetches for others. Anything else is a
forward message, whole or in fragments put back together first
(:mod:`p2pmsg.delivery.fragments`): a SURB and a sealed envelope. The envelope is unsealed
(revealing the sender to us alone), the e2e message decrypted with the
sender's session, and the message committed to the inbox *together with*
the new session state and prekey secrets in one transaction; only then is
the ack sent back through the SURB, so a crash at any point ends in a retry
by the sender, and the inbox's primary key (sender, message id) shows the
application each message once. Duplicates are acked again.

One lock serialises decryption and commit: two packets from one sender
must never race on the same session state.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from p2pmsg.delivery import frames, onion_frames
from p2pmsg.delivery.fragments import Reassembly
from p2pmsg.delivery.frames import MsgFrame
from p2pmsg.delivery.onion_path import OnionPath
from p2pmsg.dialer import DIAL_ERRORS
from p2pmsg.e2e import sealed, session
from p2pmsg.e2e.prekeys import PrekeySecrets
from p2pmsg.e2e.primitives import CorruptState, DecryptError, ReplayedStart, UnknownPrekey
from p2pmsg.e2e.ratchet import RatchetState
from p2pmsg.errors import RemoteProtocolError, StoreError
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.onion import sphinx
from p2pmsg.onion.route import NoRoute
from p2pmsg.store import InboxMessage, Store

log = logging.getLogger(__name__)

PREKEYS_SLOT = "prekeys"


@dataclass
class ReceiverStats:
    opened: int = 0
    refused: int = 0
    acks_sent: int = 0
    acks_failed: int = 0
    acks_received: int = 0
    unreadable_sent: int = 0
    unreadable_received: int = 0
    not_saved: int = 0
    """Messages not committed (disk full); unacked, so their senders try again."""


class MailboxService(Protocol):
    """Who answers mailbox requests for others and takes the answers to ours."""

    async def serve_fetch(self, request: onion_frames.FetchRequest) -> None: ...
    async def serve_clear(self, request: onion_frames.ClearRequests) -> None: ...
    async def take_part(self, tag: bytes, part: onion_frames.EntryPart) -> None: ...


class Receiver:
    """Opens packets for us; ``on_message(message, new)`` and ``on_acked(id)`` report."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        onion: OnionPath,
        on_message: Callable[[InboxMessage, bool, int], Awaitable[None]],
        on_acked: Callable[[bytes], Awaitable[None]],
        *,
        wall_clock: Callable[[], float],
        rng: Callable[[int], bytes],
    ) -> None:
        self.identity = identity
        self.store = store
        self.onion = onion
        self._prekeys: PrekeySecrets | None = None
        self.stats = ReceiverStats()
        self.prekeys_changed = trio.Event()
        self._on_message = on_message
        self._on_acked = on_acked
        self._wall_clock = wall_clock
        self._rng = rng
        self._lock = trio.Lock()
        self.fragments = Reassembly()
        self.mailbox: MailboxService | None = None

    async def load_prekeys(self, one_time: int) -> None:
        """Load our prekey secrets, or make and commit them on first start."""
        stored = await self.store.get_secret(PREKEYS_SLOT)
        if stored is not None:
            self._prekeys = PrekeySecrets.from_bytes(stored)
            return
        fresh = PrekeySecrets.generate(self.identity, self._rng, one_time=one_time)
        await self.store.set_secret(PREKEYS_SLOT, fresh.to_bytes())
        self._prekeys = fresh

    def secrets(self) -> PrekeySecrets:
        """Our current prekey secrets. Raises ``RuntimeError`` before :meth:`load_prekeys`."""
        if self._prekeys is None:
            raise RuntimeError("prekeys are not loaded yet")
        return self._prekeys

    async def update_prekeys(self, change: Callable[[PrekeySecrets], None]) -> None:
        """Apply ``change`` to a copy of our prekey secrets and commit it, under
        the lock that decryption holds, so a one-time key used meanwhile is
        never brought back."""
        async with self._lock:
            current = self.secrets()
            secrets = current.copy()
            change(secrets)
            if secrets.to_bytes() != current.to_bytes():
                await self.store.set_secret(PREKEYS_SLOT, secrets.to_bytes())
                self._prekeys = secrets

    async def deliver(self, packet: sphinx.Deliver) -> None:
        """Handle one packet for us; bad ones are counted and dropped."""
        try:
            if packet.surb_id is not None:
                await self._reply(packet.surb_id, packet.message)
            else:
                await self._forward(packet.message)
        except RemoteProtocolError as exc:
            log.debug("refused an onion message: %s", exc)
            self.stats.refused += 1
        except StoreError as exc:  # not committed, so not acked: the sender tries again
            log.warning("could not keep an onion message: %s", exc)
            self.stats.not_saved += 1

    async def _reply(self, surb_id: bytes, payload: bytes) -> None:
        opened = await self.onion.open_reply(surb_id, payload)
        if opened is None:
            return  # a SURB used before, or expired
        tag, reply = opened
        if isinstance(reply, onion_frames.EntryPart) and self.mailbox is not None:
            await self.mailbox.take_part(tag, reply)
            return
        if isinstance(reply, onion_frames.Unreadable):
            log.debug("the recipient could not open a message: %s", reply.name)
            self.stats.unreadable_received += 1
            await self.onion.unreadable(tag)
            return
        if not isinstance(reply, onion_frames.ReplyMessage) or tag not in reply.acks:
            raise RemoteProtocolError("a reply that does not answer its SURB")
        self.stats.acks_received += 1
        await self._on_acked(tag)

    async def _forward(self, data: bytes) -> None:
        message = onion_frames.decode(data)
        if isinstance(message, onion_frames.Fragment):
            whole = self.fragments.add(message, self._wall_clock())
            if whole is None:
                return
            message = onion_frames.decode(whole)
            if not isinstance(message, onion_frames.ForwardMessage):
                raise RemoteProtocolError("fragments of something other than a message")
        match message:
            case onion_frames.FetchRequest() if self.mailbox is not None:
                await self.mailbox.serve_fetch(message)
                return
            case onion_frames.ClearRequests() if self.mailbox is not None:
                await self.mailbox.serve_clear(message)
                return
            case onion_frames.ForwardMessage():
                pass
            case _:
                raise RemoteProtocolError("an onion message that is not ours to take")
        surb = sphinx.decode_surb(message.surb)
        sender, inner = sealed.unseal(self.identity, message.envelope)
        try:
            async with self._lock:
                frame = await self._open_and_commit(sender, inner)
        except DecryptError as exc:
            # No session we hold opens it: ask the sender for a new one rather
            # than leave it retrying into the same wall.
            self.stats.unreadable_sent += 1
            await self._send_reply(surb, onion_frames.encode_unreadable(_reason(exc)))
            raise
        self.stats.opened += 1
        reply = onion_frames.encode_reply(onion_frames.ReplyMessage((frame.id,)))
        if await self._send_reply(surb, reply):
            self.stats.acks_sent += 1
        else:
            self.stats.acks_failed += 1

    async def _open_and_commit(self, sender: PublicIdentity, inner: bytes) -> MsgFrame:
        state = None
        if (stored := await self.store.get_session(sender.node_id)) is not None:
            try:
                state = RatchetState.from_bytes(stored)
            except CorruptState as exc:
                # Our stored session is damaged: its messages cannot be read,
                # but the new session the sender will be asked for can.
                log.warning("a stored e2e session is damaged: %s", exc)
        current = self.secrets()
        new_state, secrets, plaintext = session.decrypt(
            self.identity, current, sender, state, inner
        )
        frame = frames.decode(plaintext)
        if not isinstance(frame, MsgFrame):
            raise RemoteProtocolError("an e2e message that is not a message frame")
        changed = secrets.to_bytes() != current.to_bytes()
        inbox = InboxMessage.of_frame(sender.node_id, frame, self._wall_clock())
        new = await self.store.commit_received_sealed(
            inbox, new_state.to_bytes(), (PREKEYS_SLOT, secrets.to_bytes()) if changed else None
        )
        if changed:
            self._prekeys = secrets
            self.prekeys_changed.set()
        await self._on_message(inbox, new, frame.low)
        return frame

    async def _send_reply(self, surb: sphinx.Surb, reply: bytes) -> bool:
        """Send ``reply`` through ``surb``; False if its first relay is unreachable."""
        first, packet = sphinx.use_surb(surb, reply)
        try:
            await self.onion.send_packet(first, packet)
        except (*DIAL_ERRORS, NoRoute) as exc:  # the sender retries
            log.debug("could not send a reply: %r", exc)
            return False
        return True


def _reason(exc: DecryptError) -> onion_frames.Unreadable:
    if isinstance(exc, UnknownPrekey):
        return onion_frames.Unreadable.UNKNOWN_PREKEY
    if isinstance(exc, ReplayedStart):
        return onion_frames.Unreadable.REPLAYED_START
    return onion_frames.Unreadable.NO_SESSION
