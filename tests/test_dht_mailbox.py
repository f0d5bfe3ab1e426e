"""DHT mailboxes, the pure parts: keys, the bounded store, clear requests, RPC bodies.

Everything here is a plain function or a hypothesis state machine: bytes and
times in, entries, outcomes or exactly :class:`RemoteProtocolError` out. The
network side is in test_dht_mailbox_sim.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2pmsg.dht import rpc
from p2pmsg.dht.mailbox import (
    DAY,
    ENTRY_ID_BYTES,
    MAILBOX_REPLICAS,
    MAX_BLOB,
    MAX_CLEAR_IDS,
    MAX_TTL,
    ClearRequest,
    InvalidClear,
    MailboxStore,
    Outcome,
    decode_clear,
    encode_clear,
    entry_id,
    epoch_of,
    mailbox_keys,
    sign_clear,
    verify_clear,
)
from p2pmsg.dht.mailboxes import FETCH_BUDGET, Mailboxes
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity
from p2pmsg.link.wire import MAX_MESSAGE

NOW = 1_800_000_000.0
OWNER = Identity(bytes(range(32)))
OTHER = Identity(bytes(32))
EPOCH = epoch_of(NOW)
KEYS = mailbox_keys(OWNER.node_id, EPOCH)
KEY = KEYS[0]
LATER = int(NOW) + 14 * DAY


def blob(i: int, size: int = 64) -> bytes:
    """A distinct blob per ``i``, of ``size`` bytes (at least 4)."""
    return (i.to_bytes(4, "big") * (size // 4 + 1))[: max(size, 4)]


# --- keys and ids ------------------------------------------------------------------------


def test_epochs_are_days() -> None:
    assert epoch_of(0) == 0
    assert epoch_of(86_399.9) == 0
    assert epoch_of(86_400) == 1
    assert epoch_of(NOW) == 20_833
    assert epoch_of(-5) == 0


def test_mailbox_keys_known_answer_and_separation() -> None:
    assert len(KEYS) == MAILBOX_REPLICAS == 3
    assert len(set(KEYS)) == 3
    assert all(len(k) == 32 for k in KEYS)
    assert mailbox_keys(OWNER.node_id, EPOCH) == KEYS  # deterministic
    assert not set(KEYS) & set(mailbox_keys(OWNER.node_id, EPOCH + 1))
    assert not set(KEYS) & set(mailbox_keys(OTHER.node_id, EPOCH))
    assert mailbox_keys(bytes(32), 0)[0].hex() == KNOWN_KEY0


# BLAKE2b-256(b"p2pmsg mailbox key v1\0" || epoch u32 || index u8, key=owner node id)
KNOWN_KEY0 = "857a8a3c75925686807f0ce79b2182d157680d5fe8c29e040cf7e58cd41b0e09"


@pytest.mark.parametrize(
    ("node_id", "epoch"), [(bytes(31), 0), (bytes(32), -1), (bytes(32), 2**32)]
)
def test_mailbox_keys_refuse_bad_arguments(node_id: bytes, epoch: int) -> None:
    with pytest.raises(ValueError, match="u32"):
        mailbox_keys(node_id, epoch)


def test_entry_ids_hash_the_blob() -> None:
    assert len(entry_id(b"x")) == ENTRY_ID_BYTES == 16
    assert entry_id(b"x") == entry_id(b"x") != entry_id(b"y")


# --- the store ---------------------------------------------------------------------------


def test_put_get_duplicate_and_refusals() -> None:
    store = MailboxStore()
    assert store.put(KEY, blob(1), LATER, NOW, source=b"a") is Outcome.STORED
    assert store.put(KEY, blob(1), LATER, NOW, source=b"b") is Outcome.DUPLICATE
    assert store.put(KEY, b"", LATER, NOW, source=b"a") is Outcome.BAD_SIZE
    assert store.put(KEY, bytes(MAX_BLOB + 1), LATER, NOW, source=b"a") is Outcome.BAD_SIZE
    assert store.put(KEY[:31], blob(2), LATER, NOW, source=b"a") is Outcome.BAD_SIZE
    assert store.put(KEY, blob(2), int(NOW), NOW, source=b"a") is Outcome.EXPIRED
    assert store.put(KEY, bytes(MAX_BLOB), LATER, NOW, source=b"a") is Outcome.STORED
    entries = store.get(KEY, NOW)
    assert [e.blob for e in entries] == [blob(1), bytes(MAX_BLOB)]
    assert entries[0].id == entry_id(blob(1))
    assert store.get(KEYS[1], NOW) == []
    assert store.stats() == {
        "entries": 2,
        "bytes": 64 + MAX_BLOB,
        "keys": 1,
        "refusals": {"bad_size": 3, "expired": 1},
    }
    assert Outcome.DUPLICATE.accepted
    assert not Outcome.KEY_FULL.accepted


def test_ttl_is_clamped_to_thirty_days() -> None:
    store = MailboxStore()
    store.put(KEY, blob(1), 2**64 - 1, NOW, source=b"a")
    (entry,) = store.get(KEY, NOW)
    assert entry.expires == int(NOW) + MAX_TTL == int(NOW) + 30 * DAY
    assert store.get(KEY, NOW + MAX_TTL) == []


def test_expired_entries_are_never_returned_and_make_room() -> None:
    store = MailboxStore(max_per_key=2)
    store.put(KEY, blob(1), int(NOW) + 60, NOW, source=b"a")
    store.put(KEY, blob(2), int(NOW) + 600, NOW, source=b"b")
    assert store.put(KEY, blob(3), LATER, NOW + 30, source=b"c") is Outcome.KEY_FULL
    assert [e.blob for e in store.get(KEY, NOW + 60)] == [blob(2)]
    assert store.put(KEY, blob(3), LATER, NOW + 60, source=b"c") is Outcome.STORED
    assert len(store) == 2
    assert store.expire(NOW + 600) == 1
    assert store.expire(NOW + 600) == 0
    assert [e.blob for e in store.get(KEY, NOW + 600)] == [blob(3)]


def test_one_depositor_cannot_crowd_out_the_others() -> None:
    store = MailboxStore(max_per_key=8, max_source_per_key=2, max_per_source=3)
    flood = [store.put(KEY, blob(i), LATER, NOW, source=b"flood") for i in range(10)]
    assert flood.count(Outcome.STORED) == 2
    assert set(flood[2:]) == {Outcome.SOURCE_KEY_QUOTA}
    assert store.put(KEYS[1], blob(20), LATER, NOW, source=b"flood") is Outcome.STORED
    assert store.put(KEYS[2], blob(21), LATER, NOW, source=b"flood") is Outcome.SOURCE_QUOTA
    assert store.put(KEY, blob(30), LATER, NOW, source=b"honest") is Outcome.STORED
    assert store.stats()["refusals"] == {"source_key_quota": 8, "source_quota": 1}


def test_total_bytes_are_capped() -> None:
    store = MailboxStore(max_bytes=3 * MAX_BLOB)
    results = [
        store.put(KEYS[i % 3], blob(i, MAX_BLOB), LATER, NOW, source=bytes([i])) for i in range(5)
    ]
    assert results == [Outcome.STORED] * 3 + [Outcome.BYTES_FULL] * 2
    assert store.stats()["bytes"] == 3 * MAX_BLOB


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 63), st.integers(0, 2), st.integers(4, MAX_BLOB)), max_size=400
    )
)
def test_a_flood_from_many_sources_stays_bounded(deposits: list[tuple[int, int, int]]) -> None:
    store = MailboxStore(max_per_key=16, max_source_per_key=4, max_per_source=6, max_bytes=40_000)
    for n, (source, index, size) in enumerate(deposits):
        outcome = store.put(KEYS[index], blob(n, size), LATER, NOW, source=bytes([source]))
        assert outcome is not Outcome.DUPLICATE
    stats = store.stats()
    assert isinstance(stats["bytes"], int)
    assert stats["bytes"] <= 40_000
    for key in KEYS:
        entries = store.get(key, NOW, limit=1000)
        assert len(entries) <= 16
        per_source: dict[bytes, int] = {}
        for e in entries:
            per_source[e.source] = per_source.get(e.source, 0) + 1
        assert max(per_source.values(), default=0) <= 4
    assert len(store) == sum(len(store.get(k, NOW, limit=1000)) for k in KEYS)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 300), st.integers(4, MAX_BLOB))
def test_a_flood_from_one_source_stays_bounded(count: int, size: int) -> None:
    store = MailboxStore()
    outcomes = [store.put(KEY, blob(i, size), LATER, NOW, source=b"one") for i in range(count)]
    held = store.get(KEY, NOW, limit=1000)
    assert len(held) == min(count, store.max_source_per_key)
    assert outcomes.count(Outcome.STORED) == len(held)
    assert store.put(KEY, b"honest", LATER, NOW, source=b"two") is Outcome.STORED


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 80), st.integers(1, 20), st.sets(st.integers(0, 79)))
def test_paging_returns_every_live_entry_once(count: int, limit: int, dead: set[int]) -> None:
    store = MailboxStore(max_source_per_key=256)
    for i in range(count):
        expires = int(NOW) + (10 if i in dead else 3600)
        store.put(KEY, blob(i), expires, NOW, source=b"x")
    seen: list[bytes] = []
    after = None
    for _ in range(count + 2):
        page = store.get(KEY, NOW + 10, after=after, limit=limit)
        assert len(page) <= limit
        seen += [e.blob for e in page]
        if len(page) < limit:
            break
        after = page[-1].id
    assert seen == [blob(i) for i in range(count) if i not in dead]


def test_paging_after_a_vanished_entry_starts_over() -> None:
    store = MailboxStore()
    for i in range(3):
        store.put(KEY, blob(i), LATER, NOW, source=b"x")
    assert store.delete(KEY, [entry_id(blob(0)), entry_id(b"never")]) == 1
    assert [e.blob for e in store.get(KEY, NOW, after=entry_id(blob(0)))] == [blob(1), blob(2)]
    assert store.get(KEY, NOW, limit=0) == []


class StoreMachine(RuleBasedStateMachine):
    """Any sequence of deposits, clock steps, expiries and deletions: the store
    returns exactly the live accepted entries, in arrival order, within its caps."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MailboxStore(max_per_key=6, max_source_per_key=3, max_per_source=5)
        self.now = NOW
        self.model: dict[bytes, dict[bytes, tuple[bytes, int]]] = {k: {} for k in KEYS}

    @rule(
        key=st.integers(0, 2),
        n=st.integers(0, 9),
        ttl=st.sampled_from((-1, 60, 600, 10**9)),
        source=st.sampled_from((b"a", b"b", b"c")),
    )
    def put(self, key: int, n: int, ttl: int, source: bytes) -> None:
        expires = int(self.now) + ttl
        outcome = self.store.put(KEYS[key], blob(n), expires, self.now, source=source)
        entries = self.model[KEYS[key]]
        if outcome is Outcome.STORED:
            entries[entry_id(blob(n))] = (blob(n), min(expires, int(self.now) + MAX_TTL))
        elif outcome is Outcome.DUPLICATE:
            assert entry_id(blob(n)) in entries
        elif ttl < 0:
            assert outcome is Outcome.EXPIRED

    @rule(dt=st.sampled_from((1, 59, 300, 3000)))
    def advance(self, dt: int) -> None:
        self.now += dt
        for entries in self.model.values():
            for id_ in [i for i, (_, exp) in entries.items() if exp <= self.now]:
                del entries[id_]

    @rule()
    def expire(self) -> None:
        self.store.expire(self.now)

    @rule(key=st.integers(0, 2), ns=st.lists(st.integers(0, 9), max_size=3))
    def delete(self, key: int, ns: list[int]) -> None:
        self.store.delete(KEYS[key], [entry_id(blob(n)) for n in ns])
        for n in ns:
            self.model[KEYS[key]].pop(entry_id(blob(n)), None)

    @invariant()
    def returns_exactly_the_live_entries(self) -> None:
        for key, entries in self.model.items():
            got = self.store.get(key, self.now, limit=100)
            assert all(e.expires > self.now for e in got)
            assert [e.blob for e in got] == [b for b, _ in entries.values()]

    @invariant()
    def caps_hold(self) -> None:
        assert len(self.store) <= 3 * 6


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# --- clearing ----------------------------------------------------------------------------

