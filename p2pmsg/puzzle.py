"""Proof of work asked for only under load: DHT writes and link handshakes.

Theory of operation
-------------------
Tor's onion services ask their clients for work only while they are flooded
(proposal 327): the service raises a *suggested effort* while requests
overflow and lowers it while they do not, so in calm times nobody pays. A
node has the same exposure in two places, each with a :class:`Pricing` of
its own: DHT writes (:mod:`p2pmsg.dht.puzzle`: a STORE costs a signature
check and a place in the record store, a DEPOSIT a place in a mailbox) and
inbound handshakes (:mod:`p2pmsg.link.connection`: a first flight costs two
X25519 operations to read and three to answer). A :class:`Pricing` counts
the requests it takes per :data:`WINDOW`; when a window held more than
``calm``, the next request is answered with a *price*, ``seed(16) | effort
u32``, and the requester sends it again with a nonce.

The proof is a nonce for which the personalised BLAKE2b
``H = blake2b-64(seed | effort | subject | nonce)`` (personalised per use)
read as a big-endian integer satisfies ``H * effort < 2**64``, as in Tor's
check (``r * E`` within 32 bits): about ``effort`` hashes of work, checked
with one. The *subject* binds the proof to what it pays for where that
matters (a DHT write names its writer and the write; a handshake names
nothing, as Tor's introduction requests do not), and each proof is spent
once per seed.

Each window that took too many requests doubles the effort (from
:data:`MIN_EFFORT` up to :data:`MAX_EFFORT`); each calm one, where at most
half of ``calm`` requests were even tried (taken, priced or badly paid),
halves it, down to off. In between it holds, so requesters that never pay
cannot bring the price down by being refused. Every window under a price
draws a new seed; the one before stays valid for a window, so a price just
given is still honoured. Requesters refuse to work for more than
:data:`MAX_EFFORT` (about half a second of Python), and solve in slices
with checkpoints between them so the rest of the node runs on
(:func:`solve_nonce`).

Pure: time, randomness and :func:`solve_nonce`'s checkpoints are
parameters.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from p2pmsg.errors import RemoteProtocolError

SEED_BYTES: Final = 16
NONCE_BYTES: Final = 8
MIN_EFFORT: Final = 1 << 10
MAX_EFFORT: Final = 1 << 20
WINDOW: Final = 10.0
"""Seconds per load window."""
CALM: Final = 200
"""Requests per window a node takes without asking for work (20 a second: a
node's share of a large network's republishing, or its inbound handshakes,
are well under one)."""
MAX_SPENT: Final = 4096
"""Proofs remembered per seed; a full seed is retired early."""
SLICE: Final = 4096
"""Hashes between checkpoints while solving."""
PRICE = struct.Struct(">16sI")


@dataclass(frozen=True)
class Price:
    seed: bytes
    effort: int


def encode_price(price: Price) -> bytes:
    return PRICE.pack(price.seed, price.effort)


def decode_price(data: bytes) -> Price:
    """Raises :class:`RemoteProtocolError` for anything but a price with a positive effort."""
    if len(data) != PRICE.size:
        raise RemoteProtocolError("malformed price")
    seed, effort = PRICE.unpack(data)
    if effort < 1:
        raise RemoteProtocolError("a price of no effort")
    return Price(seed, effort)


def _work(price: Price, person: bytes, subject: bytes) -> Any:
    head = PRICE.pack(price.seed, price.effort) + subject
    return hashlib.blake2b(head, digest_size=8, person=person)


def _hash(state: Any, nonce: bytes) -> bytes:
    h = state.copy()
    h.update(nonce)
    digest: bytes = h.digest()
    return digest


def _meets(digest: bytes, effort: int) -> bool:
    return int.from_bytes(digest, "big") * effort < 1 << 64


def proof(price: Price, nonce: bytes, *, person: bytes, subject: bytes = b"") -> bytes | None:
    """The hash that proves ``nonce`` pays ``price`` (it names the proof when
    it is spent), or None when it does not."""
    if price.effort < 1 or len(nonce) != NONCE_BYTES:
        return None
    digest = _hash(_work(price, person, subject), nonce)
    return digest if _meets(digest, price.effort) else None


async def solve_nonce(
    price: Price,
    *,
    person: bytes,
    subject: bytes = b"",
    checkpoint: Callable[[], Awaitable[None]],
    first: bytes,
) -> bytes:
    """A nonce that pays ``price`` (about ``price.effort`` hashes), trying
    nonces from ``first`` on and awaiting ``checkpoint``
    (``trio.lowlevel.checkpoint``) every :data:`SLICE` hashes. Raises
    ``ValueError`` above :data:`MAX_EFFORT`.

    ``first`` must be random (:data:`NONCE_BYTES` of it), as a Tor client
    draws its nonce: clients that pay one price for one subject, as every
    handshake under one seed does, would otherwise all find the same nonce,
    and a proof is spent once, so all but the first were refused."""
    if not 1 <= price.effort <= MAX_EFFORT:
        raise ValueError(f"an effort of {price.effort} is more work than we do for one request")
    if len(first) != NONCE_BYTES:
        raise ValueError(f"the first nonce is {NONCE_BYTES} bytes")
    state = _work(price, person, subject)
    counter = int.from_bytes(first, "big")
    while True:
        for _ in range(SLICE):
            nonce = counter.to_bytes(NONCE_BYTES, "big")
            if _meets(_hash(state, nonce), price.effort):
                return nonce
            counter = (counter + 1) % (1 << (8 * NONCE_BYTES))
        await checkpoint()


class Pricing:
    """One node's price for one kind of request: ask it of a plain request, or accept a paid one."""

    def __init__(
        self, rng: Callable[[int], bytes], *, calm: int = CALM, window: float = WINDOW
    ) -> None:
        if calm < 2 or window <= 0:
            raise ValueError("calm >= 2 and window > 0")
        self._rng = rng
        self.calm = calm
        self.window = window
        self.effort = 0
        self._window_end: float | None = None
        self._taken = 0
        self._tried = 0
        # seed -> (its effort, the proofs spent under it); the newest last, at most two.
        self._seeds: OrderedDict[bytes, tuple[int, set[bytes]]] = OrderedDict()
        self.priced = 0
        self.paid = 0
        self.refused = 0

    def stats(self) -> dict[str, int]:
        return {"effort": self.effort, "priced": self.priced, "paid": self.paid,
                "refused_proofs": self.refused}  # fmt: skip

    def ask(self, now: float) -> Price | None:
        """The price of a request arriving at ``now``, or None (counted as taken) when free."""
        self._roll(now)
        self._tried += 1
        if self.effort:
            self.priced += 1
            return self._price()
        self._taken += 1
        return None

    def accept(self, price: Price, digest: bytes | None, now: float) -> Price | None:
        """None (counted as taken) when ``digest`` (from :func:`proof`) is a
        fresh proof of ``price``, a price we gave; else the price to pay now."""
        self._roll(now)
        known = self._seeds.get(price.seed)
        if known is None or price.effort < known[0] or digest is None or digest in known[1]:
            self.refused += 1
            return self.ask(now)  # no better than a plain request
        known[1].add(digest)
        self._tried += 1
        if len(known[1]) >= MAX_SPENT:
            del self._seeds[price.seed]  # retired early: its spent proofs stay bounded
        self.paid += 1
        self._taken += 1
        return None

    def _price(self) -> Price:
        if not self._seeds or next(reversed(self._seeds.values()))[0] != self.effort:
            self._new_seed()
        seed = next(reversed(self._seeds))
        return Price(seed, self.effort)

    def _new_seed(self) -> None:
        self._seeds[self._rng(SEED_BYTES)] = (self.effort, set())
        while len(self._seeds) > 2:
            self._seeds.popitem(last=False)

    def _roll(self, now: float) -> None:
        if self._window_end is None:
            self._window_end = now + self.window
        while now >= self._window_end:
            if self._taken > self.calm:
                self.effort = min(MAX_EFFORT, max(MIN_EFFORT, 2 * self.effort))
            elif self._tried <= self.calm // 2:
                self.effort = self.effort // 2 if self.effort > MIN_EFFORT else 0
            self._taken = self._tried = 0
            self._window_end += self.window
            if self.effort:
                self._new_seed()
            elif now >= self._window_end:
                # Off, and the windows up to now held no requests: skip them.
                self._window_end += ((now - self._window_end) // self.window + 1) * self.window
