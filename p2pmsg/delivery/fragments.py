"""Onion messages longer than one packet: split into fragments, put back together.

A forward message over :data:`p2pmsg.onion.sphinx.MAX_MESSAGE` bytes is cut
into at most :data:`~p2pmsg.delivery.onion_frames.MAX_FRAGMENTS` FRAGMENT
messages under one random set id, as Nym does: each goes in its own packet
over its own route, so every packet on the wire still has the one size. The
recipient keeps incomplete sets in a :class:`Reassembly` bounded in sets and
age; a set that never completes (a fragment lost, or evicted by a flood)
simply goes unacked, and the sender retries the whole message under a new
set id. Pure: no I/O, time passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pmsg.delivery.onion_frames import (
    FRAGMENT_DATA,
    MAX_FORWARD,
    SET_BYTES,
    Fragment,
    encode_fragment,
)
from p2pmsg.onion import sphinx


def split(message: bytes, rng: Callable[[int], bytes]) -> list[bytes]:
    """The Sphinx messages that carry ``message``: itself when it fits one
    packet, else its fragments. Raises ``ValueError`` for one over
    :data:`MAX_FORWARD` bytes."""
    if len(message) <= sphinx.MAX_MESSAGE:
        return [message]
    if len(message) > MAX_FORWARD:
        raise ValueError(f"an onion message is at most {MAX_FORWARD} bytes")
    set_id = rng(SET_BYTES)
    chunks = [message[i : i + FRAGMENT_DATA] for i in range(0, len(message), FRAGMENT_DATA)]
    return [
        encode_fragment(Fragment(set_id, index, len(chunks), chunk))
        for index, chunk in enumerate(chunks)
    ]


@dataclass
class _Partial:
    count: int
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)


@dataclass
class ReassemblyStats:
    completed: int = 0
    evicted: int = 0
    expired: int = 0
    conflicting: int = 0


class Reassembly:
    """Incomplete fragment sets, at most ``max_sets`` of them (the oldest go
    first) and none older than ``max_age`` seconds: bounded by
    ``max_sets * MAX_FORWARD`` bytes whatever arrives."""

    def __init__(self, *, max_sets: int = 32, max_age: float = 3600.0) -> None:
        self.max_sets = max_sets
        self.max_age = max_age
        self.stats = ReassemblyStats()
        self._sets: OrderedDict[bytes, _Partial] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sets)

    def add(self, fragment: Fragment, now: float) -> bytes | None:
        """The whole message once ``fragment`` completes its set, else None.
        A fragment whose count disagrees with its set's drops the set."""
        self._expire(now)
        partial = self._sets.get(fragment.set)
        if partial is None:
            if len(self._sets) >= self.max_sets:
                self._sets.popitem(last=False)
                self.stats.evicted += 1
            partial = self._sets[fragment.set] = _Partial(fragment.count, now)
        elif partial.count != fragment.count:
            del self._sets[fragment.set]
            self.stats.conflicting += 1
            return None
        partial.parts.setdefault(fragment.index, fragment.data)
        if len(partial.parts) < partial.count:
            return None
        del self._sets[fragment.set]
        self.stats.completed += 1
        return b"".join(partial.parts[i] for i in range(partial.count))

    def _expire(self, now: float) -> None:
        while self._sets:
            set_id, oldest = next(iter(self._sets.items()))
            if now - oldest.started <= self.max_age:
                return
            del self._sets[set_id]
            self.stats.expired += 1