IDS = [entry_id(blob(i)) for i in range(3)]


def test_the_owner_clears_its_entries() -> None:
    store = MailboxStore()
    for i in range(3):
        store.put(KEYS[1], blob(i), LATER, NOW, source=b"x")
    request = decode_clear(encode_clear(sign_clear(OWNER, EPOCH, 1, IDS[:2])))
    verify_clear(request, KEYS[1])
    assert store.delete(KEYS[1], list(request.ids)) == 2
    assert [e.blob for e in store.get(KEYS[1], NOW)] == [blob(2)]


def test_clear_known_answer() -> None:
    request = sign_clear(OWNER, 7, 2, [bytes(16)])
    data = encode_clear(request)
    assert data[:37] == b"\x01" + OWNER.public.key + b"\x00\x00\x00\x07"
    assert data[37:56] == b"\x02\x00\x01" + bytes(16)
    assert len(data) == 56 + 64


@pytest.mark.parametrize(
    ("signer", "epoch", "index", "key"),
    [
        (OTHER, EPOCH, 0, KEYS[0]),  # someone else, for their own mailbox: wrong key
        (OWNER, EPOCH, 1, KEYS[0]),  # the wrong replica
        (OWNER, EPOCH + 1, 0, KEYS[0]),  # another day
    ],
)
def test_clear_needs_the_right_key(signer: Identity, epoch: int, index: int, key: bytes) -> None:
    with pytest.raises(InvalidClear, match="another mailbox key"):
        verify_clear(sign_clear(signer, epoch, index, IDS), key)


