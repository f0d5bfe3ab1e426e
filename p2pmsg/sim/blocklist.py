"""Address blocking with per-ISP propagation, and a censor that learns (S1, S2, S10).

Theory of operation
-------------------
:class:`Blocklist` is a censor rule (see :mod:`p2pmsg.sim.censor`): it drops
every packet of a flow between a *censored client* (a host in ``country``)
and a server whose address is listed. An entry is an IP network (a single
address is a /32); it takes effect for the clients of each ISP at that
ISP's own time, as Russia's ISPs applied the registry up to a day late in
2018. A flow is judged at every packet, so a flow opened before its entry
took effect dies at its next packet (a dropped SYN makes ``connect`` hang,
a dropped data packet black-holes the flow, as a real null route does).

:class:`Learner` is a rule that never judges: it watches the SYNs of
censored clients to foreign servers and counts the distinct clients of each
server address, which is how a censor finds the IPs of a service it wants
gone ("contacted by N domestic clients"). :meth:`Blocklist.add_learned`
lists what it learned.

Deterministic (time from the caller, chance from a seeded ``random.Random``)
and bounded (at most ``max_entries`` entries, ``max_servers`` watched).
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from p2pmsg.sim.censor import FlowView
from p2pmsg.sim.net import DROP, Packet, SimHost, Verdict

Network = ipaddress.IPv4Network

_address = functools.lru_cache(maxsize=4096)(ipaddress.IPv4Address)
"""Parsed once per host: :meth:`Blocklist.blocks` runs at every packet."""


@dataclass
class Entry:
    network: Network
    effective: dict[str, float]
    """ISP -> the time from which its clients are blocked."""
    reason: str


@dataclass
class Blocklist:
    """Drop flows between clients in ``country`` and listed addresses."""

    hosts: Callable[[str], SimHost]
    country: str
    isps: tuple[str, ...]
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # noqa: S311 - a seeded simulation
    max_entries: int = 100_000
    entries: list[Entry] = field(default_factory=list)
    dropped_packets: int = 0
    _single: dict[str, Entry] = field(default_factory=dict, repr=False)
    """The /32 entries by address text: :meth:`blocks` runs at every packet."""
    _wide: list[Entry] = field(default_factory=list, repr=False)

    def add(self, networks: Iterable[str], now: float, *, propagation: float, reason: str) -> int:
        """List ``networks`` (IPs or prefixes) from ``now``, each ISP after
        U(0, ``propagation``) seconds; the number newly listed."""
        known = {e.network for e in self.entries}
        added = 0
        for text in networks:
            network = ipaddress.ip_network(text, strict=False)
            if not isinstance(network, Network) or network in known:
                continue
            if len(self.entries) >= self.max_entries:
                break
            effective = {isp: now + self.rng.uniform(0, propagation) for isp in self.isps}
            entry = Entry(network, effective, reason)
            self.entries.append(entry)
            if network.prefixlen == network.max_prefixlen:
                self._single[str(network.network_address)] = entry
            else:
                self._wide.append(entry)
            known.add(network)
            added += 1
        return added

    def blocks(self, client: SimHost, server: SimHost, now: float) -> bool:
        if client.country != self.country or not server.ip:
            return False
        single = self._single.get(server.ip)
        if single is not None and now >= single.effective.get(client.isp, 0.0):
            return True
        if not self._wide:
            return False
        address = _address(server.ip)
        return any(
            address in e.network and now >= e.effective.get(client.isp, 0.0) for e in self._wide
        )

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        client, server, _ = flow.client
        if not self.blocks(self.hosts(client), self.hosts(server), now):
            return None
        self.dropped_packets += 1
        flow.condemned = DROP
        return DROP


@dataclass
class Learner:
    """Counts the distinct censored clients of each foreign server address."""

    hosts: Callable[[str], SimHost]
    country: str
    max_servers: int = 65_536
    clients: OrderedDict[str, set[str]] = field(default_factory=OrderedDict)

    def judge(self, packet: Packet, flow: FlowView, now: float) -> Verdict | None:
        del now
        if packet.kind != "syn" or packet.direction != "c2s":
            return None
        client, server = self.hosts(packet.src_host), self.hosts(packet.dst_host)
        if client.country == self.country and server.country != self.country and server.ip:
            seen = self.clients.setdefault(server.ip, set())
            seen.add(client.name)
            self.clients.move_to_end(server.ip)
            while len(self.clients) > self.max_servers:
                self.clients.popitem(last=False)
        return None

    def popular(self, min_clients: int) -> list[str]:
        """Server addresses contacted by at least ``min_clients`` censored clients."""
        return [ip for ip, seen in self.clients.items() if len(seen) >= min_clients]


def widen(addresses: Iterable[str], prefix: int) -> list[str]:
    """The /``prefix`` networks holding ``addresses`` (level 2 of S1: whole cloud ranges)."""
    return sorted({str(ipaddress.ip_network(f"{a}/{prefix}", strict=False)) for a in addresses})
