"""The onion service's small persisted state: the mailbox entries to clear."""

from __future__ import annotations

import pytest

from p2pmsg.onion_service import _decode_pending, _encode_pending


def test_pending_clears_round_trip() -> None:
    pending = {20_000: [b"\x01" * 16, b"\x02" * 16], 20_001: []}
    assert _decode_pending(_encode_pending(pending)) == pending


@pytest.mark.parametrize(
    "text", [None, "", "[]", "{", '{"x": []}', '{"1": ["zz"]}', '{"1": 5}', "null"]
)
def test_damaged_pending_clears_are_forgotten(text: str | None) -> None:
    assert _decode_pending(text) == {}
