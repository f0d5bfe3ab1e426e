"""Sphinx packets: round trips, tamper detection, unlinkability, SURBs, known answers.

Routes are drawn from six fixed nodes; every random byte the core asks for
comes from the deterministic :class:`Drbg` of the vector generator, seeded
by hypothesis, so a failure reproduces exactly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmsg.errors import RemoteProtocolError
from p2pmsg.onion import lioness
from p2pmsg.onion import sphinx as sx
from p2pmsg.onion.replay import ReplayTags

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_sphinx_vectors", VECTOR_DIR / "make_sphinx_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
Drbg = GEN.Drbg
KEYS, ROUTE = GEN.make_route(b"test nodes", sx.MAX_HOPS)

hop_counts = st.integers(min_value=1, max_value=sx.MAX_HOPS)
seeds = st.binary(min_size=1, max_size=8)
messages = st.binary(max_size=sx.MAX_MESSAGE)
EXAMPLES = settings(max_examples=25, deadline=None)


def walk(packet: bytes, hops: int) -> list[sx.Peeled]:
    """Peel through the first ``hops`` nodes, checking sizes and next hops as we go."""
    out: list[sx.Peeled] = []
    for i in range(hops):
        assert len(packet) == sx.PACKET_BYTES
        peeled = sx.peel(KEYS[i], packet)
        assert len(peeled.replay_tag) == sx.REPLAY_TAG_BYTES
        out.append(peeled)
        if isinstance(peeled.result, sx.Forward):
            assert peeled.result.next_hop == ROUTE[i + 1].node_id
            packet = peeled.result.packet
    return out


def forward_packets(packet: bytes, upto: int) -> list[bytes]:
    """The packet as it arrives at each of the first ``upto`` hops."""
    packets = [packet]
    for i in range(upto):
        result = sx.peel(KEYS[i], packets[-1]).result
        assert isinstance(result, sx.Forward)
        packets.append(result.packet)
    return packets


def flip(data: bytes, position: int, mask: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= mask
    return bytes(changed)


def test_geometry() -> None:
    assert sx.SLOT_BYTES == 1 + sx.ID_BYTES + sx.SURB_ID_BYTES + 16 == 65
    assert sx.HEADER_BYTES == 32 + sx.MAX_HOPS * sx.SLOT_BYTES + 16 == 438
    assert sx.PACKET_BYTES == sx.HEADER_BYTES + sx.PAYLOAD_BYTES == 2486
    assert sx.MAX_MESSAGE == sx.PAYLOAD_BYTES - 16 - 2 == 2030
    assert sx.SURB_BYTES == 32 + sx.HEADER_BYTES + 32 == 502
    # a ~1.5 KB end-to-end envelope and one SURB fit in one message
    assert sx.MAX_MESSAGE - sx.SURB_BYTES >= 1500


@EXAMPLES
@given(hops=hop_counts, message=messages, seed=seeds, deposit=st.booleans())
def test_forward_round_trip_and_each_hop_learns_only_its_next_hop(
    hops: int, message: bytes, seed: bytes, deposit: bool
) -> None:
    first_hop, packet = sx.create_packet(ROUTE[:hops], message, Drbg(seed), deposit=deposit)
    assert first_hop == ROUTE[0].node_id
    assert not any(h.node_id in packet for h in ROUTE)
    peeled = walk(packet, hops)
    for i, step in enumerate(peeled[:-1]):
        assert isinstance(step.result, sx.Forward)
        # only the hop before the destination may leave it in a mailbox
        expected = sx.Command.EXIT if deposit and i == hops - 2 else sx.Command.RELAY
        assert step.result.command is expected
        assert len(step.result.packet) == sx.PACKET_BYTES
        # what hop i sends on names no later node in clear, not even the next one
        assert not any(h.node_id in step.result.packet for h in ROUTE[i + 1 :])
    assert peeled[-1].result == sx.Deliver(message, None)
    assert len({p.replay_tag for p in peeled}) == hops


@EXAMPLES
@given(
    hops=hop_counts,
    message=messages,
    seed=seeds,
    surb_id=st.binary(min_size=16, max_size=16),
    deposit=st.booleans(),
)
def test_reply_round_trip(
    hops: int, message: bytes, seed: bytes, surb_id: bytes, deposit: bool
) -> None:
    surb, secret = sx.create_surb(ROUTE[:hops], surb_id, Drbg(seed), deposit=deposit)
    wire = sx.encode_surb(surb)
    assert len(wire) == sx.SURB_BYTES
    first_hop, packet = sx.use_surb(sx.decode_surb(wire), message)
    assert first_hop == ROUTE[0].node_id
    assert len(packet) == sx.PACKET_BYTES
    peeled = walk(packet, hops)
    commands = [p.result.command for p in peeled[:-1] if isinstance(p.result, sx.Forward)]
    assert commands == [sx.Command.RELAY] * (hops - 2) + [
        sx.Command.EXIT if deposit else sx.Command.RELAY
    ] * (hops > 1)
    delivered = peeled[-1].result
    assert isinstance(delivered, sx.Deliver)
    assert delivered.surb_id == surb_id
    assert len(delivered.message) == sx.PAYLOAD_BYTES
    stored = sx.SurbSecret.from_bytes(secret.to_bytes())
    assert stored == secret
    assert sx.open_reply(stored, delivered.message) == message


@EXAMPLES
@given(
    hops=hop_counts,
    seed=seeds,
    at=st.integers(min_value=0),
    position=st.integers(min_value=0, max_value=sx.HEADER_BYTES - 1),
    mask=st.integers(min_value=1, max_value=255),
    reply=st.booleans(),
)
def test_a_flipped_header_byte_fails_the_very_next_mac(
    *, hops: int, seed: bytes, at: int, position: int, mask: int, reply: bool
) -> None:
    if reply:
        surb, _ = sx.create_surb(ROUTE[:hops], bytes(16), Drbg(seed))
        _, packet = sx.use_surb(surb, b"reply")
    else:
        _, packet = sx.create_packet(ROUTE[:hops], b"hello", Drbg(seed))
    at %= hops
    arriving = forward_packets(packet, at)[-1]
    with pytest.raises(sx.InvalidPacket) as info:
        sx.peel(KEYS[at], flip(arriving, position, mask))
    assert info.value.reason is sx.InvalidReason.BAD_MAC


@EXAMPLES
@given(
    hops=hop_counts,
    seed=seeds,
    at=st.integers(min_value=0),
    position=st.integers(min_value=sx.HEADER_BYTES, max_value=sx.PACKET_BYTES - 1),
    mask=st.integers(min_value=1, max_value=255),
)
def test_a_flipped_payload_byte_is_detected_at_the_destination(
    hops: int, seed: bytes, at: int, position: int, mask: int
) -> None:
    _, packet = sx.create_packet(ROUTE[:hops], b"do not tag me", Drbg(seed))
    at %= hops
    packets = forward_packets(packet, at)
    tampered = flip(packets[-1], position, mask)
    for i in range(at, hops - 1):  # relays cannot see the change: there is no payload MAC
        result = sx.peel(KEYS[i], tampered).result
        assert isinstance(result, sx.Forward)
        tampered = result.packet
    with pytest.raises(sx.InvalidPacket) as info:
        sx.peel(KEYS[hops - 1], tampered)
    assert info.value.reason is sx.InvalidReason.TAGGED_PAYLOAD


@EXAMPLES
@given(
    hops=hop_counts,
    seed=seeds,
    at=st.integers(min_value=0),
    position=st.integers(min_value=sx.HEADER_BYTES, max_value=sx.PACKET_BYTES - 1),
    mask=st.integers(min_value=1, max_value=255),
)
def test_a_flipped_reply_payload_byte_is_detected_by_open_reply(
    hops: int, seed: bytes, at: int, position: int, mask: int
) -> None:
    surb, secret = sx.create_surb(ROUTE[:hops], bytes(16), Drbg(seed))
    _, packet = sx.use_surb(surb, b"do not tag me")
    at %= hops
    tampered = flip(forward_packets(packet, at)[-1], position, mask)
    delivered = walk_from(tampered, at, hops)
    with pytest.raises(sx.InvalidPacket) as info:
        sx.open_reply(secret, delivered.message)
    assert info.value.reason is sx.InvalidReason.TAGGED_PAYLOAD


def walk_from(packet: bytes, start: int, hops: int) -> sx.Deliver:
    for i in range(start, hops):
        result = sx.peel(KEYS[i], packet).result
        if isinstance(result, sx.Deliver):
            return result
        packet = result.packet
    raise AssertionError("not delivered")


def test_forward_and_reply_packets_look_the_same_to_relays() -> None:
    _, forward = sx.create_packet(ROUTE[:3], b"forward", Drbg(b"f"))
    surb, _ = sx.create_surb(ROUTE[:3], bytes(16), Drbg(b"r"))
    _, reply = sx.use_surb(surb, b"reply")
    for i in range(2):
        one, other = sx.peel(KEYS[i], forward).result, sx.peel(KEYS[i], reply).result
        assert isinstance(one, sx.Forward) and isinstance(other, sx.Forward)
        assert (one.command, one.next_hop, len(one.packet)) == (
            other.command,
            other.next_hop,
            len(other.packet),
        )
        forward, reply = one.packet, other.packet


@pytest.mark.parametrize("hops", range(1, sx.MAX_HOPS + 1))
def test_a_wrong_private_key_is_refused(hops: int) -> None:
    _, packet = sx.create_packet(ROUTE[:hops], b"hi", Drbg(b"wrong key"))
    for key in (KEYS[-1] if hops == 1 else KEYS[1], bytes(32), b"\xff" * 32):
        with pytest.raises(sx.InvalidPacket) as info:
            sx.peel(key, packet)
        assert info.value.reason is sx.InvalidReason.BAD_MAC


def test_peel_with_opens_a_layer_with_the_first_key_whose_mac_verifies() -> None:
    _, packet = sx.create_packet(ROUTE[:2], b"which key", Drbg(b"peel with"))
    index, peeled = sx.peel_with([KEYS[2], KEYS[1], KEYS[0], KEYS[3]], packet)
    assert (index, peeled) == (2, sx.peel(KEYS[0], packet))
    with pytest.raises(sx.InvalidPacket) as info:
        sx.peel_with(KEYS[1:], packet)
    assert info.value.reason is sx.InvalidReason.BAD_MAC
    with pytest.raises(ValueError, match="no private key"):
        sx.peel_with([], packet)
    with pytest.raises(ValueError, match="private key"):
        sx.peel_with([KEYS[0], bytes(31)], packet)


def test_a_key_that_does_not_match_costs_one_x25519_and_two_blake2b(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the MAC key is derived before the MAC is checked."""
    _, packet = sx.create_packet(ROUTE[:2], b"not yours", Drbg(b"miss"))
    calls = {"x25519": 0, "blake2b": 0}
    x25519, blake2b = nacl.bindings.crypto_scalarmult, hashlib.blake2b

    def count_x25519(*args: Any) -> Any:
        calls["x25519"] += 1
        return x25519(*args)

    def count_blake2b(*args: Any, **kwargs: Any) -> Any:
        calls["blake2b"] += 1
        return blake2b(*args, **kwargs)

    monkeypatch.setattr(nacl.bindings, "crypto_scalarmult", count_x25519)
    monkeypatch.setattr(hashlib, "blake2b", count_blake2b)
    with pytest.raises(sx.InvalidPacket):
        sx.peel_with(KEYS[1:4], packet)
    assert calls == {"x25519": 3, "blake2b": 6}


