"""Onion keys in peer records, on the simulated network.

Relays publish the X25519 onion keys of their current and next key epochs in
their peer record; a node lists the verified records of its routing-table
peers with :meth:`Dht.table_records` to pick relays. At an epoch change a
relay calls :meth:`Dht.publish_local` again: the new record (higher seq) is
stored on the k closest nodes at once, not at the next hourly republish.
"""

from __future__ import annotations

import trio
import trio.testing
from dhtworld import DhtWorld
from trio.testing import MockClock

from p2pmsg.dht import records as rec
from p2pmsg.dht.service import Dht, DhtOptions


def onion_keys(dht: Dht, epoch: int) -> tuple[tuple[int, bytes], ...]:
    """Stand-in keys: the onion layer derives real ones."""
    return tuple((e, bytes([e % 256]) * 16 + dht.identity.node_id[:16]) for e in (epoch, epoch + 1))


def seen_keys(observer: Dht, relay: Dht) -> tuple[tuple[int, bytes], ...] | None:
    for record in observer.table_records():
        if record.key == relay.identity.node_id:
            info = rec.decode_peer_info(record.value)
            assert "relay" in info.capabilities
            return info.onion_keys
    return None


async def test_relays_onion_keys_are_seen_and_replaced_at_an_epoch_change(
    autojump_clock: MockClock,
) -> None:
    world = DhtWorld(DhtOptions(max_per_prefix_bucket=None, max_per_prefix_table=None))
    async with trio.open_nursery() as nursery:
        nodes = await world.build(nursery, 12)
        for dht in nodes:
            assert dht.own_record is not None
            endpoints = rec.decode_peer_info(dht.own_record.value).endpoints
            dht.publish_local(endpoints, frozenset({"relay"}), onion_keys(dht, 100))
        await trio.sleep(60)  # every node stores its new record on the k (here: all) closest
        relay = nodes[7]
        for observer in nodes:
            records = observer.table_records()
            assert records, "a node with peers lists their records"
            assert all(r.type is rec.RecordType.PEER for r in records)
            assert observer.identity.node_id not in {r.key for r in records}
            if observer is not relay:
                assert seen_keys(observer, relay) == onion_keys(relay, 100)

        before = relay.own_record
        assert before is not None
        endpoints = rec.decode_peer_info(before.value).endpoints
        after = relay.publish_local(endpoints, frozenset({"relay"}), onion_keys(relay, 101))
        assert after.seq > before.seq
        await trio.sleep(60)
        for observer in nodes:
            if observer is not relay:
                assert seen_keys(observer, relay) == onion_keys(relay, 101)
        nursery.cancel_scope.cancel()


async def test_two_publishes_in_one_millisecond_still_order(autojump_clock: MockClock) -> None:
    world = DhtWorld()
    async with trio.open_nursery() as nursery:
        dht = await world.add(nursery, "10.1.0.1")
        first = dht.publish_local(["sim:10.1.0.1:1"], frozenset(), onion_keys(dht, 5))
        second = dht.publish_local(["sim:10.1.0.1:1"], frozenset(), onion_keys(dht, 6))
        assert second.seq == first.seq + 1
        assert rec.decode_peer_info(second.value).onion_keys == onion_keys(dht, 6)
        assert dht.table_records() == []  # no peers yet
        nursery.cancel_scope.cancel()
