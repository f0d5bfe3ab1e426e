"""The censor's Sybils in the DHT (S14): near a victim's id, or anywhere.

A Sybil is the real DHT service (:class:`~p2pmsg.dht.service.Dht`, real
secure links, the ``sim`` transport) that lies: every FIND_NODE and
FIND_VALUE is answered with the Sybils closest to the target and no value,
and STOREs and DEPOSITs are taken and thrown away. It answers PINGs
honestly, so it passes the verification a node makes before it lets a
peer into its routing table. The lab places two kinds, each a ``sybils``
censor rule:

* ``target = "victim"``: ``count`` Sybils per user, from ``prefixes``
  /16 networks (their hosts are named by their IP, so their endpoints carry
  it), each with an id ground to share :data:`NEAR_BITS` leading bits with
  one user's, the victim's. From the rule's ``at`` they ping the victim and
  ask it for their own ids, once a minute, to push into its table
  (IPFS's CVE-2020-10937).
* ``target = "random"``: Sybils at random ids, from as many networks, that
  join the DHT like anyone else, ``count`` per user (0.25 makes a fifth of
  all DHT nodes malicious).
* ``target = "keys"``: ``count`` liars in all (:class:`LiarDht`), each
  from its own network, ground next to one of the victim's two keys in
  turn: its node id (its peer record) and the first key of its prekey
  bundle (S15: the Sybils closest to a key). They keep the first record
  they find or are asked to store under those keys, and answer every
  FIND_VALUE for them with that old record, the current one altered and
  one they signed themselves, or (every other liar) with nothing.

Near the end of the traffic, the victim looks every other user up, each
user looks three others up (:data:`LOOKUPS`), and the victim's routing
table is counted: how many of its entries are the victim's Sybils, per
network. With liars, every other user fetches the victim's two records,
each of which must be its newest, within :data:`FETCH_WITHIN` seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import nacl.bindings as sodium
import trio

from p2pmsg.dht import records, rpc
from p2pmsg.dht.host import serve_dht
from p2pmsg.dht.peer import ID_BITS, Peer, distance
from p2pmsg.dht.service import Dht, DhtOptions, RpcFailed
from p2pmsg.dialer import Dialer
from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import Identity, PublicIdentity, node_id_of
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.node import Node
from p2pmsg.sim.result import SeedResult
from p2pmsg.sim.transport import SimTransport
from p2pmsg.sim.world import World, sim_wall_clock

NEAR_BITS = 8
"""A victim's Sybils share this many leading id bits with it (~256 tries each)."""
ATTACK_EVERY = 60.0
LOOKUPS = 3
"""Lookups each user makes of other users near the end (the victim: of all)."""
LOOKUP_TIMEOUT = 60.0
ANSWER = 20
"""Sybils named in each lying answer."""
FETCH_WITHIN = 10.0
"""S15: a fetch of the victim's records must bring the newest this soon."""


class SybilDht(Dht):
    """The real service, except that it names only Sybils and keeps nothing."""

    crowd: list[tuple[bytes, bytes]]
    """Every Sybil's node id and encoded peer record (shared by one run's Sybils)."""

    async def handle(
        self, requester: PublicIdentity, request: rpc.Request, address: str | None = None
    ) -> rpc.Response:
        match request.method:
            case rpc.Method.FIND_NODE if len(request.body) == 32:
                near = self._nearest(request.body, requester.node_id)
                return rpc.Response(request.rid, rpc.Status.OK, rpc.encode_records(near))
            case rpc.Method.FIND_VALUE if len(request.body) == 33:
                near = self._nearest(request.body[1:], requester.node_id)
                body = rpc.encode_value_reply([], near)
                return rpc.Response(request.rid, rpc.Status.OK, body)
            case rpc.Method.STORE | rpc.Method.DEPOSIT:
                return rpc.Response(request.rid, rpc.Status.OK)
            case _:
                return await super().handle(requester, request)

    def _nearest(self, target: bytes, not_: bytes) -> list[bytes]:
        others = (kr for kr in self.crowd if kr[0] != not_)
        return [
            r for _, r in heapq.nsmallest(ANSWER, others, key=lambda kr: distance(kr[0], target))
        ]


