"""Prekey bundles (published in the DHT) and the secrets their owner keeps.

Theory of operation
-------------------
X3DH lets a sender start a session with someone who is offline, from a
:class:`PrekeyBundle` the recipient published earlier: its Ed25519 identity
key (whose X25519 image is the X3DH identity key), a signed prekey (X25519,
signed by the identity over :data:`SIGNING_CONTEXT`, the identity, the id and
the key) and up to :data:`MAX_ONE_TIME` one-time prekeys. The one-time keys
are not individually signed: the bundle travels as the value of a DHT record
signed by the same identity, and a substituted one-time key gains an
attacker nothing (the shared secret also needs the identity and signed
prekey DH outputs), it only makes the initial message fail to open.

Wire format, version 1, big-endian::

    version u8 | identity 32 | spk_id u32 | spk 32 | signature 64 |
    n u8 (<= MAX_ONE_TIME) | n x (id u32 | X25519 public 32)

Ids are non-zero (0 means "no one-time key" in an initial message), one-time
ids strictly increase, and a bundle is at most :data:`MAX_BUNDLE_BYTES`.

The owner keeps :class:`PrekeySecrets`. Policies, because a DHT cannot hand
each one-time prekey to only one sender:

* **One-time keys.** A sender picks one of the bundle's one-time keys at
  random (spreading two racing senders apart). When an initial message uses
  one, the key is marked used with the current *generation*: it leaves the
  next bundle at once, but its secret is kept until the second
  :meth:`PrekeySecrets.replenish` after its use, i.e. one whole republish
  period after the first bundle without it. Senders who fetched the older
  bundle in the meantime, including a second sender racing for the same key,
  still get through; the key then protects each of those sessions a little
  less (its forward secrecy against a later signed-prekey theft is shared),
  never not at all (every session has its own ephemeral key).
* **Unknown prekeys.** An initial message naming a signed or one-time prekey
  whose secret is gone is refused with :class:`UnknownPrekey`: it cannot be
  opened, and it is never silently dropped. The refusal is what the node
  reports back to the (unsealed, hence known) sender, who re-fetches the
  bundle and starts again; the sender also detects it as a missing delivery
  acknowledgement.
* **Signed prekeys.** :meth:`PrekeySecrets.rotate_signed` keeps the previous
  signed prekey until the next rotation, so initial messages in flight still
  open for one rotation period.
* **Replays.** The ephemeral (base) key of every accepted initial message is
  remembered while its signed prekey is held (at most :data:`MAX_SEEN`, the
  oldest forgotten first); a second initial message with the same base key
  does not start a second session.

Pure: randomness arrives as ``rng``. Decoding raises :class:`MalformedBundle`,
verification :class:`ForgedPrekey`; stored secrets that do not parse raise
:class:`CorruptState`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from p2pmsg.e2e.primitives import (
    KEY_BYTES,
    CorruptState,
    ForgedPrekey,
    MalformedBundle,
    Reader,
    ReplayedStart,
    UnknownPrekey,
    keypair,
    public_of,
)
from p2pmsg.errors import BadKey
from p2pmsg.keys import Identity, PublicIdentity

VERSION: Final = 1
MAX_ONE_TIME: Final = 32
MAX_ID: Final = 2**32 - 1
SIGNATURE_BYTES: Final = 64
SIGNING_CONTEXT: Final = b"p2pmsg signed prekey v1\0"
_FIXED: Final = struct.Struct(">B32sI32s64sB")
_ONE_TIME: Final = struct.Struct(">I32s")
MAX_BUNDLE_BYTES: Final = _FIXED.size + MAX_ONE_TIME * _ONE_TIME.size
MAX_SEEN: Final = 1024
_SECRETS_VERSION: Final = 1
_UNUSED: Final = MAX_ID

Rng = Callable[[int], bytes]


@dataclass(frozen=True)
class PrekeyBundle:
    """A published prekey bundle. Construction checks shapes (``ValueError``)."""

    identity: bytes
    signed_prekey_id: int
    signed_prekey: bytes
    signature: bytes
    one_time: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        if len(self.identity) != KEY_BYTES or len(self.signed_prekey) != KEY_BYTES:
            raise ValueError("identity and signed prekey are 32 bytes")
        if len(self.signature) != SIGNATURE_BYTES or not 0 < self.signed_prekey_id <= MAX_ID:
            raise ValueError("bad signature length or signed prekey id")
        if len(self.one_time) > MAX_ONE_TIME:
            raise ValueError(f"more than {MAX_ONE_TIME} one-time prekeys")
        ids = [i for i, _ in self.one_time]
        if ids != sorted(set(ids)) or any(not 0 < i <= MAX_ID for i in ids):
            raise ValueError("one-time prekey ids must be non-zero and increasing")
        if any(len(k) != KEY_BYTES for _, k in self.one_time):
            raise ValueError("a one-time prekey is 32 bytes")


def signed_message(identity: bytes, spk_id: int, spk: bytes) -> bytes:
    """What a signed prekey's signature covers."""
    return SIGNING_CONTEXT + identity + spk_id.to_bytes(4, "big") + spk


