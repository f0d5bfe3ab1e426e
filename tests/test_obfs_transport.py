"""The obfs transport: conformance, its first packet against S5, probes, the cores.

Conformance runs on 127.0.0.1 port 0 and on the simulated network (obfs over
the ``sim`` transport under ``autojump_clock``). The 10,000 first packets for
the S5 detector come from the sans-IO core with seeded rngs; a few are also
captured on loopback and on the simulator, to show that the core's bytes are
what goes on the wire. Probes run on the simulator, so the server's silence
and its close time are exact in virtual seconds.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2pmsg.abc import Link
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import BadKey, LocalProtocolError, RemoteProtocolError, StoreError
from p2pmsg.keys import Identity, encode_key
from p2pmsg.link.replay import ReplayWindow, SavedReplay
from p2pmsg.link.secure import accept_secure, connect_secure
from p2pmsg.sim.detectors import Exemption, exemption, fully_encrypted
from p2pmsg.sim.net import SimNetwork
from p2pmsg.testing.conformance import CHECKS, Check, open_link_pair
from transports.obfs import (
    HANDSHAKE_TIMEOUT,
    KEY_FILE,
    ObfsHandshakeFailed,
    ObfsTransport,
    load_or_create_key,
    parse_obfs_endpoint,
)
from transports.obfs_core import (
    ALPHABET,
    MAX_FRAME_DATA,
    MAX_MESSAGE,
    MAX_UNITS,
    MIN_UNITS,
    NEED_DATA,
    REPLAY_WINDOW,
    ClientHandshake,
    Established,
    FrameType,
    Message,
    ObfsFramer,
    ObfsProtocolError,
    PeerClosed,
    Rejected,
    ServerHandshake,
    ServerKey,
)
from transports.sim import SimTransport

LOOPBACK = Endpoint.parse("obfs:127.0.0.1:0")
NOW = 1_700_000_000.0
SERVER = ServerKey(bytes(range(32)))
KEY = encode_key(SERVER.public)
WIRE_SEEDS = (0, 1, 9_999)


def rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def first_packet(seed: int, key: bytes = SERVER.public, now: float = NOW) -> bytes:
    """The client's first payload, as :meth:`ObfsTransport.dial` writes it."""
    return ClientHandshake(key, now=now, rng=rng(seed)).hello


@functools.cache
def established(seed: int = 0) -> tuple[Established, Established]:
    """Both ends of an in-memory handshake: (client, server)."""
    client = ClientHandshake(SERVER.public, now=NOW, rng=rng(seed))
    server = ServerHandshake(SERVER, ReplayWindow(REPLAY_WINDOW), now=NOW, rng=rng(~seed))
    answer = server.receive_data(client.hello)
    assert isinstance(answer, Established)
    done = client.receive_data(answer.response)
    assert isinstance(done, Established)
    return done, answer


def framers() -> tuple[ObfsFramer, ObfsFramer]:
    client, server = established()
    return ObfsFramer(client.keys, rng=rng(2)), ObfsFramer(server.keys, rng=rng(3))


def drain(framer: ObfsFramer, got: list[bytes] | None = None) -> list[bytes]:
    """Messages until the framer needs data or the peer closed (into ``got``)."""
    got = [] if got is None else got
    while isinstance(event := framer.next_event(), Message):
        got.append(event.data)
    return got


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_conformance_tcp(check: Check, tmp_path: Path) -> None:
    await check(ObfsTransport(state_dir=tmp_path), LOOPBACK)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_conformance_sim(
    check: Check, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = ObfsTransport(SimTransport(SimNetwork(), "a"), state_dir=tmp_path)
    await check(transport, Endpoint.parse("obfs:a:0"))


# --- endpoints and the key file --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"obfs:198.51.100.7:443;key={KEY}", True),
        (f"obfs:[2001:db8::7]:8443;key={KEY}", True),
        ("obfs:198.51.100.7:443", False),  # no key
        (f"obfs:198.51.100.7;key={KEY}", False),  # no port
        (f"obfs:127.0.0.1:0;key={KEY}", False),
        ("obfs:198.51.100.7:443;key=abc", False),
        (f"tcp:198.51.100.7:443;key={KEY}", False),
    ],
)
def test_can_dial(text: str, expected: bool, tmp_path: Path) -> None:
    assert ObfsTransport(state_dir=tmp_path).can_dial(Endpoint.parse(text)) is expected


