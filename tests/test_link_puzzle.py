"""Work asked of handshakes under load: the price frame, the paid flight, the adapter.

The responder's :class:`Pricing` is driven into a price by hand (its own
behaviour is tested in ``test_dht_puzzle.py``); the link's cores pass bytes
in memory, the adapter's tests run over a framed in-memory link pair.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio

from p2pmsg import puzzle
from p2pmsg.errors import HandshakeError
from p2pmsg.link import wire
from p2pmsg.link.connection import NEED_DATA, Established, LinkConnection, Priced, State
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.link.secure import accept_secure, connect_secure
from p2pmsg.puzzle import MIN_EFFORT, Price, Pricing
from tests.test_link_secure import ALICE, BOB, NOW, WINDOW, _rng, memory_link_pair

CALM = 2
BUSY_AT = 10.0
"""The monotonic time at which :func:`busy_pricing` asks for work."""


def busy_pricing() -> Pricing:
    """A pricing whose first window took more than its calm: at BUSY_AT it asks MIN_EFFORT."""
    pricing = Pricing(_rng(7), calm=CALM, window=10.0)
    for _ in range(CALM + 1):
        assert pricing.ask(0.0) is None
    return pricing


def initiator(seed: int = 0) -> LinkConnection:
    return LinkConnection(ALICE, peer=BOB.public, now=NOW, rng=_rng(seed))


def responder(pricing: Pricing, window: ReplayWindow, seed: int = 1_000) -> LinkConnection:
    return LinkConnection(
        BOB, replay=window, now=NOW, rng=_rng(seed), pricing=pricing, monotonic=BUSY_AT
    )


def solve(price: Price, first: bytes = bytes(puzzle.NONCE_BYTES)) -> bytes:
    return trio.run(
        lambda: puzzle.solve_nonce(
            price, person=wire.POW_PERSON, checkpoint=trio.lowlevel.checkpoint, first=first
        )
    )


def priced(init: LinkConnection, resp: LinkConnection) -> tuple[bytes, Price]:
    """Send ``init``'s first flight to ``resp``; return the flight and the price asked."""
    init.initiate()
    hello = init.data_to_send()
    resp.receive_data(hello)
    assert resp.next_event() is NEED_DATA
    price_frame = resp.data_to_send()
    assert price_frame
    init.receive_data(price_frame)
    event = init.next_event()
    assert isinstance(event, Priced)
    assert init.state is State.PRICED
    return hello, event.price


def refused_silently(resp: LinkConnection, data: bytes, match: str) -> None:
    """``resp`` refuses ``data`` with ``match`` and sends nothing back."""
    resp.receive_data(data)
    with pytest.raises(HandshakeError, match=match):
        resp.next_event()
    assert resp.data_to_send() == b""


def test_a_responder_under_load_asks_for_work_and_answers_the_flight_that_pays() -> None:
    pricing, window = busy_pricing(), ReplayWindow(WINDOW)
    init, resp = initiator(), responder(pricing, window)
    _, price = priced(init, resp)
    assert price.effort == MIN_EFFORT
    assert len(window) == 1  # the priced flight's ephemeral key is spent

    init.pay(solve(price))
    resp.receive_data(init.data_to_send())
    assert resp.next_event() == Established(ALICE.public)
    init.receive_data(resp.data_to_send())
    assert init.next_event() == Established(BOB.public)
    # Both ends run the same keys: a message crosses.
    init.send_message(b"paid for")
    resp.receive_data(init.data_to_send())
    assert resp.next_event().data == b"paid for"  # type: ignore[union-attr]
    assert pricing.stats() == {"effort": MIN_EFFORT, "priced": 1, "paid": 1, "refused_proofs": 0}


