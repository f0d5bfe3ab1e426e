"""Onion messages over one packet: split, reassembled in any order, bounded."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmsg.delivery import onion_frames as f
from p2pmsg.delivery.fragments import Reassembly, split
from p2pmsg.onion import sphinx


def fragments_of(message: bytes) -> list[f.Fragment]:
    parts = [f.decode(p) for p in split(message, os.urandom)]
    assert all(isinstance(p, f.Fragment) for p in parts)
    return parts  # type: ignore[return-value]


@given(st.binary(min_size=1, max_size=f.MAX_FORWARD), st.randoms(use_true_random=False))
def test_any_order_with_duplicates_gives_back_the_message(
    message: bytes, shuffle: random.Random
) -> None:
    parts = split(message, os.urandom)
    assert all(len(p) <= sphinx.MAX_MESSAGE for p in parts)
    if len(message) <= sphinx.MAX_MESSAGE:
        assert parts == [message]  # no fragment header on a message that fits
        return
    decoded = fragments_of(message)
    assert len({p.set for p in decoded}) == 1
    arrivals = decoded + shuffle.sample(decoded, len(decoded) // 2)
    shuffle.shuffle(arrivals)
    reassembly = Reassembly()
    out = [reassembly.add(p, 0.0) for p in arrivals]
    done = [o for o in out if o is not None]
    assert done == [message]
    assert len(reassembly) == 0


def test_too_long_a_message_is_refused() -> None:
    assert len(split(bytes(f.MAX_FORWARD), os.urandom)) == f.MAX_FRAGMENTS
    with pytest.raises(ValueError, match="at most"):
        split(bytes(f.MAX_FORWARD + 1), os.urandom)


def test_two_attempts_never_mix() -> None:
    first, second = fragments_of(b"a" * 5000), fragments_of(b"b" * 5000)
    reassembly = Reassembly()
    assert reassembly.add(first[0], 0.0) is None
    assert reassembly.add(second[1], 0.0) is None
    assert reassembly.add(second[2], 0.0) is None
    assert reassembly.add(first[1], 0.0) is None
    assert reassembly.add(second[0], 0.0) == b"b" * 5000
    assert reassembly.add(first[2], 0.0) == b"a" * 5000


def test_a_flood_of_sets_keeps_the_newest_and_bounded() -> None:
    reassembly = Reassembly(max_sets=4)
    kept = fragments_of(b"k" * 3000)
    reassembly.add(kept[0], 0.0)
    for _ in range(10):
        reassembly.add(fragments_of(bytes(3000))[0], 0.0)
    assert len(reassembly) == 4
    assert reassembly.stats.evicted == 7
    assert reassembly.add(kept[1], 0.0) is None  # its first half was evicted


def test_an_old_incomplete_set_expires() -> None:
    reassembly = Reassembly(max_age=60.0)
    old = fragments_of(b"o" * 3000)
    reassembly.add(old[0], 0.0)
    reassembly.add(fragments_of(b"n" * 3000)[0], 61.0)
    assert reassembly.stats.expired == 1
    assert len(reassembly) == 1
    assert reassembly.add(old[1], 61.0) is None


def test_a_fragment_that_disagrees_on_the_count_drops_its_set() -> None:
    parts = fragments_of(b"c" * 5000)
    reassembly = Reassembly()
    reassembly.add(parts[0], 0.0)
    liar = f.Fragment(parts[1].set, 1, parts[1].count + 1, b"forged")
    assert reassembly.add(liar, 0.0) is None
    assert reassembly.stats.conflicting == 1
    assert len(reassembly) == 0


def test_the_encoder_refuses_what_the_decoder_would() -> None:
    set_id = bytes(f.SET_BYTES)
    with pytest.raises(ValueError, match="count"):
        f.encode_fragment(f.Fragment(set_id, 0, 1, b"x"))  # one fragment is no fragment
    with pytest.raises(ValueError, match="count"):
        f.encode_fragment(f.Fragment(set_id, 2, 2, b"x"))
    with pytest.raises(ValueError, match="count"):
        f.encode_fragment(f.Fragment(set_id, 0, f.MAX_FRAGMENTS + 1, b"x"))
    with pytest.raises(ValueError, match="data"):
        f.encode_fragment(f.Fragment(set_id, 0, 2, bytes(f.FRAGMENT_DATA + 1)))
