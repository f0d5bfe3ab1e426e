"""Sphinx replay tags, remembered per onion-key epoch, bounded and fail-closed.

Theory of operation
-------------------
A relay that processed a Sphinx packet twice would let an observer follow
it through the relay by replaying it and watching what comes out, so every
accepted packet's replay tag (:attr:`p2pmsg.onion.sphinx.Peeled.replay_tag`)
is remembered for as long as the onion key that produced it is in use. A
key epoch's tags are forgotten together with the key: the caller calls
:meth:`ReplayTags.drop_epochs_before` when it retires old keys, after which
a packet for a retired epoch can no longer be peeled at all.

Memory is bounded twice: at most ``capacity`` tags per epoch and at most
``max_epochs`` epochs. Every bound fails closed, never open: a tag for a
full epoch is refused (and counted) rather than evicting an older tag, and
a tag for an epoch at or below the *floor* (epochs dropped, or pushed out by
a newer one) is refused because its history is gone. So ``seen_or_add`` can
refuse an honest packet under overload, but never admits a replay.

For persistence, :meth:`ReplayTags.snapshot` returns the floor and every
epoch's tags, and :meth:`ReplayTags.restore` rebuilds an equal object (one
row per ``(epoch, tag)`` in SQLite is enough, plus the floor). Pure: no I/O,
no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

TAG_BYTES: Final = 32


@dataclass(frozen=True)
class ReplaySnapshot:
    """Everything :class:`ReplayTags` knows: ``floor`` and the tags of each epoch."""

    floor: int | None
    epochs: Mapping[int, frozenset[bytes]]


class ReplayTags:
    """Remembers replay tags per key epoch; :meth:`seen_or_add` is the only question."""

    def __init__(self, capacity: int = 200_000, max_epochs: int = 3) -> None:
        if capacity <= 0 or max_epochs <= 0:
            raise ValueError("capacity and max_epochs must be positive")
        self.capacity = capacity
        self.max_epochs = max_epochs
        self.floor: int | None = None  # epochs <= floor are refused
        self._epochs: dict[int, set[bytes]] = {}
        self.admitted = 0
        self.replays = 0
        self.refused_full = 0
        self.refused_stale = 0

    def __len__(self) -> int:
        return sum(len(tags) for tags in self._epochs.values())

    def __repr__(self) -> str:
        return f"ReplayTags(epochs={sorted(self._epochs)}, tags={len(self)}, floor={self.floor})"

    @property
    def epochs(self) -> list[int]:
        """The epochs with remembered tags, oldest first."""
        return sorted(self._epochs)

    def tags(self, epoch: int) -> frozenset[bytes]:
        """The tags remembered for ``epoch`` (empty if none)."""
        return frozenset(self._epochs.get(epoch, ()))

    def counters(self) -> dict[str, int]:
        """Admitted tags and refusals by cause, for metrics."""
        return {
            "admitted": self.admitted,
            "replays": self.replays,
            "refused_full": self.refused_full,
            "refused_stale": self.refused_stale,
        }

    def _raise_floor(self, epoch: int) -> None:
        self.floor = epoch if self.floor is None else max(self.floor, epoch)
        for old in [e for e in self._epochs if e <= epoch]:
            del self._epochs[old]

    def _open_epoch(self, epoch: int) -> set[bytes] | None:
        """The set for ``epoch``, making room for it; None when it must be refused."""
        if epoch in self._epochs:
            return self._epochs[epoch]
        if self.floor is not None and epoch <= self.floor:
            return None
        if len(self._epochs) >= self.max_epochs:
            oldest = min(self._epochs)
            if epoch < oldest:
                return None
            self._raise_floor(oldest)
        tags: set[bytes] = set()
        self._epochs[epoch] = tags
        return tags

    def seen_or_add(self, epoch: int, tag: bytes) -> bool:
        """False (and remember ``tag``) for a fresh tag; True means refuse the packet.

        True for a replay, for a tag of a forgotten or pushed-out epoch, and
        for any new tag once ``epoch`` holds ``capacity`` tags (fail closed).
        Raises ``ValueError`` for a tag that is not :data:`TAG_BYTES` long.
        """
        if len(tag) != TAG_BYTES:
            raise ValueError(f"a replay tag is {TAG_BYTES} bytes")
        tags = self._open_epoch(epoch)
        if tags is None:
            self.refused_stale += 1
            return True
        if tag in tags:
            self.replays += 1
            return True
        if len(tags) >= self.capacity:
            self.refused_full += 1
            return True
        tags.add(bytes(tag))
        self.admitted += 1
        return False

    def seen_anywhere_or_add(self, epoch: int, tag: bytes) -> bool:
        """:meth:`seen_or_add`, but a tag remembered in any epoch is a replay:
        for layers of a key that never rotates, whose epochs are only the
        days the tags arrived."""
        if any(tag in tags for tags in self._epochs.values()):
            self.replays += 1
            return True
        return self.seen_or_add(epoch, tag)

    def drop_epochs_before(self, epoch: int) -> None:
        """Forget every epoch older than ``epoch``; they are refused from now on."""
        self._raise_floor(epoch - 1)

    def snapshot(self) -> ReplaySnapshot:
        """An immutable copy of the state, for persisting."""
        return ReplaySnapshot(
            self.floor, {e: frozenset(tags) for e, tags in sorted(self._epochs.items())}
        )

    @classmethod
    def restore(
        cls, snapshot: ReplaySnapshot, capacity: int = 200_000, max_epochs: int = 3
    ) -> ReplayTags:
        """Rebuild from :meth:`snapshot`. Raises ``ValueError`` if it breaks the bounds."""
        tags = cls(capacity, max_epochs)
        epochs = {e: t for e, t in snapshot.epochs.items() if t}
        if len(epochs) > max_epochs or any(len(t) > capacity for t in epochs.values()):
            raise ValueError("the snapshot exceeds this replay cache's bounds")
        if snapshot.floor is not None and any(e <= snapshot.floor for e in epochs):
            raise ValueError("the snapshot holds epochs at or below its floor")
        if any(len(tag) != TAG_BYTES for t in epochs.values() for tag in t):
            raise ValueError(f"a replay tag is {TAG_BYTES} bytes")
        tags.floor = snapshot.floor
        tags._epochs = {e: set(t) for e, t in epochs.items()}
        return tags