def encode_bundle(b: PrekeyBundle) -> bytes:
    """The wire bytes of ``b``: exactly what :func:`decode_bundle` accepts."""
    fixed = _FIXED.pack(
        VERSION, b.identity, b.signed_prekey_id, b.signed_prekey, b.signature, len(b.one_time)
    )
    return fixed + b"".join(_ONE_TIME.pack(i, k) for i, k in b.one_time)


def decode_bundle(data: bytes) -> PrekeyBundle:
    """Parse one whole bundle. Raises :class:`MalformedBundle`; does not verify it."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise MalformedBundle(f"longer than {MAX_BUNDLE_BYTES} bytes")
    r = Reader(data, MalformedBundle)
    if (version := r.uint(1)) != VERSION:
        raise MalformedBundle(f"unknown bundle version {version}")
    identity, spk_id, spk, signature = r.take(32), r.uint(4), r.take(32), r.take(64)
    one_time = tuple((r.uint(4), r.take(32)) for _ in range(r.uint(1)))
    r.finish()
    try:
        return PrekeyBundle(identity, spk_id, spk, signature, one_time)
    except ValueError as exc:
        raise MalformedBundle(str(exc)) from exc


def verify_bundle(b: PrekeyBundle, expected_identity: bytes) -> None:
    """Raise :class:`ForgedPrekey` unless ``expected_identity`` signed ``b``'s prekey."""
    if b.identity != expected_identity:
        raise ForgedPrekey("the bundle belongs to another identity")
    try:
        owner = PublicIdentity(b.identity)
    except BadKey as exc:
        raise ForgedPrekey("the identity is not a valid key") from exc
    message = signed_message(b.identity, b.signed_prekey_id, b.signed_prekey)
    if not owner.verify(message, b.signature):
        raise ForgedPrekey("bad signed-prekey signature")


