"""Goodput of the secure link over TCP, against raw TCP and the AEAD ceiling.

Every row is measured in every round (rounds interleaved, order rotated) on
127.0.0.1, sender and receiver in this process unless the row says
otherwise, so a ratio compares two numbers taken moments apart:

* raw trio TCP: one ``SocketStream``, 64 KiB ``send_all`` calls, the
  receiver counting bytes; the same with 1 KiB sends (trio's own cost per
  small write, the reference for small messages); once more with 64 KiB
  sends and the receiver in a second process (plain blocking sockets),
  which lets each end have a core of its own;
* ``TcpTransport``: the same bytes through ``serve``/``dial`` and ``TcpLink``;
* ``SecureLink`` over ``TcpTransport``: messages of exactly
  ``wire.MAX_MESSAGE`` bytes, of 1 KiB (two cells: a cell carries 1005
  bytes), and of one full cell;
* the ceiling: raw ``crypto_aead_chacha20poly1305_ietf_encrypt`` (and
  ``_decrypt``) calls on 1008-byte cell plaintexts in a Python loop.

Goodput counts payload bytes the receiver got, from the first send until the
receiver saw the end of the stream (the handshake is not timed).
MB = 10**6 bytes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import nacl.bindings as sodium
import trio

from bench._common import (
    HANDSHAKE_TIMEOUT,
    INITIATOR,
    REPLAY_WINDOW,
    RESPONDER,
    Measure,
    count_link,
    environment,
    loop_rate,
    median,
    paired_ratio,
    parse_args,
    run_rounds,
    serving,
    sync_measure,
    table,
)
from p2pmsg.abc import Link
from p2pmsg.link import wire
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.link.secure import SecureLink, accept_secure, connect_secure

CHUNK = 64 * 1024
PAYLOAD = bytes(CHUNK)
MB = 1e6
LOOPBACK = "127.0.0.1"

# The receiving end of the two-process row: connect, count bytes until EOF,
# answer with the count. Its start-up happens before the clock starts.
SINK = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    buf, n = bytearray(65536), 0
    while k := s.recv_into(buf):
        n += k
    s.sendall(n.to_bytes(8, "big"))
"""


async def _timed(
    seconds: float,
    send_one: Callable[[], Awaitable[None]],
    finish: Callable[[], Awaitable[None]],
    received: Callable[[], Awaitable[int]],
) -> float:
    """MB/s: ``send_one`` until the deadline, then ``finish``; ``received``
    returns the receiver's byte count once it saw the end."""
    start = time.perf_counter()
    deadline = start + seconds

    async def sender() -> None:
        while time.perf_counter() < deadline:
            await send_one()
        await finish()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        total = await received()
        elapsed = time.perf_counter() - start
    return total / elapsed / MB


async def _listener() -> trio.SocketListener:
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    for extra in listeners[1:]:
        await extra.aclose()
    return listeners[0]


async def _count_stream(stream: trio.SocketStream) -> int:
    total = 0
    while chunk := await stream.receive_some(CHUNK):
        total += len(chunk)
    return total


async def raw_tcp(size: int, seconds: float) -> float:
    listener = await _listener()
    async with listener:
        client = await trio.open_tcp_stream(LOOPBACK, listener.socket.getsockname()[1])
        async with client:
            server = await listener.accept()
            async with server:
                return await _timed(
                    seconds,
                    partial(client.send_all, bytes(size)),
                    client.send_eof,
                    partial(_count_stream, server),
                )


async def _read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise RuntimeError("the sink process closed without its count")
        data += chunk
    return data


async def raw_tcp_two_processes(seconds: float) -> float:
    listener = await _listener()
    port = listener.socket.getsockname()[1]
    command = [sys.executable, "-c", SINK, str(port)]
    async with listener, trio.open_nursery() as nursery:
        await nursery.start(partial(trio.run_process, command, check=True))
        stream = await listener.accept()
        async with stream:
            sent = 0
            start = time.perf_counter()
            deadline = start + seconds
            while time.perf_counter() < deadline:
                await stream.send_all(PAYLOAD)
                sent += CHUNK
            await stream.send_eof()
            counted = int.from_bytes(await _read_exactly(stream, 8), "big")
            elapsed = time.perf_counter() - start
    if counted != sent:
        raise RuntimeError(f"the sink counted {counted} bytes of {sent}")
    return counted / elapsed / MB


async def tcp_transport(seconds: float) -> float:
    totals_in, totals = trio.open_memory_channel[int](1)

    async def handler(link: Link) -> None:
        await totals_in.send(await count_link(link))

    async with serving(handler) as (transport, endpoint):
        link = await transport.dial(endpoint)
        try:
            return await _timed(seconds, partial(link.send, PAYLOAD), link.aclose, totals.receive)
        finally:
            await link.aclose()


async def _count_messages(secure: SecureLink) -> int:
    total = 0
    try:
        while True:
            total += len(await secure.receive())
    except trio.EndOfChannel:
        return total


