"""What onion delivery puts in Sphinx messages: round trips, caps and tampering."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pmsg.delivery import onion_frames as f
from p2pmsg.delivery.mailbox_onion import _reassemble
from p2pmsg.dht.mailbox import entry_id
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.onion import sphinx

ids = st.binary(min_size=16, max_size=16)
surbs = st.binary(min_size=sphinx.SURB_BYTES, max_size=sphinx.SURB_BYTES)
messages = st.one_of(
    st.builds(f.ForwardMessage, surbs, st.binary(max_size=f.MAX_ENVELOPE)),
    st.builds(f.ReplyMessage, st.lists(ids, min_size=1, max_size=f.MAX_ACKS).map(tuple)),
    st.builds(
        f.FetchRequest,
        st.binary(min_size=32, max_size=32),
        st.integers(0, 2**32 - 1),
        st.binary(min_size=f.SESSION_BYTES, max_size=f.SESSION_BYTES),
        st.lists(surbs, min_size=1, max_size=f.MAX_FETCH_SURBS).map(tuple),
        st.lists(st.binary(min_size=8, max_size=8), max_size=f.MAX_SEEN).map(tuple),
    ),
    st.builds(
        f.ClearRequests, st.lists(st.binary(max_size=400), min_size=1, max_size=3).map(tuple)
    ),
    st.builds(
        f.EntryPart,
        ids,
        st.integers(0, 2),
        st.integers(3, 255),
        st.integers(0, 0xFFFF),
        st.binary(max_size=f.MAX_PART),
    ),
    st.integers(2, f.MAX_FRAGMENTS).flatmap(
        lambda count: st.builds(
            f.Fragment,
            st.binary(min_size=f.SET_BYTES, max_size=f.SET_BYTES),
            st.integers(0, count - 1),
            st.just(count),
            st.binary(min_size=1, max_size=f.FRAGMENT_DATA),
        )
    ),
    st.sampled_from(f.Unreadable),
)


ENCODERS: dict[type, Callable[[Any], bytes]] = {
    f.ForwardMessage: f.encode_forward,
    f.ReplyMessage: f.encode_reply,
    f.FetchRequest: f.encode_fetch,
    f.ClearRequests: f.encode_clears,
    f.EntryPart: f.encode_part,
    f.Fragment: f.encode_fragment,
    f.Unreadable: f.encode_unreadable,
}


def encode(message: f.OnionMessage) -> bytes:
    return ENCODERS[type(message)](message)


@given(messages)
def test_every_message_round_trips_and_fits_one_packet(message: f.OnionMessage) -> None:
    data = encode(message)
    assert len(data) <= sphinx.MAX_MESSAGE
    assert f.decode(data) == message


@pytest.mark.parametrize("data", [b"\x01\x07\x00", b"\x01\x07\x04", b"\x01\x07\x01\x00"])
def test_an_unknown_or_long_unreadable_reply_is_refused(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        f.decode(data)


@given(messages, st.data())
def test_a_cut_message_is_refused(message: f.OnionMessage, data: st.DataObject) -> None:
    wire = encode(message)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(RemoteProtocolError):
        f.decode(wire[:cut])


def test_oversized_requests_are_refused_by_the_encoder() -> None:
    surb = bytes(sphinx.SURB_BYTES)
    with pytest.raises(ValueError, match="SURBs"):
        f.encode_fetch(f.FetchRequest(bytes(32), 1, bytes(8), (surb,) * 4))
    with pytest.raises(ValueError, match="seen"):
        f.encode_fetch(
            f.FetchRequest(bytes(32), 1, bytes(8), (surb,), (bytes(8),) * (f.MAX_SEEN + 1))
        )
    with pytest.raises(ValueError, match="fit"):
        f.encode_clears(f.ClearRequests((bytes(1500), bytes(1500))))


async def test_parts_reassemble_into_the_entry_they_name() -> None:
    blob = bytes(range(256)) * 10
    half = len(blob) // 2
    send, receive = trio.open_memory_channel[f.EntryPart](3)
    entry = entry_id(blob)
    send.send_nowait(f.EntryPart(entry, 1, 2, 4, blob[half:]))  # out of order is fine
    send.send_nowait(f.EntryPart(entry, 0, 2, 4, blob[:half]))
    assert await _reassemble(receive) == (blob, 4)


async def test_parts_that_do_not_make_their_entry_are_refused() -> None:
    send, receive = trio.open_memory_channel[f.EntryPart](3)
    send.send_nowait(f.EntryPart(entry_id(b"real"), 0, 2, 0, b"fa"))
    send.send_nowait(f.EntryPart(entry_id(b"real"), 1, 2, 0, b"ke"))
    with pytest.raises(RemoteProtocolError, match="id"):
        await _reassemble(receive)
    send.send_nowait(f.EntryPart(bytes(16), 0, 0, 0, b""))
    assert await _reassemble(receive) is None  # nothing unseen is left