def test_a_replayed_packet_or_reused_surb_repeats_its_replay_tag() -> None:
    cache = ReplayTags()
    _, packet = sx.create_packet(ROUTE[:2], b"once", Drbg(b"replay"))
    tag = sx.peel(KEYS[0], packet).replay_tag
    assert not cache.seen_or_add(0, tag)
    assert cache.seen_or_add(0, sx.peel(KEYS[0], packet).replay_tag)
    surb, _ = sx.create_surb(ROUTE[:2], bytes(16), Drbg(b"surb"))
    first = sx.peel(KEYS[0], sx.use_surb(surb, b"one")[1]).replay_tag
    second = sx.peel(KEYS[0], sx.use_surb(surb, b"two")[1]).replay_tag
    assert first == second  # single use: a second reply is refused as a replay
    assert not cache.seen_or_add(0, first)
    assert cache.seen_or_add(0, second)


@pytest.mark.parametrize("size", [0, 1, sx.HEADER_BYTES, sx.PACKET_BYTES - 1, sx.PACKET_BYTES + 1])
def test_wrong_sizes_are_refused(size: int) -> None:
    with pytest.raises(sx.InvalidPacket) as info:
        sx.peel(KEYS[0], bytes(size))
    assert info.value.reason is sx.InvalidReason.WRONG_SIZE
    assert isinstance(info.value, RemoteProtocolError)