async def _ignore(link: Link) -> None:
    pass


async def _serve_once(transport: ObfsTransport, endpoint: Endpoint = LOOPBACK) -> Endpoint:
    async with trio.open_nursery() as nursery:
        bound: Endpoint = await nursery.start(transport.serve, endpoint, _ignore)
        nursery.cancel_scope.cancel()
    return bound


async def test_serve_reports_its_key_and_keeps_arguments(tmp_path: Path) -> None:
    given_endpoint = Endpoint.parse(f"{LOOPBACK};k=v;key={KEY}")
    bound = await _serve_once(ObfsTransport(state_dir=tmp_path), given_endpoint)
    assert str(bound).startswith("obfs:127.0.0.1:")
    assert [name for name, _ in bound.args] == ["k", "key"]
    target = parse_obfs_endpoint(bound)
    assert target.port != 0
    assert target.key == load_or_create_key(tmp_path, rng=os.urandom).public != SERVER.public


async def test_the_key_file_is_owner_only_reused_and_checked(tmp_path: Path) -> None:
    state = tmp_path / "obfs"
    first = await _serve_once(ObfsTransport(state_dir=state))
    path = state / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    path.chmod(0o644)
    assert (await _serve_once(ObfsTransport(state_dir=state))).arg("key") == first.arg("key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = await _serve_once(ObfsTransport(state_dir=tmp_path / "other"))
    assert other.arg("key") != first.arg("key")
    key = load_or_create_key(state, rng=os.urandom)
    assert key.secret.hex()[:8] not in repr(key)
    path.write_bytes(b"not a key")
    with pytest.raises(BadKey):
        await ObfsTransport(state_dir=state).serve(LOOPBACK, _ignore)


# --- the first packet against the GFW's detector (S5) -------------------------------------


def test_first_packets_are_exempt_by_construction() -> None:
    packets = [first_packet(seed) for seed in range(10_000)]
    assert sum(fully_encrypted(packet) for packet in packets) == 0
    assert {exemption(packet) for packet in packets} == {Exemption.POPCOUNT}
    # Every byte is printable with at most 3 bits set, so every prefix meets
    # Ex1 (popcount), Ex2 (6 printable), Ex3 (> 50% printable), Ex4 (run > 20).
    assert all(0x20 <= byte <= 0x7E and byte.bit_count() <= 3 for byte in ALPHABET)
    assert set(b"".join(packets)) == set(ALPHABET)
    assert len({len(packet) for packet in packets}) == MAX_UNITS - MIN_UNITS + 1


def test_no_byte_position_is_constant() -> None:
    packets = [first_packet(seed) for seed in range(1_000)]
    shortest = min(map(len, packets))
    distinct = [len({packet[i] for packet in packets}) for i in range(shortest)]
    assert min(distinct) == len(ALPHABET)  # 32 values at each of the first 160 positions


@pytest.mark.parametrize("seed", WIRE_SEEDS)
async def test_tcp_carries_the_cores_hello(seed: int, tmp_path: Path) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = ObfsTransport(state_dir=tmp_path, rng=rng(seed), wall_clock=lambda: NOW)

    async def dial() -> None:
        with pytest.raises(ObfsHandshakeFailed, match="closed"):
            await client.dial(Endpoint.parse(f"obfs:127.0.0.1:{port};key={KEY}"))

    expected, captured = first_packet(seed), bytearray()
    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(dial)
        async with await listener.accept() as stream:
            while len(captured) < len(expected) and (chunk := await stream.receive_some()):
                captured += chunk
    assert captured == expected
    assert not fully_encrypted(captured)


async def test_the_simulator_carries_the_cores_hello(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork(capture=100)
    server = ObfsTransport(SimTransport(net, "a"), state_dir=tmp_path, wall_clock=lambda: NOW)

    async def echo(link: Link) -> None:
        await link.send(await link.receive())

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, Endpoint.parse("obfs:a:443"), echo)
        for seed in WIRE_SEEDS:
            client = ObfsTransport(
                SimTransport(net, "b"),
                state_dir=tmp_path,
                rng=rng(seed),
                wall_clock=lambda: NOW,
            )
            link = await client.dial(bound)
            await link.send(b"ping")
            assert await link.receive() == b"ping"
            await link.aclose()
        nursery.cancel_scope.cancel()
    firsts: dict[int, bytes] = {}
    for packet in net.captured:
        if packet.kind == "data" and packet.direction == "c2s":
            firsts.setdefault(packet.flow, packet.data)
    key = parse_obfs_endpoint(bound).key
    assert key is not None
    assert list(firsts.values()) == [first_packet(seed, key) for seed in WIRE_SEEDS]
    assert not any(map(fully_encrypted, firsts.values()))


# --- probes (S8) -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _sim_server(
    tmp_path: Path, saved: SavedReplay | None = None
) -> AsyncIterator[tuple[SimNetwork, ServerKey, list[Link]]]:
    """An obfs server on sim host ``a`` port 443 (keeping its tags in ``saved``):
    the network, its key, the links it accepted."""
    net = SimNetwork()
    transport = ObfsTransport(SimTransport(net, "a"), state_dir=tmp_path, wall_clock=lambda: NOW)
    if saved is not None:
        transport.keep_replays(saved)
    accepted: list[Link] = []

    async def handler(link: Link) -> None:
        accepted.append(link)

    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve, Endpoint.parse("obfs:a:443"), handler)
        yield net, load_or_create_key(tmp_path, rng=os.urandom), accepted
        nursery.cancel_scope.cancel()


