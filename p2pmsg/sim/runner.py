"""Run a scenario for one seed: real nodes, a censor, traffic, a control client.

Theory of operation
-------------------
:func:`run_seed` builds the world of a :class:`~p2pmsg.sim.scenario.Scenario`
and runs it under trio's autojump clock, seeded (:mod:`p2pmsg.sim.world`):

* **hosts** (laid out by :mod:`p2pmsg.sim.topology`): ``users`` p2pmsg
  users in ``country``, spread over ``isps`` residential prefixes
  (``95.ISP.x.y``), each with a second device for the control messenger
  (``96.ISP.x.y``), and ``abroad`` users in ``DE``; in the cloud, abroad, in
  ``cloud_prefixes`` /16s (``52.K.x.y``): the ``bootstrap`` nodes whose
  invites are every user's built-in bootstrap list, the control messenger's
  ``servers`` and ``web`` sites that have nothing to do with either (the
  censor's collateral damage is measured on them, fetched by one background
  host per ISP).
* **the censor** (:mod:`p2pmsg.sim.censor`, :mod:`p2pmsg.sim.blocklist`):
  a learner that counts the domestic clients of each foreign address, and a
  blocklist that the ``[[censor]]`` rules fill from ``t0`` (the end of the
  warm-up): ``drop`` lists the bootstrap nodes or the servers at once,
  ``blocklist_add`` lists what the censor learned, every ``every`` seconds,
  widened to ``prefix`` bits; each network is listed with ``probability``,
  and each ISP applies an addition after U(0, ``propagation``) seconds.
* **newcomers**: ``late_users`` start for the first time at t0, with the
  bootstrap list and (``alternate = "invite"``) a friend's invite; a
  ``bootstrap_only`` control starts as many with the list alone (S2).
* **LANs** (``topology.lan``): each ISP's users share a
  :class:`~p2pmsg.sim.lan.SimLan`, their nodes' mDNS; when each first saw
  each of its neighbours is collected at the end.
* **traffic**: ``pairs`` random pairs of users (``local``: of one ISP) are contacts; each pair
  exchanges a message every ``every`` seconds on average (exponential), in
  a random direction, through p2pmsg and through the control client alike,
  from ``t0`` for ``duration``; then ``drain`` seconds for late deliveries.
  With ``burst``, halfway through one user at home writes that many
  messages at once to a user abroad, into an outbox that holds ``outbox``
  per contact: what it refuses is counted, what it takes must arrive.
  With ``file_kib``, a minute after t0 the first pair's first user sends
  the other a file of that size; when it arrives whole is collected.
* **latency and loss**: every packet takes ``latency`` (both ends in one
  country) or ``border_latency`` (across the border); a packet lost (with
  probability ``loss``) is resent after a retransmission timeout, and the
  packets behind it wait, as in TCP.
* **other censor actions** (``dpi``, ``learn_fingerprint``, ``police``,
  ``reset_every``, ``inject_dns``, ``drop`` of the ``border`` or of ``flows``):
  rules of :mod:`p2pmsg.sim.rules`, added to the censor at ``at`` and taken
  away at ``until``; ``probe`` runs an active prober from a domestic host,
  which also replays, after a node restarted, what it recorded before.
* **dials** (S12): every dial a user makes while the traffic runs is timed,
  from the need of a link to a working one.
* **restarts** (``topology.restarts``): each user's node stops and starts
  again from its home that many times, at random times over the run.
  When a ``drop`` of the ``border`` is lifted (a heal), each user at home
  looks a user abroad up ten minutes later.
* **tampering relays** (``topology.tampering``, :mod:`p2pmsg.sim.tamper`):
  some users' relays hold packets back, forward some twice and send them
  again after the next hop restarted; every node's relay is watched for a
  layer it accepts twice (S17).
* **Sybils** (``sybils`` rules, :mod:`p2pmsg.sim.sybils`): lying DHT
  services next to one user's id, at random ids, or next to a user's keys;
  near the end, users' lookups and fetches under them are counted (S14, S15).
* **signed bootstrap lists** (a ``stale_lists`` rule, :mod:`p2pmsg.sim.lists`):
  a publisher every user trusts, its new list in the DHT at t0, and old
  ones the censor serves (S20).

It returns a :class:`SeedResult`: raw counts and samples, judged by
:mod:`p2pmsg.sim.report`.
"""

from __future__ import annotations

import itertools
import math
import random
import resource
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import trio
import trio.testing