def test_a_low_order_alpha_is_refused() -> None:
    with pytest.raises(sx.InvalidPacket) as info:
        sx.peel(KEYS[0], bytes(sx.PACKET_BYTES))
    assert info.value.reason is sx.InvalidReason.BAD_KEY


@pytest.mark.parametrize(
    "slot",
    [
        bytes([0]),
        bytes([5]),
        bytes([255]),
        bytes([1]) + bytes(32) + b"\x01",
        bytes([2]) + bytes(40) + b"\x01",
        bytes([3]) + b"\x01",
        bytes([3]) + bytes(32) + b"\x01",
        bytes([4]) + bytes(63) + b"\x01",
    ],
    ids=[
        "unknown 0",
        "unknown 5",
        "unknown 255",
        "relay with a surb id",
        "exit with a surb id",
        "deliver naming a node",
        "forward deliver with a surb id",
        "reply deliver with a mac",
    ],
)
def test_malformed_slots_are_refused(slot: bytes) -> None:
    slot = slot[: sx.SLOT_BYTES].ljust(sx.SLOT_BYTES, b"\x00")
    with pytest.raises(sx.InvalidPacket) as info:
        sx._parse_slot(slot)
    assert info.value.reason is sx.InvalidReason.BAD_COMMAND


def test_a_length_beyond_the_payload_is_refused() -> None:
    header, (key,) = sx._create_header(ROUTE[:1], None, Drbg(b"length"), deposit=True)
    plain = bytes(16) + b"\xff\xff" + bytes(sx.PAYLOAD_BYTES - 18)
    with pytest.raises(sx.InvalidPacket) as info:
        sx.peel(KEYS[0], header + lioness.encrypt(key, plain))
    assert info.value.reason is sx.InvalidReason.BAD_LENGTH


