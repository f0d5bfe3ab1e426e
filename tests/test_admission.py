"""The admission of inbound links (p2pmsg.admission): its limits as a state machine."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pmsg.admission import IDLE_EVICTION, Admission, Limits, Refused, Ticket, prefix_of
from p2pmsg.link.connection import MAX_BUFFER

ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.1.1", "2001:db8::1", "2001:db8:0:1::1", "u0001", None)
SMALL = Limits(
    links=9, links_per_address=3, links_per_prefix=4, pending=6, pending_per_address=2,
    pending_per_prefix=3, opens_per_second=0.5, opens_burst=4, memory=8 * 1000, link_bytes=1000,
)  # fmt: skip


def test_prefixes_are_slash_24_and_slash_48_and_names_their_own() -> None:
    assert prefix_of("10.1.2.3") == prefix_of("10.1.2.200") == "10.1.2.0/24"
    assert prefix_of("::ffff:10.1.2.3") == "10.1.2.0/24"
    assert prefix_of("2001:db8:1:2::5") == prefix_of("[2001:db8:1:ffff::9]") == "2001:db8:1::/48"
    assert prefix_of("u0001") != prefix_of("u0002")


def test_the_default_link_reservation_covers_the_secure_links_buffer() -> None:
    assert Limits().link_bytes > MAX_BUFFER
    assert Limits().memory // Limits().link_bytes >= 64


@pytest.mark.parametrize(
    "kwargs", [{"links": 0}, {"opens_per_second": 0}, {"memory": 10, "link_bytes": 100}]
)
def test_impossible_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_an_address_that_opens_too_fast_waits_for_its_bucket() -> None:
    admission = Admission(Limits(opens_per_second=1.0, opens_burst=2))
    for _ in range(2):
        ticket = admission.admit("10.0.0.1", now=0.0)
        assert isinstance(ticket, Ticket)
        ticket.close()
    assert admission.admit("10.0.0.1", now=0.0) is Refused.RATE
    assert isinstance(admission.admit("10.0.0.2", now=0.0), Ticket)
    assert isinstance(admission.admit("10.0.0.1", now=1.0), Ticket)


def test_when_full_the_busiest_address_gives_way_to_a_newcomer() -> None:
    admission = Admission(Limits(links=4, opens_burst=10))
    ended: list[str] = []

    def up(address: str) -> Ticket:
        ticket = admission.admit(address, now=0.0)
        assert isinstance(ticket, Ticket)
        ticket.established()
        ticket.evict = lambda: ended.append(address)
        return ticket

    flood = [up("10.0.0.1") for _ in range(3)]
    honest = up("10.9.0.1")
    assert admission.admit("10.0.0.1", now=0.0) is Refused.TOTAL  # no busier address
    newcomer = admission.admit("10.8.0.1", now=0.0)
    assert isinstance(newcomer, Ticket)
    assert ended == ["10.0.0.1"] and flood[0].closed and not honest.closed
    assert (admission.links, admission.evicted) == (4, 1)
    newcomer.established()
    assert isinstance(admission.admit("10.7.0.1", now=0.0), Ticket)  # 2 against none
    assert ended == ["10.0.0.1"] * 2
    assert admission.admit("10.6.0.1", now=0.0) is Refused.TOTAL  # 1 against none: fair


def test_when_full_the_busiest_network_gives_way_to_a_newcomer_from_another() -> None:
    """S14: Sybils with an address each, from two networks, and never idle."""
    admission = Admission(Limits(links=7, opens_burst=10))
    ended: list[str] = []
    now = 10 * IDLE_EVICTION
    for address in ("66.0.0.1", "66.1.0.2", "66.0.0.3", "66.1.0.4", "66.0.0.5", "95.0.0.2"):
        ticket = admission.admit(address, now=0.0)
        assert isinstance(ticket, Ticket)
        ticket.established()
        ticket.evict = lambda a=address: ended.append(a)
        ticket.touch(now)
    honest = admission.admit("95.0.0.4", now=0.0)  # a handshake under way: not evictable
    assert isinstance(honest, Ticket)
    assert admission.admit("66.0.0.9", now=now) is Refused.TOTAL  # 3 against 3
    assert admission.admit("95.0.0.3", now=now) is Refused.TOTAL  # 3 against 2
    assert isinstance(admission.admit("95.1.0.1", now=now), Ticket)  # 3 against none
    assert ended == ["66.0.0.1"]  # the oldest of the busiest network
    assert admission.evicted_idle == 0
    for address in ("66.0.0.9", "66.1.0.9", "95.0.0.3"):  # 2 against 2: balanced
        assert admission.admit(address, now=now) is Refused.TOTAL
    assert ended == ["66.0.0.1"] and not honest.closed
    assert "95.0" not in repr(admission) + repr(honest)  # peers' IPs stay out of reprs


def test_half_open_handshakes_give_way_too() -> None:
    admission = Admission(Limits(pending=3, opens_burst=10))
    ended: list[Ticket] = []
    for _ in range(3):
        ticket = admission.admit("10.0.0.1", now=0.0)
        assert isinstance(ticket, Ticket)
        ticket.evict = lambda t=ticket: ended.append(t)
    assert admission.admit("10.0.0.1", now=0.0) is Refused.PENDING
    assert isinstance(admission.admit("10.9.0.1", now=0.0), Ticket)
    assert len(ended) == 1 and ended[0].closed and admission.pending == 3


def test_when_full_the_link_silent_longest_gives_way_to_a_newcomer() -> None:
    admission = Admission(Limits(links=3, opens_burst=10))
    ended: list[str] = []

    def up(address: str | None, now: float) -> Ticket:
        ticket = admission.admit(address, now=now)
        assert isinstance(ticket, Ticket)
        ticket.established()
        ticket.evict = lambda: ended.append(str(address))
        return ticket

    first, second, third = up("10.0.0.1", 0.0), up("10.1.0.1", 10.0), up(None, 20.0)
    first.touch(IDLE_EVICTION)  # a message: the first is no longer the silent one
    now = 10.0 + IDLE_EVICTION
    assert admission.admit("10.2.0.1", now=now - 1.0) is Refused.TOTAL  # not silent long enough
    assert admission.admit("10.0.0.1", now=now) is Refused.TOTAL  # it holds a link already
    newcomer = admission.admit("10.2.0.1", now=now)
    assert isinstance(newcomer, Ticket)
    assert ended == ["10.1.0.1"] and second.closed and not (first.closed or third.closed)
    assert (admission.evicted, admission.evicted_idle) == (1, 1)
    assert admission.stats()["evicted_idle"] == 1
    assert admission.admit(None, now=now) is Refused.TOTAL  # the unknown one: 50 s only
    assert isinstance(admission.admit(None, now=20.0 + IDLE_EVICTION), Ticket)
    assert ended == ["10.1.0.1", "None"]


def test_a_handshake_under_way_is_never_taken_for_an_idle_link() -> None:
    admission = Admission(Limits(links=2, opens_burst=10))
    for address in ("10.0.0.1", "10.1.0.1"):
        ticket = admission.admit(address, now=0.0)
        assert isinstance(ticket, Ticket)
        ticket.evict = lambda: None
    assert admission.admit("10.2.0.1", now=10 * IDLE_EVICTION) is Refused.TOTAL


class AdmissionMachine(RuleBasedStateMachine):
    """Against a model: the counts never pass a limit, a refusal names a limit
    that was reached, evictions make room, and closing every ticket returns to
    nothing held."""

    def __init__(self) -> None:
        super().__init__()
        self.admission = Admission(SMALL)
        self.open: list[Ticket] = []
        self.now = 0.0

    def _held(self, pending_only: bool) -> tuple[int, Counter[str]]:
        tickets = [t for t in self.open if t.pending or not pending_only]
        counts: Counter[str] = Counter()
        for t in tickets:
            if t.address is not None:
                counts[t.address] += 1
                counts[prefix_of(t.address)] += 1
        return len(tickets), counts

    @rule(address=st.sampled_from(ADDRESSES), wait=st.sampled_from([0.0, 0.0, 1.0, 5.0, 60.0]))
    def admit(self, address: str | None, wait: float) -> None:
        self.now += wait
        links, per = self._held(pending_only=False)
        pending, per_pending = self._held(pending_only=True)
        before = list(self.open)
        got = self.admission.admit(address, self.now)
        if isinstance(got, Ticket):
            for gone in (t for t in before if t not in self.open):
                assert self._fair(gone, address, per, per_pending), f"{gone} evicted unfairly"
            self.open.append(got)
            got.evict = lambda: self.open.remove(got)  # admit has closed it
            return
        lim = SMALL
        reached = {
            Refused.TOTAL: links >= lim.links,
            Refused.MEMORY: (links + 1) * lim.link_bytes > lim.memory,
            Refused.PENDING: pending >= lim.pending,
            Refused.RATE: address is not None,
        }
        if address is not None:
            prefix = prefix_of(address)
            reached |= {
                Refused.ADDRESS: per[address] >= lim.links_per_address,
                Refused.PREFIX: per[prefix] >= lim.links_per_prefix,
                Refused.PENDING_ADDRESS: per_pending[address] >= lim.pending_per_address,
                Refused.PENDING_PREFIX: per_pending[prefix] >= lim.pending_per_prefix,
            }
        assert reached.get(got), f"refused for {got} without reaching it"

    def _fair(self, gone: Ticket, address: str | None, *counts: Counter[str]) -> bool:
        """An evicted link's address or network held two more than the
        newcomer's, or it was idle long enough and the newcomer held none."""
        assert gone.closed
        if gone.address is not None:
            theirs = (gone.address, prefix_of(gone.address))
            for per in counts:
                own = [0, 0] if address is None else [per[address], per[prefix_of(address)]]
                if any(per[key] >= n + 2 for key, n in zip(theirs, own, strict=True)):
                    return True
        idle = self.now - gone.used >= IDLE_EVICTION and not gone.pending
        return idle and (address is None or not counts[0][address])

    @precondition(lambda self: self.open)
    @rule(index=st.integers(min_value=0), close=st.booleans())
    def finish_or_close(self, index: int, close: bool) -> None:
        ticket = self.open[index % len(self.open)]
        if close:
            ticket.close()
            ticket.close()  # idempotent
            self.open.remove(ticket)
        else:
            ticket.established()

    @precondition(lambda self: self.open)
    @rule(index=st.integers(min_value=0))
    def carry(self, index: int) -> None:
        self.open[index % len(self.open)].touch(self.now)

    @invariant()
    def within_limits(self) -> None:
        links, per = self._held(pending_only=False)
        pending, per_pending = self._held(pending_only=True)
        lim, a = SMALL, self.admission
        assert (a.links, a.pending) == (links, pending)
        assert links <= lim.links and pending <= lim.pending
        assert a.reserved_bytes == links * lim.link_bytes <= lim.memory
        for key, n in per.items():
            is_prefix = "/" in key
            assert n <= (lim.links_per_prefix if is_prefix else lim.links_per_address)
            assert per_pending[key] <= (
                lim.pending_per_prefix if is_prefix else lim.pending_per_address
            )

    def teardown(self) -> None:
        for ticket in self.open:
            ticket.close()
        assert (self.admission.links, self.admission.pending, self.admission.reserved_bytes) == (
            0, 0, 0,
        )  # fmt: skip
        assert not self.admission._links and not self.admission._pending


TestAdmission = AdmissionMachine.TestCase
