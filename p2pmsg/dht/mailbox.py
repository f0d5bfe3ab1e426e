"""DHT mailboxes: where packets for an offline recipient wait, without servers.

Theory of operation
-------------------
A packet that cannot reach its recipient is deposited in the recipient's
mailbox: under :data:`MAILBOX_REPLICAS` DHT keys derived from the owner's
node id and the day (:func:`mailbox_keys`, keyed BLAKE2b, domain separated),
on the k nodes closest to each. Three unrelated keys put the copies in three
unrelated parts of the id space, so Sybils gathered around one key (SCENARIOS
S15) hold one copy, not all. The keys change every :data:`EPOCH_SECONDS`, so
a mailbox does not sit at one spot long enough to be eclipsed on purpose.

An entry is an opaque blob (a Sphinx packet still encrypted for the owner):
no plaintext, and no signature, because a depositor's signature would name
the sender. Its id (:func:`entry_id`) is a hash of the blob, so a holder
cannot lie about ids and duplicates collapse. A holder keeps entries in a
bounded :class:`MailboxStore`; :meth:`MailboxStore.put` decides each deposit
by explicit rules, counted per reason, and never evicts a live entry:

* the expiry is the depositor's (14 days by default), clamped to
  :data:`MAX_TTL` (30 days) from the holder's clock; an expired one is refused;
* at most ``max_per_key`` entries per key, of which one depositor (the node
  that sent the DEPOSIT) may hold at most ``max_source_per_key``, and at most
  ``max_per_source`` overall, so one flooding depositor cannot crowd out the
  others;
* at most ``max_bytes`` of blobs in total.

Only the owner can clear its mailbox: a :class:`ClearRequest` names the
owner's Ed25519 key, the epoch, the replica index and the entry ids, signed
by the owner under :data:`CLEAR_CONTEXT`; the holder checks that the key it
holds is ``mailbox_keys(node_id_of(owner), epoch)[index]`` and the signature.
Replaying a clear request deletes the same entries again, nothing more.

Pure: time is a parameter (``now``, unix seconds); nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, TypeVar

from p2pmsg.errors import BadKey, RemoteProtocolError
from p2pmsg.keys import KEY_BYTES, NODE_ID_BYTES, Identity, PublicIdentity, node_id_of

MAILBOX_REPLICAS: Final = 3
EPOCH_SECONDS: Final = 86_400
DAY: Final = 86_400
DEFAULT_TTL: Final = 14 * DAY
MAX_TTL: Final = 30 * DAY
MAX_BLOB: Final = 4096
ENTRY_ID_BYTES: Final = 16
KEY_SIZE: Final = NODE_ID_BYTES

DEFAULT_MAX_PER_KEY: Final = 256
DEFAULT_MAX_SOURCE_PER_KEY: Final = 64  # a quarter of a key's entries
DEFAULT_MAX_PER_SOURCE: Final = 1024
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024

_K = TypeVar("_K")
_KEY_DOMAIN: Final = b"p2pmsg mailbox key v1\0"
_ID_DOMAIN: Final = b"p2pmsg mailbox entry v1\0"


def epoch_of(now: float) -> int:
    """The mailbox epoch (day number since the unix epoch) of unix time ``now``."""
    return max(0, int(now // EPOCH_SECONDS))


def mailbox_keys(owner_node_id: bytes, epoch: int) -> tuple[bytes, bytes, bytes]:
    """The :data:`MAILBOX_REPLICAS` DHT keys of ``owner_node_id``'s mailbox in ``epoch``."""
    if len(owner_node_id) != NODE_ID_BYTES or not 0 <= epoch < 2**32:
        raise ValueError("a 32-byte node id and a u32 epoch")

    def key(index: int) -> bytes:
        message = _KEY_DOMAIN + struct.pack(">IB", epoch, index)
        return hashlib.blake2b(message, key=owner_node_id, digest_size=KEY_SIZE).digest()

    return key(0), key(1), key(2)


def entry_id(blob: bytes) -> bytes:
    """The 16-byte id of a mailbox entry: a hash of its blob."""
    return hashlib.blake2b(_ID_DOMAIN + blob, digest_size=ENTRY_ID_BYTES).digest()


# --- the store ----------------------------------------------------------------