def test_local_misuse_is_a_value_error() -> None:
    rng = Drbg(b"misuse")
    with pytest.raises(ValueError, match="route"):
        sx.create_packet([], b"", rng)
    with pytest.raises(ValueError, match="route"):
        sx.create_packet([*ROUTE, ROUTE[0]], b"", rng)
    with pytest.raises(ValueError, match="message"):
        sx.create_packet(ROUTE[:1], bytes(sx.MAX_MESSAGE + 1), rng)
    with pytest.raises(ValueError, match="SURB id"):
        sx.create_surb(ROUTE[:1], bytes(15), rng)
    surb, _ = sx.create_surb(ROUTE[:1], bytes(16), rng)
    with pytest.raises(ValueError, match="message"):
        sx.use_surb(surb, bytes(sx.MAX_MESSAGE + 1))
    with pytest.raises(ValueError, match="32 bytes"):
        sx.Hop(bytes(31), bytes(32))
    with pytest.raises(ValueError, match="private key"):
        sx.peel(bytes(31), bytes(sx.PACKET_BYTES))
    with pytest.raises(ValueError, match="private key"):
        sx.public_key(bytes(33))
    for bad in (b"", bytes(16), bytes(16 + 32), bytes(16 + 33), bytes(16 + 8 * 32)):
        with pytest.raises(ValueError, match="SURB"):
            sx.SurbSecret.from_bytes(bad)