def test_clear_needs_the_owners_signature() -> None:
    forged = sign_clear(OTHER, EPOCH, 0, IDS)
    as_owner = ClearRequest(OWNER.public.key, EPOCH, 0, forged.ids, forged.signature)
    with pytest.raises(InvalidClear, match="did not sign"):
        verify_clear(as_owner, KEY)
    bad_point = ClearRequest(bytes(32), EPOCH, 0, (), bytes(64))
    with pytest.raises(InvalidClear):
        verify_clear(bad_point, mailbox_keys(bad_point.owner, EPOCH)[0])


def test_every_byte_flip_of_a_clear_request_is_refused() -> None:
    data = encode_clear(sign_clear(OWNER, EPOCH, 0, IDS[:1]))
    for pos in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(data)
            tampered[pos] ^= mask
            with pytest.raises(RemoteProtocolError):
                verify_clear(decode_clear(bytes(tampered)), KEY)
    for end in range(len(data)):
        with pytest.raises(InvalidClear):
            decode_clear(data[:end])
    with pytest.raises(InvalidClear):
        decode_clear(data + b"\0")


def test_clear_request_bounds() -> None:
    most = sign_clear(OWNER, EPOCH, 2, [bytes(16)] * MAX_CLEAR_IDS)
    assert decode_clear(encode_clear(most)) == most
    for bad in (
        {"ids": [bytes(16)] * (MAX_CLEAR_IDS + 1)},
        {"index": 3},
        {"ids": [bytes(15)]},
        {"epoch": 2**32},
    ):
        args = {"epoch": EPOCH, "index": 0, "ids": [bytes(16)], **bad}
        with pytest.raises(ValueError):  # noqa: PT011 - one of several messages
            sign_clear(OWNER, **args)  # type: ignore[arg-type]
    head = encode_clear(most)[:37]
    with pytest.raises(InvalidClear):  # index 3 on the wire
        decode_clear(head + b"\x03\x00\x00" + bytes(64))
    with pytest.raises(InvalidClear, match="version"):
        decode_clear(b"\x02" + encode_clear(most)[1:])