async def _answer(net: SimNetwork, payload: bytes) -> tuple[bytes, float]:
    """Send ``payload`` from host ``b``; everything the server says before it
    closes, and how many (virtual) seconds that took."""
    probe = await net.connect("b", "a", 443)
    start = trio.current_time()
    if payload:
        await probe.send(payload)
    answer = b""
    with contextlib.suppress(trio.EndOfChannel):
        while True:
            answer += await probe.receive()
    await probe.aclose()
    return answer, trio.current_time() - start


@pytest.mark.parametrize("probe", ["nothing", "noise", "letters", "wrong_key", "cut", "stale"])
async def test_a_probe_gets_silence_until_the_servers_deadline(
    probe: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with _sim_server(tmp_path) as (net, key, accepted):
        payload = {
            "nothing": b"",
            "noise": random.Random(1).randbytes(600),
            "letters": bytes(random.Random(2).choices(ALPHABET, k=600)),
            "wrong_key": first_packet(0),
            "cut": first_packet(0, key.public)[:-1],
            "stale": first_packet(0, key.public, now=NOW - 2 * REPLAY_WINDOW),
        }[probe]
        answer, seconds = await _answer(net, payload)
    delay, _ = key.close_policy
    assert (answer, accepted) == (b"", [])
    assert seconds == pytest.approx(HANDSHAKE_TIMEOUT + delay)


@pytest.mark.parametrize(("extra", "closes_at_once"), [(-1, False), (0, True)])
async def test_noise_past_the_byte_budget_is_closed_at_once(
    extra: int, closes_at_once: bool, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with _sim_server(tmp_path) as (net, key, _):
        delay, budget = key.close_policy
        answer, seconds = await _answer(net, random.Random(3).randbytes(budget + extra))
    assert answer == b""
    assert seconds == (0 if closes_at_once else pytest.approx(HANDSHAKE_TIMEOUT + delay))


async def test_a_replayed_hello_gets_no_answer(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with _sim_server(tmp_path) as (net, key, accepted):
        hello = first_packet(5, key.public)
        answer, seconds = await _answer(net, hello)
        assert answer and seconds == 0 and len(accepted) == 1
        replayed, seconds = await _answer(net, hello)
    assert (replayed, len(accepted)) == (b"", 1)
    assert seconds == pytest.approx(HANDSHAKE_TIMEOUT + key.close_policy[0])


class _Saved:
    """A node's saved window, as the transport sees it: commits are recorded, or fail."""

    def __init__(self, *, fails: bool) -> None:
        self.window = ReplayWindow(REPLAY_WINDOW, journal=True)
        self.fails = fails
        self.commits: list[int] = []

    async def commit(self, count: int) -> None:
        self.commits.append(count)
        if self.fails:
            raise StoreError("disk full")
        self.window.saved(len(self.window.unsaved()))


@pytest.mark.parametrize("fails", [False, True])
async def test_a_hello_is_answered_only_once_its_tag_is_saved(
    fails: bool, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    saved = _Saved(fails=fails)
    async with _sim_server(tmp_path, saved) as (net, key, accepted):
        answer, seconds = await _answer(net, first_packet(5, key.public))
    assert saved.commits == [1]
    assert len(saved.window) == 1  # the node's window holds the tag, widened
    assert len(saved.window.unsaved()) == fails
    if fails:  # the same silence as any refused hello
        assert (answer, accepted) == (b"", [])
        assert seconds == pytest.approx(HANDSHAKE_TIMEOUT + key.close_policy[0])
    else:
        assert answer and len(accepted) == 1


async def test_dialling_with_a_wrong_key_times_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with _sim_server(tmp_path) as (net, _, accepted):
        client = ObfsTransport(SimTransport(net, "b"), state_dir=tmp_path, wall_clock=lambda: NOW)
        with pytest.raises(TimeoutError):
            await client.dial(Endpoint.parse(f"obfs:a:443;key={KEY}"))
    assert accepted == []


# --- a real secure link over obfs ------------------------------------------------------------


async def test_secure_link_over_obfs(tmp_path: Path) -> None:
    alice, bob = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
    transport = ObfsTransport(state_dir=tmp_path)

    async def handler(link: Link) -> None:
        secure = await accept_secure(link, bob, ReplayWindow(120.0))
        await secure.send((await secure.receive())[::-1])

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(transport.serve, LOOPBACK, handler)
        client = await connect_secure(await transport.dial(bound), alice, bob.public)
        payload = os.urandom(60_000)
        await client.send(payload)
        assert await client.receive() == payload[::-1]
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_sending_above_the_limit_is_refused_locally(tmp_path: Path) -> None:
    async with open_link_pair(ObfsTransport(state_dir=tmp_path), LOOPBACK) as (client, server):
        with pytest.raises(ValueError, match="at most"):
            await client.send(bytes(MAX_MESSAGE + 1))
        await client.send(b"still usable")
        assert await server.receive() == b"still usable"


# --- the sans-IO core --------------------------------------------------------------------------


def test_handshake_byte_by_byte_then_frames_both_ways() -> None:
    client = ClientHandshake(SERVER.public, now=NOW, rng=rng(0))
    server = ServerHandshake(SERVER, ReplayWindow(REPLAY_WINDOW), now=NOW, rng=rng(~0))
    outcomes = [server.receive_data(bytes([byte])) for byte in client.hello]
    assert outcomes[:-1] == [NEED_DATA] * (len(client.hello) - 1)
    assert outcomes[-1] == established()[1]
    answers = [client.receive_data(bytes([byte])) for byte in established()[1].response]
    assert answers[:-1] == [NEED_DATA] * (len(answers) - 1)
    assert answers[-1] == established()[0]  # the framers' keys match: see FramerPair


def test_frames_right_behind_the_hello_are_trailing() -> None:
    sender, _ = framers()
    frames = sender.encode(b"early")
    server = ServerHandshake(SERVER, ReplayWindow(REPLAY_WINDOW), now=NOW, rng=rng(~0))
    answer = server.receive_data(first_packet(0) + frames)
    assert isinstance(answer, Established) and answer.trailing == frames
    assert drain(ObfsFramer(answer.keys, rng=rng(3), trailing=frames)) == [b"early"]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _swap_letter(hello: bytes, at: int) -> bytes:
    """``hello`` with the letter at ``at`` changed to another letter."""
    at %= len(hello)
    other = ALPHABET[(ALPHABET.index(hello[at]) + 1) % len(ALPHABET)]
    return hello[:at] + bytes([other]) + hello[at + 1 :]


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"\x16\x03\x01\x02\x00" + bytes(200), "not obfs letters"),
        (bytes(random.Random(0).choices(ALPHABET, k=400)), "the hello does not authenticate"),
        (first_packet(0, ServerKey(bytes(32)).public), "the hello does not authenticate"),
        (_swap_letter(first_packet(0), -1), "the padding does not authenticate"),
        (first_packet(0, now=NOW - REPLAY_WINDOW - 1), "stale"),
        (b"", "closed"),
    ],
    ids=["tls", "letters", "wrong_key", "padding", "stale", "closed"],
)
def test_server_core_refuses(wire: bytes, match: str) -> None:
    server = ServerHandshake(SERVER, ReplayWindow(REPLAY_WINDOW), now=NOW, rng=rng(1))
    outcome = server.receive_data(wire)
    assert isinstance(outcome, Rejected) and isinstance(outcome.error, RemoteProtocolError)
    assert match in str(outcome.error)
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")


def test_server_core_refuses_a_replay_only_once_authentic() -> None:
    replay = ReplayWindow(REPLAY_WINDOW)

    def outcome(wire: bytes) -> object:
        return ServerHandshake(SERVER, replay, now=NOW, rng=rng(1)).receive_data(wire)

    hello = first_packet(7)
    assert isinstance(outcome(_swap_letter(hello, -1)), Rejected)  # a forged body burns nothing
    assert isinstance(outcome(hello), Established)
    refused = outcome(hello)
    assert isinstance(refused, Rejected) and "replayed" in str(refused.error)


@pytest.mark.parametrize("answer", [b"", bytes(200), _flip(established()[1].response, 30)])
def test_client_core_refuses_a_bad_answer(answer: bytes) -> None:
    client = ClientHandshake(SERVER.public, now=NOW, rng=rng(0))
    with pytest.raises(ObfsProtocolError):
        client.receive_data(answer)


@settings(deadline=None, max_examples=60)
@given(
    messages=st.lists(st.binary(max_size=MAX_FRAME_DATA + 10), min_size=1, max_size=3),
    at=st.integers(min_value=0),
)
def test_deframer_refuses_a_flipped_byte(messages: list[bytes], at: int) -> None:
    sender, receiver = framers()
    wire = b"".join(sender.encode(message) for message in messages)
    receiver.receive_data(_flip(wire, at % len(wire)))
    got: list[bytes] = []
    with pytest.raises(ObfsProtocolError):  # every frame is there: never NeedData
        drain(receiver, got)
    assert got == messages[: len(got)]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda f: f.encode_frame(7, b""), "unknown frame type 7"),
        (lambda f: b"".join(f.encode_frame(1, bytes(MAX_FRAME_DATA)) for _ in range(9)), "larger"),
        (lambda f: f.encode_frame(FrameType.MORE, b"x"), "inside a message"),
        (lambda f: f.encode(b"cut")[:30], "inside a message"),
    ],
    ids=["type", "too_large", "eof_after_more", "eof_in_frame"],
)
def test_deframer_errors_are_sticky(make: object, match: str) -> None:
    sender, receiver = framers()
    assert callable(make)
    receiver.receive_data(make(sender))
    receiver.receive_eof()
    for _ in range(2):
        with pytest.raises(ObfsProtocolError, match=match):
            receiver.next_event()
    with pytest.raises(LocalProtocolError):
        sender.encode(bytes(MAX_MESSAGE + 1))