class LiarDht(SybilDht):
    """A Sybil next to the victim's keys (S15): it keeps the first record it is
    asked to store under one of them, and answers FIND_VALUE for them with
    that old record, the current one altered and one it signed itself, or
    (``forging`` off) with nothing."""

    keys: frozenset[bytes]
    forging: bool
    result: SeedResult

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept: dict[bytes, records.Record] = {}

    async def handle(
        self, requester: PublicIdentity, request: rpc.Request, address: str | None = None
    ) -> rpc.Response:
        if request.method is rpc.Method.STORE:
            with contextlib.suppress(records.InvalidRecord):
                record = records.decode(request.body)
                if record.key in self.keys:
                    self.kept.setdefault(record.key, record)
            return rpc.Response(request.rid, rpc.Status.OK)
        if request.method is rpc.Method.FIND_VALUE and request.body[1:] in self.keys:
            key = request.body[1:]
            forged = self._forged(key) if self.forging else []
            self.result.forgeries_served += len(forged)
            near = self._nearest(key, requester.node_id)
            return rpc.Response(request.rid, rpc.Status.OK, rpc.encode_value_reply(forged, near))
        return await super().handle(requester, request)

    def _forged(self, key: bytes) -> list[bytes]:
        old = self.kept.get(key)
        if old is None:
            return []
        altered = dataclasses.replace(old, seq=old.seq + 10**9)  # the signature no longer fits
        own = records.sign_record(
            self.identity, old.type, key, old.seq + 10**9, old.expires, old.value
        )
        return [records.encode(old), records.encode(altered), records.encode(own)]


def grind(rng: random.Random, near: bytes, bits: int) -> Identity:
    """An identity whose node id shares its first ``bits`` bits with ``near``."""
    want = int.from_bytes(near, "big") >> (ID_BITS - bits)
    while True:
        seed = rng.randbytes(32)
        public, _ = sodium.crypto_sign_seed_keypair(seed)
        if int.from_bytes(node_id_of(public), "big") >> (ID_BITS - bits) == want:
            return Identity(seed)