# --- RPC bodies --------------------------------------------------------------------------

keys32 = st.binary(min_size=32, max_size=32)
blobs = st.binary(min_size=1, max_size=MAX_BLOB)


@given(keys32, st.integers(0, 2**64 - 1), blobs)
def test_deposit_round_trip(key: bytes, expires: int, data: bytes) -> None:
    body = rpc.encode_deposit(key, expires, data)
    assert rpc.decode_deposit(body) == (key, expires, data)
    for cut in range(41):
        with pytest.raises(RemoteProtocolError):
            rpc.decode_deposit(body[:cut])


def test_deposit_caps() -> None:
    with pytest.raises(RemoteProtocolError):
        rpc.decode_deposit(bytes(40 + MAX_BLOB + 1))
    for key, data in ((bytes(31), b"x"), (bytes(32), b""), (bytes(32), bytes(MAX_BLOB + 1))):
        with pytest.raises(ValueError, match="blob"):
            rpc.encode_deposit(key, 0, data)


@given(keys32, st.none() | st.binary(min_size=16, max_size=16), st.integers(1, 64))
def test_fetch_round_trip(key: bytes, after: bytes | None, limit: int) -> None:
    assert rpc.decode_fetch(rpc.encode_fetch(key, after, limit)) == (key, after, limit)


@pytest.mark.parametrize(
    "body", [b"", bytes(32), bytes(33), bytes(32) + b"\x01" + bytes(15), bytes(32) + b"\x41"]
)
def test_bad_fetch_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        rpc.decode_fetch(body)


def test_fetch_encoder_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="limit"):
        rpc.encode_fetch(KEY, None, 0)
    with pytest.raises(ValueError, match="limit"):
        rpc.encode_fetch(KEY, None, rpc.MAX_FETCH_ENTRIES + 1)
    with pytest.raises(ValueError, match="entry id"):
        rpc.encode_fetch(KEY, bytes(15), 1)