class FramerPair(RuleBasedStateMachine):
    """The de-framer's round trip: messages both ways, the byte streams split anywhere."""

    def __init__(self) -> None:
        super().__init__()
        client, server = framers()
        self.ends = {"up": (client, server), "down": (server, client)}
        self.wire = {"up": b"", "down": b""}
        self.sent: dict[str, list[bytes]] = {"up": [], "down": []}
        self.got: dict[str, list[bytes]] = {"up": [], "down": []}

    @rule(way=st.sampled_from(["up", "down"]), message=st.binary(max_size=MAX_FRAME_DATA + 9))
    def send(self, way: str, message: bytes) -> None:
        self.wire[way] += self.ends[way][0].encode(message)
        self.sent[way].append(message)

    @rule(way=st.sampled_from(["up", "down"]), size=st.integers(0, 3 * MAX_FRAME_DATA))
    def deliver(self, way: str, size: int) -> None:
        piece, self.wire[way] = self.wire[way][:size], self.wire[way][size:]
        self.ends[way][1].receive_data(piece)
        drain(self.ends[way][1], self.got[way])

    @invariant()
    def only_what_was_sent_in_order(self) -> None:
        for way, got in self.got.items():
            assert got == self.sent[way][: len(got)]

    def teardown(self) -> None:
        for way in self.ends:
            self.deliver(way, len(self.wire[way]))
            self.ends[way][1].receive_eof()
            assert self.got[way] == self.sent[way]
            assert self.ends[way][1].next_event() == PeerClosed()


TestFramerPair = FramerPair.TestCase
TestFramerPair.settings = settings(max_examples=40, stateful_step_count=20, deadline=None)
