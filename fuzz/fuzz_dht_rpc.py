"""Fuzz target: one link message into the DHT RPC decoder and its body decoders.

The input is what a peer sends inside an established secure link. It goes to
:func:`rpc.decode`; a decoded request or response must encode back to exactly
the input. A decoded message's body then goes to the decoders its method
implies (a request's FIND_NODE target or FIND_VALUE key, a response's node
or value reply), and the raw input goes to every body decoder as well, so the
fuzzer reaches them without having to build a valid header first. Each body
that decodes must encode back to the bytes it came from (the mailbox bodies
too: DEPOSIT, FETCH and its reply, CLEAR; PING's reply; a PAID request and
the write inside it, and a PUZZLE's price). Only
:class:`RemoteProtocolError` may come out; anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_dht_rpc.py fuzz/corpus/dht_rpc
"""

from __future__ import annotations

import struct
from functools import partial

import trio

from p2pmsg.dht import puzzle, rpc
from p2pmsg.dht.mailbox import entry_id, mailbox_keys, sign_clear
from p2pmsg.dht.records import PeerInfo, encode, make_peer_record
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity

PUBLISHER = Identity(bytes(range(32)))
OTHER = Identity(bytes(range(1, 33)))
RID = bytes(range(8))
NOW = 1_700_000_000


def _message(data: bytes) -> None:
    try:
        message = rpc.decode(data)
    except RemoteProtocolError:
        return
    if isinstance(message, rpc.Request):
        assert isinstance(message.method, rpc.Method)
        assert rpc.encode_request(message) == data, "request does not round-trip"
        if message.method is rpc.Method.FIND_NODE:
            _target(message.body)
        elif message.method is rpc.Method.FIND_VALUE:
            _find_value(message.body)
        elif message.method is rpc.Method.PAID:
            _paid(message.body)
        else:
            _mailbox_request(message.body)
    else:
        assert isinstance(message, rpc.Response)
        assert isinstance(message.status, rpc.Status)
        assert rpc.encode_response(message) == data, "response does not round-trip"
        _replies(message.body)
        _fetch_reply(message.body)
        _pong(message.body)
        _price(message.body)


def _paid(body: bytes) -> None:
    try:
        paid = puzzle.decode_paid(body)
    except RemoteProtocolError:
        return
    assert puzzle.encode_paid(paid) == body, "paid request does not round-trip"
    puzzle.check(paid, PUBLISHER.node_id)
    _mailbox_request(paid.body)


def _price(body: bytes) -> None:
    try:
        price = puzzle.decode_price(body)
    except RemoteProtocolError:
        return
    assert price.effort >= 1 and puzzle.encode_price(price) == body, "price does not round-trip"


def _target(body: bytes) -> None:
    try:
        target = rpc.decode_target(body)
    except RemoteProtocolError:
        return
    assert target == body


def _find_value(body: bytes) -> None:
    try:
        record_type, key = rpc.decode_find_value(body)
    except RemoteProtocolError:
        return
    assert rpc.encode_find_value(record_type, key) == body


def _replies(body: bytes) -> None:
    try:
        records, end = rpc.decode_records(body)
    except RemoteProtocolError:
        pass
    else:
        assert 0 < end <= len(body)
        assert rpc.encode_records(records) == body[:end], "record list does not round-trip"
    try:
        closer = rpc.decode_node_reply(body)
    except RemoteProtocolError:
        pass
    else:
        assert rpc.encode_records(closer) == body, "node reply does not round-trip"
    try:
        values, closer = rpc.decode_value_reply(body)
    except RemoteProtocolError:
        return
    assert rpc.encode_value_reply(values, closer) == body, "value reply does not round-trip"


def _mailbox_request(body: bytes) -> None:
    try:
        key, expires, blob = rpc.decode_deposit(body)
    except RemoteProtocolError:
        pass
    else:
        assert rpc.encode_deposit(key, expires, blob) == body, "deposit does not round-trip"
    try:
        key, after, limit = rpc.decode_fetch(body)
    except RemoteProtocolError:
        pass
    else:
        assert rpc.encode_fetch(key, after, limit) == body, "fetch does not round-trip"
    try:
        key, request = rpc.decode_clear_body(body)
    except RemoteProtocolError:
        return
    assert rpc.encode_clear_body(key, request) == body, "clear does not round-trip"


def _pong(body: bytes) -> None:
    try:
        clock_ms, record = rpc.decode_pong(body)
    except RemoteProtocolError:
        return
    assert rpc.encode_pong(clock_ms, record) == body, "pong does not round-trip"