@settings(max_examples=100)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=rpc.MAX_FETCH_ENTRIES), st.booleans())
def test_fetch_reply_round_trip_and_truncation(data: list[bytes], more: bool) -> None:
    body = rpc.encode_fetch_reply(data, more)
    assert rpc.decode_fetch_reply(body) == (data, more)
    for cut in range(len(body)):
        with pytest.raises(RemoteProtocolError):
            rpc.decode_fetch_reply(body[:cut])
    with pytest.raises(RemoteProtocolError, match="trailing"):
        rpc.decode_fetch_reply(body + b"\0")


@pytest.mark.parametrize(
    "body",
    [
        b"\x02\x00",  # more is not a boolean
        b"\x00" + bytes([rpc.MAX_FETCH_ENTRIES + 1]),
        b"\x00\x01\x00\x00",  # an empty blob
        b"\x00\x01" + (MAX_BLOB + 1).to_bytes(2, "big") + bytes(MAX_BLOB + 1),
    ],
)
def test_bad_fetch_replies_are_refused(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        rpc.decode_fetch_reply(body)


def test_clear_body_round_trip() -> None:
    request = sign_clear(OWNER, EPOCH, 0, IDS)
    assert rpc.decode_clear_body(rpc.encode_clear_body(KEY, request)) == (KEY, request)
    with pytest.raises(RemoteProtocolError):
        rpc.decode_clear_body(KEY[:31])
    with pytest.raises(ValueError, match="key"):
        rpc.encode_clear_body(KEY[:31], request)


# --- answering ---------------------------------------------------------------------------


async def _never(*_: object) -> list[bytes]:
    raise AssertionError("no network here")


def holder() -> Mailboxes:
    return Mailboxes(bytes(32), _never, _never, wall_clock=lambda: NOW)  # type: ignore[arg-type]


def test_a_full_fetch_reply_fits_one_link_message() -> None:
    mailboxes = holder()
    for i in range(40):
        mailboxes.store.put(KEY, blob(i, MAX_BLOB), LATER, NOW, source=bytes([i]))
    body = rpc.encode_fetch(KEY, None, rpc.MAX_FETCH_ENTRIES)
    reply = mailboxes.answer(rpc.Method.FETCH, b"req", body, NOW)
    page, more = rpc.decode_fetch_reply(reply)
    assert more
    assert len(page) == FETCH_BUDGET // (MAX_BLOB + 2) == 15
    response = rpc.encode_response(rpc.Response(bytes(8), rpc.Status.OK, reply))
    assert len(response) <= MAX_MESSAGE
    got: list[bytes] = []
    after = None
    while True:
        reply = mailboxes.answer(rpc.Method.FETCH, b"r", rpc.encode_fetch(KEY, after, 64), NOW)
        page, more = rpc.decode_fetch_reply(reply)
        got += page
        if not more:
            break
        after = entry_id(page[-1])
    assert got == [blob(i, MAX_BLOB) for i in range(40)]


def test_answers_deposit_refusals_and_clears() -> None:
    mailboxes = holder()
    deposit = rpc.encode_deposit(KEY, LATER, blob(1))
    assert mailboxes.answer(rpc.Method.DEPOSIT, b"a", deposit, NOW) == b""
    assert mailboxes.answer(rpc.Method.DEPOSIT, b"b", deposit, NOW) == b""  # a duplicate
    with pytest.raises(RemoteProtocolError, match="expired"):
        mailboxes.answer(rpc.Method.DEPOSIT, b"a", rpc.encode_deposit(KEY, 1, blob(2)), NOW)
    with pytest.raises(RemoteProtocolError):
        mailboxes.answer(rpc.Method.DEPOSIT, b"a", b"short", NOW)
    forged = rpc.encode_clear_body(KEY, sign_clear(OTHER, EPOCH, 0, IDS))
    with pytest.raises(RemoteProtocolError):
        mailboxes.answer(rpc.Method.CLEAR, b"a", forged, NOW)
    assert len(mailboxes.store) == 1
    clear = rpc.encode_clear_body(KEY, sign_clear(OWNER, EPOCH, 0, IDS))
    assert mailboxes.answer(rpc.Method.CLEAR, b"a", clear, NOW) == b""
    assert len(mailboxes.store) == 0
    with pytest.raises(RemoteProtocolError, match="not a mailbox method"):
        mailboxes.answer(rpc.Method.PING, b"a", b"", NOW)
