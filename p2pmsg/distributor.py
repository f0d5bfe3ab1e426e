"""Handing out bridges a few at a time, and asking for more before they run out (S13).

Theory of operation
-------------------
A bridge helps only while the censor does not know its address, and a
censor learns addresses the way anyone does: it asks the distributor with
many identities, and it watches relays. China blocked new Tor bridges 2 to
36 days after their release, so hiding bridges for long is hopeless; what
keeps users connected is a steady supply of *young* bridges and users who
fetch them in time (Tor's rdsys hands out bridges a few at a time; Lox and
Salmon add users who replace blocked ones).

:class:`Distributor` is the publisher's side:

* an operator *offers* a bridge (its invite); the bridge is handed out during
  its first ``fresh_for`` seconds only (:data:`FRESH_FOR`, 7 days), then
  leaves the ring and serves those who have it. Sybils that enumerate the
  ring learn young bridges, which the censor blocks days later, and an
  honest requester gets bridges that mostly still work;
* :meth:`Distributor.hand_out` gives :data:`PER_REQUEST` (3) bridges: it
  walks a hash ring from the position keyed by the requester and the day
  (BLAKE2b keyed with the distributor's secret, as BridgeDB's hash rings
  are), skipping what the requester says failed for it. The same requester
  asking again the same day with the same failures gets the same answer, so
  learning more costs a new identity (a link handshake, which a flooded
  node prices with :mod:`p2pmsg.puzzle`);
* bounded: at most ``max_bridges`` on the ring, the oldest leaving first.

:func:`needs_more` is the node's side: it keeps :data:`NEED_OPEN` (3)
working bridges, asking for more *while one still works*, as soon as fewer
work, at most once per :data:`ASK_EVERY` (an hour). A node that waits
until all have failed has no path left to reach the distributor, and one
that waits until only one works is stranded when two fail in the same hour
(the lab's bridge hunt saw 2% of its users so in 30 days).

Wire (link messages, after the tunnel's 6-7 and the gateway's 8)::

    REQUEST  version(1) type=9  n(1) n x key(32)           the bridges that failed
    REPLY    version(1) type=10 n(1) n x (len(2) invite)   n <= PER_REQUEST

A request names failed bridges by key (at most :data:`MAX_FAILED`, the
latest), so it stays small; the requester is the link's authenticated peer.
Decoders raise :class:`RemoteProtocolError` and nothing else.

Pure: time and the secret are parameters.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Final

from p2pmsg import sized
from p2pmsg.endpoint import MAX_INVITE_CHARS
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import KEY_BYTES

DAY: Final = 86_400.0
PER_REQUEST: Final = 3
"""Bridges per answer, as BridgeDB's."""
FRESH_FOR: Final = 7 * DAY
"""How long after its offer a bridge is handed out."""
MAX_BRIDGES: Final = 10_000
NEED_OPEN: Final = 3
"""A node asks for more when fewer of its bridges than this work."""
ASK_EVERY: Final = 3600.0
"""... at most this often."""
SECRET_BYTES: Final = 32
VERSION: Final = 1
REQUEST_TYPE: Final = 9
REPLY_TYPE: Final = 10
MAX_FAILED: Final = 64
"""Failed bridges a request names."""


