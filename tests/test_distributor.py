"""The bridge distributor's ring and the node's rule for asking (p2pmsg.distributor)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmsg import distributor
from p2pmsg.distributor import (
    ASK_EVERY,
    DAY,
    FRESH_FOR,
    PER_REQUEST,
    SECRET_BYTES,
    Distributor,
    needs_more,
)
from p2pmsg.errors import RemoteProtocolError

SECRET = bytes(range(SECRET_BYTES))


def offered(n: int, now: float = 0.0, **options: Any) -> Distributor:
    d = Distributor(SECRET, **options)
    for i in range(n):
        assert d.offer(f"bridge-{i}", now)
    return d


@given(
    n=st.integers(0, 40),
    requester=st.binary(min_size=1, max_size=32),
    failed=st.sets(st.integers(0, 45)),
    at=st.floats(0, FRESH_FOR - 1),
)
def test_an_answer_is_a_few_distinct_young_bridges_none_that_failed(
    n: int, requester: bytes, failed: set[int], at: float
) -> None:
    d = offered(n)
    skip = [f"bridge-{i}" for i in failed]
    got = d.hand_out(requester, at, skip)
    usable = {f"bridge-{i}" for i in range(n)} - set(skip)
    assert len(set(got)) == len(got) == min(PER_REQUEST, len(usable))
    assert set(got) <= usable
    assert d.hand_out(requester, at, skip) == got  # asking again the same day learns nothing


def test_more_bridges_cost_more_identities_or_days() -> None:
    d = offered(300)
    assert len(d.hand_out(b"one", 0.0)) == PER_REQUEST
    many = {b for i in range(200) for b in d.hand_out(i.to_bytes(4, "big"), 0.0)}
    assert len(many) > 10 * PER_REQUEST  # requesters are spread around the ring
    days = {b for day in range(6) for b in d.hand_out(b"one", day * DAY)}
    assert len(days) > PER_REQUEST  # a new day, a new place on the ring


def test_bridges_are_handed_out_only_while_young() -> None:
    d = offered(5)
    assert d.offer("late", FRESH_FOR - 1)
    assert d.hand_out(b"r", FRESH_FOR) == ("late",)
    assert d.hand_out(b"r", 2 * FRESH_FOR) == ()
    assert len(d) == 0


def test_the_ring_is_bounded_and_refuses_a_second_offer() -> None:
    d = offered(10, max_bridges=4)
    assert len(d) == 4
    assert set(d.hand_out(b"r", 0.0, ["bridge-9"])) == {"bridge-6", "bridge-7", "bridge-8"}
    assert not d.offer("bridge-9", 1.0)
    assert "4 bridges" in repr(d) and "bridge-" not in repr(d)


@pytest.mark.parametrize(
    ("secret", "options"),
    [(b"short", {}), (SECRET, {"fresh_for": 0.0}), (SECRET, {"max_bridges": 0})],
)
def test_a_distributor_that_cannot_work_is_refused(secret: bytes, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"secret|must"):
        Distributor(secret, **options)


@pytest.mark.parametrize(
    ("failed", "last_asked", "asks"),
    [
        ((False, False, False), -math.inf, False),
        ((True, False, False), -math.inf, True),  # ask while two still work
        ((True, False, False), 1.0, False),  # asked less than an hour ago
        ((True, False, False, False), -math.inf, False),  # three still work
        ((True, True, True), 0.0, True),  # none left: the node asks if it still has a path
        ((False,), -math.inf, True),  # one bridge is too few
        ((), -math.inf, True),
    ],
)
def test_a_node_keeps_three_working_bridges_asking_at_most_hourly(
    failed: tuple[bool, ...], last_asked: float, asks: bool
) -> None:
    assert needs_more(failed, ASK_EVERY, last_asked) is asks


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=distributor.MAX_FAILED))
def test_a_request_names_failed_bridges_by_key(keys: list[bytes]) -> None:
    assert distributor.decode_request(distributor.encode_request(keys)) == tuple(keys)


@given(st.lists(st.text(max_size=300), max_size=PER_REQUEST))
def test_a_reply_carries_invites_as_sent(invites: list[str]) -> None:
    assert distributor.decode_reply(distributor.encode_reply(invites)) == tuple(invites)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x09",
        b"\x02\x09\x00",  # another version
        b"\x01\x0a\x00",  # a reply where a request goes
        b"\x01\x09\x01" + bytes(31),
        b"\x01\x09\x41" + bytes(32 * 65),  # more than MAX_FAILED
    ],
)
def test_a_bad_request_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        distributor.decode_request(data)


def test_what_cannot_go_on_the_wire_is_refused_before_it_is_sent() -> None:
    with pytest.raises(ValueError, match="at most"):
        distributor.encode_request([bytes(31)])
    with pytest.raises(ValueError, match="at most"):
        distributor.encode_reply(["a"] * (PER_REQUEST + 1))