class Outcome(StrEnum):
    """What :meth:`MailboxStore.put` did; all but the first two are refusals."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    BAD_SIZE = "bad_size"
    EXPIRED = "expired"
    KEY_FULL = "key_full"
    SOURCE_KEY_QUOTA = "source_key_quota"
    SOURCE_QUOTA = "source_quota"
    BYTES_FULL = "bytes_full"

    @property
    def accepted(self) -> bool:
        """True when the holder has the entry now (stored, or had it already)."""
        return self in {Outcome.STORED, Outcome.DUPLICATE}


@dataclass(frozen=True)
class Entry:
    """One mailbox entry as a holder keeps it."""

    id: bytes
    blob: bytes = field(repr=False)
    expires: int
    source: bytes = field(repr=False)


class MailboxStore:
    """Mailbox entries by key, in arrival order, bounded as the module says."""

    def __init__(
        self,
        *,
        max_per_key: int = DEFAULT_MAX_PER_KEY,
        max_source_per_key: int = DEFAULT_MAX_SOURCE_PER_KEY,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.max_per_key = max_per_key
        self.max_source_per_key = max_source_per_key
        self.max_per_source = max_per_source
        self.max_bytes = max_bytes
        self._keys: dict[bytes, OrderedDict[bytes, Entry]] = {}
        self._per_source: Counter[bytes] = Counter()
        self._per_key_source: Counter[tuple[bytes, bytes]] = Counter()
        self._bytes = 0
        self._entries = 0
        self._heap: list[tuple[int, bytes, bytes]] = []  # expires, key, id
        self._refusals: Counter[str] = Counter()

    def __len__(self) -> int:
        return self._entries

    def stats(self) -> dict[str, object]:
        """``entries`` and ``bytes`` held, ``keys`` in use, ``refusals`` by reason."""
        return {
            "entries": self._entries,
            "bytes": self._bytes,
            "keys": len(self._keys),
            "refusals": dict(self._refusals),
        }

    def put(self, key: bytes, blob: bytes, expires: int, now: float, *, source: bytes) -> Outcome:
        """Keep ``blob`` under ``key`` until ``expires`` (clamped to now + 30 days).

        ``source`` is the node that deposited it. Never raises for what a
        remote sent: a refusal is the returned :class:`Outcome`, counted.
        """
        outcome = self._judge(key, blob, expires, now, source)
        if outcome is None:
            entry = Entry(entry_id(blob), blob, min(expires, int(now) + MAX_TTL), source)
            self._insert(key, entry)
            return Outcome.STORED
        if not outcome.accepted:
            self._refusals[outcome.value] += 1
        return outcome

    def _judge(
        self, key: bytes, blob: bytes, expires: int, now: float, source: bytes
    ) -> Outcome | None:
        if len(key) != KEY_SIZE or not 0 < len(blob) <= MAX_BLOB:
            return Outcome.BAD_SIZE
        if expires <= now:
            return Outcome.EXPIRED
        entries = self._keys.get(key)
        existing = entries.get(entry_id(blob)) if entries is not None else None
        if existing is not None:
            if existing.expires > now:
                return Outcome.DUPLICATE
            self._remove(key, existing)  # a new deposit of an expired entry
        if self._heap and self._heap[0][0] <= now and self._full(key, blob, source) is not None:
            self.expire(now)  # expired entries make room; live ones never do
        return self._full(key, blob, source)

    def _full(self, key: bytes, blob: bytes, source: bytes) -> Outcome | None:
        checks = (
            (len(self._keys.get(key, ())) >= self.max_per_key, Outcome.KEY_FULL),
            (
                self._per_key_source[key, source] >= self.max_source_per_key,
                Outcome.SOURCE_KEY_QUOTA,
            ),
            (self._per_source[source] >= self.max_per_source, Outcome.SOURCE_QUOTA),
            (self._bytes + len(blob) > self.max_bytes, Outcome.BYTES_FULL),
        )
        return next((outcome for full, outcome in checks if full), None)

    def get(
        self, key: bytes, now: float, *, after: bytes | None = None, limit: int = 64
    ) -> list[Entry]:
        """Up to ``limit`` unexpired entries of ``key`` in arrival order, starting
        after the entry ``after`` (from the first when it is None or gone)."""
        entries = self._keys.get(key)
        if entries is None or limit <= 0:
            return []
        ids = list(entries)
        start = ids.index(after) + 1 if after is not None and after in entries else 0
        live = (entries[i] for i in ids[start:] if entries[i].expires > now)
        return list(itertools.islice(live, limit))

    def blobs(self) -> list[bytes]:
        """Every blob held, under any key (for inspection: what a holder can see)."""
        return [entry.blob for entries in self._keys.values() for entry in entries.values()]

    def delete(self, key: bytes, ids: list[bytes]) -> int:
        """Remove the entries ``ids`` of ``key``; how many there were."""
        entries = self._keys.get(key)
        removed = 0
        for id_ in ids:
            if entries is not None and id_ in entries:
                self._remove(key, entries[id_])
                removed += 1
                entries = self._keys.get(key)
        return removed

    def expire(self, now: float) -> int:
        """Drop every entry with ``expires <= now``; how many."""
        removed = 0
        while self._heap and self._heap[0][0] <= now:
            _, key, id_ = heapq.heappop(self._heap)
            entries = self._keys.get(key)
            entry = entries.get(id_) if entries is not None else None
            # a deleted entry leaves its heap item behind: skip it
            if entry is not None and entry.expires <= now:
                self._remove(key, entry)
                removed += 1
        return removed

    def _insert(self, key: bytes, entry: Entry) -> None:
        self._keys.setdefault(key, OrderedDict())[entry.id] = entry
        self._per_source[entry.source] += 1
        self._per_key_source[key, entry.source] += 1
        self._bytes += len(entry.blob)
        self._entries += 1
        heapq.heappush(self._heap, (entry.expires, key, entry.id))
        if len(self._heap) > 2 * self._entries + 64:
            # deletions leave stale items behind; rebuild so the heap stays bounded
            self._heap = [
                (e.expires, k, e.id) for k, entries in self._keys.items() for e in entries.values()
            ]
            heapq.heapify(self._heap)

    def _remove(self, key: bytes, entry: Entry) -> None:
        entries = self._keys[key]
        del entries[entry.id]
        if not entries:
            del self._keys[key]
        _decrement(self._per_source, entry.source)
        _decrement(self._per_key_source, (key, entry.source))
        self._bytes -= len(entry.blob)
        self._entries -= 1


def _decrement(counter: Counter[_K], item: _K) -> None:
    counter[item] -= 1
    if counter[item] <= 0:
        del counter[item]


# --- clearing: the owner's signed request -------------------------------------
#
# version u8 | owner 32 | epoch u32 | index u8 | count u16 | count x id 16 | signature 64
# The signature covers CLEAR_CONTEXT and every byte before it.

CLEAR_VERSION: Final = 1
CLEAR_CONTEXT: Final = b"p2pmsg mailbox clear v1\0"
MAX_CLEAR_IDS: Final = DEFAULT_MAX_PER_KEY
_CLEAR_HEAD: Final = struct.Struct(">B32sIBH")
_SIGNATURE_BYTES: Final = 64
MAX_CLEAR_BYTES: Final = _CLEAR_HEAD.size + MAX_CLEAR_IDS * ENTRY_ID_BYTES + _SIGNATURE_BYTES


class InvalidClear(RemoteProtocolError):
    """A mailbox clear request is malformed, or not the mailbox owner's."""