class PrekeySecrets:
    """The private halves of our prekeys. Mutated in place; ``repr`` is redacted."""

    __slots__ = ("generation", "next_id", "one_time", "previous", "seen", "spk", "spk_id")

    def __init__(self, spk_id: int, spk: bytes) -> None:
        self.spk_id, self.spk = spk_id, spk
        self.previous: tuple[int, bytes] | None = None
        self.one_time: dict[int, tuple[bytes, int | None]] = {}  # id -> (secret, used in gen)
        self.next_id = 1
        self.generation = 0
        self.seen: dict[bytes, int] = {}  # base key -> signed prekey id, oldest first

    def __repr__(self) -> str:
        return f"PrekeySecrets(<secrets>, spk_id={self.spk_id}, one_time={len(self.one_time)})"

    @classmethod
    def generate(
        cls, identity: Identity, rng: Rng, *, one_time: int = MAX_ONE_TIME, spk_id: int = 1
    ) -> PrekeySecrets:
        """Fresh secrets: a signed prekey and ``one_time`` one-time prekeys.

        ``identity`` is accepted for symmetry with :meth:`bundle`: the secrets
        hold no identity, a bundle is signed when it is made.
        """
        del identity  # secrets hold no identity; bundle() signs with it
        secrets = cls(spk_id, keypair(rng(KEY_BYTES))[0])
        secrets._top_up(rng, one_time)
        return secrets

    def copy(self) -> PrekeySecrets:
        twin = PrekeySecrets(self.spk_id, self.spk)
        twin.previous, twin.next_id, twin.generation = self.previous, self.next_id, self.generation
        twin.one_time, twin.seen = dict(self.one_time), dict(self.seen)
        return twin

    def bundle(self, identity: Identity) -> PrekeyBundle:
        """The bundle to publish now: the signed prekey and the unused one-time keys."""
        spk = public_of(self.spk)
        signature = identity.sign(signed_message(identity.public.key, self.spk_id, spk))
        unused = sorted(i for i, (_, used) in self.one_time.items() if used is None)
        one_time = tuple((i, public_of(self.one_time[i][0])) for i in unused[:MAX_ONE_TIME])
        return PrekeyBundle(identity.public.key, self.spk_id, spk, signature, one_time)

    def rotate_signed(self, identity: Identity, rng: Rng) -> None:
        """A new signed prekey; the current one stays openable until the next rotation."""
        del identity  # the new key is signed when bundle() is called
        if self.previous is not None:
            dropped = self.previous[0]
            self.seen = {k: s for k, s in self.seen.items() if s != dropped}
        self.previous = (self.spk_id, self.spk)
        self.spk_id = self.spk_id % MAX_ID + 1
        self.spk = keypair(rng(KEY_BYTES))[0]

    def replenish(self, rng: Rng, target: int) -> None:
        """Start a new generation: forget keys used two generations ago, top up to ``target``.

        Call it each time the bundle is republished.
        """
        self.generation += 1
        self.one_time = {
            i: (secret, used)
            for i, (secret, used) in self.one_time.items()
            if used is None or used > self.generation - 2
        }
        self._top_up(rng, target)

    def _top_up(self, rng: Rng, target: int) -> None:
        if not 0 <= target <= MAX_ONE_TIME:
            raise ValueError(f"at most {MAX_ONE_TIME} one-time prekeys")
        while sum(used is None for _, used in self.one_time.values()) < target:
            self.one_time[self.next_id] = (keypair(rng(KEY_BYTES))[0], None)
            self.next_id = self.next_id % MAX_ID + 1

    # --- used by the session layer when an initial message arrives ------------

    def secrets_for(self, spk_id: int, otk_id: int, base_key: bytes) -> tuple[bytes, bytes | None]:
        """The signed and one-time prekey secrets an initial message names.

        Raises :class:`UnknownPrekey` for a prekey we no longer hold and
        :class:`ReplayedStart` for a base key already seen (a replay).
        """
        if base_key in self.seen:
            raise ReplayedStart("a replayed initial message")
        if spk_id == self.spk_id:
            spk = self.spk
        elif self.previous is not None and spk_id == self.previous[0]:
            spk = self.previous[1]
        else:
            raise UnknownPrekey(f"signed prekey {spk_id}")
        if otk_id == 0:
            return spk, None
        if otk_id not in self.one_time:
            raise UnknownPrekey(f"one-time prekey {otk_id}")
        return spk, self.one_time[otk_id][0]

    def mark_used(self, spk_id: int, otk_id: int, base_key: bytes) -> None:
        """Record that an initial message opened (see the module's policies)."""
        if otk_id in self.one_time and self.one_time[otk_id][1] is None:
            self.one_time[otk_id] = (self.one_time[otk_id][0], self.generation)
        self.seen[base_key] = spk_id
        while len(self.seen) > MAX_SEEN:
            del self.seen[next(iter(self.seen))]

    # --- persistence -----------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Everything, for the node's store (secrets: store it privately)."""
        out = bytearray(struct.pack(">BII", _SECRETS_VERSION, self.generation, self.next_id))
        out += self.spk_id.to_bytes(4, "big") + self.spk
        prev_id, prev = self.previous or (0, bytes(32))
        out += prev_id.to_bytes(4, "big") + prev
        out += len(self.one_time).to_bytes(2, "big")
        for i, (secret, used) in self.one_time.items():
            out += struct.pack(">I32sI", i, secret, _UNUSED if used is None else used)
        out += len(self.seen).to_bytes(2, "big")
        for base, spk_id in self.seen.items():
            out += base + spk_id.to_bytes(4, "big")
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> PrekeySecrets:
        """Inverse of :meth:`to_bytes`. Raises :class:`CorruptState`."""
        r = Reader(data, CorruptState)
        if r.uint(1) != _SECRETS_VERSION:
            raise CorruptState("unknown prekey secrets version")
        generation, next_id = r.uint(4), r.uint(4)
        secrets = cls(r.uint(4), r.take(32))
        secrets.generation, secrets.next_id = generation, next_id
        prev_id, prev = r.uint(4), r.take(32)
        secrets.previous = (prev_id, prev) if prev_id else None
        for _ in range(r.uint(2)):
            i, secret, used = r.uint(4), r.take(32), r.uint(4)
            secrets.one_time[i] = (secret, None if used == _UNUSED else used)
        for _ in range(r.uint(2)):
            base = r.take(32)
            secrets.seen[base] = r.uint(4)
        r.finish()
        return secrets
