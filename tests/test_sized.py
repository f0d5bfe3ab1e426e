"""Lists of length-prefixed items (p2pmsg/sized.py): round trips and bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmsg import sized
from p2pmsg.errors import RemoteProtocolError

ITEMS = st.lists(st.binary(max_size=40), max_size=8)


@given(ITEMS, st.binary(max_size=5), st.binary(max_size=5))
def test_items_come_back_with_the_offset_after_them(
    items: list[bytes], before: bytes, after: bytes
) -> None:
    data = before + sized.pack(items) + after
    got, end = sized.unpack(data, len(before), len(items), 40, "test list")
    assert got == items
    assert data[end:] == after


@given(ITEMS.filter(bool), st.data())
def test_every_cut_short_list_is_refused(items: list[bytes], data: st.DataObject) -> None:
    packed = sized.pack(items)
    cut = data.draw(st.integers(0, len(packed) - 1))
    with pytest.raises(RemoteProtocolError, match="test list"):
        sized.unpack(packed[:cut], 0, len(items), 40, "test list")


def test_an_item_over_the_limit_is_refused() -> None:
    packed = sized.pack([b"x" * 41])
    with pytest.raises(RemoteProtocolError, match="out of range"):
        sized.unpack(packed, 0, 1, 40, "test list")
    assert sized.unpack(packed, 0, 1, 41, "test list") == ([b"x" * 41], 43)


def test_texts_must_be_utf8() -> None:
    assert sized.texts([b"caf\xc3\xa9"], "name") == ("café",)
    with pytest.raises(RemoteProtocolError, match="name is not UTF-8"):
        sized.texts([b"ok", b"\xc3"], "name")