def test_the_price_comes_before_the_noise_message_is_read() -> None:
    """A flight whose Noise message would not open still gets the price: no
    X25519 operation was spent on it (the ephemeral key and tail are enough)."""
    pricing = busy_pricing()
    init = initiator()
    init.initiate()
    obfs = wire.obfuscation_key(BOB.public.x25519)
    opened = wire.open_handshake(init.data_to_send(), obfs, from_initiator=True)
    assert opened is not None
    noise_message, tail, _ = opened
    broken = noise_message[:32] + bytes(len(noise_message) - 32)
    resp = responder(pricing, ReplayWindow(WINDOW))
    resp.receive_data(
        wire.seal_handshake(obfs, broken, salt=bytes(16), padding=0, from_initiator=True, tail=tail)
    )
    assert resp.next_event() is NEED_DATA
    assert resp.data_to_send()
    assert pricing.stats()["priced"] == 1


def test_a_replay_of_a_priced_flight_gets_nothing_back() -> None:
    pricing, window = busy_pricing(), ReplayWindow(WINDOW)
    hello, _ = priced(initiator(), responder(pricing, window))
    refused_silently(responder(pricing, window, seed=1_001), hello, "replayed")
    assert pricing.stats()["priced"] == 1


def test_a_stale_flight_gets_no_price() -> None:
    pricing = busy_pricing()
    init = LinkConnection(ALICE, peer=BOB.public, now=NOW - 2 * WINDOW, rng=_rng(0))
    init.initiate()
    refused_silently(responder(pricing, ReplayWindow(WINDOW)), init.data_to_send(), "time window")


def test_a_second_flight_that_does_not_pay_is_refused() -> None:
    pricing, window = busy_pricing(), ReplayWindow(WINDOW)
    init, resp = initiator(), responder(pricing, window)
    priced(init, resp)
    other = initiator(seed=5)
    other.initiate()  # fresh, but unpaid
    refused_silently(resp, other.data_to_send(), "did not pay")


def test_a_proof_pays_once() -> None:
    pricing, window = busy_pricing(), ReplayWindow(WINDOW)
    init, resp = initiator(), responder(pricing, window)
    _, price = priced(init, resp)
    nonce = solve(price)
    init.pay(nonce)
    resp.receive_data(init.data_to_send())
    assert isinstance(resp.next_event(), Established)
    # Another client, asked the same price, presents the same proof: refused.
    thief, resp2 = initiator(seed=9), responder(pricing, window, seed=1_002)
    assert priced(thief, resp2)[1] == price
    thief.pay(nonce)
    refused_silently(resp2, thief.data_to_send(), "did not pay")
    assert pricing.stats()["refused_proofs"] == 1


def test_clients_asked_one_price_each_find_a_proof_of_their_own() -> None:
    """Every handshake under one seed pays the same price for the same (empty)
    subject: from one starting nonce they would all find one proof, which
    pays once, and a flooded node let in one honest peer per seed (S16)."""
    pricing, window = busy_pricing(), ReplayWindow(WINDOW)
    for n in range(3):
        init, resp = initiator(seed=20 + n), responder(pricing, window, seed=1_010 + n)
        _, price = priced(init, resp)
        init.pay(solve(price, [bytes(8), b"\x5a" * 8, b"\xa5" * 8][n]))
        resp.receive_data(init.data_to_send())
        assert resp.next_event() == Established(ALICE.public)
    assert pricing.stats()["paid"] == 3
    assert pricing.stats()["refused_proofs"] == 0


def test_the_search_for_a_nonce_wraps_around() -> None:
    price = Price(bytes(16), MIN_EFFORT)
    nonce = solve(price, b"\xff" * puzzle.NONCE_BYTES)
    assert puzzle.proof(price, nonce, person=wire.POW_PERSON) is not None


