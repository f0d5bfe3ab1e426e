"""The onion service's small parts: the persisted mailbox clears, the resolver's cache."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from p2pmsg.dht.peer import Peer
from p2pmsg.keys import node_id_of
from p2pmsg.onion_service import _decode_pending, _encode_pending
from p2pmsg.relay import Resolver


def test_pending_clears_round_trip() -> None:
    pending = {20_000: [b"\x01" * 16, b"\x02" * 16], 20_001: []}
    assert _decode_pending(_encode_pending(pending)) == pending


@pytest.mark.parametrize(
    "text", [None, "", "[]", "{", '{"x": []}', '{"1": ["zz"]}', '{"1": 5}', "null"]
)
def test_damaged_pending_clears_are_forgotten(text: str | None) -> None:
    assert _decode_pending(text) == {}


KEYS = {node_id_of(key): key for key in (bytes([i]) * 32 for i in range(5))}


class _Table:
    def get(self, node_id: bytes) -> None:
        return None


class _Dht:
    """A DHT neighbour that finds every node and counts the lookups."""

    def __init__(self) -> None:
        self.table = _Table()
        self.lookups = 0

    async def find_peer(self, node_id: bytes) -> Peer:
        self.lookups += 1
        return Peer(node_id, KEYS[node_id], ("tcp:192.0.2.1:1",), "192.0.")


async def test_the_resolver_caches_lookups_within_its_bounds(autojump_clock: MockClock) -> None:
    dht = _Dht()
    resolver = Resolver(dht, capacity=3, ttl=60.0)  # type: ignore[arg-type]
    ids = list(KEYS)
    for node_id in ids:
        assert (await resolver.resolve(node_id)) is not None
    assert dht.lookups == 5
    assert len(resolver._found) == 3  # the oldest two were forgotten
    await resolver.resolve(ids[-1])
    assert dht.lookups == 5  # cached
    await resolver.resolve(ids[0])
    assert dht.lookups == 6  # forgotten, looked up again
    await trio.sleep(61)
    await resolver.resolve(ids[-1])
    assert dht.lookups == 7  # expired