@dataclass(frozen=True)
class ClearRequest:
    """The owner's signed request to delete entries of one replica of its mailbox."""

    owner: bytes
    epoch: int
    index: int
    ids: tuple[bytes, ...]
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.owner) != KEY_BYTES or not 0 <= self.epoch < 2**32:
            raise ValueError("a 32-byte owner key and a u32 epoch")
        if not 0 <= self.index < MAILBOX_REPLICAS or len(self.ids) > MAX_CLEAR_IDS:
            raise ValueError(f"an index below {MAILBOX_REPLICAS}, at most {MAX_CLEAR_IDS} ids")
        if any(len(i) != ENTRY_ID_BYTES for i in self.ids):
            raise ValueError(f"entry ids are {ENTRY_ID_BYTES} bytes")
        if len(self.signature) != _SIGNATURE_BYTES:
            raise ValueError(f"a signature is {_SIGNATURE_BYTES} bytes")


def _unsigned(r: ClearRequest) -> bytes:
    head = _CLEAR_HEAD.pack(CLEAR_VERSION, r.owner, r.epoch, r.index, len(r.ids))
    return head + b"".join(r.ids)


def sign_clear(identity: Identity, epoch: int, index: int, ids: list[bytes]) -> ClearRequest:
    """``identity``'s request to clear ``ids`` from replica ``index``. Raises ``ValueError``."""
    unsigned = ClearRequest(identity.public.key, epoch, index, tuple(ids), bytes(_SIGNATURE_BYTES))
    signature = identity.sign(CLEAR_CONTEXT + _unsigned(unsigned))
    return ClearRequest(identity.public.key, epoch, index, tuple(ids), signature)


def encode_clear(request: ClearRequest) -> bytes:
    """The wire bytes of ``request``: exactly what :func:`decode_clear` accepts."""
    return _unsigned(request) + request.signature


def decode_clear(data: bytes) -> ClearRequest:
    """Parse one whole clear request. Raises :class:`InvalidClear`; checks no signature."""
    if len(data) < _CLEAR_HEAD.size + _SIGNATURE_BYTES or len(data) > MAX_CLEAR_BYTES:
        raise InvalidClear(f"a clear request of {len(data)} bytes")
    version, owner, epoch, index, count = _CLEAR_HEAD.unpack_from(data)
    if version != CLEAR_VERSION:
        raise InvalidClear(f"unknown clear request version {version}")
    end = _CLEAR_HEAD.size + count * ENTRY_ID_BYTES
    if len(data) != end + _SIGNATURE_BYTES:
        raise InvalidClear("the length does not match the id count")
    ids = tuple(data[i : i + ENTRY_ID_BYTES] for i in range(_CLEAR_HEAD.size, end, ENTRY_ID_BYTES))
    try:
        return ClearRequest(owner, epoch, index, ids, bytes(data[end:]))
    except ValueError as exc:
        raise InvalidClear(str(exc)) from exc


def verify_clear(request: ClearRequest, key: bytes) -> None:
    """Raise :class:`InvalidClear` unless the owner signed ``request`` for ``key``."""
    keys = mailbox_keys(node_id_of(request.owner), request.epoch)
    if keys[request.index] != key:
        raise InvalidClear("the request is for another mailbox key")
    try:
        owner = PublicIdentity(request.owner)
    except BadKey as exc:
        raise InvalidClear("the owner key is not an Ed25519 key") from exc
    if not owner.verify(CLEAR_CONTEXT + _unsigned(request), request.signature):
        raise InvalidClear("the owner did not sign this clear request")