def _fetch_reply(body: bytes) -> None:
    try:
        blobs, more = rpc.decode_fetch_reply(body)
    except RemoteProtocolError:
        return
    assert rpc.encode_fetch_reply(blobs, more) == body, "fetch reply does not round-trip"


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    _message(data)
    _replies(data)
    _target(data)
    _find_value(data)
    _mailbox_request(data)
    _fetch_reply(data)
    _pong(data)
    _paid(data)
    _price(data)


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: one valid message per method and status, real
    peer records in the bodies, and their tampered neighbours."""
    info = PeerInfo(("sim:10.0.0.1:49152", "tcp:192.0.2.1:4001"))
    record = encode(make_peer_record(PUBLISHER, info, 7, NOW + 3600))
    other = encode(make_peer_record(OTHER, PeerInfo(("sim:10.1.0.1:49152",)), 1, NOW + 3600))
    key = PUBLISHER.node_id

    def request(method: rpc.Method, body: bytes = b"", sender: bytes = record) -> bytes:
        return rpc.encode_request(rpc.Request(RID, method, sender, body))

    def response(body: bytes, status: rpc.Status = rpc.Status.OK) -> bytes:
        return rpc.encode_response(rpc.Response(RID, status, body))

    ping = request(rpc.Method.PING, sender=b"")
    find_node = request(rpc.Method.FIND_NODE, key)
    node_reply = response(rpc.encode_records([record, other]))
    value_reply = response(rpc.encode_value_reply([record], [other]))
    too_many = bytes([rpc.MAX_RECORDS + 1]) + b"\x00\x01r" * (rpc.MAX_RECORDS + 1)
    box = mailbox_keys(OTHER.node_id, 20833)[1]
    blob = bytes(range(256)) * 10
    clear = rpc.encode_clear_body(box, sign_clear(OTHER, 20833, 1, [entry_id(blob)]))
    fetch_reply = response(rpc.encode_fetch_reply([blob, b"x"], more=True))
    price = puzzle.Price(bytes(range(16)), puzzle.MIN_EFFORT)
    first = bytes(puzzle.NONCE_BYTES)  # fixed: the stored seeds are reproducible
    paid_store = trio.run(partial(puzzle.solve, price, key, rpc.Method.STORE, record, first=first))
    return {
        "deposit": request(rpc.Method.DEPOSIT, rpc.encode_deposit(box, NOW + 86400, blob)),
        "fetch": request(rpc.Method.FETCH, rpc.encode_fetch(box, None, 64)),
        "fetch_after": request(rpc.Method.FETCH, rpc.encode_fetch(box, entry_id(blob), 15)),
        "fetch_reply": fetch_reply,
        "fetch_reply_cut": fetch_reply[:-1],
        "fetch_reply_empty": response(rpc.encode_fetch_reply([], more=False)),
        "clear": request(rpc.Method.CLEAR, clear),
        "clear_cut": request(rpc.Method.CLEAR, clear[:-1]),
        "ping": ping,
        "ping_with_sender": request(rpc.Method.PING),
        "find_node": find_node,
        "find_value": request(rpc.Method.FIND_VALUE, rpc.encode_find_value(1, key)),
        "store": request(rpc.Method.STORE, record),
        "paid_store": request(rpc.Method.PAID, puzzle.encode_paid(paid_store)),
        "paid_cut": request(rpc.Method.PAID, puzzle.encode_paid(paid_store)[:28]),
        "puzzle": response(puzzle.encode_price(price), rpc.Status.PUZZLE),
        "puzzle_no_effort": response(
            puzzle.encode_price(puzzle.Price(bytes(16), 0)), rpc.Status.PUZZLE
        ),
        "ping_reply": response(rpc.encode_pong(NOW * 1000, record)),
        "ping_reply_unlisted": response(rpc.encode_pong(NOW * 1000, b"")),
        "ping_reply_cut": response(rpc.encode_pong(NOW * 1000, b""))[:-1],
        "node_reply": node_reply,
        "node_reply_empty": response(rpc.encode_records([])),
        "value_reply": value_reply,
        "rate_limited": response(b"", rpc.Status.RATE_LIMITED),
        "refused": response(b"", rpc.Status.REFUSED),
        "request_head_cut": find_node[:12],
        "sender_cut": find_node[: 13 + len(record) - 1],
        "sender_too_long": ping[:11] + struct.pack(">H", rpc.MAX_RECORD + 1) + b"\x00" * 16,
        "unknown_method": ping[:10] + b"\x09" + ping[11:],
        "unknown_status": node_reply[:10] + b"\x07" + node_reply[11:],
        "bad_version": b"\x02" + ping[1:],
        "delivery_frame_type": ping[:1] + b"\x01" + ping[2:],
        "find_node_short_target": find_node[:-1],
        "node_reply_cut": node_reply[:-1],
        "node_reply_trailing": node_reply + b"\x00",
        "value_reply_without_closer": response(rpc.encode_records([record])),
        "value_reply_trailing": value_reply + b"\x00",
        "too_many_records": response(too_many),
        "record_too_long": response(b"\x01" + struct.pack(">H", rpc.MAX_RECORD + 1)),
        "records_bare": rpc.encode_records([record, other]),
        "empty": b"",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
