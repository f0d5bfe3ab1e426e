"""MSG/ACK frames: round trip, known answers, tampering, size caps, retry delays."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmsg.delivery import frames
from p2pmsg.delivery.frames import (
    ID_BYTES,
    MAX_BODY,
    AckFrame,
    FrameType,
    MessageKind,
    MsgFrame,
    decode,
    encode,
    retry_delay,
)
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.link.wire import MAX_MESSAGE

ID = bytes(range(16))
HEAD = 43  # version, type, id, sent_ms, kind, seq, low
KIND_AT = 26

ids = st.binary(min_size=ID_BYTES, max_size=ID_BYTES)
sent = st.integers(min_value=0, max_value=2**64 - 1)
msg_frames = st.one_of(
    st.builds(MsgFrame, ids, sent, st.just(MessageKind.BYTES), st.binary(max_size=512), sent, sent),
    st.builds(
        MsgFrame,
        ids,
        sent,
        st.just(MessageKind.TEXT),
        st.text(max_size=200).map(str.encode),
        sent,
        sent,
    ),
)
ack_frames = st.builds(AckFrame, ids)
jitters = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


# --- round trip and known answers --------------------------------------------------------


@settings(max_examples=300)
@given(st.one_of(msg_frames, ack_frames))
def test_round_trip(frame: MsgFrame | AckFrame) -> None:
    data = encode(frame)
    assert decode(data) == frame
    assert encode(decode(data)) == data


def test_msg_known_answer() -> None:
    frame = MsgFrame(ID, 1_700_000_000_123, MessageKind.TEXT, "hé".encode(), seq=5, low=2)
    data = bytes.fromhex(
        "0101000102030405060708090a0b0c0d0e0f0000018bcfe5687b01"
        "0000000000000005000000000000000268c3a9"
    )
    assert encode(frame) == data
    assert decode(data) == frame


def test_ack_known_answer() -> None:
    data = bytes.fromhex("0102000102030405060708090a0b0c0d0e0f")
    assert encode(AckFrame(ID)) == data
    assert decode(data) == AckFrame(ID)


def test_body_is_not_in_repr() -> None:
    assert "secret" not in repr(MsgFrame(ID, 0, MessageKind.TEXT, b"secret"))


def test_empty_and_maximal_bodies() -> None:
    empty = MsgFrame(ID, 0, MessageKind.BYTES, b"")
    assert len(encode(empty)) == HEAD
    assert decode(encode(empty)) == empty
    largest = MsgFrame(ID, 2**64 - 1, MessageKind.BYTES, bytes(MAX_BODY))
    assert len(encode(largest)) == MAX_MESSAGE
    assert decode(encode(largest)) == largest


# --- tampering ---------------------------------------------------------------------------

MSG = encode(MsgFrame(ID, 1_700_000_000_123, MessageKind.TEXT, "hé".encode()))
ACK = encode(AckFrame(ID))


@pytest.mark.parametrize("length", range(HEAD))
def test_every_truncated_msg_header_is_refused(length: int) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(MSG[:length])


@pytest.mark.parametrize("length", range(len(ACK)))
def test_every_truncated_ack_is_refused(length: int) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(ACK[:length])


def test_truncated_text_body_inside_a_character_is_refused() -> None:
    assert decode(MSG[:-2]).body == b"h"  # a shorter body is just a shorter message
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        decode(MSG[:-1])


def test_ack_with_trailing_bytes_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        decode(ACK + b"\x00")


@pytest.mark.parametrize("version", [0, 2, 0x7F, 0xFF])
@pytest.mark.parametrize("data", [MSG, ACK], ids=["msg", "ack"])
def test_unknown_version_is_refused(data: bytes, version: int) -> None:
    with pytest.raises(RemoteProtocolError, match="version"):
        decode(bytes([version]) + data[1:])


@pytest.mark.parametrize("frame_type", [0, 3, 0x81, 0xFF])
@pytest.mark.parametrize("data", [MSG, ACK], ids=["msg", "ack"])
def test_unknown_frame_type_is_refused(data: bytes, frame_type: int) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(data[:1] + bytes([frame_type]) + data[2:])


@pytest.mark.parametrize("kind", [4, 0x80, 0xFF])
def test_unknown_body_kind_is_refused(kind: int) -> None:
    with pytest.raises(RemoteProtocolError, match="kind"):
        decode(MSG[:KIND_AT] + bytes([kind]) + MSG[KIND_AT + 1 :])


@pytest.mark.parametrize(
    ("kind", "why"),
    [(MessageKind.FILE, "whole file is never sent"), (MessageKind.FILE_PART, "file part")],
)
def test_a_file_kind_needs_a_file_part(kind: MessageKind, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        decode(MSG[:KIND_AT] + bytes([kind]) + MSG[KIND_AT + 1 :])
    with pytest.raises(ValueError, match=r"kind|file part"):
        encode(MsgFrame(bytes(16), 0, kind, b"not a file part"))


def test_an_ack_header_with_msg_type_is_a_short_msg() -> None:
    with pytest.raises(RemoteProtocolError):
        decode(ACK[:1] + bytes([FrameType.MSG]) + ACK[2:])


@pytest.mark.parametrize(
    "body", [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xe2\x82"]
)
def test_invalid_utf8_text_body_is_refused(body: bytes) -> None:
    data = MSG[:HEAD] + body
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        decode(data)
    # the same bytes as an opaque body are fine
    opaque = MSG[:KIND_AT] + bytes([MessageKind.BYTES]) + MSG[KIND_AT + 1 : HEAD] + body
    assert decode(opaque).body == body


# --- encoder refusals --------------------------------------------------------------------


def test_encode_refuses_oversize_body() -> None:
    with pytest.raises(ValueError, match="larger than"):
        encode(MsgFrame(ID, 0, MessageKind.BYTES, bytes(MAX_BODY + 1)))


@pytest.mark.parametrize("size", [0, 15, 17])
def test_encode_refuses_wrong_id_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        encode(MsgFrame(bytes(size), 0, MessageKind.BYTES, b""))
    with pytest.raises(ValueError, match="16 bytes"):
        encode(AckFrame(bytes(size)))


def test_encode_refuses_invalid_utf8_text_body() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        encode(MsgFrame(ID, 0, MessageKind.TEXT, b"\xff"))


@pytest.mark.parametrize("sent_ms", [-1, 2**64])
def test_encode_refuses_out_of_range_timestamps(sent_ms: int) -> None:
    with pytest.raises(ValueError, match="sent_ms"):
        encode(MsgFrame(ID, sent_ms, MessageKind.BYTES, b""))


def test_encode_refuses_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        encode(MsgFrame(ID, 0, 7, b""))  # type: ignore[arg-type]


def test_decode_refuses_frames_larger_than_a_link_message() -> None:
    with pytest.raises(RemoteProtocolError):
        decode(MSG[: HEAD - 1] + bytes([MessageKind.BYTES]) + bytes(MAX_BODY + 1))


# --- retry delays ------------------------------------------------------------------------


def _base(attempts: int) -> float:
    return min(600.0, 2.0 * 2.0 ** min(attempts, 20))


@given(st.integers(min_value=0, max_value=10_000), jitters)
def test_retry_delay_is_within_a_quarter_of_the_base(attempts: int, jitter: float) -> None:
    delay = retry_delay(attempts, jitter)
    assert 0.75 * _base(attempts) <= delay <= 1.25 * _base(attempts)
    assert delay <= 600.0 * 1.25


@given(st.integers(min_value=0, max_value=10_000), jitters)
def test_retry_delay_is_monotone_in_attempts(attempts: int, jitter: float) -> None:
    assert retry_delay(attempts, jitter) <= retry_delay(attempts + 1, jitter)


@given(st.integers(min_value=0, max_value=10_000), jitters, jitters)
def test_retry_delay_is_monotone_in_jitter(attempts: int, a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert retry_delay(attempts, low) <= retry_delay(attempts, high)


@pytest.mark.parametrize(
    ("attempts", "jitter", "expected"),
    [
        (0, 0.0, 1.5),
        (0, 0.5, 2.0),
        (1, 0.5, 4.0),
        (2, 0.5, 8.0),
        (8, 0.5, 512.0),
        (9, 0.5, 600.0),  # 1024 capped
        (9, 0.0, 450.0),
        (10**9, 0.5, 600.0),
        (10**9, 0.0, 450.0),
    ],
)
def test_retry_delay_known_values(attempts: int, jitter: float, expected: float) -> None:
    assert retry_delay(attempts, jitter) == expected


def test_retry_delay_cap_holds_at_the_largest_jitter() -> None:
    just_below_one = 1.0 - 2**-53  # rounds to exactly the bound: it is inclusive
    assert 749.9 < retry_delay(10**9, just_below_one) <= 600.0 * 1.25


def test_module_constants_agree_with_the_link() -> None:
    assert frames.MAX_BODY == MAX_MESSAGE - HEAD