class Sybils:
    """One run's Sybils: started, attacking, and what they did to lookups."""

    def __init__(self, world: World, result: SeedResult, country: str, rng: random.Random) -> None:
        self.world, self.result, self.country, self.rng = world, result, country, rng
        self.crowd: list[tuple[bytes, bytes]] = []
        self.victim: str | None = None
        self.keys_of: str | None = None
        """The user whose keys the liars sit next to (S15)."""
        self.near: set[bytes] = set()
        """The ids of the Sybils ground next to the victim's."""
        self._rules = 0

    async def start(
        self,
        nursery: trio.Nursery,
        count: int,
        prefixes: int,
        near: Sequence[bytes],
        seeds: Sequence[Peer],
        *,
        liars: Sequence[tuple[records.RecordType, bytes]] = (),
    ) -> list[Dht]:
        """Start ``count`` Sybils on hosts in ``prefixes`` /16s, ground near
        the keys ``near`` in turn (at random ids without), each joined through
        ``seeds``; with ``liars`` (record type, key), they lie about those
        keys' values, every other one with forgeries."""
        started = []
        first = 66 + self._rules  # each rule's networks under a first octet of their own
        self._rules += 1
        for j in range(count):
            row, net = divmod(j, prefixes)
            host = f"{first}.{net}.{row // 250}.{row % 250 + 1}"
            self.world.add_host(host, ip=host, asn=64_999, country=self.country, isp="isp0")
            identity = (
                grind(self.rng, near[j % len(near)], NEAR_BITS)
                if near
                else Identity(self.rng.randbytes(32))
            )
            dht = await self._one(nursery, host, identity, seeds, liars, forging=j % 2 == 0)
            started.append(dht)
        return started

    async def _one(
        self,
        nursery: trio.Nursery,
        host: str,
        identity: Identity,
        seeds: Sequence[Peer],
        liars: Sequence[tuple[records.RecordType, bytes]],
        *,
        forging: bool,
    ) -> Dht:
        transport = SimTransport(self.world.net, host)
        dialer = Dialer(
            identity, [transport], wall_clock=sim_wall_clock, dial_timeout=5.0,
            handshake_timeout=5.0, rng=self.rng.randbytes,
        )  # fmt: skip
        cls = LiarDht if liars else SybilDht
        dht = cls(
            identity, dialer.connect, options=DhtOptions(), wall_clock=sim_wall_clock,
            rng=self.rng.randbytes,
        )  # fmt: skip
        dht.crowd = self.crowd
        if isinstance(dht, LiarDht):
            dht.keys = frozenset(key for _, key in liars)
            dht.forging, dht.result = forging, self.result
        replay = ReplayWindow(86400)

        async def serve(link: object) -> None:
            await serve_dht(dht, replay, link, wall_clock=sim_wall_clock)  # type: ignore[arg-type]

        bound = await nursery.start(transport.serve, Endpoint.parse(f"sim:{host}"), serve)
        own = dht.publish_local([str(bound)], frozenset())
        self.crowd.append((identity.node_id, records.encode(own)))
        await nursery.start(dht.run)
        with contextlib.suppress(RpcFailed):
            await dht.join(seeds)
        if isinstance(dht, LiarDht):  # what it will serve altered, or as if still current
            for rtype, key in liars:
                for record in (await dht.find_records(rtype, key))[:1]:
                    dht.kept.setdefault(key, record)
        return dht

    async def attack(self, sybils: Sequence[Dht], victim: Node, end: float) -> None:
        """Push into ``victim``'s table: a PING (it dials back to verify) and
        a FIND_NODE of one's own id, from each Sybil once a minute."""
        target = victim.dht.as_peer()
        self.near.update(s.identity.node_id for s in sybils)

        async def one(sybil: Dht, start: float) -> None:
            await trio.sleep(start)
            while trio.current_time() < end:
                if await sybil.ping(target):
                    self.result.sybil_pings_answered += 1
                with contextlib.suppress(RpcFailed):
                    await sybil.call(target, rpc.Method.FIND_NODE, sybil.identity.node_id)
                await trio.sleep(ATTACK_EVERY)

        async with trio.open_nursery() as nursery:
            for j, sybil in enumerate(sybils):
                nursery.start_soon(one, sybil, j * ATTACK_EVERY / max(1, len(sybils)))

    async def measure(self, nodes: Mapping[str, Node], users: Sequence[str]) -> None:
        """The lookups of users under the attack, and the victim's table."""

        async def look(searcher: str, targets: Sequence[str], out: list[bool]) -> None:
            for target in targets:  # one after another, as a user's node would
                found = None
                with trio.move_on_after(LOOKUP_TIMEOUT):
                    found = await nodes[searcher].find(nodes[target].identity.node_id)
                out.append(found is not None)

        async with trio.open_nursery() as nursery:
            for user in users:
                others = [u for u in users if u != user]
                if user == self.victim:
                    nursery.start_soon(look, user, others, self.result.victim_lookups)
                else:
                    chosen = self.rng.sample(others, min(LOOKUPS, len(others)))
                    nursery.start_soon(look, user, chosen, self.result.user_lookups)
        if self.keys_of is not None:
            await self._fetch_keys(nodes, [u for u in users if u != self.keys_of])
        if self.victim is not None:
            table = nodes[self.victim].dht.table.peers()
            per = Counter(p.prefix for p in table if p.node_id in self.near)
            self.result.victim_sybils.append((sum(per.values()), max(per.values(), default=0)))

    async def _fetch_keys(self, nodes: Mapping[str, Node], fetchers: Sequence[str]) -> None:
        """Each user fetches the peer and prekey records of the liars' victim:
        the newest within :data:`FETCH_WITHIN` seconds, and nothing forged."""
        assert self.keys_of is not None
        owner = nodes[self.keys_of]
        node_id = owner.identity.node_id
        wanted = {
            records.RecordType.PEER: ((node_id,), owner.dht.own_record),
            records.RecordType.PREKEYS: (records.prekey_keys(node_id), owner.onion.prekey_record),
        }

        async def fetch(user: str) -> None:
            for rtype, (keys, newest) in wanted.items():
                started, found = trio.current_time(), []
                with trio.move_on_after(LOOKUP_TIMEOUT):
                    found = await nodes[user].dht.find_newest(rtype, keys)
                took = trio.current_time() - started
                self.result.forged_accepted += sum(
                    r.publisher != owner.identity.public.key for r in found
                )
                self.result.key_fetches.append(
                    bool(found) and newest is not None and found[0].seq >= newest.seq
                    and took <= FETCH_WITHIN
                )  # fmt: skip

        async with trio.open_nursery() as nursery:
            for user in fetchers:
                nursery.start_soon(fetch, user)
