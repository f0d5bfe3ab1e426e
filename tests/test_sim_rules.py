"""The scenario censor's rules (p2pmsg.sim.rules) on real simulated streams."""

from __future__ import annotations

import random
import struct

import pytest
import trio
from trio.testing import MockClock

from p2pmsg.sim import detectors, rules
from p2pmsg.sim.censor import Censor, FlowView, MatchPayload, ResidualBlock, Rule
from p2pmsg.sim.control import client_hello, dns_query
from p2pmsg.sim.net import DROP, RESET, Packet, SimNetwork, SimStream
from p2pmsg.sim.scenario import loads

HOSTS = {  # name: (country, isp)
    "home": ("IR", "isp0"),
    "neighbour": ("IR", "isp0"),
    "other": ("IR", "isp1"),
    "abroad": ("DE", "de"),
}


def network(*rule: Rule) -> tuple[SimNetwork, Censor]:
    net = SimNetwork()
    for i, (name, (country, isp)) in enumerate(HOSTS.items()):
        net.add_host(name, ip=f"10.0.0.{i + 1}", country=country, isp=isp)
    censor = Censor(list(rule))
    net.policy = censor
    return net, censor


async def pair(net: SimNetwork, src: str, dst: str, port: int) -> tuple[SimStream, SimStream]:
    listener = await net.listen(dst, port)
    client = await net.connect(src, dst, port)
    server = await listener.accept()
    await listener.aclose()
    return client, server


async def passes(net: SimNetwork, src: str, dst: str, port: int, data: bytes) -> bool:
    """Whether ``data`` sent first on a new flow arrives (within a minute)."""
    with trio.move_on_after(60):
        try:
            client, server = await pair(net, src, dst, port)
            await client.send(data)
            return await server.receive() == data
        except (OSError, trio.BrokenResourceError):
            return False
    return False


def packet(src: str, dst: str, direction: str = "c2s") -> Packet:
    return Packet(src, 5000, dst, 80, 1, direction, b"x")  # type: ignore[arg-type]


def test_scopes_country_border_and_wan() -> None:
    net, _ = network()
    host = net.host
    assert rules.in_scope(host, "IR", "country", packet("home", "other"))
    assert rules.in_scope(host, "IR", "country", packet("abroad", "home", "s2c"))
    assert not rules.in_scope(host, "IR", "border", packet("home", "other"))
    assert rules.in_scope(host, "IR", "border", packet("home", "abroad"))
    assert not rules.in_scope(host, "IR", "wan", packet("home", "neighbour"))
    assert rules.in_scope(host, "IR", "wan", packet("home", "other"))
    assert not rules.in_scope(host, "DE", "country", packet("home", "other"))


async def test_a_scoped_rule_acts_on_its_scope_and_isp_only(autojump_clock: MockClock) -> None:
    net, censor = network()
    censor.rules.append(rules.Scoped(rules.DropAll(), net.host, "IR", "wan", isp="isp0"))
    assert await passes(net, "home", "neighbour", 1, b"lan")
    assert not await passes(net, "home", "other", 2, b"wan")
    assert await passes(net, "other", "abroad", 3, b"another ISP's client")


async def test_chance_draws_once_per_flow(autojump_clock: MockClock) -> None:
    net, _ = network(rules.Chance(rules.DropAll(), 0.5, random.Random(7)))
    spared = 0
    for port in range(1, 41):
        with trio.move_on_after(60):
            client, server = await pair(net, "home", "other", port)
            for i in range(20):  # a spared flow stays spared: it is drawn once
                await client.send(b"packet %d" % i)
                assert await server.receive() == b"packet %d" % i
            spared += 1
    assert 5 < spared < 35


async def test_a_border_drop_starts_per_isp_and_spares_the_national_network(
    autojump_clock: MockClock,
) -> None:
    now = trio.current_time()
    net, censor = network()
    censor.rules.append(rules.BorderDrop(net.host, "IR", {"isp0": now, "isp1": now + 3600}))
    assert not await passes(net, "home", "abroad", 1, b"out")
    assert not await passes(net, "abroad", "neighbour", 2, b"in")
    assert await passes(net, "other", "abroad", 3, b"isp1 is not yet cut")
    assert await passes(net, "home", "other", 4, b"national")
    await trio.sleep_until(now + 3600)
    assert not await passes(net, "other", "abroad", 5, b"now it is")


