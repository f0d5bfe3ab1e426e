"""Signed bootstrap lists: fresh invites from a publisher the user trusts,
refused when forged, expired or rolled back (SCENARIOS S20).

Theory of operation
-------------------
A fixed bootstrap list is the first thing a censor blocks (S2). A *signed
bootstrap list* carries the invites of nodes that work now, from a
*publisher*: any p2pmsg identity whose key the user chose to trust
(``config.json``'s ``publishers``: ``p2pmsg init --publisher KEY``). Tor
signs its consensus and Psiphon its server lists the same way, so that any
mirror may serve them and none can forge them.

A list is a DHT record (:mod:`p2pmsg.dht.records`, type ``BOOTSTRAP``,
under ``bootstrap_key(publisher)``), so the signature, the sequence number
and the expiry are the record's own. It travels two ways: as one line of
text (:data:`LINE_PREFIX` and the record in unpadded base64url), to be
pasted from a chat, a mail or a web page (``p2pmsg bootstrap import``), and
through the DHT, where the node looks it up now and then and stores again
the newest it holds, so a list still spreads once its publisher is blocked.

:meth:`BootstrapLists.accept` judges a list at the node's clock: from a
trusted publisher, well formed, not expired, expiring at most 30 days
(plus a day of clock tolerance) ahead, signed by its publisher, and newer
than the list it would replace. A censor that serves an older list, even a
still valid one, is refused (roll-back), and so is a second list with the
same sequence number (the publisher signs one list per number). Each
refusal is a :class:`BootstrapRefused` that says, in words, which of these
it failed. The newest list per publisher is kept in the store, and its
invites are seeds (:mod:`p2pmsg.join`) while it is valid.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any, Final

import trio

from p2pmsg.dht import records
from p2pmsg.dht.records import InvalidReason, InvalidRecord, Record, RecordType
from p2pmsg.dht.service import Dht
from p2pmsg.errors import P2PMsgError
from p2pmsg.keys import PublicIdentity
from p2pmsg.store import Store

log = logging.getLogger(__name__)

LINE_PREFIX: Final = "p2pmsg-bootstrap:"
MAX_LINE_CHARS: Final = len(LINE_PREFIX) + (records.MAX_RECORD_BYTES * 4 + 2) // 3
_SLOT: Final = "bootstrap:{}"


class Refusal(StrEnum):
    """Why a bootstrap list was refused; also the key of the refusal counters."""

    MALFORMED = "malformed"
    UNTRUSTED = "untrusted"
    EXPIRED = "expired"
    TOO_FAR_AHEAD = "too_far_ahead"
    FORGED = "forged"
    ROLLED_BACK = "rolled_back"


class BootstrapRefused(P2PMsgError):
    """A signed bootstrap list was refused."""

    def __init__(self, reason: Refusal, detail: str) -> None:
        super().__init__(f"bootstrap list refused: {detail}")
        self.reason = reason


def to_line(record: Record) -> str:
    """A list as one line of text, to paste anywhere."""
    return LINE_PREFIX + base64.urlsafe_b64encode(records.encode(record)).decode().rstrip("=")


def from_line(text: str) -> Record:
    """The record in a line made by :func:`to_line`. Raises :class:`BootstrapRefused`."""
    text = text.strip()
    if len(text) > MAX_LINE_CHARS or not text.startswith(LINE_PREFIX):
        raise BootstrapRefused(Refusal.MALFORMED, f"not a line that starts with {LINE_PREFIX}")
    body = text[len(LINE_PREFIX) :]
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        record = records.decode(data)
    except (binascii.Error, ValueError, InvalidRecord) as exc:
        raise BootstrapRefused(Refusal.MALFORMED, f"damaged ({exc})") from exc
    if record.type is not RecordType.BOOTSTRAP:
        raise BootstrapRefused(Refusal.MALFORMED, "a DHT record, but not a bootstrap list")
    return record


def _days(seconds: float) -> str:
    return f"{seconds / records.DAY:.1f} days"


class BootstrapLists:
    """The lists of the publishers we trust: judged, kept, and their invites."""

    def __init__(
        self, store: Store, publishers: Iterable[bytes], wall_clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.publishers = frozenset(publishers)
        self._wall_clock = wall_clock
        self.accepted = 0
        self.refused: dict[str, int] = {}

    def stats(self) -> dict[str, Any]:
        """For ``status``: publishers trusted, lists taken, refusals by reason."""
        return {
            "publishers": len(self.publishers),
            "accepted": self.accepted,
            "refused": dict(self.refused),
        }

    async def held(self, publisher: bytes) -> Record | None:
        """The newest list we hold from ``publisher`` (expired or not)."""
        line = await self.store.get_meta(_SLOT.format(publisher.hex()))
        if line is None:
            return None
        try:
            return from_line(line)
        except BootstrapRefused:  # a damaged row: as if we held none
            log.warning("a stored bootstrap list is damaged; it is ignored")
            return None

    async def accept(self, record: Record) -> bool:
        """Keep ``record`` if it is a list we must use: True when it is newer
        than the one we held, False when it is that one. Raises
        :class:`BootstrapRefused` (counted) saying why not."""
        try:
            return await self._accept(record)
        except BootstrapRefused as exc:
            self.refused[exc.reason.value] = self.refused.get(exc.reason.value, 0) + 1
            raise

    async def _accept(self, record: Record) -> bool:
        if record.type is not RecordType.BOOTSTRAP:
            raise BootstrapRefused(Refusal.MALFORMED, "a DHT record, but not a bootstrap list")
        if record.publisher not in self.publishers:
            who = PublicIdentity(record.publisher).encoded()
            raise BootstrapRefused(
                Refusal.UNTRUSTED,
                f"signed by {who}, a publisher you do not trust "
                "(trust one with `p2pmsg init --publisher KEY`)",
            )
        now = self._wall_clock()
        try:
            records.validate(record, now)
        except InvalidRecord as exc:
            raise _refusal(exc, record, now) from exc
        held = await self.held(record.publisher)
        if held is not None and record.seq <= held.seq:
            if record == held:
                return False
            raise BootstrapRefused(
                Refusal.ROLLED_BACK,
                f"older than the list you have from this publisher "
                f"(number {record.seq}, yours is {held.seq}): an old list served again",
            )
        await self.store.set_meta(_SLOT.format(record.publisher.hex()), to_line(record))
        self.accepted += 1
        return True

    async def take(self, line: str, dht: Dht | None) -> bool:
        """Take a list pasted as text: True if it is newer than ours, and then
        it is stored in the DHT too (with ``dht``: once the node has joined).
        Raises :class:`BootstrapRefused` saying why not."""
        record = from_line(line)
        if not await self.accept(record):
            return False
        if dht is not None:
            await dht.put(record)
        return True

    async def refresh(self, dht: Dht) -> int:
        """Look our publishers' lists up in the DHT and keep what is newer;
        store the newest we hold there again unless it was found. How many
        were newer."""
        newer = 0
        for publisher in sorted(self.publishers):
            key = records.bootstrap_key(publisher)
            found = await dht.find_records(RecordType.BOOTSTRAP, key)
            for record in found:
                try:
                    newer += await self.accept(record)
                except BootstrapRefused as exc:
                    log.debug("%s", exc)
            held = await self.held(publisher)
            if held is not None and held.expires > self._wall_clock() and held not in found:
                await dht.put(held)
        return newer

    async def keep_fresh(self, dht: Dht, joined: trio.Event, every: float) -> None:
        """:meth:`refresh` once the node has joined, then every ``every`` seconds."""
        await joined.wait()
        while True:
            await self.refresh(dht)
            await trio.sleep(every)

    async def invites(self) -> list[str]:
        """The invites of every list we hold that is still valid."""
        now = self._wall_clock()
        out: list[str] = []
        for publisher in sorted(self.publishers):
            held = await self.held(publisher)
            if held is not None and held.expires > now:
                out += records.decode_bootstrap_value(held.value)
        return out


def _refusal(exc: InvalidRecord, record: Record, now: float) -> BootstrapRefused:
    if exc.reason is InvalidReason.EXPIRED:
        return BootstrapRefused(
            Refusal.EXPIRED,
            f"it expired {_days(now - record.expires)} ago (by this device's clock)",
        )
    if exc.reason is InvalidReason.TOO_FAR_AHEAD:
        return BootstrapRefused(
            Refusal.TOO_FAR_AHEAD,
            f"it expires {_days(record.expires - now)} from now, more than "
            f"{_days(records.BOOTSTRAP_MAX_TTL + records.MAX_CLOCK_SKEW)} allow: "
            "is this device's clock right?",
        )
    if exc.reason is InvalidReason.BAD_SIGNATURE:
        return BootstrapRefused(Refusal.FORGED, "its publisher did not sign it: forged")
    return BootstrapRefused(Refusal.MALFORMED, f"damaged ({exc})")
