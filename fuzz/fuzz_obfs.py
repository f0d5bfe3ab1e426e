"""Fuzz target: a prober's or a peer's bytes into the obfs cores.

Random bytes never get past a MAC, so besides raw wire bytes the input may
describe *plaintext* frames, which the harness seals with the peer's real
keys; that puts the frame parser (type, message size limit, end of stream)
within the fuzzer's reach. The first byte picks the mode:

* ``0``: the server's hello reader (:class:`ServerHandshake`: fixed key,
  clock and rng, a fresh replay window), fed whole and byte by byte; a hello
  it answers goes on, with its trailing bytes, into a server de-framer;
* ``1``: raw bytes after the handshake into a server de-framer, whole and in
  7-byte pieces;
* ``2``: 3-byte records ``type, length(u16)``, each sealed as one frame whose
  data is a slice of a fixed filler, into a server de-framer;
* ``3``: the client's reader of the server's answer (:class:`ClientHandshake`),
  whole and byte by byte; trailing frames go on into a client de-framer.

Only events, :class:`Rejected` (hellos) or :class:`ObfsProtocolError` may come
out; both deliveries must agree, and records must read as a reference
reassembly says. Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_obfs.py fuzz/corpus/obfs
"""

from __future__ import annotations

import functools
import random
import struct

from p2pmsg.link.replay import ReplayWindow
from transports.obfs_core import (
    MAX_FRAME_DATA,
    MAX_MESSAGE,
    NEED_DATA,
    REPLAY_WINDOW,
    ClientHandshake,
    Established,
    FrameType,
    Message,
    NeedData,
    ObfsFramer,
    ObfsProtocolError,
    PeerClosed,
    Rejected,
    ServerHandshake,
    ServerKey,
    SessionKeys,
)