async def test_connect_secure_draws_its_first_nonce_from_its_rng(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two clients of a priced responder, each with a generator of its own,
    both get in (with one starting nonce the second would be refused)."""
    pricing = Pricing(_rng(7), calm=CALM, window=10.0)
    for _ in range(CALM + 1):
        pricing.ask(trio.current_time())
    await trio.sleep(10.0)  # the busy window closes: the next flights are priced
    window = ReplayWindow(WINDOW)
    for n in range(2):
        client_link, server_link = memory_link_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(
                    accept_secure,
                    server_link,
                    BOB,
                    window,
                    wall_clock=lambda: NOW,
                    rng=_rng(100 + n),
                    pricing=pricing,
                )
            )
            await connect_secure(
                client_link, ALICE, BOB.public, wall_clock=lambda: NOW, rng=_rng(200 + 50 * n)
            )
    assert pricing.stats()["paid"] == 2
    assert pricing.stats()["refused_proofs"] == 0


def _price_frame(price_tail: bytes) -> bytes:
    return wire.seal_handshake(
        wire.obfuscation_key(BOB.public.x25519),
        b"",
        salt=bytes(16),
        padding=3,
        from_initiator=False,
        tail=price_tail,
    )


@pytest.mark.parametrize(
    ("tail", "match"),
    [
        (puzzle.encode_price(Price(bytes(16), puzzle.MAX_EFFORT + 1)), "more work"),
        (puzzle.encode_price(Price(bytes(16), 0)), "bad price"),
        (b"\x01" * 5, "bad price"),
    ],
)
def test_an_initiator_refuses_a_price_beyond_its_cap_or_malformed(tail: bytes, match: str) -> None:
    init = initiator()
    init.initiate()
    init.receive_data(_price_frame(tail))
    with pytest.raises(HandshakeError, match=match):
        init.next_event()


def test_an_initiator_is_asked_for_work_once() -> None:
    pricing, window = busy_pricing(), ReplayWindow(WINDOW)
    init, resp = initiator(), responder(pricing, window)
    _, price = priced(init, resp)
    init.pay(solve(price))
    init.receive_data(_price_frame(puzzle.encode_price(price)))
    with pytest.raises(HandshakeError, match="twice"):
        init.next_event()


def test_a_calm_responder_answers_at_once() -> None:
    pricing = Pricing(_rng(7), calm=CALM, window=10.0)
    init, resp = initiator(), responder(pricing, ReplayWindow(WINDOW))
    init.initiate()
    resp.receive_data(init.data_to_send())
    assert resp.next_event() == Established(ALICE.public)
    assert pricing.stats()["priced"] == 0


async def test_connect_secure_pays_the_price_and_accept_secure_waits_before_each_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_link, server_link = memory_link_pair()
    pricing = Pricing(_rng(7), calm=CALM, window=10.0)
    for _ in range(CALM + 1):
        pricing.ask(trio.current_time())
    await trio.sleep(10.0)  # the busy window closes: the next flight is priced
    replies: list[int] = []

    async def before_reply() -> None:
        replies.append(len(server_link.writes))

    async with trio.open_nursery() as nursery:
        accepted: list[object] = []

        async def serve() -> None:
            accepted.append(
                await accept_secure(
                    server_link,
                    BOB,
                    ReplayWindow(WINDOW),
                    wall_clock=lambda: NOW,
                    rng=_rng(1),
                    pricing=pricing,
                    before_reply=before_reply,
                )
            )

        nursery.start_soon(serve)
        client = await connect_secure(client_link, ALICE, BOB.public, wall_clock=lambda: NOW)
        assert client.peer == BOB.public
    assert replies == [0, 1]  # before the price frame, and before the answer
    assert len(client_link.writes) == 2  # the unpaid flight, then the paid one
    assert pricing.stats()["paid"] == 1 and len(accepted) == 1


async def test_a_failed_before_reply_sends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    client_link, server_link = memory_link_pair()

    async def refuse() -> None:
        raise HandshakeError("the replay tag could not be saved")

    async def serve() -> None:
        with pytest.raises(HandshakeError):
            await accept_secure(
                server_link, BOB, ReplayWindow(WINDOW), wall_clock=lambda: NOW, before_reply=refuse
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(HandshakeError):
            await connect_secure(
                client_link, ALICE, BOB.public, wall_clock=lambda: NOW, timeout=5.0
            )
    assert server_link.writes == []