async def test_the_learning_censor_blocks_a_popular_shape_but_never_the_web(
    autojump_clock: MockClock,
) -> None:
    learned: list[float] = []
    learner = rules.LearnFingerprint(
        min_clients=2, on_learn=lambda: learned.append(trio.current_time())
    )
    net, _ = network(learner)
    raw = bytes(range(40))
    assert await passes(net, "home", "abroad", 1, raw)
    assert await passes(net, "home", "abroad", 2, raw)  # one client, however often
    assert not await passes(net, "neighbour", "abroad", 3, raw)  # the second: learned
    assert not await passes(net, "other", "abroad", 4, bytes(40))  # same length, same shape
    assert await passes(net, "other", "abroad", 5, bytes(41))
    web = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    for port, client in enumerate(["home", "neighbour", "other"], start=6):
        assert await passes(net, client, "abroad", port, web)
    assert learner.learned == {40}
    assert len(learned) == 1  # the lab marks it as a censor event (S12's stable network)


async def test_a_learned_shape_kills_the_flows_that_began_before_it_was_learned(
    autojump_clock: MockClock,
) -> None:
    learner = rules.LearnFingerprint(min_clients=2)
    net, _ = network(learner)
    raw = bytes(range(40))
    client, server = await pair(net, "home", "abroad", 1)
    await client.send(raw)
    assert await server.receive() == raw
    await server.send(b"welcome")  # the flow lives on: one client is not enough
    assert await client.receive() == b"welcome"
    assert not await passes(net, "neighbour", "abroad", 2, raw)  # the second: learned
    with trio.fail_after(60):
        await server.send(b"and again")  # the old flow's next packet: it is reset
        with pytest.raises(trio.BrokenResourceError):
            await client.receive()


async def test_dns_answers_for_listed_names_are_forged(autojump_clock: MockClock) -> None:
    injector = rules.InjectDns(("messenger.example",))
    net, _ = network(injector)

    async def ask(name: str, port: int) -> bytes:
        client, server = await pair(net, "home", "abroad", rules.DNS_PORT + port)
        await client.send(dns_query(name))
        assert detectors.dns_query_name(await server.receive()) == name
        await server.send(b"A 192.0.2.1")
        return await client.receive()

    assert await ask("s0.messenger.example", 0) == b"A " + rules.FORGED_ANSWER.encode()
    assert await ask("messenger.example.org", 1) == b"A 192.0.2.1"  # another port: not DNS
    assert await ask("news.example", 0) == b"A 192.0.2.1"
    assert injector.forged == 1


