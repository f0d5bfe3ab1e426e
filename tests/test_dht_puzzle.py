"""The proof of work for DHT writes: its codec, its check and its price."""

from __future__ import annotations

from functools import partial

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pmsg.dht import puzzle
from p2pmsg.dht.puzzle import MAX_EFFORT, MIN_EFFORT, Paid, Price, Pricing
from p2pmsg.errors import RemoteProtocolError

WRITER = bytes(range(32))
OTHER = bytes(32)
STORE = 4


def counter_rng() -> object:
    count = 0

    def rng(n: int) -> bytes:
        nonlocal count
        count += 1
        return count.to_bytes(n, "big")

    return rng


def solve(price: Price, writer: bytes = WRITER, body: bytes = b"record") -> Paid:
    return trio.run(partial(puzzle.solve, price, writer, STORE, body, first=bytes(8)))


@given(st.binary(min_size=16, max_size=16), st.integers(1, 300), st.binary(max_size=64))
def test_a_solution_checks_for_its_writer_and_write(seed: bytes, effort: int, body: bytes) -> None:
    paid = solve(Price(seed, effort), body=body)
    assert puzzle.check(paid, WRITER)
    assert puzzle.decode_paid(puzzle.encode_paid(paid)) == paid


def test_a_solution_is_bound_to_the_writer_the_write_and_the_price() -> None:
    price = Price(b"s" * 16, 1 << 12)
    paid = solve(price)
    assert puzzle.check(paid, WRITER)
    assert not puzzle.check(paid, OTHER)
    assert not puzzle.check(Paid(STORE, price, paid.nonce, b"another record"), WRITER)
    assert not puzzle.check(Paid(STORE + 1, price, paid.nonce, paid.body), WRITER)
    assert not puzzle.check(Paid(STORE, Price(b"t" * 16, 1 << 12), paid.nonce, paid.body), WRITER)
    # A proof found at a low effort does not pass for a high one.
    cheap = solve(Price(b"s" * 16, 2))
    assert not puzzle.check(Paid(STORE, price, cheap.nonce, cheap.body), WRITER)


def test_the_work_is_about_the_effort() -> None:
    tries = [int.from_bytes(solve(Price(bytes([i]) * 16, 256)).nonce, "big") + 1 for i in range(64)]
    assert 128 < sum(tries) / len(tries) < 512


def test_writers_refuse_more_work_than_the_cap() -> None:
    with pytest.raises(ValueError, match="more work"):
        solve(Price(b"s" * 16, MAX_EFFORT + 1))


@given(st.binary(max_size=40))
def test_prices_and_paid_bodies_decode_or_raise_the_protocol_error(data: bytes) -> None:
    try:
        price = puzzle.decode_price(data)
    except RemoteProtocolError:
        pass
    else:
        assert price.effort >= 1
        assert puzzle.encode_price(price) == data
    try:
        paid = puzzle.decode_paid(data)
    except RemoteProtocolError:
        assert len(data) < 29
    else:
        assert puzzle.encode_paid(paid) == data


def test_a_price_of_no_effort_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="no effort"):
        puzzle.decode_price(puzzle.encode_price(Price(b"s" * 16, 0)))


def accept(pricing: Pricing, paid: Paid, writer: bytes, now: float) -> Price | None:
    return pricing.accept(paid.price, puzzle.proof(paid, writer), now)


def flood(pricing: Pricing, now: float, writes: int) -> list[Price | None]:
    return [pricing.ask(now) for _ in range(writes)]


def test_writes_are_free_until_a_window_brings_more_than_calm() -> None:
    pricing = Pricing(counter_rng(), calm=10, window=10.0)  # type: ignore[arg-type]
    assert flood(pricing, 0.0, 10) == [None] * 10
    assert flood(pricing, 10.0, 11) == [None] * 11  # a calm window, then a busy one
    price = pricing.ask(20.0)
    assert price is not None and price.effort == MIN_EFFORT
    assert pricing.stats()["priced"] == 1


def test_a_paid_write_is_taken_once_and_the_price_follows_the_load() -> None:
    pricing = Pricing(counter_rng(), calm=10, window=10.0)  # type: ignore[arg-type]
    flood(pricing, 0.0, 11)
    price = pricing.ask(10.0)
    assert price is not None
    paid = solve(price)
    assert accept(pricing, paid, WRITER, 10.0) is None
    assert accept(pricing, paid, WRITER, 10.0) == price  # spent
    assert accept(pricing, paid, OTHER, 10.0) == price  # not theirs
    low = Paid(STORE, Price(price.seed, 1), b"\0" * 8, b"x")
    assert accept(pricing, low, WRITER, 10.0) == price  # less than asked
    # Busy again: the effort doubles under a new seed; the old seed is still honoured.
    for i in range(11):
        assert accept(pricing, solve(price, body=bytes([i])), WRITER, 15.0) is None
    doubled = pricing.ask(20.0)
    assert doubled is not None and doubled.effort == 2 * MIN_EFFORT
    assert doubled.seed != price.seed
    assert accept(pricing, solve(price, body=b"late"), WRITER, 20.0) is None
    # Two windows on, the first seed is forgotten; a calm window halved the effort.
    refused = accept(pricing, solve(price, body=b"later"), WRITER, 30.0)
    assert refused is not None and refused.effort == MIN_EFFORT
    # Another calm window: free again.
    assert pricing.ask(40.0) is None
    assert pricing.stats() == {
        "effort": 0,
        "priced": 1 + 3 + 1 + 1,
        "paid": 1 + 11 + 1,
        "refused_proofs": 3 + 1,
    }


def test_a_long_idle_spell_is_skipped_at_once() -> None:
    pricing = Pricing(counter_rng(), calm=10, window=10.0)  # type: ignore[arg-type]
    flood(pricing, 0.0, 11)
    assert pricing.ask(10.0) is not None
    assert pricing.ask(10.0 + 86_400 * 365) is None
    assert pricing.effort == 0


def test_writers_that_never_pay_hold_the_price_but_do_not_raise_it() -> None:
    pricing = Pricing(counter_rng(), calm=10, window=10.0)  # type: ignore[arg-type]
    flood(pricing, 0.0, 11)
    for window in range(1, 6):
        prices = flood(pricing, 10.0 * window, 50)
        assert {p.effort if p else 0 for p in prices} == {MIN_EFFORT}
    assert pricing.stats()["paid"] == 0
    assert pricing.ask(60.0) is not None  # the last window was still busy
    assert pricing.ask(70.0) is None