from p2pmsg.abc import Discovery
from p2pmsg.dht import records
from p2pmsg.dht.service import DhtOptions
from p2pmsg.dialer import Dialled
from p2pmsg.errors import OutboxFull
from p2pmsg.join import seeds_from_invites
from p2pmsg.node import Node, NodeOptions
from p2pmsg.onion_service import OnionServiceOptions
from p2pmsg.sim import control, hunt, replays, rules
from p2pmsg.sim.blocklist import Blocklist, Learner, widen
from p2pmsg.sim.censor import Censor, ResidualBlock
from p2pmsg.sim.flood import Flood
from p2pmsg.sim.lan import SimLan
from p2pmsg.sim.lists import Lists
from p2pmsg.sim.mule import Mule
from p2pmsg.sim.prober import Prober
from p2pmsg.sim.result import SeedResult, heals, transport_switches
from p2pmsg.sim.scenario import CensorRule, Scenario, ScenarioError
from p2pmsg.sim.sybils import Sybils
from p2pmsg.sim.tamper import Insiders
from p2pmsg.sim.topology import (
    MULE,
    PROBER,
    WEB_PORT,
    WEB_TIMEOUT,
    Meter,
    censor_rules,
    control_host,
    place_hosts,
    web_server,
)
from p2pmsg.sim.world import SimWrapper, World, seeded_scheduler

NODE_OPTIONS = NodeOptions(
    onion=OnionServiceOptions(mailbox_poll=1800.0),
    dht=DhtOptions(k=8, mailbox_k=5, max_links=64, link_idle=100.0),
)
"""Smaller DHT buckets than a deployment's, as in the churn tests: the
simulation's cost is dominated by lookups."""
JOIN_TIMEOUT = 300.0
FILE_AFTER = 60.0
"""Seconds after t0 that the file of ``traffic.file_kib`` is sent: under the censor."""
HEAL_LOOKUP_AFTER = 600.0
LOOKUP_TIMEOUT = 60.0
OONI: dict[str, str] = {
    "timeout": "tcp_ip",
    "reset": "connection_reset",
    "silence": "generic_timeout_error",
    "throttled": "throttling",
}
"""Our dial failure classes in OONI's vocabulary."""

Progress = Callable[[str], None]