SERVER = ServerKey(bytes(range(32)))
NOW = 1_700_000_000.0
FILLER = bytes(range(256)) * (MAX_FRAME_DATA // 256)
HELLO, RAW, RECORDS, ANSWER = 0, 1, 2, 3
Outcome = tuple[list[bytes], str]


def _rng(seed: int) -> random.Random:
    return random.Random(seed)


def _client(now: float = NOW, key: bytes = SERVER.public) -> ClientHandshake:
    return ClientHandshake(key, now=now, rng=_rng(0).randbytes)


def _server() -> ServerHandshake:
    return ServerHandshake(SERVER, ReplayWindow(REPLAY_WINDOW), now=NOW, rng=_rng(1).randbytes)


@functools.cache
def _session() -> tuple[Established, Established]:
    """(client, server) of the handshake between :func:`_client` and :func:`_server`."""
    client = _client()
    server = _server().receive_data(client.hello)
    assert isinstance(server, Established)
    done = client.receive_data(server.response)
    assert isinstance(done, Established)
    return done, server


def _drain(framer: ObfsFramer, messages: list[bytes]) -> str | None:
    """Collect messages; the terminal state's name, or None when more is needed."""
    while True:
        try:
            event = framer.next_event()
        except ObfsProtocolError:
            return "error"
        if isinstance(event, NeedData):
            return None
        if isinstance(event, PeerClosed):
            return "closed"
        assert isinstance(event, Message)
        messages.append(event.data)


def deframe(data: bytes, keys: SessionKeys, *, piece: int) -> Outcome:
    framer = ObfsFramer(keys, rng=_rng(2).randbytes)
    messages: list[bytes] = []
    end = None
    for i in range(0, len(data), piece):
        framer.receive_data(data[i : i + piece])
        end = _drain(framer, messages)
        if end is not None:
            break
    if end is None:
        framer.receive_eof()
        end = _drain(framer, messages)
    assert end in ("closed", "error"), end
    return messages, end


def check_deframe(data: bytes, keys: SessionKeys) -> Outcome:
    whole = deframe(data, keys, piece=max(1, len(data)))
    assert whole == deframe(data, keys, piece=7)
    return whole


def _hello(data: bytes, piece: int) -> tuple[NeedData | Established | Rejected, bytes]:
    """Outcome and the bytes after it (trailing plus the unfed rest)."""
    server = _server()
    for i in range(0, len(data), piece):
        outcome = server.receive_data(data[i : i + piece])
        if isinstance(outcome, Established):
            return outcome, outcome.trailing + data[i + piece :]
        if isinstance(outcome, Rejected):
            return outcome, b""
    return NEED_DATA, b""


def check_hello(data: bytes) -> None:
    whole, after = _hello(data, len(data) or 1)
    single, after_single = _hello(data, 1)
    assert type(whole) is type(single)
    if isinstance(whole, Rejected) and isinstance(single, Rejected):
        assert str(whole.error) == str(single.error)
    if isinstance(whole, Established) and isinstance(single, Established):
        assert (whole.response, whole.keys, after) == (single.response, single.keys, after_single)
        check_deframe(after, whole.keys)


def _answer(data: bytes, piece: int) -> tuple[str, bytes]:
    client = _client()
    try:
        for i in range(0, len(data), piece):
            outcome = client.receive_data(data[i : i + piece])
            if isinstance(outcome, Established):
                return "established", outcome.trailing + data[i + piece :]
    except ObfsProtocolError:
        return "failed", b""
    return "need more", b""


def check_answer(data: bytes) -> None:
    whole = _answer(data, len(data) or 1)
    assert whole == _answer(data, 1)
    if whole[0] == "established":
        check_deframe(whole[1], _session()[0].keys)


def _reference(records: list[tuple[int, int]]) -> Outcome:
    """What a de-framer must make of these frames, then the end of the stream."""
    messages: list[bytes] = []
    parts = b""
    for kind, length in records:
        if kind == FrameType.PADDING:
            continue
        if kind not in (FrameType.MORE, FrameType.END) or len(parts) + length > MAX_MESSAGE:
            return messages, "error"
        parts += FILLER[:length]
        if kind == FrameType.END:
            messages.append(parts)
            parts = b""
    return messages, "error" if parts else "closed"


def check_records(data: bytes) -> None:
    records = [
        (kind, length % (MAX_FRAME_DATA + 1))
        for kind, length in struct.iter_unpack(">BH", data[: len(data) - len(data) % 3])
    ]
    sender = ObfsFramer(_session()[0].keys, rng=_rng(3).randbytes)
    wire = b"".join(sender.encode_frame(kind, FILLER[:length]) for kind, length in records)
    assert check_deframe(wire, _session()[1].keys) == _reference(records)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    if mode == HELLO:
        check_hello(body)
    elif mode == RAW:
        check_deframe(body, _session()[1].keys)
    elif mode == RECORDS:
        check_records(body)
    else:
        check_answer(body)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def seeds() -> dict[str, bytes]:
    """Real hellos, answers and frames for the fixed keys, cut, flipped and forged."""
    hello = _client().hello
    client, server = _session()
    up = ObfsFramer(client.keys, rng=_rng(4).randbytes)
    down = ObfsFramer(server.keys, rng=_rng(5).randbytes)
    frames = up.encode(b"") + up.encode(b"hi") + up.encode(FILLER[:20_000])
    answer = server.response + down.encode(b"welcome")

    def records(*pairs: tuple[int, int]) -> bytes:
        return bytes([RECORDS]) + b"".join(struct.pack(">BH", *pair) for pair in pairs)

    return {
        "hello": bytes([HELLO]) + hello,
        "hello_frames": bytes([HELLO]) + hello + frames,
        "hello_cut": bytes([HELLO]) + hello[:100],
        "hello_flipped": bytes([HELLO]) + _flip(hello, 140),
        "hello_wrong_key": bytes([HELLO]) + _client(key=ServerKey(bytes(32)).public).hello,
        "hello_stale": bytes([HELLO]) + _client(now=NOW - 2 * REPLAY_WINDOW).hello,
        "hello_tls": bytes([HELLO]) + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),
        "frames": bytes([RAW]) + frames,
        "frames_cut": bytes([RAW]) + frames[:-1],
        "frames_flipped": bytes([RAW]) + _flip(frames, 20),
        "records_message": records((1, 100), (0, 5), (2, 7), (2, 0)),
        "records_unknown_type": records((2, 1), (9, 0)),
        "records_too_large": records(*[(1, MAX_FRAME_DATA)] * 9),
        "records_cut_message": records((1, 10)),
        "answer": bytes([ANSWER]) + answer,
        "answer_cut": bytes([ANSWER]) + answer[:80],
        "answer_flipped": bytes([ANSWER]) + _flip(answer, 40),
        "answer_garbage": bytes([ANSWER]) + b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4,
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
