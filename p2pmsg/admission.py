"""Which inbound links a node takes: limits per address, per network prefix
and in total, and a cap on the memory their buffers may hold.

Theory of operation
-------------------
A flood from a few addresses (S16: 1,000 Sybil ids from 10 addresses) must
not take the room honest peers need. So, as in Tor's DoS defences and
libp2p's resource manager, every inbound link is counted against the address
it came from and that address's network prefix (/24 for IPv4, /48 for IPv6)
before its handshake starts:

* **links** (handshakes under way and links up): at most
  :attr:`Limits.links` in all, :attr:`Limits.links_per_address` from one
  address, :attr:`Limits.links_per_prefix` from one prefix;
* **pending handshakes**, the cheap attack (a first flight, then silence):
  tighter limits of their own, so that half-open handshakes cannot use up
  what finished ones would get;
* **opening rate**: a token bucket per address
  (:attr:`Limits.opens_per_second`, :attr:`Limits.opens_burst`), so that a
  flood of short links costs the flooder time, not us handshakes;
* **memory**: each link reserves the most its buffers can hold
  (:attr:`Limits.link_bytes`: the secure link's receive bound and one
  transport read) out of :attr:`Limits.memory`; a link that would take the
  reservations past the cap is refused. Reserving the worst case, not
  measuring, is what makes the cap hold whatever the flooder sends;
* **eviction**: when the links, the memory or the places for handshakes are
  all taken, a newcomer from an address holding at least two fewer than the
  busiest address ends that address's oldest link (or handshake) and takes
  its place. A flood from a few addresses thus gives way to newcomers from
  others, however many each address may hold. Failing that, the same rule
  holds between network prefixes, as Bitcoin's eviction protects diverse
  netgroups: Sybils with an address each but from a few networks (S14: 300
  from 16, pinging every minute so that none is ever idle) cannot keep out
  a newcomer from another network. Failing that, a newcomer
  from an address holding no link ends the link that has been silent
  longest, if for at least :data:`IDLE_EVICTION` seconds (libp2p's
  connection manager trims its least used connections likewise): links
  stay open long after their last message (``NodeOptions.link_idle``), and
  idle ones must not keep new peers out.

An address of ``None`` is one the transport cannot tell (loopback, or a link
that came through a local proxy such as obfs4proxy): only the totals apply
to it. Pure: time is a parameter, and nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from p2pmsg.abc import MAX_SEND
from p2pmsg.dht.ratelimit import RateLimiter
from p2pmsg.link.connection import MAX_BUFFER

IDLE_EVICTION: Final = 60.0
"""Seconds a link must have been silent before a newcomer may take its place."""


@dataclass(frozen=True)
class Limits:
    """Tunables of :class:`Admission`; the defaults are a headless node's."""

    links: int = 256
    links_per_address: int = 32
    links_per_prefix: int = 128
    pending: int = 256
    pending_per_address: int = 32
    pending_per_prefix: int = 64
    opens_per_second: float = 2.0
    opens_burst: float = 32.0
    memory: int = 64 * 1024 * 1024
    """Bytes the buffers of inbound links may hold in all."""
    link_bytes: int = MAX_BUFFER + 2 * MAX_SEND
    """What one link's buffers can hold at most: its reservation."""

    def __post_init__(self) -> None:
        counts = (
            self.links, self.links_per_address, self.links_per_prefix,
            self.pending, self.pending_per_address, self.pending_per_prefix,
        )  # fmt: skip
        if min(counts) < 1 or self.opens_per_second <= 0 or self.opens_burst < 1:
            raise ValueError("admission limits must be positive")
        if self.link_bytes < 1 or self.memory < self.link_bytes:
            raise ValueError("the memory cap must hold at least one link")


class Refused(StrEnum):
    """Why an inbound link was refused (the keys of :attr:`Admission.refused`)."""

    TOTAL = "too many inbound links"
    ADDRESS = "too many links from this address"
    PREFIX = "too many links from this network"
    PENDING = "too many handshakes under way"
    PENDING_ADDRESS = "too many handshakes under way from this address"
    PENDING_PREFIX = "too many handshakes under way from this network"
    RATE = "this address opens links too fast"
    MEMORY = "the inbound memory cap is reached"