async def secure_link(size: int, seconds: float) -> float:
    message = bytes(size)
    replay = ReplayWindow(REPLAY_WINDOW)
    totals_in, totals = trio.open_memory_channel[int](1)

    async def handler(link: Link) -> None:
        secure = await accept_secure(link, RESPONDER, replay, timeout=HANDSHAKE_TIMEOUT)
        try:
            await totals_in.send(await _count_messages(secure))
        finally:
            await secure.aclose()

    async with serving(handler) as (transport, endpoint):
        link = await transport.dial(endpoint)
        secure = await connect_secure(link, INITIATOR, RESPONDER.public, timeout=HANDSHAKE_TIMEOUT)
        try:
            return await _timed(
                seconds, partial(secure.send, message), secure.aclose, totals.receive
            )
        finally:
            await secure.aclose()


def aead_rate(seconds: float, decrypt: bool, size: int = wire.CELL_PLAINTEXT) -> float:
    """MB/s of ``size``-byte plaintexts (a cell's by default) through one AEAD direction."""
    key = bytes(range(32))
    nonce = bytes(12)  # one nonce for every call: only the speed is of interest here
    plain = bytes(size)
    if decrypt:
        sealed = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plain, b"", nonce, key)
        step = partial(sodium.crypto_aead_chacha20poly1305_ietf_decrypt, sealed, b"", nonce, key)
    else:
        step = partial(sodium.crypto_aead_chacha20poly1305_ietf_encrypt, plain, b"", nonce, key)
    return loop_rate(step, seconds, batch=200) * size / MB


MEASURES: dict[str, tuple[str, Measure]] = {
    "raw": ("raw trio TCP, 64 KiB sends", partial(raw_tcp, CHUNK)),
    "raw_1k": ("raw trio TCP, 1 KiB sends", partial(raw_tcp, 1024)),
    "raw2": ("raw TCP, receiver in 2nd process", raw_tcp_two_processes),
    "transport": ("TcpTransport link, 64 KiB sends", tcp_transport),
    "secure_max": ("SecureLink, 64 KiB messages", partial(secure_link, wire.MAX_MESSAGE)),
    "secure_1k": ("SecureLink, 1 KiB messages", partial(secure_link, 1024)),
    "secure_cell": (
        f"SecureLink, {wire.CELL_DATA} B (1 cell)",
        partial(secure_link, wire.CELL_DATA),
    ),
    "encrypt": ("AEAD encrypt, 1008 B cells", sync_measure(partial(aead_rate, decrypt=False))),
    "decrypt": ("AEAD decrypt, 1008 B cells", sync_measure(partial(aead_rate, decrypt=True))),
}
SECURE_ROWS = ("secure_max", "secure_1k", "secure_cell")
HEADER = ("measurement", "MB/s", "min", "max", "x raw TCP", "x AEAD enc")


def _row(
    label: str, series: list[float], raw: list[float], ceiling: list[float] | None
) -> list[str]:
    return [
        label,
        f"{median(series):.1f}",
        f"{min(series):.1f}",
        f"{max(series):.1f}",
        f"{paired_ratio(series, raw):.3f}",
        f"{paired_ratio(series, ceiling):.3f}" if ceiling is not None else "",
    ]


def report(samples: dict[str, list[float]], seconds: float, rounds: int) -> str:
    """The table and the derived ratios, as printed."""
    # Both ends of a SecureLink row run in this process: each cell is sealed
    # and opened here, so the one-process ceiling combines both directions.
    both = [
        1 / (1 / e + 1 / d) for e, d in zip(samples["encrypt"], samples["decrypt"], strict=True)
    ]
    rows = [
        _row(
            label, samples[key], samples["raw"], samples["encrypt"] if key in SECURE_ROWS else None
        )
        for key, (label, _) in MEASURES.items()
    ]
    rows.append(_row("AEAD seal+open, one process", both, samples["raw"], None))
    lines = [
        f"p2pmsg link goodput: {rounds} interleaved rounds x {seconds:g} s, medians, MB = 10^6 B",
        environment(),
        "",
        table(HEADER, rows),
        "",
        "ratios (median of per-round ratios):",
    ]
    for key in SECURE_ROWS:
        lines.append(
            f"  {MEASURES[key][0]} / AEAD seal+open, one process: "
            f"{paired_ratio(samples[key], both):.3f}"
        )
    for name, a, b in [
        ("SecureLink, 1 KiB messages / raw trio TCP, 1 KiB sends", "secure_1k", "raw_1k"),
        ("TcpTransport / raw trio TCP, 64 KiB sends", "transport", "raw"),
    ]:
        lines.append(f"  {name}: {paired_ratio(samples[a], samples[b]):.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("Goodput of the secure link over loopback TCP.", argv)
    measures = {key: measure for key, (_, measure) in MEASURES.items()}
    samples = trio.run(run_rounds, measures, args.seconds, args.rounds)
    print(report(samples, args.seconds, args.rounds))


if __name__ == "__main__":
    main()
