"""The DHT RPC codec: round trips, known answers, truncation, tampering and caps.

The codec is pure, so every test is a plain function: bytes in, a
:class:`Request` / :class:`Response` / body out, or exactly
:class:`RemoteProtocolError` (decoders) / ``ValueError`` (encoders, which only
ever see our own data).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmsg.dht import rpc
from p2pmsg.dht.peer import ID_BYTES
from p2pmsg.dht.rpc import (
    MAX_RECORD,
    MAX_RECORDS,
    RID_BYTES,
    Method,
    Request,
    Response,
    Status,
    decode,
    decode_find_value,
    decode_node_reply,
    decode_records,
    decode_target,
    decode_value_reply,
    encode_find_value,
    encode_records,
    encode_request,
    encode_response,
    encode_value_reply,
)
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.link.wire import MAX_MESSAGE

RID = bytes(range(8))
REQ_HEAD = 13  # version, type, rid, method, sender_len
RESP_HEAD = 11  # version, type, rid, status

rids = st.binary(min_size=RID_BYTES, max_size=RID_BYTES)
requests = st.builds(
    Request,
    rids,
    st.sampled_from(Method),
    st.binary(max_size=600),
    st.binary(max_size=600),
)
responses = st.builds(Response, rids, st.sampled_from(Status), st.binary(max_size=600))
record_lists = st.lists(st.binary(max_size=300), max_size=MAX_RECORDS)
ids = st.binary(min_size=ID_BYTES, max_size=ID_BYTES)


# --- round trips and known answers -------------------------------------------------------


@settings(max_examples=300)
@given(requests)
def test_request_round_trip(request: Request) -> None:
    data = encode_request(request)
    assert len(data) == REQ_HEAD + len(request.sender) + len(request.body)
    decoded = decode(data)
    assert decoded == request
    assert isinstance(decoded, Request)
    assert encode_request(decoded) == data


@settings(max_examples=300)
@given(responses)
def test_response_round_trip(response: Response) -> None:
    data = encode_response(response)
    assert len(data) == RESP_HEAD + len(response.body)
    decoded = decode(data)
    assert decoded == response
    assert isinstance(decoded, Response)
    assert encode_response(decoded) == data


def test_request_known_answer() -> None:
    request = Request(RID, Method.FIND_NODE, b"S", b"B")
    data = bytes.fromhex("01 03 0001020304050607 02 0001 53 42")
    assert encode_request(request) == data
    assert decode(data) == request


def test_response_known_answer() -> None:
    response = Response(RID, Status.RATE_LIMITED, b"xy")
    data = bytes.fromhex("01 04 0001020304050607 02 7879")
    assert encode_response(response) == data
    assert decode(data) == response


def test_records_known_answer() -> None:
    data = bytes.fromhex("02 0001 61 0002 6263")
    assert encode_records([b"a", b"bc"]) == data
    assert decode_records(data) == ([b"a", b"bc"], len(data))
    assert encode_records([]) == b"\x00"


def test_find_value_known_answer() -> None:
    key = bytes(range(32))
    assert encode_find_value(1, key) == b"\x01" + key
    assert decode_find_value(b"\x01" + key) == (1, key)


def test_records_and_bodies_stay_out_of_repr() -> None:
    request = Request(RID, Method.STORE, b"sender-secret", b"body-secret")
    response = Response(RID, Status.OK, b"body-secret")
    assert "secret" not in repr(request) + repr(response)


@settings(max_examples=200)
@given(record_lists, st.binary(max_size=40), st.binary(max_size=40))
def test_records_round_trip_at_an_offset(records: list[bytes], before: bytes, after: bytes) -> None:
    data = before + encode_records(records) + after
    decoded, end = decode_records(data, len(before))
    assert decoded == records
    assert data[end:] == after


@given(st.integers(0, 2**64 - 1), st.binary(max_size=rpc.MAX_RECORD))
def test_pong_round_trip(clock_ms: int, record: bytes) -> None:
    assert rpc.decode_pong(rpc.encode_pong(clock_ms, record)) == (clock_ms, record)


@pytest.mark.parametrize("body", [b"", bytes(7), bytes(8 + rpc.MAX_RECORD + 1)])
def test_a_pong_without_a_clock_or_too_long_is_refused(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="PING reply"):
        rpc.decode_pong(body)


@settings(max_examples=200)
@given(record_lists, record_lists)
def test_value_reply_round_trip(values: list[bytes], closer: list[bytes]) -> None:
    assert decode_value_reply(encode_value_reply(values, closer)) == (values, closer)


@settings(max_examples=200)
@given(record_lists)
def test_node_reply_round_trip(records: list[bytes]) -> None:
    assert decode_node_reply(encode_records(records)) == records


@given(st.integers(min_value=0, max_value=255), ids)
def test_find_value_round_trip(record_type: int, key: bytes) -> None:
    assert decode_find_value(encode_find_value(record_type, key)) == (record_type, key)


@given(ids)
def test_target_round_trip(target: bytes) -> None:
    assert decode_target(target) == target


# --- truncation --------------------------------------------------------------------------


@settings(max_examples=100)
@given(requests)
def test_every_truncation_of_a_request_head_or_sender_is_refused(request: Request) -> None:
    data = encode_request(request)
    fixed = REQ_HEAD + len(request.sender)
    for cut in range(fixed):
        with pytest.raises(RemoteProtocolError):
            decode(data[:cut])
    # the body is the rest of the message: a shorter message is a shorter body
    for cut in range(fixed, len(data)):
        assert decode(data[:cut]) == Request(
            request.rid, request.method, request.sender, request.body[: cut - fixed]
        )


@settings(max_examples=100)
@given(responses)
def test_every_truncation_of_a_response_head_is_refused(response: Response) -> None:
    data = encode_response(response)
    for cut in range(RESP_HEAD):
        with pytest.raises(RemoteProtocolError):
            decode(data[:cut])


@settings(max_examples=100)
@given(record_lists)
def test_every_truncation_of_a_record_list_is_refused(records: list[bytes]) -> None:
    data = encode_records(records)
    for cut in range(len(data)):
        with pytest.raises(RemoteProtocolError):
            decode_records(data[:cut])
        with pytest.raises(RemoteProtocolError):
            decode_node_reply(data[:cut])


@settings(max_examples=100)
@given(record_lists, record_lists)
def test_every_truncation_of_a_value_reply_is_refused(
    values: list[bytes], closer: list[bytes]
) -> None:
    data = encode_value_reply(values, closer)
    for cut in range(len(data)):
        with pytest.raises(RemoteProtocolError):
            decode_value_reply(data[:cut])


@pytest.mark.parametrize("size", [0, 1, ID_BYTES - 1, ID_BYTES + 1, 2 * ID_BYTES])
def test_a_target_of_the_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_target(bytes(size))


@pytest.mark.parametrize("size", [0, 1, ID_BYTES, ID_BYTES + 2])
def test_a_find_value_body_of_the_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_find_value(bytes(size))


def test_an_offset_past_the_end_is_refused() -> None:
    data = encode_records([b"a"])
    with pytest.raises(RemoteProtocolError):
        decode_records(data, len(data))
    with pytest.raises(RemoteProtocolError):
        decode_records(data, len(data) + 5)


# --- trailing bytes ----------------------------------------------------------------------


@settings(max_examples=100)
@given(record_lists, st.binary(min_size=1, max_size=20))
def test_trailing_bytes_after_a_node_reply_are_refused(records: list[bytes], extra: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_node_reply(encode_records(records) + extra)


@settings(max_examples=100)
@given(record_lists, record_lists, st.binary(min_size=1, max_size=20))
def test_trailing_bytes_after_a_value_reply_are_refused(
    values: list[bytes], closer: list[bytes], extra: bytes
) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_value_reply(encode_value_reply(values, closer) + extra)


def test_a_node_reply_is_not_a_value_reply() -> None:
    """A FIND_NODE answer where a FIND_VALUE answer is due (or back) is refused, not misread."""
    with pytest.raises(RemoteProtocolError):
        decode_node_reply(encode_value_reply([b"v"], [b"c"]))
    with pytest.raises(RemoteProtocolError):
        decode_value_reply(encode_records([b"only one list"]))


# --- tampering: unknown versions, types, methods and statuses ----------------------------

REQUEST = encode_request(Request(RID, Method.PING, b"s", b"b"))
RESPONSE = encode_response(Response(RID, Status.OK, b"b"))


@pytest.mark.parametrize("version", [0, 2, 255])
@pytest.mark.parametrize("message", [REQUEST, RESPONSE], ids=["request", "response"])
def test_an_unknown_version_is_refused(message: bytes, version: int) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(bytes([version]) + message[1:])


@pytest.mark.parametrize("kind", [0, 1, 2, 5, 255])
@pytest.mark.parametrize("message", [REQUEST, RESPONSE], ids=["request", "response"])
def test_a_message_that_is_not_an_rpc_is_refused(message: bytes, kind: int) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(message[:1] + bytes([kind]) + message[2:])


def test_every_unknown_method_is_refused() -> None:
    for method in sorted(set(range(256)) - set(Method)):
        with pytest.raises(RemoteProtocolError, match="unknown method"):
            decode(REQUEST[:10] + bytes([method]) + REQUEST[11:])


def test_every_unknown_status_is_refused() -> None:
    for status in sorted(set(range(256)) - set(Status)):
        with pytest.raises(RemoteProtocolError, match="unknown status"):
            decode(RESPONSE[:10] + bytes([status]) + RESPONSE[11:])


def test_a_sender_length_past_the_end_is_refused() -> None:
    data = REQUEST[:11] + struct.pack(">H", 3) + b"ab"
    with pytest.raises(RemoteProtocolError, match="sender"):
        decode(data)


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_are_refused(data: bytes) -> None:
    try:
        message = decode(data)
    except RemoteProtocolError:
        return
    encoded = encode_request(message) if isinstance(message, Request) else encode_response(message)
    assert encoded == data


# --- caps --------------------------------------------------------------------------------


def test_the_largest_request_and_response_fit_and_one_byte_more_does_not() -> None:
    body = bytes(MAX_MESSAGE - REQ_HEAD)
    request = Request(RID, Method.STORE, b"", body)
    assert decode(encode_request(request)) == request
    with pytest.raises(ValueError, match="too large"):
        encode_request(Request(RID, Method.STORE, b"", body + b"x"))
    response = Response(RID, Status.OK, bytes(MAX_MESSAGE - RESP_HEAD))
    assert decode(encode_response(response)) == response
    with pytest.raises(ValueError, match="too large"):
        encode_response(Response(RID, Status.OK, response.body + b"x"))


@pytest.mark.parametrize("message", [REQUEST, RESPONSE], ids=["request", "response"])
def test_a_message_above_max_message_is_refused(message: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(message + bytes(MAX_MESSAGE + 1 - len(message)))


def test_the_sender_record_is_capped() -> None:
    largest = Request(RID, Method.PING, bytes(MAX_RECORD))
    assert decode(encode_request(largest)) == largest
    with pytest.raises(ValueError, match="sender"):
        encode_request(Request(RID, Method.PING, bytes(MAX_RECORD + 1)))
    forged = REQUEST[:11] + struct.pack(">H", MAX_RECORD + 1) + bytes(MAX_RECORD + 1)
    with pytest.raises(RemoteProtocolError, match="sender"):
        decode(forged)


@pytest.mark.parametrize("size", [0, RID_BYTES - 1, RID_BYTES + 1])
def test_encoders_refuse_a_bad_request_id(size: int) -> None:
    with pytest.raises(ValueError, match="request id"):
        encode_request(Request(bytes(size), Method.PING))
    with pytest.raises(ValueError, match="request id"):
        encode_response(Response(bytes(size), Status.OK))


def test_the_record_count_is_capped() -> None:
    most = [b"r"] * MAX_RECORDS
    assert decode_records(encode_records(most))[0] == most
    with pytest.raises(ValueError, match="too many"):
        encode_records([*most, b"r"])
    forged = bytes([MAX_RECORDS + 1]) + b"\x00\x01r" * (MAX_RECORDS + 1)
    with pytest.raises(RemoteProtocolError, match="too many"):
        decode_records(forged)


def test_the_record_size_is_capped() -> None:
    largest = bytes(MAX_RECORD)
    assert decode_records(encode_records([largest]))[0] == [largest]
    with pytest.raises(ValueError, match="too large"):
        encode_records([largest + b"x"])
    forged = b"\x01" + struct.pack(">H", MAX_RECORD + 1) + bytes(MAX_RECORD + 1)
    with pytest.raises(RemoteProtocolError, match="out of range"):
        decode_records(forged)


def test_encoded_record_lists_can_outgrow_a_message() -> None:
    """The body caps do not imply the message cap: whoever builds a reply must
    check it fits (``encode_response`` refuses it; see test_dht_scenarios
    for what the service does with big peer records)."""
    body = encode_records([bytes(MAX_RECORD)] * MAX_RECORDS)
    assert len(body) > MAX_MESSAGE
    with pytest.raises(ValueError, match="too large"):
        encode_response(Response(RID, Status.OK, body))


def test_the_methods_and_statuses_are_the_documented_ones() -> None:
    assert {m.name: m.value for m in Method} == {
        "PING": 1,
        "FIND_NODE": 2,
        "FIND_VALUE": 3,
        "STORE": 4,
        "DEPOSIT": 5,
        "FETCH": 6,
        "CLEAR": 7,
        "PAID": 8,
    }
    assert {s.name: s.value for s in Status} == {
        "OK": 0,
        "ERROR": 1,
        "RATE_LIMITED": 2,
        "REFUSED": 3,
        "PUZZLE": 4,
    }
    assert (rpc.REQUEST_TYPE, rpc.RESPONSE_TYPE, rpc.VERSION) == (3, 4, 1)