def prefix_of(address: str) -> str:
    """The network an address counts under: its /24 or /48; a name is its own."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return f"name:{address.lower()}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network((ip, bits), strict=False))


@dataclass(eq=False)
class Ticket:
    """One admitted link: call :meth:`established` once its handshake is done
    and :meth:`close` (idempotent) when it ends, whatever happened."""

    _admission: Admission = field(repr=False)
    address: str | None = field(repr=False)
    """A peer's IP: kept out of the repr, as out of logs above DEBUG."""
    keys: tuple[str, ...] = field(repr=False)
    """What it counts under: its address and prefix (none for an unknown address)."""
    used: float
    """When it was admitted or last carried a message (:meth:`touch`)."""
    pending: bool = True
    closed: bool = False
    evict: Callable[[], object] | None = None
    """Ends the link, for :meth:`Admission.admit` to make room; without it,
    the link is never evicted."""

    def touch(self, now: float) -> None:
        """A message came over the link at ``now``: it is not idle."""
        self.used = now

    def established(self) -> None:
        if self.pending and not self.closed:
            self.pending = False
            self._admission._settle(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._admission._release(self)


@dataclass
class Admission:
    """The counts of a node's inbound links; see the module docstring."""

    limits: Limits = field(default_factory=Limits)
    refused: Counter[Refused] = field(default_factory=Counter)
    evicted: int = 0
    """Links ended to make room for a link from a less busy address."""
    evicted_idle: int = 0
    """Of those, links ended because they were the longest silent."""
    peak_bytes: int = 0
    _links: Counter[str] = field(default_factory=Counter, repr=False)
    _pending: Counter[str] = field(default_factory=Counter, repr=False)
    _total: int = 0
    _total_pending: int = 0
    _held: tuple[dict[str, list[Ticket]], ...] = field(default_factory=lambda: ({}, {}), repr=False)
    """The links of each known address, then of each prefix, oldest first."""
    _tickets: list[Ticket] = field(default_factory=list, repr=False)
    """Every link held, known address or not."""
    _opens: RateLimiter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._opens = RateLimiter(self.limits.opens_per_second, self.limits.opens_burst)

    @property
    def links(self) -> int:
        """Inbound links held: handshakes under way and links up."""
        return self._total

    @property
    def pending(self) -> int:
        return self._total_pending

    @property
    def reserved_bytes(self) -> int:
        return self._total * self.limits.link_bytes

    def admit(self, address: str | None, now: float) -> Ticket | Refused:
        """Take a new inbound link from ``address`` (None: unknown), or say why not.

        When the links, the memory or the places for handshakes are all
        taken, the oldest link (or handshake) of the address holding the most
        is evicted first, if that address holds at least two more than
        ``address`` does: a flood from a few addresses gives way to newcomers
        from others, as Tor's and libp2p's connection trimming do. Else the
        same holds between prefixes (Bitcoin's netgroups). Else, for
        a newcomer from an address holding no link, the established link
        silent longest goes, if silent :data:`IDLE_EVICTION` seconds."""
        reason = self._refusal(address, now)
        if reason in (Refused.TOTAL, Refused.MEMORY, Refused.PENDING) and self._evict_for(
            address, pending=reason is Refused.PENDING, now=now
        ):
            reason = self._refusal(address, now)
        if reason is not None:
            self.refused[reason] += 1
            return reason
        keys = () if address is None else (address, prefix_of(address))
        ticket = Ticket(self, address, keys, used=now)
        self._tickets.append(ticket)
        self._total += 1
        self._total_pending += 1
        for key in ticket.keys:
            self._links[key] += 1
            self._pending[key] += 1
        for held, key in zip(self._held, ticket.keys, strict=False):
            held.setdefault(key, []).append(ticket)
        self.peak_bytes = max(self.peak_bytes, self.reserved_bytes)
        return ticket

    def _refusal(self, address: str | None, now: float) -> Refused | None:
        lim = self.limits
        checks = [
            (self._total >= lim.links, Refused.TOTAL),
            (self.reserved_bytes + lim.link_bytes > lim.memory, Refused.MEMORY),
            (self._total_pending >= lim.pending, Refused.PENDING),
        ]
        if address is not None:
            prefix = prefix_of(address)
            checks += [
                (self._links[address] >= lim.links_per_address, Refused.ADDRESS),
                (self._links[prefix] >= lim.links_per_prefix, Refused.PREFIX),
                (self._pending[address] >= lim.pending_per_address, Refused.PENDING_ADDRESS),
                (self._pending[prefix] >= lim.pending_per_prefix, Refused.PENDING_PREFIX),
            ]
        reason = next((reason for over, reason in checks if over), None)
        if reason is None and address is not None and not self._opens.allow(address.encode(), now):
            reason = Refused.RATE
        return reason

    def _evict_for(self, address: str | None, *, pending: bool, now: float) -> bool:
        """End a link (or a handshake, with ``pending``) to make room for one
        from ``address``: see :meth:`admit`."""
        victim = self._busiest_victim(address, pending=pending)
        idle = victim is None and not pending and (address is None or not self._links[address])
        if idle:
            silent = [t for t in self._tickets if not t.pending and t.evict is not None]
            oldest = min(silent, key=lambda t: t.used, default=None)
            if oldest is not None and now - oldest.used >= IDLE_EVICTION:
                victim = oldest
        if victim is None or victim.evict is None:
            return False
        victim.close()
        victim.evict()
        self.evicted += 1
        self.evicted_idle += idle
        return True

    def _busiest_victim(self, address: str | None, *, pending: bool) -> Ticket | None:
        """The oldest evictable link (handshake, with ``pending``) of the
        address holding the most, if it holds two more than ``address``;
        failing that, of the prefix holding the most, against ``address``'s."""
        counts = self._pending if pending else self._links
        own_keys = () if address is None else (address, prefix_of(address))
        for level, held in enumerate(self._held):
            busiest = max(held, key=lambda k: counts[k], default=None)
            own = counts[own_keys[level]] if own_keys else 0
            if busiest is not None and counts[busiest] >= own + 2:
                kind = (t for t in held[busiest] if t.pending or not pending)
                victim = next((t for t in kind if t.evict is not None), None)
                if victim is not None:
                    return victim
        return None

    def _settle(self, ticket: Ticket) -> None:
        self._total_pending -= 1
        for key in ticket.keys:
            _decrement(self._pending, key)

    def _release(self, ticket: Ticket) -> None:
        if ticket.pending:
            self._settle(ticket)
        self._tickets.remove(ticket)
        for held, key in zip(self._held, ticket.keys, strict=False):
            held[key].remove(ticket)
            if not held[key]:
                del held[key]
        self._total -= 1
        for key in ticket.keys:
            _decrement(self._links, key)

    def stats(self) -> dict[str, object]:
        return {
            "links": self._total,
            "pending": self._total_pending,
            "reserved_bytes": self.reserved_bytes,
            "peak_bytes": self.peak_bytes,
            "evicted": self.evicted,
            "evicted_idle": self.evicted_idle,
            "links_cap": self.limits.links,
            "memory_cap": self.limits.memory,
            "refused": {reason.name.lower(): n for reason, n in self.refused.items()},
        }


def _decrement(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]
