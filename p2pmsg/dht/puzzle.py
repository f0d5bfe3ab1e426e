"""Proof of work for DHT stores, asked for only under load.

Theory of operation
-------------------
Tor's onion services ask their clients for work only while they are flooded
(proposal 327): the service raises a *suggested effort* while requests
overflow and lowers it while they do not, so in calm times nobody pays. A DHT
node has the same exposure to writes: every STORE costs it a signature check
and a place in its record store, and every mailbox DEPOSIT a place in its
mailboxes, whatever the sender's stake. So a node counts the writes it takes
(STORE and DEPOSIT, the :data:`PRICED` methods) per :data:`WINDOW`; when a
window held more than ``calm``, the next write is answered ``PUZZLE`` with a
*price*, ``seed(16) | effort u32``, and the writer sends it again wrapped in
a PAID request::

    method u8 | seed 16 | effort u32 | nonce 8 | the write's body

The proof is a nonce for which the personalised BLAKE2b
``H = blake2b-64(seed | effort | writer's node id | method | blake2b-256(body) | nonce)``
read as a big-endian integer satisfies ``H * effort < 2**64``, as in Tor's
check (``r * E`` within 32 bits): about ``effort`` hashes of work, checked
with one. It binds the writer and the write, so it cannot be lent to another
id or reused for another record, and each proof is spent once per seed.

Each window that took too many writes doubles the effort (from
:data:`MIN_EFFORT` up to :data:`MAX_EFFORT`); each calm one, where at most
half of ``calm`` writes were even tried (taken, priced or badly paid),
halves it, down to off. In between it holds, so writers that never pay
cannot bring the price down by being refused. Every window under a price
draws a new seed; the one before stays valid for a window, so a price just
given is still honoured. Writers refuse to work for more than
:data:`MAX_EFFORT` (about half a second of Python), and solve in slices
with checkpoints between them so the rest of the node runs on
(:func:`solve`).

Pure except :func:`solve`'s checkpoints: time and randomness are parameters.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import trio

from p2pmsg.dht.peer import ID_BYTES
from p2pmsg.errors import RemoteProtocolError

SEED_BYTES: Final = 16
NONCE_BYTES: Final = 8
MIN_EFFORT: Final = 1 << 10
MAX_EFFORT: Final = 1 << 20
WINDOW: Final = 10.0
"""Seconds per load window."""
CALM: Final = 200
"""Writes per window a node takes without asking for work (20 a second: a
node's share of a large network's republishing is well under one)."""
MAX_SPENT: Final = 4096
"""Proofs remembered per seed; a full seed is retired early."""
SLICE: Final = 4096
"""Hashes between checkpoints while solving."""
_PERSON: Final = b"p2pmsg dht pow"
_PRICE = struct.Struct(">16sI")
_PAID = struct.Struct(">B16sI8s")


@dataclass(frozen=True)
class Price:
    seed: bytes
    effort: int


@dataclass(frozen=True)
class Paid:
    method: int
    price: Price
    nonce: bytes
    body: bytes


def encode_price(price: Price) -> bytes:
    return _PRICE.pack(price.seed, price.effort)


def decode_price(data: bytes) -> Price:
    """Raises :class:`RemoteProtocolError` for anything but a price with a positive effort."""
    if len(data) != _PRICE.size:
        raise RemoteProtocolError("malformed price")
    seed, effort = _PRICE.unpack(data)
    if effort < 1:
        raise RemoteProtocolError("a price of no effort")
    return Price(seed, effort)


def encode_paid(paid: Paid) -> bytes:
    return _PAID.pack(paid.method, paid.price.seed, paid.price.effort, paid.nonce) + paid.body


def decode_paid(data: bytes) -> Paid:
    """Raises :class:`RemoteProtocolError` for a truncated PAID body."""
    if len(data) < _PAID.size:
        raise RemoteProtocolError("truncated paid request")
    method, seed, effort, nonce = _PAID.unpack_from(data)
    return Paid(method, Price(seed, effort), nonce, data[_PAID.size :])


def _prefix(price: Price, writer: bytes, method: int, body: bytes) -> Any:
    digest = hashlib.blake2b(body, digest_size=32).digest()
    head = _PRICE.pack(price.seed, price.effort) + writer + bytes([method]) + digest
    return hashlib.blake2b(head, digest_size=8, person=_PERSON)


def _hash(state: Any, nonce: bytes) -> bytes:
    h = state.copy()
    h.update(nonce)
    digest: bytes = h.digest()
    return digest


def _meets(digest: bytes, effort: int) -> bool:
    return int.from_bytes(digest, "big") * effort < 1 << 64


def proof(paid: Paid, writer: bytes) -> bytes | None:
    """The hash that proves ``paid``'s work for ``writer`` (it names the proof
    when it is spent), or None when there is no such proof."""
    if len(writer) != ID_BYTES or paid.price.effort < 1:
        return None
    digest = _hash(_prefix(paid.price, writer, paid.method, paid.body), paid.nonce)
    return digest if _meets(digest, paid.price.effort) else None


def check(paid: Paid, writer: bytes) -> bool:
    """Whether ``paid`` carries a proof of its price's effort for ``writer``."""
    return proof(paid, writer) is not None


async def solve(price: Price, writer: bytes, method: int, body: bytes) -> Paid:
    """A proof for ``price`` (about ``price.effort`` hashes), checkpointing
    every :data:`SLICE` hashes. Raises ``ValueError`` above :data:`MAX_EFFORT`."""
    if not 1 <= price.effort <= MAX_EFFORT:
        raise ValueError(f"an effort of {price.effort} is more work than we do for a store")
    state = _prefix(price, writer, method, body)
    start = 0
    while True:
        for counter in range(start, start + SLICE):
            nonce = counter.to_bytes(NONCE_BYTES, "big")
            if _meets(_hash(state, nonce), price.effort):
                return Paid(method, price, nonce, body)
        start += SLICE
        await trio.lowlevel.checkpoint()


class Pricing:
    """One node's price for writes: ask it of a plain write, or accept a paid one."""

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
        self._writes = 0
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
        """The price of a plain write arriving at ``now``, or None (counted as taken) when free."""
        self._roll(now)
        self._tried += 1
        if self.effort:
            self.priced += 1
            return self._price()
        self._writes += 1
        return None

    def accept(self, paid: Paid, writer: bytes, now: float) -> Price | None:
        """None (counted as taken) when ``paid`` is a fresh proof at a price we
        gave; else the price to pay now."""
        self._roll(now)
        known = self._seeds.get(paid.price.seed)
        digest = proof(paid, writer)
        if known is None or paid.price.effort < known[0] or digest is None or digest in known[1]:
            self.refused += 1
            return self.ask(now)  # no better than a plain write
        known[1].add(digest)
        self._tried += 1
        if len(known[1]) >= MAX_SPENT:
            del self._seeds[paid.price.seed]  # retired early: its spent proofs stay bounded
        self.paid += 1
        self._writes += 1
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
            if self._writes > self.calm:
                self.effort = min(MAX_EFFORT, max(MIN_EFFORT, 2 * self.effort))
            elif self._tried <= self.calm // 2:
                self.effort = self.effort // 2 if self.effort > MIN_EFFORT else 0
            self._writes = self._tried = 0
            self._window_end += self.window
            if self.effort:
                self._new_seed()
            elif now >= self._window_end:
                # Off, and the windows up to now held no writes: skip them.
                self._window_end += ((now - self._window_end) // self.window + 1) * self.window
