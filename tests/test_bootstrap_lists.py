"""Signed bootstrap lists (p2pmsg.bootstrap): judged at our clock, kept in the
store, spread through the DHT, and their invites used as seeds (S20)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from simworld import SimWorld, sim_wall_clock
from trio.testing import MockClock

from p2pmsg.bootstrap import (
    LINE_PREFIX,
    BootstrapLists,
    BootstrapRefused,
    Refusal,
    from_line,
    to_line,
)
from p2pmsg.dht import records
from p2pmsg.dht.records import (
    DAY,
    InvalidRecord,
    decode_bootstrap_value,
    encode_bootstrap_value,
    make_bootstrap_record,
)
from p2pmsg.join import seeds_from_invites
from p2pmsg.keys import Identity
from p2pmsg.store import Store, run_inline

NOW = 1_800_000_000.0
PUBLISHER = Identity(bytes(range(32)))
STRANGER = Identity(bytes(range(1, 33)))
INVITES = [
    f"p2pmsg://{Identity(bytes(32)).public.encoded()}@tcp:192.0.2.1:4001",
    f"p2pmsg://{Identity(bytes([1]) * 32).public.encoded()}@ws:[2001:db8::1]:443/p",
]


def listed(seq: int, *, days: float = 30, signed: float = NOW, by: Identity = PUBLISHER) -> str:
    return to_line(make_bootstrap_record(by, INVITES[: 1 + seq % 2], seq, int(signed + days * DAY)))


@pytest.fixture
async def lists(tmp_path: Path) -> AsyncIterator[BootstrapLists]:
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        yield BootstrapLists(store, [PUBLISHER.public.key], lambda: NOW)


async def refused(lists: BootstrapLists, line: str) -> Refusal:
    with pytest.raises(BootstrapRefused) as caught:
        await lists.accept(from_line(line))
    return caught.value.reason


async def test_a_newer_list_replaces_the_one_held_and_an_older_one_is_refused(
    lists: BootstrapLists,
) -> None:
    assert await lists.accept(from_line(listed(5)))
    assert not await lists.accept(from_line(listed(5)))  # the one we hold
    assert await refused(lists, listed(4)) is Refusal.ROLLED_BACK
    assert await lists.accept(from_line(listed(6)))
    assert await refused(lists, listed(5)) is Refusal.ROLLED_BACK
    held = await lists.held(PUBLISHER.public.key)
    assert held is not None and held.seq == 6
    assert lists.accepted == 2 and lists.refused == {"rolled_back": 2}


async def test_a_second_list_under_the_same_number_is_refused(lists: BootstrapLists) -> None:
    assert await lists.accept(from_line(listed(5)))
    other = to_line(make_bootstrap_record(PUBLISHER, INVITES, 5, int(NOW + DAY)))
    assert await refused(lists, other) is Refusal.ROLLED_BACK


async def test_each_bad_list_is_refused_saying_why(lists: BootstrapLists) -> None:
    expired = listed(9, signed=NOW - 31 * DAY)
    assert await refused(lists, expired) is Refusal.EXPIRED
    assert await refused(lists, listed(9, days=32)) is Refusal.TOO_FAR_AHEAD
    assert await refused(lists, listed(9, by=STRANGER)) is Refusal.UNTRUSTED
    record = from_line(listed(9))
    forged = dataclasses.replace(record, seq=10)  # the signature covers the number
    with pytest.raises(BootstrapRefused, match="forged") as caught:
        await lists.accept(forged)
    assert caught.value.reason is Refusal.FORGED
    assert await lists.held(PUBLISHER.public.key) is None
    assert sum(lists.refused.values()) == 4


async def test_a_day_of_clock_skew_is_tolerated(tmp_path: Path) -> None:
    """A list published by a clock a day fast still opens; one a day slow too."""
    async with await Store.open(tmp_path / "db", offload=run_inline) as store:
        behind = BootstrapLists(store, [PUBLISHER.public.key], lambda: NOW - 0.99 * DAY)
        assert await behind.accept(from_line(listed(3)))  # 30.99 days ahead of its clock
        ahead = BootstrapLists(store, [PUBLISHER.public.key], lambda: NOW + 29 * DAY)
        assert await ahead.invites() == INVITES[:2]
        late = BootstrapLists(store, [PUBLISHER.public.key], lambda: NOW + 30 * DAY)
        assert await late.invites() == []  # held, but expired: not a seed


@given(seq=st.integers(0, 2**64 - 1), n=st.integers(1, 2))
def test_a_line_round_trips(seq: int, n: int) -> None:
    record = make_bootstrap_record(PUBLISHER, INVITES[:n], seq, 2**40)
    line = to_line(record)
    assert line.startswith(LINE_PREFIX)
    assert from_line(f"  {line}\n") == record
    assert decode_bootstrap_value(record.value) == tuple(INVITES[:n])


@pytest.mark.parametrize(
    "text",
    ["", "p2pmsg-bootstrap:", f"{LINE_PREFIX}!!", INVITES[0], LINE_PREFIX + "A" * 10_000],
)
def test_a_damaged_line_is_refused(text: str) -> None:
    with pytest.raises(BootstrapRefused) as caught:
        from_line(text)
    assert caught.value.reason is Refusal.MALFORMED


def test_another_record_type_is_not_a_list() -> None:
    prekeys = records.make_prekey_record(PUBLISHER, b"bundle", 1, int(NOW + DAY))
    with pytest.raises(BootstrapRefused, match="not a bootstrap list"):
        from_line(to_line(prekeys))


def test_the_value_is_canonical_and_bounded() -> None:
    with pytest.raises(ValueError, match="1 to 16"):
        encode_bootstrap_value([])
    with pytest.raises(ValueError, match="twice"):
        encode_bootstrap_value([INVITES[0], INVITES[0]])
    with pytest.raises(ValueError, match="canonical"):
        encode_bootstrap_value([" " + INVITES[0]])
    with pytest.raises(ValueError, match="bad invite"):
        encode_bootstrap_value(["https://example.invalid"])
    value = encode_bootstrap_value(INVITES)
    with pytest.raises(InvalidRecord, match="version"):
        decode_bootstrap_value(b"\x09" + value[1:])
    with pytest.raises(InvalidRecord, match="trailing"):
        decode_bootstrap_value(value + b"\x00")


async def test_a_list_spreads_through_the_dht_and_its_invites_become_seeds(
    world: SimWorld, autojump_clock: MockClock
) -> None:
    boot = [world.invite("seed")]
    publisher = Identity.generate()
    key = publisher.public.encoded()
    async with world.node("seed"), world.node("relay", bootstrap=boot) as relay:
        await relay.joined.wait()
        world.home("alice", bootstrap=boot, publishers=[key])
        world.home("bob", bootstrap=boot, publishers=[key])
        async with world.node("alice") as alice, world.node("bob") as bob:
            await alice.joined.wait()
            await bob.joined.wait()
            invites = [world.invite("relay")]
            now = sim_wall_clock()
            record = make_bootstrap_record(publisher, invites, 7, int(now + 30 * DAY))
            assert await alice.import_bootstrap(to_line(record))  # and stored in the DHT
            with trio.fail_after(60):
                assert await bob.refresh_bootstrap() == 1
            assert await bob.refresh_bootstrap() == 0  # the same list again
            assert await bob.bootstrap.invites() == invites
            assert alice._joiner is not None
            seeds = await alice._joiner.seeds()
            assert seeds_from_invites(invites)[0].node_id in {p.node_id for p in seeds}
            status = await bob.status()
            assert status["bootstrap_lists"]["accepted"] == 1
            # a list taken offline (not stored in the DHT) is stored by the next refresh
            newer = make_bootstrap_record(publisher, invites, 8, int(now + 30 * DAY))
            assert await alice.bootstrap.accept(newer)
            assert await bob.refresh_bootstrap() == 0
            assert await alice.refresh_bootstrap() == 0
            assert await bob.refresh_bootstrap() == 1