def test_surb_decoding_and_reply_sizes() -> None:
    for size in (0, sx.SURB_BYTES - 1, sx.SURB_BYTES + 1):
        with pytest.raises(sx.InvalidSurb):
            sx.decode_surb(bytes(size))
    assert issubclass(sx.InvalidSurb, RemoteProtocolError)
    _, secret = sx.create_surb(ROUTE[:2], bytes(16), Drbg(b"sizes"))
    with pytest.raises(sx.InvalidPacket) as info:
        sx.open_reply(secret, bytes(sx.PAYLOAD_BYTES - 1))
    assert info.value.reason is sx.InvalidReason.WRONG_SIZE


def test_reprs_hide_keys_and_messages() -> None:
    surb, secret = sx.create_surb(ROUTE[:2], bytes(16), Drbg(b"repr"))
    assert surb.key.hex() not in repr(surb) and surb.key.hex() not in str(surb)
    assert all(k.hex() not in repr(secret) for k in secret.keys)
    assert "secret words" not in repr(sx.Deliver(b"secret words", None))


def test_known_answers() -> None:
    vectors = json.loads((VECTOR_DIR / "sphinx.json").read_text())
    assert vectors["geometry"]["PACKET_BYTES"] == sx.PACKET_BYTES
    for case in vectors["forward"]:
        keys, route = _route_of(case)
        seed, message = bytes.fromhex(case["seed"]), bytes.fromhex(case["message"])
        first_hop, packet = sx.create_packet(route, message, Drbg(seed))
        assert (first_hop.hex(), packet.hex()) == (case["first_hop"], case["packet"]), case["name"]
        steps, delivered = GEN.walk(keys, packet)
        assert steps == case["hops"], case["name"]
        assert delivered == sx.Deliver(message, None)
    for case in vectors["surb"]:
        keys, route = _route_of(case)
        seed, surb_id = bytes.fromhex(case["seed"]), bytes.fromhex(case["surb_id"])
        surb, secret = sx.create_surb(route, surb_id, Drbg(seed))
        assert sx.encode_surb(surb).hex() == case["surb"], case["name"]
        assert secret.to_bytes().hex() == case["secret"], case["name"]
        message = bytes.fromhex(case["message"])
        first_hop, packet = sx.use_surb(sx.decode_surb(bytes.fromhex(case["surb"])), message)
        assert (first_hop.hex(), packet.hex()) == (case["first_hop"], case["packet"]), case["name"]
        steps, delivered = GEN.walk(keys, packet)
        assert steps == case["hops"], case["name"]
        assert GEN.digest(delivered.message) == case["reply_payload_blake2b"]
        assert sx.open_reply(secret, delivered.message) == message


def _route_of(case: dict[str, Any]) -> tuple[list[bytes], list[sx.Hop]]:
    keys = [bytes.fromhex(k) for k in case["private_keys"]]
    ids = [bytes.fromhex(i) for i in case["node_ids"]]
    return keys, [sx.Hop(i, sx.public_key(k)) for i, k in zip(ids, keys, strict=True)]