class Distributor:
    """The bridges a publisher hands out: young ones, a few per requester per day."""

    def __init__(
        self, secret: bytes, *, fresh_for: float = FRESH_FOR, max_bridges: int = MAX_BRIDGES
    ) -> None:
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"the secret is {SECRET_BYTES} bytes")
        if not fresh_for > 0 or max_bridges < 1:
            raise ValueError("fresh_for must be positive and max_bridges at least 1")
        self._secret = secret
        self.fresh_for = fresh_for
        self.max_bridges = max_bridges
        self._ring: list[bytes] = []
        """Positions, sorted."""
        self._at: dict[bytes, str] = {}
        """Position -> invite."""
        self._offered: deque[tuple[float, bytes]] = deque()
        """(offered, position), oldest first."""

    def __repr__(self) -> str:
        return f"<Distributor {len(self._ring)} bridges>"

    def __len__(self) -> int:
        return len(self._ring)

    def _hash(self, *parts: bytes) -> bytes:
        h = hashlib.blake2b(key=self._secret, digest_size=16, person=b"p2pmsg-bridges")
        for part in parts:
            h.update(len(part).to_bytes(4, "big") + part)
        return h.digest()

    def offer(self, invite: str, now: float) -> bool:
        """Hand ``invite`` out from ``now`` on, for ``fresh_for``; False if it is already out."""
        position = self._hash(b"bridge", invite.encode())
        if position in self._at:
            return False
        self._expire(now)
        while len(self._ring) >= self.max_bridges:
            self._remove(self._offered.popleft()[1])
        bisect.insort(self._ring, position)
        self._at[position] = invite
        self._offered.append((now, position))
        return True

    def hand_out(self, requester: bytes, now: float, failed: Iterable[str] = ()) -> tuple[str, ...]:
        """Up to :data:`PER_REQUEST` young bridges for ``requester`` today, none of ``failed``."""
        self._expire(now)
        if not self._ring:
            return ()
        skip = set(failed)
        day = int(now // DAY).to_bytes(8, "big", signed=True)
        start = bisect.bisect_left(self._ring, self._hash(b"requester", requester, day))
        picked: list[str] = []
        for i in range(len(self._ring)):
            invite = self._at[self._ring[(start + i) % len(self._ring)]]
            if invite not in skip:
                picked.append(invite)
                if len(picked) == PER_REQUEST:
                    break
        return tuple(picked)

    def _expire(self, now: float) -> None:
        while self._offered and self._offered[0][0] + self.fresh_for <= now:
            self._remove(self._offered.popleft()[1])

    def _remove(self, position: bytes) -> None:
        del self._ring[bisect.bisect_left(self._ring, position)]
        del self._at[position]


def needs_more(failed: Sequence[bool], now: float, last_asked: float) -> bool:
    """Whether a node asks for more bridges: ``failed`` says of each of its
    bridges whether it failed, and it last asked at ``last_asked``."""
    return failed.count(False) < NEED_OPEN and now - last_asked >= ASK_EVERY


def encode_request(failed: Sequence[bytes]) -> bytes:
    """A request naming the keys of (at most :data:`MAX_FAILED`) failed bridges."""
    if len(failed) > MAX_FAILED or any(len(k) != KEY_BYTES for k in failed):
        raise ValueError(f"at most {MAX_FAILED} keys of {KEY_BYTES} bytes")
    return bytes([VERSION, REQUEST_TYPE, len(failed)]) + b"".join(failed)


def decode_request(data: bytes) -> tuple[bytes, ...]:
    """The failed bridges' keys a request names."""
    if len(data) < 3 or data[0] != VERSION or data[1] != REQUEST_TYPE:
        raise RemoteProtocolError("not a bridge request")
    count = data[2]
    if count > MAX_FAILED or len(data) != 3 + count * KEY_BYTES:
        raise RemoteProtocolError(f"a bridge request names at most {MAX_FAILED} whole keys")
    return tuple(data[3 + i * KEY_BYTES : 3 + (i + 1) * KEY_BYTES] for i in range(count))


def encode_reply(invites: Sequence[str]) -> bytes:
    if len(invites) > PER_REQUEST:
        raise ValueError(f"at most {PER_REQUEST} invites")
    raw = [invite.encode() for invite in invites]
    if any(len(item) > MAX_INVITE_CHARS for item in raw):
        raise ValueError("invite too long")
    return bytes([VERSION, REPLY_TYPE, len(raw)]) + sized.pack(raw)


def decode_reply(data: bytes) -> tuple[str, ...]:
    """The invites a reply carries (still to be parsed: they come from the network)."""
    if len(data) < 3 or data[0] != VERSION or data[1] != REPLY_TYPE:
        raise RemoteProtocolError("not a bridge reply")
    if data[2] > PER_REQUEST:
        raise RemoteProtocolError(f"a bridge reply carries at most {PER_REQUEST} invites")
    raw, end = sized.unpack(data, 3, data[2], MAX_INVITE_CHARS, "bridge reply")
    if end != len(data):
        raise RemoteProtocolError("trailing bytes after a bridge reply")
    return sized.texts(raw, "bridge invite")
