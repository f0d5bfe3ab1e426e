"""Which key opens a packet at a relay: every key still opens its layers, in
the order that wastes the fewest X25519 (counted, never timed)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, cast

import nacl.bindings
import pytest
import trio

from p2pmsg.dht.peer import Peer
from p2pmsg.dht.service import Dht
from p2pmsg.keys import Identity
from p2pmsg.onion import sphinx
from p2pmsg.relay import OnionKeys, Relay, RelayOptions, Resolver, epoch_of
from p2pmsg.store import Store, run_inline

NOW = 20_000 * 86_400.0 + 3_600.0
EPOCH = epoch_of(NOW)


class _Resolver:
    """Sends nowhere: remembers the next hops it was asked to reach."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, links: object, node_id: bytes, data: bytes) -> None:
        self.sent.append(node_id)


class _Links:
    async def send(self, peer: Peer, data: bytes) -> None:
        raise AssertionError("the resolver sends")


class _Node:
    def __init__(self, relay: Relay, resolver: _Resolver, delivered: list[sphinx.Deliver]) -> None:
        self.relay = relay
        self.resolver = resolver
        self.delivered = delivered
        self.identity = relay.identity
        self.onion = dict(relay.keys.published())
        self.next_hop = Identity.generate()

    def packet(self, key: bytes | None, *, deliver: bool = False) -> bytes:
        """A packet whose first layer is ours under ``key`` (None: our identity's)."""
        me = sphinx.Hop(self.identity.node_id, key or self.identity.public.x25519)
        onward = sphinx.Hop(self.next_hop.node_id, self.next_hop.public.x25519)
        route = [me] if deliver else [me, onward]
        return sphinx.create_packet(route, b"hello", os.urandom)[1]

    async def process(self, *packets: bytes) -> None:
        async with trio.open_nursery() as nursery:
            await self.relay._process(list(packets), nursery)


@asynccontextmanager
async def relay_node(tmp_path: Path) -> AsyncIterator[_Node]:
    async with await Store.open(tmp_path / "relay.sqlite", offload=run_inline) as store:
        keys = OnionKeys(store, os.urandom)
        await keys.refresh(NOW)
        resolver = _Resolver()
        delivered: list[sphinx.Deliver] = []

        async def on_deliver(deliver: sphinx.Deliver) -> None:
            delivered.append(deliver)

        relay = Relay(
            Identity.generate(),
            store,
            keys,
            _Links(),
            cast(Dht, None),
            cast(Resolver, resolver),
            on_deliver,
            options=RelayOptions(),
            wall_clock=lambda: NOW,
        )
        yield _Node(relay, resolver, delivered)


@contextmanager
def counted_x25519(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    calls = [0]
    real: Callable[..., bytes] = nacl.bindings.crypto_scalarmult

    def counting(*args: Any) -> bytes:
        calls[0] += 1
        return real(*args)

    with monkeypatch.context() as patch:
        patch.setattr(nacl.bindings, "crypto_scalarmult", counting)
        yield calls


async def test_every_key_opens_its_layers_and_every_replay_is_refused(tmp_path: Path) -> None:
    async with relay_node(tmp_path) as node:
        epochs = [EPOCH - 1, EPOCH, EPOCH + 1]
        assert sorted(node.onion) == epochs
        relayed = [node.packet(node.onion[e]) for e in epochs]
        mine = node.packet(None, deliver=True)
        await node.process(*relayed, mine)
        assert node.resolver.sent == [node.next_hop.node_id] * 3
        assert [d.message for d in node.delivered] == [b"hello"]
        assert [len(node.relay.replay.tags(e)) for e in epochs] == [1, 1, 1]
        await node.process(*relayed, mine)
        stats = node.relay.stats
        assert (stats.replays, stats.bad_packets, stats.tagged) == (4, 0, 0)
        assert len(node.resolver.sent) == 3
        assert len(node.delivered) == 1


async def test_a_layer_under_the_wrong_kind_of_key_is_refused(tmp_path: Path) -> None:
    async with relay_node(tmp_path) as node:
        current = node.onion[EPOCH]
        deliver_under_onion_key = node.packet(current, deliver=True)
        relay_under_identity = node.packet(None)
        garbage = os.urandom(sphinx.PACKET_BYTES)
        await node.process(deliver_under_onion_key, relay_under_identity, garbage)
        assert node.relay.stats.bad_packets == 3
        tampered = bytearray(node.packet(None, deliver=True))
        tampered[-1] ^= 1
        await node.process(bytes(tampered))
        assert node.relay.stats.tagged == 1
        assert node.resolver.sent == []
        assert node.delivered == []


@pytest.mark.parametrize(
    ("layer", "x25519"),
    [
        # the shared secret and the blinding of alpha: nothing wasted
        ("relay, this epoch", 2),
        # this epoch's onion key, then the identity key (before the fix: 3 + 1)
        ("destination", 2),
        # this epoch's key and the identity key first, then the shared secret and the blinding
        ("relay, previous epoch", 4),
        ("relay, next epoch", 5),
        # every key, once: this epoch's, the identity's, the previous and next epochs'
        ("not for us", 4),
    ],
)
async def test_x25519_calls_per_packet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layer: str, x25519: int
) -> None:
    async with relay_node(tmp_path) as node:
        packets = {
            "relay, this epoch": node.packet(node.onion[EPOCH]),
            "destination": node.packet(None, deliver=True),
            "relay, previous epoch": node.packet(node.onion[EPOCH - 1]),
            "relay, next epoch": node.packet(node.onion[EPOCH + 1]),
            "not for us": node.packet(Identity.generate().public.x25519),
        }
        with counted_x25519(monkeypatch) as calls:
            await node.process(packets[layer])
        assert calls[0] == x25519
        accepted = len(node.resolver.sent) + len(node.delivered)
        assert accepted == (0 if layer == "not for us" else 1)