class _Run:
    """One seed's world, its parts and what they saw."""

    mule: Mule | None = None
    """S11's mule (made with the homes)."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        root: Path,
        wrappers: Mapping[str, SimWrapper] | None,
        calm: bool = False,
    ) -> None:
        self.s, self.seed = scenario, seed
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible simulation
        self.pairs: list[tuple[str, str]] = []  # the users who are contacts (make_homes)
        try:
            self.world = World(
                root, seed, transports=scenario.topology.transports, wrappers=wrappers
            )
        except ValueError as exc:
            raise ScenarioError(f"{scenario.path}: topology.{exc}") from None
        self.groups = place_hosts(self.world, scenario)
        self.hosts = self.world.net.hosts
        topo = scenario.topology
        isps = tuple(f"isp{j}" for j in range(topo.isps))
        self.learner = Learner(self.world.net.host, topo.country)
        blocklist_rng = random.Random(seed + 1)  # noqa: S311 - a reproducible simulation
        self.blocklist = Blocklist(self.world.net.host, topo.country, isps, rng=blocklist_rng)
        self.censor_rng = random.Random(seed + 2)  # noqa: S311 - a reproducible simulation
        self.meter = Meter(
            Censor([self.learner, self.blocklist]),
            self.world.net,
            topo,
            random.Random(seed + 3),  # noqa: S311 - a reproducible simulation
        )
        self.meter.nodes.update(self.groups["users"] + self.groups["late"])
        self.world.net.policy = self.meter
        self.backend = control.Backend()
        self.result = SeedResult(seed)
        self.degrading = 0
        """``delay`` rules on now."""
        self.options = replace(NODE_OPTIONS, max_queued_per_contact=scenario.traffic.outbox)
        self.nodes: dict[str, Node] = {}
        self.sending: dict[str, int] = {}
        """Sends under way through each node."""
        self.down: dict[str, trio.Event] = {}
        """Nodes stopping or starting again; set once each is back."""
        self.drained: dict[str, trio.Event] = {}
        """Nodes waiting to stop until their sends under way are done."""
        self.dials: dict[str, list[tuple[float, Dialled]]] = {}
        """User -> (seconds after t0, dial) of its dials up to the end, the
        warm-up's included (S12's switches; its path times start at t0)."""
        self.prober: Prober | None = None
        self.insiders = Insiders(
            self.result, self.tampering(), seed, duplicate=topo.duplicate, reorder=topo.reorder
        )
        self.lists = (
            Lists(self.world, self.result, random.Random(f"{seed}/lists"))  # noqa: S311
            if any(rule.action == "stale_lists" for rule in scenario.censor)
            else None
        )
        """S20's bootstrap lists: a publisher, and stale lists the censor serves."""
        self.sybils = (
            Sybils(self.world, self.result, topo.country, random.Random(f"{seed}/sybils"))  # noqa: S311
            if any(rule.action == "sybils" for rule in scenario.censor)
            else None
        )
        """S14's Sybils in the DHT."""
        self.started: dict[str, list[float]] = {}  # when each node started, and again
        self.lans = {isp: SimLan(isp) for isp in isps} if topo.lan else {}
        self.healed, self.heal_checked = trio.Event(), trio.Event()
        self.t0 = trio.current_time() + scenario.run.warmup
        self.end = self.t0 + scenario.run.duration
        self.flood = (
            Flood(self.world, self.result, scenario, self.groups["users"], self.t0, calm=calm)
            if any(rule.action == "flood" for rule in scenario.censor)
            else None
        )
        """S16's flooder."""
        self.result.t0 = self.t0
        fixed = scenario.control.kind == "fixed_servers"
        by_ip = {h.ip: name for name, h in self.hosts.items()}
        c = scenario.control
        self.clients = {
            u: control.Client(
                self.world.net, control_host(u), self.groups["servers"], name=u,
                wire=c.wire, per_message=c.per_message,
                media_kib=c.media_kib,
                resolve=by_ip.get if c.resolve else None, rng=random.Random(f"{seed}/{u}"),  # noqa: S311
            )
            for u in (self.groups["users"] if fixed else [])
        }  # fmt: skip

    def tampering(self) -> list[str]:
        """The users whose relays tamper (``topology.tampering``: at least one if any)."""
        users, share = self.groups["users"], self.s.topology.tampering
        if not share:
            return []
        count = min(len(users), max(1, round(share * len(users))))
        return random.Random(f"{self.seed}/tampering").sample(users, count)  # noqa: S311

    def make_homes(self) -> list[tuple[str, str]]:
        """Every node's home; the pairs of users who are contacts."""
        boot = self.groups["bootstrap"]
        for i, name in enumerate(boot):
            self.world.home(name, bootstrap=[self.world.invite(boot[0])] if i else [])
        invites = [self.world.invite(b) for b in boot]
        publishers = []
        if self.lists is not None:
            publishers = [self.lists.key]
            self.lists.invites = invites[: records.MAX_BOOTSTRAP_INVITES]
        for group in ("users", "control", "skewed", "mule"):
            for name in self.groups[group]:
                self.world.home(name, bootstrap=invites, publishers=publishers)
        for name in self.groups["late"]:  # a friend already in hands over an invite
            friend = self.world.invite(self.rng.choice(self.groups["users"]))
            extra = [friend] if self.s.topology.alternate == "invite" else []
            self.world.home(name, bootstrap=[*invites, *extra])
        pairs = [
            (a, b)
            for a, b in itertools.combinations(self.groups["users"], 2)
            if not self.s.traffic.local or self.hosts[a].isp == self.hosts[b].isp
        ]
        self.pairs = self.rng.sample(pairs, self.s.traffic.pairs)
        if self.s.topology.mule:
            users, count = self.groups["users"], self.s.traffic.mule_pairs
            self.mule = Mule(self.world, self.result, lans=self.lans, users=users, count=count,
                             rng=random.Random(f"{self.seed}/mule"))  # noqa: S311  # fmt: skip
        return self.pairs

    def lan(self, name: str) -> Callable[[], Discovery] | None:
        if self.mule is not None and name == MULE:
            return self.mule.discovery()
        segment = self.lans.get(self.hosts[name].isp)
        return segment.discovery if segment is not None else None

    async def run_node(
        self, name: str, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run node ``name``, restarting it ``topology.restarts`` times and
        moving it to a new address ``topology.ip_changes`` times (users only);
        between a stop and the next start nobody sends through it."""
        started = trio.current_time()
        skew = self.s.topology.clock_skew
        skew = self.rng.uniform(-skew, skew) if skew else 0.0
        if name in self.groups["skewed"]:
            skew = self.rng.choice((-1, 1)) * self.rng.uniform(36 * 3600.0, 48 * 3600.0)
        self.sending[name] = 0
        for run, (stop, moves) in enumerate([*self.stops(name), (math.inf, False)]):
            self.started.setdefault(name, []).append(trio.current_time())
            async with self.world.node(
                name, options=self.options, skew=skew, lan=self.lan(name)
            ) as node:
                await self.opened(name, node, run)
                if not run:
                    task_status.started()
                with trio.move_on_at(stop):
                    if not run:
                        with trio.move_on_after(JOIN_TIMEOUT):
                            await node.joined.wait()
                            if name in self.groups["users"]:
                                self.result.joined[name] = trio.current_time() - started
                    async for message in node.messages():
                        self.receive(message.id)
                self.down[name] = trio.Event()  # no new send, and none under way, while it stops
                self.insiders.closed(name)
                if self.sending[name]:
                    self.drained[name] = trio.Event()
                    await self.drained[name].wait()
                    del self.drained[name]
                while True:  # what it already showed (the rest waits in its inbox)
                    try:
                        self.receive(node.messages().receive_nowait().id)
                    except trio.WouldBlock:
                        break
            if moves:  # stopped: it comes back elsewhere
                self.move(name)

    async def opened(self, name: str, node: Node, run: int) -> None:
        """``name``'s node is up for its ``run``-th time (0: the first)."""
        self.nodes[name] = node
        self.insiders.opened(name, node)
        if name in self.groups["users"]:
            node.dialer.observers.append(partial(self.dialled, name))
            if not run and self.lists is not None:
                await self.lists.ship(node)
        if run:
            self.result.restarts += 1
            if self.prober is not None:  # it replays what it recorded
                self.prober.node_restarted(name)
            self.down.pop(name).set()

    def dialled(self, name: str, dial: Dialled) -> None:
        if (now := trio.current_time()) <= self.end:
            self.dials.setdefault(name, []).append((now - self.t0, dial))

    def stops(self, name: str) -> list[tuple[float, bool]]:
        """When node ``name`` stops, and whether it moves to a new address then."""
        if name not in self.groups["users"]:
            return []
        times = []
        for label, count, moves in (
            ("restarts", self.s.topology.restarts, False),
            ("moves", self.s.topology.ip_changes, True),
        ):
            rng = random.Random(f"{self.seed}/{label}/{name}")  # noqa: S311 - a reproducible simulation
            times += [(rng.uniform(self.t0, self.end), moves) for _ in range(count)]
        return sorted(times)

    def move(self, name: str) -> None:
        """Move user ``name`` (stopped) to a new host of its network."""
        self.result.ip_changes += 1
        moved = 1 + sum(h.startswith(f"{name}m") for h in self.hosts)  # names are fixed-width
        old = self.hosts[name]
        a, b, c, d = old.ip.split(".")
        host, ip = f"{name}m{moved}", f"{a}.{b}.{int(c) + 100 + moved}.{d}"
        self.hosts[host] = self.world.add_host(
            host, ip=ip, asn=old.asn, country=old.country, isp=old.isp
        )
        self.world.move(name, host)

    def receive(self, message_id: bytes) -> None:
        key = message_id.hex()
        if key in self.result.received:
            self.result.duplicates += 1
        else:
            self.result.received[key] = trio.current_time()

    def start_last(self, nursery: trio.Nursery) -> None:
        """What runs beside the traffic: the check after a heal, the burst, the
        file, the tampering relays' replays, the lookups under Sybils and the publisher
        of bootstrap lists."""
        nursery.start_soon(self.after_heal)
        nursery.start_soon(self.burst)
        if self.s.traffic.file_kib and self.pairs:
            nursery.start_soon(self.transfer, *self.pairs[0])
        if self.mule is not None:
            nursery.start_soon(self.mule.run, self.nodes, self.t0, self.end)
        if self.insiders.kept:
            nursery.start_soon(self.insiders.run)
        if self.sybils is not None:
            nursery.start_soon(self.measure_sybils)
        if self.lists is not None:
            boot = self.groups["bootstrap"][0]
            users = self.groups["users"]
            nursery.start_soon(self.lists.run, self.nodes, boot, users, self.t0, self.end)

    async def converse(self, a: str, b: str) -> None:
        await trio.sleep_until(self.t0)
        while True:
            await trio.sleep(self.rng.expovariate(1 / self.s.traffic.every))
            now = trio.current_time()
            if now >= self.end:
                return
            frm, to = (a, b) if self.rng.random() < 0.5 else (b, a)
            text = f"{frm} to {to} at {now:.0f}"
            try:
                message_id = (await self.send(frm, to, text)).hex()
            except OutboxFull:  # reported to the sender: counted, not lost
                self.result.outbox_refused += 1
                continue
            self.result.sent[message_id] = self.result.control_sent[message_id] = now
            if self.hosts[frm].country != self.hosts[to].country:
                self.result.cross_border.add(message_id)
            if self.degrading:
                self.result.degraded.add(message_id)
            if self.flood is not None and self.flood.marks(frm, to, now):
                self.result.flooded.add(message_id)
            self.result.payload_bytes += len(text)
            if frm in self.clients:
                self.clients[frm].send(to, message_id)

    async def send(self, frm: str, to: str, text: str, file: bytes | None = None) -> bytes:
        """``frm`` sends ``text`` to ``to`` (or ``file`` named ``text``), once
        its node is up (no checkpoint more than the send's own while it is:
        runs without restarts keep their schedule)."""
        while frm in self.down:
            await self.down[frm].wait()
        self.sending[frm] += 1
        node = self.nodes[frm]
        try:
            return await (node.send(to, text) if file is None else node.send_file(to, file, text))
        finally:
            self.sending[frm] -= 1
            if not self.sending[frm] and frm in self.drained:
                self.drained[frm].set()

    async def burst(self) -> None:
        """Halfway through, one user at home writes ``traffic.burst`` messages at
        once to a user abroad; the outbox must take them or refuse them."""
        if not self.s.traffic.burst:
            return
        rng = random.Random(self.seed + 5)  # noqa: S311 - a reproducible simulation
        country = self.s.topology.country
        home = [u for u in self.groups["users"] if self.hosts[u].country == country]
        away = [u for u in self.groups["users"] if self.hosts[u].country != country]
        if not home or not away:
            return  # resized to no user abroad
        frm, to = rng.choice(home), rng.choice(away)
        contacts = {c.name for c in await self.nodes[frm].store.list_contacts()}
        if to not in contacts:
            await self.nodes[frm].store.add_contact(self.world.contact_of(to))
        await trio.sleep_until(self.t0 + self.s.run.duration / 2)
        for i in range(self.s.traffic.burst):
            text = f"{frm} to {to}, burst {i}"
            try:
                message_id = (await self.send(frm, to, text)).hex()
            except OutboxFull:
                self.result.burst_refused += 1
                continue
            self.result.sent[message_id] = trio.current_time()
            self.result.cross_border.add(message_id)
            self.result.burst.append(message_id)
            self.result.payload_bytes += len(text)

    async def transfer(self, frm: str, to: str) -> None:
        """A minute after t0, ``frm`` sends ``to`` a file of ``traffic.file_kib`` KiB."""
        await trio.sleep_until(self.t0 + FILE_AFTER)
        size = self.s.traffic.file_kib * 1024
        data = random.Random(self.seed).randbytes(size)  # noqa: S311 - a reproducible simulation
        file_id = await self.send(frm, to, f"{frm}.bin", data)
        self.result.file = (file_id.hex(), trio.current_time(), size)
        self.result.payload_bytes += size

    async def start_control(self, client: control.Client) -> None:
        """Run ``client`` from t0: the control messenger starts under the censor."""
        await trio.sleep_until(self.t0 + 1.0)
        await client.run()

    async def newcomer(self, name: str, joined: dict[str, float | None]) -> None:
        """Start ``name`` for the first time at t0 and time its join."""
        await trio.sleep_until(self.t0 + 1.0)  # after the censor's first actions
        joined[name] = None
        started = trio.current_time()
        skew = self.s.topology.clock_skew
        skew = self.rng.uniform(-skew, skew) if skew else 0.0
        async with self.world.node(
            name, options=self.options, skew=skew, lan=self.lan(name)
        ) as node:
            await node.joined.wait()
            joined[name] = trio.current_time() - started
            await trio.sleep_forever()

    async def browse(self, host: str, rng: random.Random) -> None:
        sites = self.groups["web"]
        while True:
            await trio.sleep(rng.expovariate(1 / self.s.traffic.browse_every))
            ok = False
            with trio.move_on_after(WEB_TIMEOUT):
                try:
                    stream = await self.world.net.connect(host, rng.choice(sites), WEB_PORT)
                    await stream.send(b"GET / HTTP/1.1\r\n\r\n")
                    ok = (await stream.receive()).startswith(b"HTTP/1.1 200")
                    await stream.aclose()
                except (OSError, trio.BrokenResourceError, trio.EndOfChannel):
                    pass
            if trio.current_time() >= self.t0:
                self.result.browse_ok += ok
                self.result.browse_broken += not ok

    async def switch_on(self, rule: CensorRule) -> None:
        """Add ``rule``'s censor rules until its ``until``; off and on if it flaps."""
        what = rule.action if rule.action != "drop" else f"drop ({rule.target})"
        if rule.action == "delay":
            what += f" (+{rule.latency * 1000:.0f} ms, {rule.loss:.0%} loss)"
        what += f" on {rule.isp}" if rule.isp else ""
        end = min(self.t0 + rule.until, self.end)
        while (now := trio.current_time()) < end:
            rng = random.Random(self.censor_rng.random())  # noqa: S311 - a reproducible simulation
            learned = partial(self.learned, what)
            made = censor_rules(rule, self.world.net, self.s.topology.country, rng, learned)
            self.meter.censor.rules.extend(made)
            self.meter.residuals += [one for one in made if isinstance(one, ResidualBlock)]
            self.degrading += rule.action == "delay"
            self.result.censor_events.append((now - self.t0, what))
            if rule.until == float("inf") and not rule.flap:
                return
            await trio.sleep_until(min(end, now + (rule.flap or float("inf"))))
            for one in made:
                self.meter.censor.rules.remove(one)
            self.degrading -= rule.action == "delay"
            self.result.censor_events.append((trio.current_time() - self.t0, f"{what} lifted"))
            if heals(rule) and self.result.healed is None:
                self.result.healed = trio.current_time()
                self.healed.set()
            await trio.sleep(rule.flap)

    def learned(self, what: str) -> None:
        """A learning rule learned a flow shape: the censor changed."""
        now = trio.current_time() - self.t0
        self.result.censor_events.append((now, f"{what}: a flow shape learned"))

    async def after_heal(self) -> None:
        """:data:`HEAL_LOOKUP_AFTER` after the border heals, each user at home
        looks up a user abroad (S10: lookups work again). Without a heal,
        nothing to do."""
        if not any(heals(rule) for rule in self.s.censor):
            self.heal_checked.set()
            return
        await self.healed.wait()
        await trio.sleep(HEAL_LOOKUP_AFTER)
        country = self.s.topology.country
        abroad = [u for u in self.groups["users"] if self.hosts[u].country != country]
        rng = random.Random(self.seed + 5)  # noqa: S311 - a reproducible simulation

        async def look(user: str, target: str) -> None:
            found = None
            with trio.move_on_after(LOOKUP_TIMEOUT):
                found = await self.nodes[user].find(self.nodes[target].identity.node_id)
            self.result.heal_lookups.append(found is not None)

        async with trio.open_nursery() as nursery:
            for user in self.groups["users"]:
                if abroad and user not in abroad:
                    nursery.start_soon(look, user, rng.choice(abroad))
        self.heal_checked.set()

    async def probe(self, rule: CensorRule) -> None:
        """The active prober of S8 (:mod:`p2pmsg.sim.prober`), from a domestic host."""
        hosts, country = self.world.net.host, self.s.topology.country
        suspects = rules.Probe(PROBER)
        self.meter.censor.rules.append(rules.Scoped(suspects, hosts, country, rule.scope))
        rng = random.Random(self.seed + 4)  # noqa: S311 - a reproducible simulation
        self.prober = Prober(
            self.world.net, self.nodes, self.result, self.condemn, bool(self.s.topology.restarts)
        )
        await self.prober.run(suspects, rng, self.end)

    async def start_sybils(self, rule: CensorRule) -> None:
        """Start the rule's Sybils (:mod:`p2pmsg.sim.sybils`); near a victim,
        they attack it until the end. They run until the run ends."""
        assert self.sybils is not None
        users = self.groups["users"]
        seeds = seeds_from_invites([self.world.invite(b) for b in self.groups["bootstrap"]])
        victim = self.nodes[users[0]].identity.node_id
        async with trio.open_nursery() as nursery:
            if rule.target == "keys":  # S15: liars next to u0000's keys, `sybils` in all
                self.sybils.keys_of = users[0]
                liars = [
                    (records.RecordType.PEER, victim),
                    (records.RecordType.PREKEYS, records.prekey_key(victim)),
                ]
                keys = [key for _, key in liars]
                count = max(1, round(rule.sybils))
                await self.sybils.start(nursery, count, min(count, 250), keys, seeds, liars=liars)
            elif rule.target == "victim":
                count = max(1, round(rule.sybils * len(users)))
                started = await self.sybils.start(nursery, count, rule.prefixes, [victim], seeds)
                self.sybils.victim = users[0]
                await self.sybils.attack(started, self.nodes[users[0]], self.end)
            else:
                count = max(1, round(rule.sybils * len(users)))
                await self.sybils.start(nursery, count, min(count, 250), [], seeds)
            await trio.sleep_forever()

    async def measure_sybils(self) -> None:
        """Near the end of the traffic, the lookups of users under the Sybils."""
        assert self.sybils is not None
        await trio.sleep_until(self.t0 + 0.9 * self.s.run.duration)
        await self.sybils.measure(self.nodes, self.groups["users"])

    def condemn(self, server: str) -> None:
        """Block ``server``: it answered a probe."""
        now = trio.current_time()
        self.blocklist.add([self.hosts[server].ip], now, propagation=0, reason="probe")
        self.result.censor_events.append((now - self.t0, "probe: 1 address blocked"))

    async def censor(self, rule: CensorRule) -> None:
        await trio.sleep_until(self.t0 + rule.at)
        if rule.action == "probe":
            await self.probe(rule)
            return
        if rule.action == "stale_lists" and self.lists is not None:
            await self.lists.serve_stale(self.nodes, self.groups["users"], self.end)
            return
        if rule.action == "sybils":
            await self.start_sybils(rule)
            return
        if rule.action == "flood" and self.flood is not None:
            await self.flood.run(self.nodes, rule, min(self.end, self.t0 + rule.until))
            return
        if rule.target in ("border", "flows"):
            await self.switch_on(rule)
            return
        while (now := trio.current_time()) < min(self.end, self.t0 + rule.until):
            if rule.target == "learned":
                addresses = self.learner.popular(rule.min_clients)
            else:
                addresses = [self.hosts[h].ip for h in self.groups[rule.target]]
            networks = [
                n
                for n in widen(addresses, rule.prefix)
                if self.censor_rng.random() < rule.probability
            ]
            added = self.blocklist.add(
                networks, now, propagation=rule.propagation, reason=rule.target
            )
            if added:
                what = ("prefix", "prefixes") if rule.prefix < 32 else ("address", "addresses")
                event = f"{rule.action}: {added} {what[added > 1]} ({rule.target})"
                self.result.censor_events.append((now - self.t0, event))
            if rule.every <= 0:
                return
            await trio.sleep(rule.every)

    async def collect(self) -> None:
        for client in self.clients.values():
            self.result.control_received.update(client.received)
            self.result.control_duplicates += client.duplicates
        if self.s.control.per_message:
            self.result.control_received = dict(self.backend.accepted)
        self.result.dns_lookups = self.meter.dns_lookups
        for node in self.nodes.values():
            status = await node.status()
            for health in status["transports"].values():
                for cls, count in health["failures"].items():
                    key = OONI.get(cls, cls)
                    self.result.failure_classes[key] = (
                        self.result.failure_classes.get(key, 0) + count
                    )
        self.result.wire_bytes = self.meter.wire_bytes
        self.collect_lan()
        if self.mule is not None:
            self.mule.collect(self.nodes[MULE])
        self.collect_dials()
        self.collect_residuals()
        if self.lists is not None:
            await self.lists.collect(self.nodes, self.groups["users"])
        if self.flood is not None:
            self.flood.collect(self.nodes)
        for name, node in self.nodes.items():
            alarm = node.dht.clock.verdict().error is not None
            if name in self.groups["skewed"]:
                self.result.clock_errors.append(alarm)
            elif name in self.groups["users"]:
                self.result.clock_false_alarms += alarm
        self.result.peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.result.home_bytes = sum(
            f.stat().st_size for f in self.world.root.rglob("*") if f.is_file()
        )

    def collect_residuals(self) -> None:
        """S4: the users' tries of each 3-tuple inside one residual block."""
        users = set(self.groups["users"])  # and where they moved: u0001m1, ...
        for residual in self.meter.residuals:
            for (client, _, _), syns in residual.retries.items():
                if client in users or client.rpartition("m")[0] in users:
                    self.result.residual_retries.append(syns)

    def collect_dials(self) -> None:
        """S12: how long users' dials took to a working link while the traffic
        ran (inf: failed), and when they switched transports (warm-up too,
        but not while each joined)."""
        for user in self.groups["users"]:
            dials = self.dials.get(user, [])
            self.result.path_times += [
                d.seconds if d.winner else math.inf for t, d in dials if t >= 0
            ]
            starts = [t - self.t0 for t in self.started.get(user, [])]
            self.result.switches.append(transport_switches(dials, starts))

    def collect_lan(self) -> None:
        users = [u for u in self.groups["users"] if self.lan(u) is not None]
        for u in users:
            seen = {e.peer.node_id: e.first_seen for e in self.nodes[u].lan_peers()}
            for v in users:
                if v != u and self.hosts[u].isp == self.hosts[v].isp:
                    first = seen.get(self.nodes[v].identity.node_id, math.inf)
                    up = max(self.started[u][0], self.started[v][0])
                    self.result.lan_found.append(first - up)


async def run_seed(
    scenario: Scenario,
    seed: int,
    root: Path,
    progress: Progress | None = None,
    wrappers: Mapping[str, SimWrapper] | None = None,
    *,
    calm: bool = False,
) -> SeedResult:
    """Run ``scenario`` once, under trio's current (mock) clock. See the module docstring.

    ``wrappers`` build the transports other than ``sim`` that the scenario's
    nodes speak (``transports.simstack.WRAPPERS``); a scenario that names one
    it lacks is a :class:`ScenarioError`. ``calm``: without the flooder of a
    ``flood`` rule, for its baseline."""
    run = _Run(scenario, seed, root, wrappers, calm)
    pairs = run.make_homes()
    async with trio.open_nursery() as nursery:
        for name in [*run.groups["bootstrap"], *run.groups["users"], *run.groups["skewed"],
                     *run.groups["mule"]]:  # fmt: skip
            await nursery.start(run.run_node, name)
        for a, b in pairs:
            await run.nodes[a].store.add_contact(run.world.contact_of(b))
            await run.nodes[b].store.add_contact(run.world.contact_of(a))
            nursery.start_soon(run.converse, a, b)
        for server in run.groups["servers"]:
            nursery.start_soon(
                control.serve, run.world.net, server, run.backend, scenario.control.wire
            )
        if scenario.control.resolve:
            names = {
                control.server_name(i): run.hosts[h].ip for i, h in enumerate(run.groups["servers"])
            }
            nursery.start_soon(control.resolver, run.world.net, control.RESOLVER, names)
        for client in run.clients.values():
            nursery.start_soon(run.start_control, client)
        for site in run.groups["web"]:
            nursery.start_soon(web_server, run.world, site)
        for j, bg in enumerate(run.groups["bg"]):
            nursery.start_soon(run.browse, bg, random.Random(seed * 1000 + j))  # noqa: S311
        for rule in scenario.censor:
            nursery.start_soon(run.censor, rule)
        for name in run.groups["late"]:
            nursery.start_soon(run.newcomer, name, run.result.late_joined)
        for name in run.groups["control"]:
            nursery.start_soon(run.newcomer, name, run.result.control_joined)
        run.start_last(nursery)
        hour, finish = 0, run.end + scenario.run.drain
        while (now := trio.current_time()) < finish:  # an hour at a time, for the progress line
            await trio.sleep_until(min(now + 3600.0, finish))
            hour += 1
            if progress is not None:
                sent = run.result.sent
                got = sum(key in run.result.received for key in sent)
                progress(f"seed {seed}: hour {hour}, {got}/{len(sent)} delivered")
        await run.heal_checked.wait()
        await run.collect()
        nursery.cancel_scope.cancel()
    return run.result


def run(
    scenario: Scenario,
    seed: int,
    progress: Progress | None = None,
    wrappers: Mapping[str, SimWrapper] | None = None,
) -> SeedResult:
    """:func:`run_seed` in a fresh trio run: autojump clock, seeded scheduler, temp homes.

    A scenario with a ``flood`` runs twice: first ``calm``, for the baseline
    its latencies are held to (``SeedResult.baseline_latencies``). One with a
    ``traffic.volume`` then runs the replay model (:mod:`p2pmsg.sim.replays`), and
    one with a ``traffic.bridge_days`` the bridge hunt (:mod:`p2pmsg.sim.hunt`)."""
    flood = any(rule.action == "flood" for rule in scenario.censor)
    baseline = _run_once(scenario, seed, progress, wrappers, calm=True) if flood else None
    result = _run_once(scenario, seed, progress, wrappers)
    if baseline is not None:
        result.baseline_latencies = baseline.latencies(baseline.flooded)
    if volume := scenario.traffic.volume:
        if progress is not None:
            progress(f"seed {seed}: {volume:,} messages through the replay model")
        result.volume = asdict(replays.measure(replays.Params.of(scenario, seed)))
    if days := scenario.traffic.bridge_days:
        if progress is not None:
            progress(f"seed {seed}: {days} days of the bridge hunt")
        result.hunt = asdict(hunt.measure(hunt.Params.of(scenario, seed)))
    return result


def _run_once(
    scenario: Scenario,
    seed: int,
    progress: Progress | None,
    wrappers: Mapping[str, SimWrapper] | None,
    *,
    calm: bool = False,
) -> SeedResult:
    # The homes on a RAM disk when there is one: simulated time does not pass
    # while SQLite syncs, so a disk's fsyncs would cost only wall time.
    with replays.scratch_dir("p2pmsg-sim-") as tmp, seeded_scheduler(seed):
        clock = trio.testing.MockClock(autojump_threshold=0)
        go = partial(run_seed, calm=calm)
        return trio.run(go, scenario, seed, Path(tmp), progress, wrappers, clock=clock)
