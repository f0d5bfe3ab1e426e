"""DHT scenarios on the simulated network: Sybils, a split, records, scale.

Every node runs the real :class:`Dht`, real secure links and the real `sim`
transport (the :mod:`dhtworld` approach); a test picks the identities (ground
to sit near a victim's id), the host names (whose /16 is the diversity
prefix) and, for attackers, a subclass of :class:`Dht` that lies. Everything
runs under the autojump clock, so simulated minutes cost nothing; randomness
comes from one seeded ``random.Random`` per test.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial

import pytest
import trio
from dhtworld import as_seed, serve_rpc
from simworld import sim_wall_clock
from trio.testing import MockClock

from p2pmsg.abc import Link
from p2pmsg.dht import puzzle, rpc, service
from p2pmsg.dht import records as rec
from p2pmsg.dht.peer import ID_BITS, distance
from p2pmsg.dht.record_store import DEFAULT_MAX_PER_SOURCE
from p2pmsg.dht.service import Dht, DhtOptions, RpcFailed
from p2pmsg.dialer import Dialer
from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import Identity, PublicIdentity
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.sim.net import DELIVER, DROP, Packet, SimNetwork, Verdict
from p2pmsg.sim.sybils import grind
from transports.sim import SimTransport

NO_CAPS = DhtOptions(max_per_prefix_bucket=None, max_per_prefix_table=None)

# --- harness ---------------------------------------------------------------------------


class World:
    """Real DHT services on one simulated network, with chosen identities and classes."""

    def __init__(self, nursery: trio.Nursery, rng: random.Random) -> None:
        self.net = SimNetwork()
        self.nursery = nursery
        self.rng = rng
        self.nodes: list[Dht] = []
        self.dialers: dict[bytes, Dialer] = {}
        self.hosts: dict[bytes, str] = {}
        self.serving: Counter[bytes] = Counter()  # inbound links being served, per node

    async def add(
        self,
        host: str,
        *,
        identity: Identity | None = None,
        options: DhtOptions | None = None,
        cls: type[Dht] = Dht,
        endpoints: Callable[[str], list[str]] = lambda bound: [bound],
    ) -> Dht:
        """Start a node on ``host``; ``endpoints`` turns its bound endpoint into what
        its peer record advertises."""
        identity = identity or Identity(self.rng.randbytes(32))
        transport = SimTransport(self.net, host)
        dialer = Dialer(
            identity,
            [transport],
            wall_clock=sim_wall_clock,
            dial_timeout=5.0,
            handshake_timeout=5.0,
            rng=self.rng.randbytes,
        )
        dht = cls(
            identity,
            dialer.connect,
            options=options or DhtOptions(),
            wall_clock=sim_wall_clock,
            rng=self.rng.randbytes,
        )
        bound = await self.nursery.start(
            transport.serve,
            Endpoint.parse(f"sim:{host}"),
            partial(self._serve, dht, ReplayWindow(86400)),
        )
        dht.publish_local(endpoints(str(bound)), frozenset())
        await self.nursery.start(dht.run)
        self.nodes.append(dht)
        self.dialers[dht.identity.node_id] = dialer
        self.hosts[dht.identity.node_id] = host
        return dht

    async def _serve(self, dht: Dht, replay: ReplayWindow, link: Link) -> None:
        self.serving[dht.identity.node_id] += 1
        try:
            await serve_rpc(dht, replay, link)
        finally:
            self.serving[dht.identity.node_id] -= 1

    async def build(
        self, hosts: Sequence[str], *, options: DhtOptions | None = None, seeds: int = 1
    ) -> list[Dht]:
        """Start one node per host, each joining through up to ``seeds`` earlier nodes."""
        built: list[Dht] = []
        for host in hosts:
            dht = await self.add(host, options=options)
            if built:
                chosen = self.rng.sample(built, min(seeds, len(built)))
                assert await dht.join([as_seed(d) for d in chosen])
            built.append(dht)
        return built


def shared_bits(a: bytes, b: bytes) -> int:
    return ID_BITS - distance(a, b).bit_length()


async def finds(searcher: Dht, target: bytes) -> bool:
    """A lookup succeeds when the target itself answered and is the closest found."""
    peers, _ = await searcher.lookup(target)
    return bool(peers) and peers[0].node_id == target


async def success_rate(pairs: Sequence[tuple[Dht, bytes]]) -> float:
    ok = 0
    for searcher, target in pairs:
        ok += await finds(searcher, target)
    return ok / len(pairs)


def endpoints_of(dht: Dht) -> tuple[str, ...]:
    assert dht.own_record is not None
    return rec.decode_peer_info(dht.own_record.value).endpoints


def closest_records(
    crowd: Sequence[bytes], target: bytes, count: int, *, not_: bytes
) -> list[bytes]:
    """The ``count`` peer records of ``crowd`` whose keys are closest to ``target``."""
    keyed = (r for r in crowd if rec.decode(r).key != not_)
    return sorted(keyed, key=lambda r: distance(rec.decode(r).key, target))[:count]


# --- S14: Sybils near a victim -----------------------------------------------------------

HONEST = 60
SYBILS = 10 * HONEST
SYBIL_PREFIXES = 16
SYBIL_BITS = 8  # each Sybil id shares >= 8 leading bits with the victim's


def sybil_host(j: int) -> str:
    return f"66.{j % SYBIL_PREFIXES}.{j // SYBIL_PREFIXES % 250}.{j // 4000 + 1}"


class SybilDht(Dht):
    """A Sybil: the real service, except that it names only Sybils and drops stores.

    It answers every FIND_NODE / FIND_VALUE with the Sybils closest to the
    target (S14: "answer only with Sybils"), accepts STOREs and keeps nothing.
    """

    crowd: Sequence[bytes] = ()  # every Sybil's encoded peer record

    async def handle(self, requester: PublicIdentity, request: rpc.Request) -> rpc.Response:
        match request.method:
            case rpc.Method.FIND_NODE if len(request.body) == 32:
                near = closest_records(self.crowd, request.body, 20, not_=requester.node_id)
                return rpc.Response(request.rid, rpc.Status.OK, rpc.encode_records(near))
            case rpc.Method.FIND_VALUE if len(request.body) == 33:
                near = closest_records(self.crowd, request.body[1:], 20, not_=requester.node_id)
                body = rpc.encode_value_reply([], near)
                return rpc.Response(request.rid, rpc.Status.OK, body)
            case rpc.Method.STORE:
                return rpc.Response(request.rid, rpc.Status.OK)
            case _:
                return await super().handle(requester, request)


async def sybil_attack(sybil: Dht, victim: Dht, start: float, rounds: int) -> None:
    """Push ourselves into the victim's table: PING it (it verifies us by dialling
    back) and ask it FIND_NODE, round after round."""
    await trio.sleep(start)
    target = as_seed(victim)
    for _ in range(rounds):
        await sybil.ping(target)
        with contextlib.suppress(RpcFailed):
            await sybil.call(target, rpc.Method.FIND_NODE, sybil.identity.node_id)
        await trio.sleep(60)


async def test_sybils_near_a_victim_fill_at_most_three_slots_per_prefix(
    autojump_clock: MockClock,
) -> None:
    """S14: 600 Sybils from 16 /16 prefixes, every id within 2**-8 of the victim's,
    against 60 honest nodes on 60 prefixes. The victim (default limits: 2 per
    prefix per bucket, 3 per table) keeps at most 3 x 16 Sybils, and its lookups
    of honest nodes still find them."""
    rng = random.Random(14)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        honest = await world.build([f"10.{i}.0.1" for i in range(HONEST)], seeds=2)
        victim = honest[1]
        honest_before = len(victim.table)
        crowd: list[bytes] = []
        sybils: list[Dht] = []
        for j in range(SYBILS):
            identity = grind(rng, victim.identity.node_id, SYBIL_BITS)
            sybil = await world.add(sybil_host(j), identity=identity, cls=SybilDht, options=NO_CAPS)
            assert sybil.own_record is not None
            crowd.append(rec.encode(sybil.own_record))
            sybils.append(sybil)
        SybilDht.crowd = crowd
        async with trio.open_nursery() as attack:
            for j, sybil in enumerate(sybils):
                attack.start_soon(sybil_attack, sybil, victim, j * 0.1, 3)
        # what a bucket refresh does: the victim looks itself up, among the Sybils
        await victim.lookup(victim.identity.node_id)

        sybil_ids = {s.identity.node_id for s in sybils}
        entries = victim.table.peers()
        per_prefix = Counter(p.prefix for p in entries if p.node_id in sybil_ids)
        assert per_prefix, "the attack never reached the victim's table"
        assert max(per_prefix.values()) <= 3
        assert sum(per_prefix.values()) <= 3 * SYBIL_PREFIXES
        # old contacts are kept over newcomers: no honest entry made room for a Sybil
        assert len(entries) - sum(per_prefix.values()) >= honest_before
        for bucket in victim.table.buckets():
            in_bucket = Counter(c.peer.prefix for c in bucket.entries)
            assert max(in_bucket.values(), default=0) <= 2

        others = [d for d in honest if d is not victim]
        pairs = [(victim, rng.choice(others).identity.node_id) for _ in range(100)]
        rate = await success_rate(pairs)
        closeness = sorted(shared_bits(i, victim.identity.node_id) for i in sybil_ids)
        print(
            f"S14: {len(entries)} entries, {sum(per_prefix.values())} Sybils from "
            f"{len(per_prefix)} prefixes (ids share {closeness[0]}-{closeness[-1]} bits "
            f"with the victim's), lookups {rate:.1%}"
        )
        assert rate >= 0.99
        nursery.cancel_scope.cancel()


async def test_a_peer_record_hidden_at_its_id_is_found_from_its_copies(
    autojump_clock: MockClock,
) -> None:
    """S14: Sybils hold every slot next to a victim's id, drop its record and
    name only each other, and the victim itself is out of reach: nobody finds
    the record at its id, and find_peer finds a copy (``rec.peer_keys``),
    which the hash put far from the Sybils."""
    rng = random.Random(141)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        honest = await world.build([f"10.{i}.0.1" for i in range(30)], seeds=2)
        victim_identity = Identity(rng.randbytes(32))
        victim_id = victim_identity.node_id
        crowd, sybils = [], []
        for j in range(40):
            identity = grind(rng, victim_id, 12)  # closer than any honest node
            sybil = await world.add(sybil_host(j), identity=identity, cls=SybilDht, options=NO_CAPS)
            assert sybil.own_record is not None
            crowd.append(rec.encode(sybil.own_record))
            sybils.append(sybil)
        SybilDht.crowd = crowd
        for sybil in sybils:
            assert await sybil.join([as_seed(rng.choice(honest))])
        victim = await world.add("10.99.0.1", identity=victim_identity)
        assert await victim.join([as_seed(honest[0])])
        await victim.put_own()
        gone = world.hosts[victim_id]
        world.net.policy = lambda p: DROP if gone in (p.src_host, p.dst_host) else DELIVER

        for searcher in honest[1:11]:
            _, at_id = await searcher.lookup(
                victim_id, value_type=rec.RecordType.PEER, disjoint_paths=3
            )
            assert at_id == []
            peer = await searcher.find_peer(victim_id)
            assert peer is not None and peer.endpoints == endpoints_of(victim)
        nursery.cancel_scope.cancel()


# --- a network split and its healing -----------------------------------------------------

SPLIT_NODES = 100


async def test_a_split_network_heals_within_ten_minutes(autojump_clock: MockClock) -> None:
    """S10, shortened: two halves (by host) lose every packet between them for 20
    minutes while every node keeps looking things up, so cross-half lookups fail
    and the far half's peers collect failures (and are replaced where a bucket
    has same-half replacements). Within ten minutes of the heal, lookups across
    the former border succeed again."""
    rng = random.Random(10)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        nodes = await world.build([f"10.{i}.0.1" for i in range(SPLIT_NODES)])
        half = {d.identity.node_id: i < SPLIT_NODES // 2 for i, d in enumerate(nodes)}
        side = {world.hosts[n]: h for n, h in half.items()}

        def across(count: int) -> list[tuple[Dht, bytes]]:
            pairs: list[tuple[Dht, bytes]] = []
            while len(pairs) < count:
                a, b = rng.sample(nodes, 2)
                if half[a.identity.node_id] != half[b.identity.node_id]:
                    pairs.append((a, b.identity.node_id))
            return pairs

        def within(count: int) -> list[tuple[Dht, bytes]]:
            pairs: list[tuple[Dht, bytes]] = []
            while len(pairs) < count:
                a, b = rng.sample(nodes, 2)
                if half[a.identity.node_id] == half[b.identity.node_id]:
                    pairs.append((a, b.identity.node_id))
            return pairs

        def cross_entries() -> int:
            return sum(
                half[p.node_id] != half[d.identity.node_id] for d in nodes for p in d.table.peers()
            )

        def split(packet: Packet) -> Verdict:
            return DROP if side[packet.src_host] != side[packet.dst_host] else DELIVER

        assert await success_rate(across(20)) >= 0.95
        cross_before = cross_entries()
        world.net.policy = split
        split_at = trio.current_time()
        during = await success_rate(across(20))
        inside = await success_rate(within(20))
        # every node keeps working during the split: lookups of random ids, each
        # failing on the far half's peers
        async with trio.open_nursery() as busy:
            for dht in nodes:
                busy.start_soon(dht.lookup, rng.randbytes(32))
        await trio.sleep_until(split_at + 20 * 60)
        world.net.policy = lambda packet: DELIVER
        healed_at = trio.current_time()
        cross_at_heal = cross_entries()
        await trio.sleep(2 * 60)
        after_2 = await success_rate(across(30))
        await trio.sleep_until(healed_at + 9 * 60)
        after_10 = await success_rate(across(100))
        print(
            f"split: during {during:.0%} across / {inside:.0%} inside; "
            f"cross-half entries {cross_before} before, {cross_at_heal} at the heal; "
            f"after heal: {after_2:.0%} at +2 min, {after_10:.0%} by +10 min"
        )
        assert during == 0
        assert inside >= 0.95
        assert trio.current_time() <= healed_at + 10 * 60
        assert after_10 >= 0.99
        nursery.cancel_scope.cancel()


# --- records: publication, forgeries, floods ---------------------------------------------


class LiarDht(Dht):
    """A malicious storer (S15): takes STOREs and keeps nothing, and answers every
    FIND_VALUE with the forgeries the test gave it for that key."""

    forgeries: dict[bytes, list[bytes]] = {}  # noqa: RUF012 - set once per test
    served = 0  # forged values handed out, over all liars

    async def handle(self, requester: PublicIdentity, request: rpc.Request) -> rpc.Response:
        if request.method is rpc.Method.STORE:
            return rpc.Response(request.rid, rpc.Status.OK)
        response = await super().handle(requester, request)
        if request.method is not rpc.Method.FIND_VALUE or response.status is not rpc.Status.OK:
            return response
        _, closer = rpc.decode_value_reply(response.body)
        forged = self.forgeries.get(request.body[1:], [])
        LiarDht.served += len(forged)
        return rpc.Response(request.rid, rpc.Status.OK, rpc.encode_value_reply(forged, closer))


def forgeries_of(owner: Dht, liar: Identity, liar_endpoint: str, now: float) -> list[bytes]:
    """Records a liar can serve for ``owner``'s key, each pointing at the liar.

    The owner-signed ones stand for records the owner really signed (an old one
    that expired, one from a clock far ahead) but with a higher seq than its
    current record, so only validation keeps them out.
    """
    assert owner.own_record is not None
    genuine = owner.own_record
    value = rec.encode_peer_info(rec.PeerInfo((liar_endpoint,)))
    seq = genuine.seq + 10**6
    key = owner.identity.node_id
    tampered = rec.Record(
        genuine.type, key, genuine.publisher, seq, genuine.expires, value, genuine.signature
    )
    return [
        rec.encode(tampered),  # bad signature
        rec.encode(rec.sign_record(liar, rec.RecordType.PEER, key, seq, genuine.expires, value)),
        rec.encode(rec.sign_record(owner.identity, rec.RecordType.PEER, key, seq, int(now), value)),
        rec.encode(
            rec.sign_record(
                owner.identity, rec.RecordType.PEER, key, seq, int(now) + 30 * 86400, value
            )
        ),
        b"\x01not a record",
    ]


async def test_peer_records_are_found_and_forgeries_never_accepted(
    autojump_clock: MockClock,
) -> None:
    """Every node publishes its peer record; 8 liars, two ground next to each of
    four nodes' ids, drop stores and serve forged, expired and mis-signed
    records. find_peer from any other node returns the genuine record, and
    the newest one after a republish."""
    rng = random.Random(15)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        honest = await world.build([f"10.{i}.0.1" for i in range(40)], seeds=2)
        victims = honest[5:9]
        liars: list[Dht] = []
        for m in range(8):
            identity = grind(rng, victims[m % 4].identity.node_id, 8)
            liar = await world.add(f"66.{m}.0.1", identity=identity, cls=LiarDht)
            assert await liar.join([as_seed(rng.choice(honest))])
            liars.append(liar)
        now = sim_wall_clock()
        LiarDht.served = 0
        LiarDht.forgeries = {
            d.identity.node_id: forgeries_of(
                d, rng.choice(liars).identity, endpoints_of(rng.choice(liars))[0], now
            )
            for d in honest
        }
        await trio.sleep(60)  # the expired forgeries are now a minute past
        for dht in honest:
            assert dht.own_record is not None
            assert await dht.put(dht.own_record) >= 1

        found = forged = 0
        slowest = 0.0
        owners = [*victims, *victims, *honest]
        for owner in owners:
            searcher = rng.choice([d for d in honest if d is not owner])
            started = trio.current_time()
            peer = await searcher.find_peer(owner.identity.node_id)
            slowest = max(slowest, trio.current_time() - started)
            found += peer is not None
            forged += peer is not None and peer.endpoints != endpoints_of(owner)
        print(
            f"records: {found}/{len(owners)} found (slowest in {slowest:.1f} s simulated), "
            f"{forged} forged, {LiarDht.served} forged values served"
        )
        assert forged == 0
        assert found == len(owners)
        assert slowest <= 10  # S15: within 10 s
        assert LiarDht.served > 0, "the liars were never asked"

        # a republished record replaces the old one, everywhere it is looked up
        for owner in victims:
            info = rec.PeerInfo(endpoints_of(owner), frozenset({"v2"}))
            newest = owner.publish_local(info.endpoints, info.capabilities)
            assert await owner.put(newest) >= 1
            searcher = rng.choice([d for d in honest if d is not owner])
            _, values = await searcher.lookup(
                owner.identity.node_id, value_type=rec.RecordType.PEER
            )
            assert values
            assert values[0] == newest
        nursery.cancel_scope.cancel()


async def store_all(
    dialer: Dialer, responder: Dht, records: Sequence[rec.Record], *, pace: float = 0.0
) -> Counter[rpc.Status]:
    """STORE each record at ``responder`` over one link; the statuses it answered."""
    statuses: Counter[rpc.Status] = Counter()
    link, _ = await dialer.connect(endpoints_of(responder), responder.identity.public)
    try:
        for index, record in enumerate(records):
            rid = index.to_bytes(rpc.RID_BYTES, "big")
            await link.send(
                rpc.encode_request(rpc.Request(rid, rpc.Method.STORE, b"", rec.encode(record)))
            )
            response = rpc.decode(await link.receive())
            assert isinstance(response, rpc.Response)
            assert response.rid == rid
            statuses[response.status] += 1
            await trio.sleep(pace)
    finally:
        await link.aclose()
    return statuses


def peer_records(rng: random.Random, count: int, now: float) -> list[rec.Record]:
    """``count`` valid peer records of as many fresh identities."""
    info = rec.PeerInfo(("sim:203.0.113.1:1",))
    return [
        rec.make_peer_record(Identity(rng.randbytes(32)), info, 1, int(now) + 3600)
        for _ in range(count)
    ]


async def test_store_floods_are_refused_beyond_rate_and_quota(autojump_clock: MockClock) -> None:
    """One source's STOREs are rate limited (burst 60, then 20/s) and, paced under
    the rate, refused beyond its quota of 256 records; other sources' STOREs
    still succeed meanwhile."""
    rng = random.Random(4)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        nodes = await world.build([f"10.{i}.0.1" for i in range(8)])
        responder, flooder, others = nodes[0], nodes[1], nodes[2:]
        dialer = world.dialers[flooder.identity.node_id]
        options = responder.options
        await trio.sleep(options.burst / options.rate)  # the join spent some tokens
        now = sim_wall_clock()
        burst = await store_all(dialer, responder, peer_records(rng, 100, now))
        assert burst[rpc.Status.OK] == options.burst
        assert burst[rpc.Status.RATE_LIMITED] == 100 - options.burst

        await trio.sleep(options.burst / options.rate)  # a full bucket again
        paced = await store_all(dialer, responder, peer_records(rng, 300, now), pace=0.1)
        stored = burst[rpc.Status.OK] + paced[rpc.Status.OK]
        assert stored == DEFAULT_MAX_PER_SOURCE
        assert paced[rpc.Status.REFUSED] == 300 - paced[rpc.Status.OK]
        assert responder.records.stats["source_quota"] == paced[rpc.Status.REFUSED]

        for other in others:
            more = peer_records(rng, 5, now)
            result = await store_all(world.dialers[other.identity.node_id], responder, more)
            assert result == Counter({rpc.Status.OK: 5})
        own = rec.PEER_REPLICAS  # its own peer record and copies
        assert len(responder.records) == own + stored + 5 * len(others)
        nursery.cancel_scope.cancel()


async def test_many_ids_from_one_address_share_its_request_rate(
    autojump_clock: MockClock,
) -> None:
    """Each of a flooder's ids has a full bucket, but together they get what
    ADDRESS_SHARE ids would from their address; another address is served."""
    rng = random.Random(5)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        (responder,) = await world.build(["10.0.0.1"])
        options, share = responder.options, service.ADDRESS_SHARE
        await trio.sleep(options.burst / options.rate)
        statuses: Counter[rpc.Status] = Counter()
        for i in range(500):
            ping = rpc.Request(i.to_bytes(rpc.RID_BYTES, "big"), rpc.Method.PING, b"", b"")
            flooder = Identity(rng.randbytes(32)).public
            statuses[(await responder.handle(flooder, ping, "203.0.113.9")).status] += 1
        assert statuses[rpc.Status.OK] == options.burst * share
        assert statuses[rpc.Status.RATE_LIMITED] == 500 - options.burst * share
        honest = Identity(rng.randbytes(32)).public
        answer = await responder.handle(honest, ping, "198.51.100.7")
        assert answer.status is rpc.Status.OK
        nursery.cancel_scope.cancel()


async def test_under_a_write_flood_stores_cost_work_and_honest_ones_still_land(
    autojump_clock: MockClock,
) -> None:
    """A window with more writes than a calm node takes prices the next ones:
    a plain STORE is answered PUZZLE, an honest node's put pays and lands,
    and once the flood stops, writes are free again."""
    rng = random.Random(6)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        responder, honest = await world.build(["10.0.0.1", "10.1.0.1"])
        await trio.sleep(puzzle.WINDOW)
        now = sim_wall_clock()
        for record in peer_records(rng, puzzle.CALM + 1, now):  # each from its own id
            store = rpc.Request(bytes(8), rpc.Method.STORE, b"", rec.encode(record))
            flooder = Identity(rng.randbytes(32)).public
            assert (await responder.handle(flooder, store)).status is rpc.Status.OK
        await trio.sleep(puzzle.WINDOW)
        dialer = world.dialers[honest.identity.node_id]
        plain = await store_all(dialer, responder, peer_records(rng, 1, now))
        assert plain == Counter({rpc.Status.PUZZLE: 1})

        record = peer_records(rng, 1, now)[0]
        assert await honest.put(record) == 1
        assert responder.records.get(record.type, record.key, now) == [record]
        assert responder.pricing.stats()["paid"] == 1

        await trio.sleep(2 * puzzle.WINDOW)  # calm windows
        assert await store_all(dialer, responder, peer_records(rng, 1, now)) == Counter(
            {rpc.Status.OK: 1}
        )
        nursery.cancel_scope.cancel()


async def find_node_count(asker: Dht, responder: Dht, target: bytes) -> int:
    """How many peers ``responder`` names when ``asker`` asks FIND_NODE ``target``."""
    body = await asker.call(as_seed(responder), rpc.Method.FIND_NODE, target)
    return len(rpc.decode_node_reply(body))


async def test_a_store_flood_does_not_blind_routing_answers(autojump_clock: MockClock) -> None:
    """STOREs refused for quota must not cost the responder what it knows about
    the peers in its routing table (the records it hands out in answers)."""
    rng = random.Random(5)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        nodes = await world.build([f"10.{i}.0.1" for i in range(30)], seeds=3)
        responder, flooder, asker = nodes[0], nodes[1], nodes[2]
        target = rng.randbytes(32)
        before = await find_node_count(asker, responder, target)
        assert before == min(responder.options.k, len(responder.table) - 1)

        flood = peer_records(rng, responder.options.known_records + 100, sim_wall_clock())
        pace = 1.2 / responder.options.rate  # under the rate limit: every STORE is answered
        statuses = await store_all(
            world.dialers[flooder.identity.node_id], responder, flood, pace=pace
        )
        assert statuses[rpc.Status.OK] == DEFAULT_MAX_PER_SOURCE
        assert statuses[rpc.Status.REFUSED] == len(flood) - DEFAULT_MAX_PER_SOURCE
        after = await find_node_count(asker, responder, target)
        print(f"flood: FIND_NODE named {before} peers before, {after} after")
        assert after == before
        nursery.cancel_scope.cancel()


def padded(bound: str) -> list[str]:
    """A real endpoint and two ~2 KB variants of it: a ~4.2 KB peer record, valid."""
    return [bound, f"{bound};pad={'x' * 1990}", f"{bound};pad={'y' * 1990}"]


async def test_big_peer_records_do_not_keep_a_node_from_answering(
    autojump_clock: MockClock,
) -> None:
    """Twenty peers with valid ~4.2 KB records (sixteen of them exceed a 64 KiB
    link message) must not make the responder's FIND_NODE answer unsendable:
    it names as many of the closest as fit."""
    rng = random.Random(6)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        responder, asker = await world.build(["10.0.0.1", "10.1.0.1"])
        for m in range(20):
            fat = await world.add(f"66.{m}.0.1", endpoints=padded)
            assert fat.own_record is not None
            assert len(rec.encode(fat.own_record)) > 4000
            assert await fat.join([as_seed(responder)])
        assert len(responder.table) >= 16
        count = await find_node_count(asker, responder, rng.randbytes(32))
        assert 0 < count < responder.options.k
        assert count >= 14  # ~4.2 KB each: as many as fit one 64 KiB message
        nursery.cancel_scope.cancel()


async def test_a_replayed_older_record_does_not_replace_the_newer_in_answers(
    autojump_clock: MockClock,
) -> None:
    """Anyone may STORE a peer's older (still valid) record again; the store
    ignores it as not newer, and answers must keep naming the newer one."""
    rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        responder, publisher, replayer, asker = await world.build(
            [f"10.{i}.0.1" for i in range(4)], seeds=3
        )
        older = publisher.own_record
        assert older is not None
        await trio.sleep(1)
        newer = publisher.publish_local(endpoints_of(publisher), frozenset({"v2"}))
        assert await publisher.put(newer) >= 3
        replay = await store_all(world.dialers[replayer.identity.node_id], responder, [older])
        assert replay == Counter({rpc.Status.OK: 1})  # ignored as not newer, not refused

        body = await asker.call(as_seed(responder), rpc.Method.FIND_NODE, newer.key)
        named = [rec.decode(r) for r in rpc.decode_node_reply(body)]
        seqs = [r.seq for r in named if r.key == newer.key]
        assert seqs == [newer.seq]
        nursery.cancel_scope.cancel()


# --- scale -------------------------------------------------------------------------------

#: The issue's network: 1,000 nodes, and enough lookups to judge 99.9%.
#: Measured on one core, wall time to build by sequential joins / per lookup:
#: 100 nodes 7.6 s / 54 ms, 300 nodes 27 s / 91 ms, 500 nodes 48 s / 95 ms,
#: 1000 nodes 102 s / 110 ms (720 MB): about 4 minutes for this test, the
#: longest in the suite (the performance issue owns making it cheaper).
SCALE_NODES = 1000
SCALE_LOOKUPS = 1000


@pytest.mark.timeout(900)  # about 4 minutes alone: the suite's 300 s is too tight beside others
async def test_lookups_of_random_nodes_succeed_at_scale(autojump_clock: MockClock) -> None:
    """SCALE_NODES nodes, each on its own /16, join one after the other through a
    random earlier node; lookups of random nodes from random nodes find them
    (>= 99.9%: at most one of 1,000 lookups may miss)."""
    rng = random.Random(1000)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        hosts = [f"{10 + i // 250}.{i % 250}.0.1" for i in range(SCALE_NODES)]
        nodes = await world.build(hosts)
        pairs = []
        for _ in range(SCALE_LOOKUPS):
            searcher, target = rng.sample(nodes, 2)
            pairs.append((searcher, target.identity.node_id))
        rate = await success_rate(pairs)
        print(f"scale: {SCALE_NODES} nodes, {SCALE_LOOKUPS} lookups, {rate:.2%} found")
        assert rate >= 0.999
        nursery.cancel_scope.cancel()


async def test_a_pooled_link_that_times_out_is_closed(autojump_clock: MockClock) -> None:
    """A pooled link whose answers are black-holed times the RPC out; the caller
    must close that link (so the peer's handler ends), not just drop it."""
    rng = random.Random(8)
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        caller, callee = await world.build(["10.0.0.1", "10.1.0.1"])
        await trio.sleep(1)
        callee_id = callee.identity.node_id
        assert await caller.ping(as_seed(callee))  # leaves a pooled link
        assert world.serving[callee_id] == 1
        world.net.policy = lambda p: DROP if p.src_host == "10.1.0.1" else DELIVER
        assert not await caller.ping(as_seed(callee))  # the pooled link times out
        world.net.policy = lambda packet: DELIVER
        await trio.sleep(10)
        assert world.serving[callee_id] == 0
        nursery.cancel_scope.cancel()
