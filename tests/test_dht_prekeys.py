"""Prekey records: the validation rules (pure) and put / find on the simulated network.

A prekey record carries the e2e layer's bundle, opaque to the DHT, under
``prekey_key(node id)`` of its publisher, so nobody can fill another node's
slot; lookups for it run on disjoint paths and return the newest first.
"""

from __future__ import annotations

import hashlib

import pytest
import trio
from dhtworld import DhtWorld
from simworld import sim_wall_clock
from trio.testing import MockClock

from p2pmsg.dht.record_store import RecordStore, Stored
from p2pmsg.dht.records import (
    DAY,
    MAX_CLOCK_SKEW,
    MAX_VALUE,
    PREKEY_MAX_TTL,
    PREKEY_REPLICAS,
    RULES,
    InvalidReason,
    InvalidRecord,
    RecordType,
    make_prekey_record,
    prekey_key,
    prekey_keys,
    sign_record,
    validate,
)
from p2pmsg.dht.service import DhtOptions
from p2pmsg.keys import Identity

NOW = 1_800_000_000.0
ALICE = Identity(bytes(32))
BOB = Identity(bytes(range(32)))
BUNDLE = b"an opaque prekey bundle"
PREKEYS = RecordType.PREKEYS


def refused(reason: InvalidReason) -> pytest.RaisesExc[InvalidRecord]:
    return pytest.raises(InvalidRecord, match=f"^{reason.value}:")


def test_prekey_key_is_a_domain_separated_hash_of_the_node_id() -> None:
    want = hashlib.blake2b(b"p2pmsg prekeys v1" + ALICE.node_id, digest_size=32).digest()
    assert prekey_key(ALICE.node_id) == want
    assert prekey_key(ALICE.node_id) not in {ALICE.node_id, prekey_key(BOB.node_id)}
    assert int(RecordType.PREKEYS) == 2
    assert RULES[PREKEYS].max_ttl == PREKEY_MAX_TTL == 7 * DAY


def test_a_bundle_has_three_keys_and_each_copy_validates_only_there() -> None:
    """S15: copies under keys the hash scatters, so Sybils at one hide nothing."""
    keys = prekey_keys(ALICE.node_id)
    assert len(set(keys)) == PREKEY_REPLICAS == 3 and keys[0] == prekey_key(ALICE.node_id)
    want = hashlib.blake2b(b"p2pmsg prekeys v1" + ALICE.node_id + b"\x02", digest_size=32)
    assert keys[2] == want.digest()
    for replica, key in enumerate(keys):
        record = make_prekey_record(ALICE, BUNDLE, 1, int(NOW) + DAY, replica)
        assert record.key == key
        validate(record, NOW)
        with refused(InvalidReason.WRONG_KEY):  # BOB's keys are not ALICE's to fill
            validate(sign_record(BOB, PREKEYS, key, 1, int(NOW) + DAY, BUNDLE), NOW)
    with pytest.raises(ValueError, match="replica"):
        prekey_key(ALICE.node_id, PREKEY_REPLICAS)


def test_a_prekey_record_validates_and_is_stored() -> None:
    record = make_prekey_record(ALICE, BUNDLE, 1, int(NOW) + DAY)
    assert record.key == prekey_key(ALICE.node_id)
    validate(record, NOW)
    store = RecordStore()
    assert store.put(record, NOW, source=BOB.node_id) == Stored()
    assert store.get(PREKEYS, record.key, NOW) == [record]
    largest = make_prekey_record(ALICE, bytes(MAX_VALUE), 2, int(NOW) + DAY)
    validate(largest, NOW)


def test_a_prekey_record_under_another_nodes_key_is_refused() -> None:
    for key in (prekey_key(BOB.node_id), ALICE.node_id):
        forged = sign_record(ALICE, PREKEYS, key, 1, int(NOW) + DAY, BUNDLE)
        with refused(InvalidReason.WRONG_KEY):
            validate(forged, NOW)


def test_an_empty_bundle_is_refused() -> None:
    empty = sign_record(ALICE, PREKEYS, prekey_key(ALICE.node_id), 1, int(NOW) + DAY, b"")
    with refused(InvalidReason.BAD_VALUE):
        validate(empty, NOW)
    with pytest.raises(ValueError, match="not empty"):
        make_prekey_record(ALICE, b"", 1, int(NOW) + DAY)


def test_the_prekey_ttl_is_capped() -> None:
    validate(make_prekey_record(ALICE, BUNDLE, 1, int(NOW) + PREKEY_MAX_TTL), NOW)
    too_far = make_prekey_record(ALICE, BUNDLE, 1, int(NOW + PREKEY_MAX_TTL + MAX_CLOCK_SKEW) + 1)
    with refused(InvalidReason.TOO_FAR_AHEAD):
        validate(too_far, NOW)


async def test_a_prekey_record_is_put_and_found(autojump_clock: MockClock) -> None:
    world = DhtWorld(DhtOptions(max_per_prefix_bucket=None, max_per_prefix_table=None, k=8))
    async with trio.open_nursery() as nursery:
        nodes = await world.build(nursery, 16)
        owner, searcher = nodes[4], nodes[11]
        key = prekey_key(owner.identity.node_id)
        assert await searcher.find_records(PREKEYS, key) == []
        now = int(sim_wall_clock())
        first = make_prekey_record(owner.identity, b"bundle one", 1, now + DAY)
        assert await owner.put(first) >= 4
        assert await searcher.find_records(PREKEYS, key) == [first]
        second = make_prekey_record(owner.identity, b"bundle two", 2, now + DAY)
        assert await owner.put(second) >= 4
        assert (await searcher.find_records(PREKEYS, key))[0] == second
        # another node's bundle for the owner's key is refused by every holder
        forged = sign_record(searcher.identity, PREKEYS, key, 9, now + DAY, b"forged")
        assert await searcher.put(forged) == 0
        assert (await nodes[0].find_records(PREKEYS, key))[0] == second
        nursery.cancel_scope.cancel()
