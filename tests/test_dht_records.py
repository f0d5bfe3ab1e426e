"""Signed DHT records and the record store: codec, validation, quotas.

Both modules are pure, so every test is a plain function (and one hypothesis
state machine for the store): records in, records, results or exactly
:class:`InvalidRecord` out.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2pmsg.dht.peer import Peer
from p2pmsg.dht.record_store import (
    Ignored,
    RecordStore,
    Refusal,
    Replaced,
    Stored,
)
from p2pmsg.dht.records import (
    DAY,
    HEADER_BYTES,
    MAX_CLOCK_SKEW,
    MAX_ONION_KEYS,
    MAX_VALUE,
    PEER_MAX_TTL,
    PEER_REPLICAS,
    RULES,
    SIGNATURE_BYTES,
    InvalidReason,
    InvalidRecord,
    PeerInfo,
    Record,
    RecordType,
    decode,
    decode_peer_info,
    encode,
    encode_peer_info,
    make_peer_record,
    peer_from_record,
    peer_key,
    peer_keys,
    sign_record,
    validate,
    verify_signature,
)
from p2pmsg.endpoint import MAX_ENDPOINT_CHARS, Endpoint
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity, node_id_of

NOW = 1_700_000_000.0
ALICE = Identity(bytes(32))
BOB = Identity(bytes(range(32)))
INFO = PeerInfo(("tcp:192.0.2.1:4001",), frozenset({"relay"}))
PEER = RecordType.PEER
IDS = [Identity(bytes([i + 1]) * 32) for i in range(40)]


def peer(identity: Identity = ALICE, seq: int = 1, ttl: int = 3600) -> Record:
    return make_peer_record(identity, INFO, seq, int(NOW) + ttl)


def refused(reason: InvalidReason) -> pytest.RaisesExc[InvalidRecord]:
    return pytest.raises(InvalidRecord, match=f"^{reason.value}:")


# --- codec: known answer, round trips, tampering ------------------------------------------

KNOWN_ANSWER = bytes.fromhex(
    "01"  # version
    "01"  # type PEER
    "689dae2f77b048dcc08e14d73104ea14222b5be14cc31f34a16a1221f944c1e3"  # key = node id
    "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"  # publisher
    "0000000000000001"  # seq
    "000000006553ff10"  # expires = 1_700_003_600
    "001e"  # value length
    "0201" "0012" "7463703a3139322e302e322e313a34303031" "01" "05" "72656c6179" "00"  # value
    "f9fb8c1605b2a6c4c493890f1bc0f7dd01242ad58fbbdbd4531d7337010ee1c9"  # signature
    "e3b3ea4b375f78e4672d6dfa4dcd171f35a89adeaaee68368abc251e92c0580a"
)  # fmt: skip


def test_known_answer_encoding() -> None:
    record = make_peer_record(ALICE, INFO, 1, 1_700_003_600)
    assert record.key == ALICE.node_id and record.publisher == ALICE.public.key
    assert encode(record) == KNOWN_ANSWER
    assert decode(KNOWN_ANSWER) == record
    validate(record, NOW)


names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
printable = st.text(
    st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")),
    min_size=1,
    max_size=24,
)
endpoint_texts = st.builds(
    lambda n, a, args: str(Endpoint(n, a, tuple(args))),
    names,
    printable,
    st.lists(st.tuples(printable, printable), max_size=2),
)
onion_key_lists = st.lists(st.integers(0, 2**32 - 1), max_size=MAX_ONION_KEYS, unique=True).flatmap(
    lambda epochs: st.tuples(
        *(st.tuples(st.just(e), st.binary(min_size=32, max_size=32)) for e in sorted(epochs))
    )
)
peer_infos = st.builds(
    PeerInfo,
    st.lists(endpoint_texts, max_size=16, unique=True).map(tuple),
    st.frozensets(st.from_regex(r"[a-z0-9_-]{1,32}", fullmatch=True), max_size=16),
    onion_key_lists,
)
any_records = st.builds(
    Record,
    st.sampled_from(RecordType),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=MAX_VALUE),
    st.binary(min_size=64, max_size=64),
)


@given(any_records)
def test_round_trip_of_any_well_formed_record(record: Record) -> None:
    data = encode(record)
    assert len(data) == HEADER_BYTES + len(record.value) + SIGNATURE_BYTES
    assert decode(data) == record


@settings(max_examples=50, deadline=None)
@given(peer_infos, st.integers(0, 2**64 - 1), st.integers(1, PEER_MAX_TTL))
def test_round_trip_of_signed_peer_records(info: PeerInfo, seq: int, ttl: int) -> None:
    assert decode_peer_info(encode_peer_info(info)) == info
    record = make_peer_record(BOB, info, seq, int(NOW) + ttl)
    assert decode(encode(record)) == record
    validate(record, NOW)
    assert peer_from_record(record, "v4:192.0").endpoints == info.endpoints


def test_every_truncation_is_refused() -> None:
    data = encode(peer())
    for end in range(len(data)):
        with refused(InvalidReason.MALFORMED):
            decode(data[:end])


def test_every_single_byte_flip_is_refused() -> None:
    data = encode(peer())
    for pos in range(len(data)):
        for mask in range(1, 256):
            tampered = bytearray(data)
            tampered[pos] ^= mask
            with pytest.raises(InvalidRecord):
                validate(decode(bytes(tampered)), NOW)


GOOD = encode(peer())
LENGTH_4097 = GOOD[: HEADER_BYTES - 2] + b"\x10\x01"
MALFORMED = {
    "trailing": (GOOD + b"\0", "length does not match"),
    "version": (b"\x02" + GOOD[1:], "unknown version"),
    "type": (GOOD[:1] + b"\x00" + GOOD[2:], "unknown record type"),
    "oversize": (LENGTH_4097 + bytes(MAX_VALUE + 1 + SIGNATURE_BYTES), "longer than"),
    "value_length": (LENGTH_4097 + bytes(MAX_VALUE - 20), "value of 4097 bytes"),
}


@pytest.mark.parametrize(("data", "match"), MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_refusals(data: bytes, match: str) -> None:
    with pytest.raises(InvalidRecord, match=match) as info:
        decode(data)
    assert info.value.reason is InvalidReason.MALFORMED
    assert isinstance(info.value, RemoteProtocolError)


def test_record_construction_checks_sizes() -> None:
    good = peer()
    for change in (
        {"key": bytes(31)},
        {"publisher": bytes(33)},
        {"seq": -1},
        {"expires": 2**64},
        {"value": bytes(MAX_VALUE + 1)},
        {"signature": bytes(63)},
    ):
        fields = {**good.__dict__, **change}
        with pytest.raises(ValueError, match=r"bytes|integers"):
            Record(**fields)
    with pytest.raises(ValueError, match="at most"):
        sign_record(ALICE, PEER, ALICE.node_id, 1, int(NOW), bytes(MAX_VALUE + 1))


def test_repr_shows_no_value() -> None:
    assert "192.0.2.1" not in repr(peer())


# --- validation ---------------------------------------------------------------------------


def test_every_type_has_rules() -> None:
    assert set(RULES) == set(RecordType)
    assert RULES[PEER].max_ttl == PEER_MAX_TTL == 7 * DAY


@pytest.mark.parametrize("ttl", [0, -1, -DAY])
def test_expired_is_refused_without_grace(ttl: int) -> None:
    with refused(InvalidReason.EXPIRED):
        validate(peer(ttl=ttl), NOW)


def test_expiry_bound_tolerates_the_skew_and_no_more() -> None:
    validate(peer(ttl=PEER_MAX_TTL + MAX_CLOCK_SKEW), NOW)  # publisher a day fast: fine
    with refused(InvalidReason.TOO_FAR_AHEAD):
        validate(peer(ttl=PEER_MAX_TTL + MAX_CLOCK_SKEW + 1), NOW)
    with refused(InvalidReason.TOO_FAR_AHEAD):
        validate(peer(ttl=PEER_MAX_TTL + 1), NOW, skew=0)
    validate(peer(ttl=PEER_MAX_TTL + 2 * DAY), NOW, skew=2 * DAY)
    with pytest.raises(ValueError, match="skew"):
        validate(peer(), NOW, skew=-1)


def test_peer_record_at_another_key_is_refused() -> None:
    record = sign_record(ALICE, PEER, BOB.node_id, 1, int(NOW) + 60, encode_peer_info(INFO))
    with refused(InvalidReason.WRONG_KEY):
        validate(record, NOW)
    with refused(InvalidReason.WRONG_KEY):
        peer_from_record(record, "v4:192.0")


def test_a_peer_record_has_copies_that_validate_only_at_their_keys() -> None:
    """S14: copies under keys the hash scatters, so Sybils at the id hide nothing."""
    keys = peer_keys(ALICE.node_id)
    assert len(set(keys)) == PEER_REPLICAS == 3 and keys[0] == ALICE.node_id
    want = hashlib.blake2b(b"p2pmsg peer v1" + ALICE.node_id + b"\x02", digest_size=32)
    assert keys[2] == want.digest()
    for replica, key in enumerate(keys):
        record = make_peer_record(ALICE, INFO, 1, int(NOW) + 60, replica)
        assert record.key == key
        validate(record, NOW)
        assert peer_from_record(record, "v4:192.0").node_id == ALICE.node_id
        with refused(InvalidReason.WRONG_KEY):  # BOB's keys are not ALICE's to fill
            validate(sign_record(BOB, PEER, key, 1, int(NOW) + 60, encode_peer_info(INFO)), NOW)
    with pytest.raises(ValueError, match="replica"):
        peer_key(ALICE.node_id, PEER_REPLICAS)


def test_forged_records_are_refused() -> None:
    good = peer()
    as_bob = Record(PEER, BOB.node_id, BOB.public.key, 1, good.expires, good.value, good.signature)
    other = peer(seq=2)
    replayed_signature = Record(**{**good.__dict__, "signature": other.signature})
    bad_point = bytes(32)  # not a valid Ed25519 point
    no_key = Record(PEER, node_id_of(bad_point), bad_point, 1, good.expires, good.value, bytes(64))
    for forged in (as_bob, replayed_signature, no_key):
        assert not verify_signature(forged)
        with refused(InvalidReason.BAD_SIGNATURE):
            validate(forged, NOW)


ONION_A = (1).to_bytes(4, "big") + bytes(range(32))
ONION_B = (2).to_bytes(4, "big") + bytes(range(32, 64))
BAD_PEER_VALUES = {
    "empty": b"",
    "version_1": b"\x01\x00\x00",
    "version_3": b"\x03\x00\x00\x00",
    "no_onion_count": b"\x02\x00\x00",
    "trailing": b"\x02\x00\x00\x00\x00",
    "truncated": b"\x02\x01\x00\x05tcp:h",
    "not_utf8": b"\x02\x01\x00\x02\xff\xfe\x00\x00",
    "bad_endpoint": b"\x02\x01\x00\x03TCP\x00\x00",
    "unsorted_caps": b"\x02\x00\x02\x01b\x01a\x00",
    "duplicate_caps": b"\x02\x00\x02\x01a\x01a\x00",
    "bad_cap": b"\x02\x00\x01\x01A\x00",
    "cap_not_ascii": b"\x02\x00\x01\x01\xe9\x00",
    "onion_key_cut": b"\x02\x00\x00\x01" + ONION_A[:-1],
    "onion_epochs_decreasing": b"\x02\x00\x00\x02" + ONION_B + ONION_A,
    "onion_epoch_repeated": b"\x02\x00\x00\x02" + ONION_A + ONION_A,
    "too_many_onion_keys": b"\x02\x00\x00\x05"
    + b"".join(i.to_bytes(4, "big") + bytes(32) for i in range(5)),
}


def test_peer_value_with_onion_keys_known_answer() -> None:
    info = PeerInfo((), frozenset(), ((1, bytes(range(32))), (2, bytes(range(32, 64)))))
    value = b"\x02\x00\x00\x02" + ONION_A + ONION_B
    assert encode_peer_info(info) == value
    assert decode_peer_info(value) == info


@pytest.mark.parametrize("value", BAD_PEER_VALUES.values(), ids=BAD_PEER_VALUES.keys())
def test_bad_peer_values_are_refused(value: bytes) -> None:
    with refused(InvalidReason.BAD_VALUE):
        decode_peer_info(value)
    record = sign_record(ALICE, PEER, ALICE.node_id, 1, int(NOW) + 60, value)
    with refused(InvalidReason.BAD_VALUE):
        validate(record, NOW)


@pytest.mark.parametrize(
    ("endpoints", "caps"),
    [
        (tuple(f"tcp:192.0.2.1:{port}" for port in range(17)), ()),
        (("tcp:192.0.2.1:1", "tcp:192.0.2.1:1"), ()),
        (("tcp:a\\b",), ()),  # parses, but its canonical form is tcp:ab
        (("TCP:h",), ()),
        (("tcp:" + "a" * MAX_ENDPOINT_CHARS,), ()),
        ((), [f"c{i}" for i in range(17)]),
        ((), ["Relay"]),
        ((), ["a" * 33]),
        ((), [""]),
    ],
)
def test_peer_info_bounds(endpoints: tuple[str, ...], caps: list[str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - one of several messages
        PeerInfo(endpoints, frozenset(caps))


@pytest.mark.parametrize(
    "keys",
    [
        tuple((e, bytes(32)) for e in range(MAX_ONION_KEYS + 1)),
        ((2, bytes(32)), (1, bytes(32))),
        ((1, bytes(32)), (1, bytes(32))),
        ((1, bytes(31)),),
        ((1, bytes(33)),),
        ((-1, bytes(32)),),
        ((2**32, bytes(32)),),
    ],
)
def test_onion_key_bounds(keys: tuple[tuple[int, bytes], ...]) -> None:
    with pytest.raises(ValueError, match="onion key"):
        PeerInfo((), frozenset(), keys)


def test_peer_info_too_large_for_a_record() -> None:
    long_ones = tuple(f"tcp:{'h' * 400}{i}:1" for i in range(16))
    with pytest.raises(ValueError, match="at most"):
        make_peer_record(ALICE, PeerInfo(long_ones), 1, int(NOW) + 60)


def test_peer_from_record() -> None:
    found = peer_from_record(peer(BOB), "v4:192.0")
    assert found == Peer(BOB.node_id, BOB.public.key, INFO.endpoints, "v4:192.0")


# --- the store ----------------------------------------------------------------------------


def test_store_put_get_replace_and_ignore() -> None:
    store = RecordStore()
    assert store.put(peer(seq=2), NOW, source=BOB.node_id) == Stored()
    assert store.get(PEER, ALICE.node_id, NOW) == [peer(seq=2)]
    assert store.put(peer(seq=2), NOW, source=BOB.node_id) == Ignored(Refusal.NOT_NEWER)
    assert store.put(peer(seq=1), NOW, source=BOB.node_id) == Ignored(Refusal.NOT_NEWER)
    assert store.put(peer(seq=3), NOW, source=BOB.node_id) == Replaced(previous_seq=2)
    assert store.get(PEER, ALICE.node_id, NOW) == [peer(seq=3)]
    assert store.get(PEER, BOB.node_id, NOW) == []
    with refused(InvalidReason.EXPIRED):
        store.put(peer(seq=4, ttl=-1), NOW, source=BOB.node_id)
    assert store.stats == {"not_newer": 2, "expired": 1}
    assert len(store) == 1


SIGNED = [peer(seq=seq) for seq in range(6)]


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(6)), st.lists(st.integers(0, 5), max_size=6))
def test_newest_seq_wins_in_any_order(order: list[int], repeats: list[int]) -> None:
    store = RecordStore()
    for seq in [*order, *repeats]:
        result = store.put(SIGNED[seq], NOW, source=BOB.node_id)
        assert isinstance(result, Stored | Replaced | Ignored)
    assert store.get(PEER, ALICE.node_id, NOW) == [SIGNED[5]]


def test_expire_and_get_hide_expired_records() -> None:
    store = RecordStore()
    store.put(peer(ALICE, ttl=60), NOW, source=BOB.node_id)
    store.put(peer(BOB, ttl=600), NOW, source=BOB.node_id)
    assert store.get(PEER, ALICE.node_id, NOW + 60) == []
    assert store.expire(NOW + 59) == 0
    assert store.expire(NOW + 60) == 1
    assert len(store) == 1
    assert store.expire(NOW + 600) == 1
    assert len(store) == 0


def test_a_flood_from_one_source_leaves_room_for_others() -> None:
    store = RecordStore(max_per_source=5, max_total=30)
    flood = [store.put(peer(ident), NOW, source=b"flooder") for ident in IDS[:25]]
    assert flood.count(Stored()) == 5
    assert flood.count(Ignored(Refusal.SOURCE_QUOTA)) == 20
    assert store.put(peer(IDS[30]), NOW, source=b"honest") == Stored()
    assert store.stats == {"source_quota": 20}


def test_total_and_type_caps_hold_under_many_sources() -> None:
    store = RecordStore(max_per_source=2, max_total=8)
    results = [store.put(peer(ident), NOW, source=bytes([i])) for i, ident in enumerate(IDS)]
    assert results.count(Stored()) == 8 and len(store) == 8
    assert set(results[8:]) == {Ignored(Refusal.TOTAL_QUOTA)}
    typed = RecordStore(max_per_type={PEER: 3})
    results = [typed.put(peer(ident), NOW, source=bytes([i])) for i, ident in enumerate(IDS[:5])]
    assert results[3:] == [Ignored(Refusal.TYPE_QUOTA)] * 2
    assert RecordStore(max_per_type=0).put(peer(), NOW, source=b"x") == Ignored(Refusal.TYPE_QUOTA)


def test_publisher_and_key_caps() -> None:
    by_publisher = RecordStore(max_per_publisher=0)
    assert by_publisher.put(peer(), NOW, source=b"x") == Ignored(Refusal.PUBLISHER_QUOTA)
    by_key = RecordStore(max_per_key=0)
    assert by_key.put(peer(), NOW, source=b"x") == Ignored(Refusal.KEY_QUOTA)


def test_expired_records_make_room_live_ones_never_do() -> None:
    store = RecordStore(max_total=4)
    for ident in IDS[:4]:
        assert store.put(peer(ident, ttl=60), NOW, source=b"x") == Stored()
    assert store.put(peer(IDS[4], ttl=600), NOW + 30, source=b"x") == Ignored(Refusal.TOTAL_QUOTA)
    assert store.put(peer(IDS[4], ttl=600), NOW + 60, source=b"x") == Stored()
    assert len(store) == 1


def test_a_replacement_is_never_refused_for_quota() -> None:
    store = RecordStore(max_per_source=1)
    assert store.put(peer(ALICE, seq=1), NOW, source=b"a") == Stored()
    assert store.put(peer(BOB), NOW, source=b"b") == Stored()
    assert store.put(peer(ALICE, seq=2), NOW, source=b"b") == Replaced(1)  # b over its quota
    # the slot now counts against b, so a is free again
    assert store.put(peer(IDS[0]), NOW, source=b"a") == Stored()


def test_heap_stays_bounded_under_replacements() -> None:
    store = RecordStore()
    for seq in range(300):
        store.put(peer(seq=seq), NOW, source=b"x")
    assert len(store._heap) <= 2 * len(store) + 64


def test_own_records_survive_a_full_store() -> None:
    store = RecordStore(max_total=2, max_own=1, own=[ALICE.public.key])
    for ident in IDS[:3]:
        store.put(peer(ident), NOW, source=bytes([ident.node_id[0]]))
    assert store.put(peer(ALICE), NOW, source=ALICE.node_id) == Stored()
    store.mark_own(BOB.public.key)
    assert store.put(peer(BOB), NOW, source=BOB.node_id) == Ignored(Refusal.OWN_QUOTA)
    assert len(store) == 3


def test_due_for_republish() -> None:
    store = RecordStore(own=[ALICE.public.key])
    store.put(peer(ALICE, ttl=3 * DAY), NOW, source=ALICE.node_id)
    store.put(peer(BOB, ttl=DAY), NOW, source=ALICE.node_id)
    store.put(peer(IDS[0], ttl=DAY), NOW, source=ALICE.node_id)
    assert store.due_for_republish(NOW, 2 * DAY) == []
    assert store.due_for_republish(NOW + DAY, 2 * DAY) == [peer(ALICE, ttl=3 * DAY)]
    store.mark_own(BOB.public.key)
    assert store.due_for_republish(NOW, 2 * DAY) == [peer(BOB, ttl=DAY)]
    # BOB's record has expired by then
    assert store.due_for_republish(NOW + DAY, 2 * DAY) == [peer(ALICE, ttl=3 * DAY)]
    assert store.due_for_republish(NOW + 3 * DAY, 2 * DAY) == []


# a stateful check: any sequence of puts, clock steps and expiries keeps every
# accepted live record (newest seq per publisher) and never exceeds the caps
MACHINE_IDS = IDS[:5]
MACHINE_RECORDS = {
    (i, seq, ttl): peer(ident, seq=seq, ttl=ttl)
    for i, ident in enumerate(MACHINE_IDS)
    for seq in range(4)
    for ttl in (60, 600, 3600)
}


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = RecordStore(
            max_per_source=2, max_total=3, max_own=1, own=[MACHINE_IDS[0].public.key]
        )
        self.now = NOW
        self.live: dict[int, Record] = {}

    @rule(
        who=st.integers(0, len(MACHINE_IDS) - 1),
        seq=st.integers(0, 3),
        ttl=st.sampled_from((60, 600, 3600)),
        source=st.sampled_from((b"a", b"b", b"c")),
    )
    def put(self, who: int, seq: int, ttl: int, source: bytes) -> None:
        record = MACHINE_RECORDS[(who, seq, ttl)]
        if record.expires <= self.now:
            with refused(InvalidReason.EXPIRED):
                self.store.put(record, self.now, source=source)
            return
        result = self.store.put(record, self.now, source=source)
        current = self.live.get(who)
        if current is not None and current.expires > self.now and current.seq >= seq:
            assert result == Ignored(Refusal.NOT_NEWER)
        if isinstance(result, Replaced):
            assert result.previous_seq < seq
        if isinstance(result, Stored | Replaced):
            self.live[who] = record

    @rule(dt=st.sampled_from((1, 59, 300, 3000)))
    def advance(self, dt: int) -> None:
        self.now += dt

    @rule()
    def expire(self) -> None:
        self.store.expire(self.now)

    @invariant()
    def live_records_are_kept_and_nothing_else(self) -> None:
        for who, ident in enumerate(MACHINE_IDS):
            got = self.store.get(PEER, ident.node_id, self.now)
            current = self.live.get(who)
            expected = [current] if current is not None and current.expires > self.now else []
            assert got == expected

    @invariant()
    def caps_hold(self) -> None:
        assert len(self.store) <= 3 + 1


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# --- layering -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["records.py", "record_store.py"])
def test_modules_are_pure(name: str) -> None:
    path = Path(__file__).resolve().parent.parent / "p2pmsg" / "dht" / name
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "socket", "time", "random", "asyncio", "zeroconf"}