async def test_dpi_condemns_what_it_matches_and_leaves_a_residual_block(
    autojump_clock: MockClock,
) -> None:
    residual = ResidualBlock(60.0)
    dpi = MatchPayload(rules.payload_match("not_allowlisted"), DROP, residual)
    net, _ = network(residual, dpi)
    assert await passes(net, "home", "abroad", 443, b"GET /chat HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not await passes(net, "home", "abroad", 8443, b"GET / HTTP/1.1\r\n\r\n")  # port
    assert not await passes(net, "home", "abroad", 443, bytes(range(64)))
    with pytest.raises(ConnectionRefusedError):  # the 3-tuple is blocked for a minute
        await net.connect("home", "abroad", 443)
    await trio.sleep(61)
    assert await passes(net, "home", "abroad", 443, client_hello())
    assert dpi.matched >= 2


async def test_dpi_on_a_server_name_resets_only_that_name(autojump_clock: MockClock) -> None:
    dpi = MatchPayload(rules.payload_match("sni", ("messenger.example",)), RESET)
    net, _ = network(dpi)
    assert not await passes(net, "home", "abroad", 443, client_hello("chat.messenger.example"))
    assert await passes(net, "home", "abroad", 444, client_hello("news.example"))
    assert await passes(net, "home", "abroad", 445, bytes(range(64)))


async def test_policing_holds_a_flow_to_its_rate(autojump_clock: MockClock) -> None:
    net, _ = network(rules.Policing(rate=1000.0))
    client, server = await pair(net, "home", "abroad", 80)
    start = trio.current_time()
    for _ in range(10):
        await client.send(bytes(500))
    for _ in range(10):
        await server.receive()
    assert trio.current_time() - start >= 4.5  # 5,000 bytes at 1,000 bytes per second


class Draws(random.Random):
    def __init__(self, *draws: float) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def test_each_loss_costs_a_timeout_that_doubles() -> None:
    assert rules.retransmissions(Draws(0.5), 0.3, 0.25) == 0.0
    twice = rules.retransmissions(Draws(0.1, 0.2, 0.9), 0.3, 0.25)
    assert twice == 1.0 + 2.0  # 4 x 250 ms, then doubled
    assert rules.retransmissions(Draws(0.1, 0.9), 0.3, 0.0) == rules.RTO_MIN


async def test_a_degraded_path_is_slower_loses_packets_and_keeps_order(
    autojump_clock: MockClock,
) -> None:
    net, _ = network(rules.Degrade(latency=0.5, loss=0.3, rng=random.Random(7)))
    client, server = await pair(net, "home", "other", 80)
    start = trio.current_time()
    for i in range(50):
        await client.send(bytes([i]))
    got = [(await server.receive())[0] for _ in range(50)]
    assert got == list(range(50))
    # each packet takes 0.5 s; with 30% lost, some took a 2 s timeout or more
    assert trio.current_time() - start >= 0.5 + 2.0


async def test_the_prober_notes_each_suspect_server_once_and_never_itself(
    autojump_clock: MockClock,
) -> None:
    probe = rules.Probe(prober="other")
    net, _ = network(probe)
    noise = random.Random(3).randbytes(64)
    for _ in range(2):
        assert await passes(net, "home", "abroad", 1, noise)
    assert await passes(net, "other", "abroad", 9, noise)  # the prober's own flow
    assert await passes(net, "home", "abroad", 3, b"GET / HTTP/1.1\r\n\r\n")  # not suspect
    assert probe.next_suspect() == ("abroad", 1, noise)
    assert probe.next_suspect() is None
    replay, changed, random_bytes = rules.probes(noise, random.Random(1))
    assert replay == noise and changed != noise and len(random_bytes) == len(noise)


def test_the_parsers_name_what_a_client_asks_for() -> None:
    assert detectors.client_hello_sni(client_hello("Chat.Messenger.Example")) == (
        "chat.messenger.example"
    )
    assert detectors.client_hello_sni(b"GET / HTTP/1.1\r\n\r\n") is None
    assert detectors.dns_query_name(dns_query("s1.messenger.example")) == "s1.messenger.example"
    message = struct.pack(">HH4H", 1, 0x8180, 1, 1, 0, 0) + b"\x01a\x00\x00\x01\x00\x01"
    assert detectors.dns_query_name(struct.pack(">H", len(message)) + message) is None  # answer


def test_a_scenario_timeline_compresses_but_physics_does_not() -> None:
    from p2pmsg.sim.lab import resize

    s = loads(
        'id = "X"\ntitle = "t"\n[run]\nduration = "6h"\n[traffic]\nevery = "30m"\n'
        '[[censor]]\naction = "reset_every"\nat = "1h"\nuntil = "3h"\nlifetime = "20s"\n'
        '[pass]\nwithin = "30s"\n'
    )
    small = resize(s, nodes=10, duration=360.0)
    rule = small.censor[0]
    assert (small.run.duration, small.topology.users) == (360.0, 10)
    assert (rule.at, rule.until, rule.lifetime) == (60.0, 180.0, 20.0)
    assert small.traffic.every == 30.0
    assert small.passes.within == 30.0


def test_the_replay_models_volume_shrinks_with_the_run_and_never_grows() -> None:
    from p2pmsg.sim.lab import resize

    s = loads(
        'id = "X"\ntitle = "t"\n[run]\nduration = "1h"\n[topology]\nusers = 30\n'
        "[traffic]\nvolume = 90_000\n"
    )
    assert resize(s, nodes=10, duration=None).traffic.volume == 30_000
    assert resize(s, nodes=10, duration=360.0).traffic.volume == 3_000  # a tenth of the hour
    assert resize(s, nodes=1000, duration=7200.0).traffic.volume == 90_000
    assert resize(loads('id = "X"\ntitle = "t"\n'), nodes=10, duration=60.0).traffic.volume == 0


def test_every_rule_that_remembers_flows_forgets_the_oldest_past_its_bound() -> None:
    """Bounded memory: each keeps at most its max_* entries, the oldest dropped."""

    def flow(client: str, first: bytes) -> FlowView:
        return FlowView(0.0, (client, "abroad", 443), first=[first], client_packets=1)

    def data(n: int, port: int = 443) -> Packet:
        return Packet("home", 5000 + n, "abroad", port, n, "c2s", b"x" * 10)

    learner = rules.LearnFingerprint(min_clients=5, max_shapes=2)
    for length in (10, 11, 12):
        learner.judge(data(length), flow("home", bytes(length)), 0.0)
    assert list(learner.seen) == [11, 12]

    policing = rules.Policing(rate=1.0, max_flows=2)
    for n in range(3):
        policing.judge(data(n), flow("home", b"x"), 0.0)
    assert len(policing._free_at) == 2 and (0, "c2s") not in policing._free_at

    injector = rules.InjectDns(("messenger.example",), max_flows=2)
    for n in range(3):
        query = Packet(
            "home", 5000, "abroad", rules.DNS_PORT, n, "c2s", dns_query("a.messenger.example")
        )
        injector.judge(query, flow("home", query.data), 0.0)
    assert list(injector._poisoned) == [1, 2]

    probe = rules.Probe(prober="prober", max_suspects=2)
    for n in range(3):
        probe.judge(
            data(n, port=1000 + n),
            FlowView(0.0, ("home", f"s{n}", 1), first=[bytes(40)], client_packets=1),
            0.0,
        )
    assert len(probe.suspects) == 2
