"""Goodput of every transport side by side, and of obfs4proxy without our code.

Every row is measured in every round (rounds interleaved, order rotated) on
127.0.0.1: one link, one direction, 64 KiB sends, the receiver in this
process counting bytes until the end of the stream:

* ``tcp``: :class:`~transports.tcp.TcpTransport` ``serve``/``dial``, the
  reference for every transport (``x tcp``);
* ``ws``, ``tls``, ``obfs``: :class:`~transports.ws.WsTransport`,
  :class:`~transports.tls.TlsTransport` and
  :class:`~transports.obfs.ObfsTransport`, each over its default tcp, each
  end in this interpreter (so every byte is framed, sealed and opened here);
* ``pt``: :class:`~transports.pt.PtTransport` driving Debian's
  ``obfs4proxy`` (a client and a server proxy process, obfs4 between them);
* bare obfs4proxy: the same binary driven by the small managed-proxy harness
  below (the ``TOR_PT_*`` environment, the stdout lines, SOCKS5 with the
  bridge's ``cert`` written by hand), with plain trio sockets at both ends
  and no p2pmsg code on the data path. It is the peer: ``pt / bare`` is what
  our pt transport costs, ``obfs / bare`` compares our obfs with obfs4.

Goodput counts payload bytes the receiver got, from the first send until
the receiver saw the end of the stream; set-up (proxies, handshakes) is not
timed, and a receiver that counts a different number of bytes than were
sent stops the run. Proxies are started per measurement and stopped (stdin
closed, then SIGKILL) before the next. Without ``obfs4proxy`` on ``PATH``
the two obfs4proxy rows are left out, with a note. MB = 10**6 bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

import trio

from bench._common import (
    Measure,
    count_link,
    environment,
    median,
    paired_ratio,
    parse_args,
    run_rounds,
    table,
)
from p2pmsg.abc import Link, Transport
from p2pmsg.endpoint import Endpoint
from transports.obfs import ObfsTransport
from transports.pt import PtTransport
from transports.tcp import TcpTransport
from transports.tls import TlsTransport
from transports.ws import WsTransport

CHUNK = 64 * 1024
PAYLOAD = bytes(CHUNK)
MB = 1e6
LOOPBACK = "127.0.0.1"
#: How long an obfs4proxy may take to print its ``*METHODS DONE`` (it takes milliseconds).
PROXY_START_TIMEOUT = 10.0
#: How long an obfs4proxy gets to exit once its stdin is closed, before SIGKILL.
PROXY_STOP_GRACE = 2.0

LISTEN = {
    "tcp": "tcp:127.0.0.1:0",
    "ws": "ws:127.0.0.1:0/b",
    "tls": "tls:127.0.0.1:0",
    "obfs": "obfs:127.0.0.1:0",
    "pt": "pt:obfs4:127.0.0.1:0",
}
LABELS = {
    "tcp": "tcp: TcpTransport",
    "ws": "ws: WsTransport",
    "tls": "tls: TlsTransport",
    "obfs": "obfs: ObfsTransport",
    "pt": "pt: PtTransport + obfs4proxy",
    "bare": "bare obfs4proxy, own harness",
}
#: ``(subject, reference, goal)``: printed with "met"/"not met", never asserted.
GOALS = (("obfs", "bare", 1.0), ("pt", "bare", 0.9))
HEADER = ("measurement", "MB/s", "min", "max", "x tcp", "x obfs4proxy")
MISSING = (
    "obfs4proxy not found on PATH: the pt and bare obfs4proxy rows and their ratios "
    "are left out (apt-get install -y obfs4proxy)"
)


def obfs4proxy_binary() -> str | None:
    """The obfs4proxy to run, or None (the smoke test replaces this)."""
    return shutil.which("obfs4proxy")


async def _timed(
    seconds: float,
    send_one: Callable[[], Awaitable[object]],
    finish: Callable[[], Awaitable[None]],
    received: Callable[[], Awaitable[int]],
) -> float:
    """MB/s: ``send_one`` (64 KiB) until the deadline, then ``finish``;
    ``received`` returns the receiver's byte count once it saw the end."""
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def sender() -> None:
        nonlocal sent
        while time.perf_counter() < deadline:
            await send_one()
            sent += CHUNK
        await finish()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        total = await received()
        elapsed = time.perf_counter() - start
    if total != sent:
        raise RuntimeError(f"the receiver counted {total} bytes of {sent}")
    return total / elapsed / MB


# -- our transports -------------------------------------------------------------


async def link_goodput(transport: Transport, listen: Endpoint, seconds: float) -> float:
    """One link through ``transport.serve``/``dial``; the handshake is not timed."""
    totals_in, totals = trio.open_memory_channel[int](1)

    async def handler(link: Link) -> None:
        await totals_in.send(await count_link(link))

    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(transport.serve, listen, handler)
        link = await transport.dial(endpoint)
        try:
            rate = await _timed(seconds, partial(link.send, PAYLOAD), link.aclose, totals.receive)
        finally:
            await link.aclose()
        nursery.cancel_scope.cancel()
    return rate


async def pt_goodput(binary: str, state: Path, seconds: float) -> float:
    """:func:`link_goodput` with the client proxy's host (``run``) running too."""
    transport = PtTransport(binary, state_dir=state)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        rate = await link_goodput(transport, Endpoint.parse(LISTEN["pt"]), seconds)
        nursery.cancel_scope.cancel()
    return rate


# -- bare obfs4proxy: a managed-proxy harness of our own ------------------------


def _proxy_environment(state: Path, role: dict[str, str]) -> dict[str, str]:
    """pt-spec's ``TOR_PT_*`` variables (and no stray ones from our environment)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOR_PT_")}
    return base | {
        "TOR_PT_MANAGED_TRANSPORT_VER": "1",
        "TOR_PT_STATE_LOCATION": str(state),
        "TOR_PT_EXIT_ON_STDIN_CLOSE": "1",  # obfs4proxy ignores stdin without it
        **role,
    }


async def _next_line(stdout: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    while (end := buffer.find(b"\n")) < 0:
        data = await stdout.receive_some(4096)
        if not data:
            raise RuntimeError("obfs4proxy exited before it was ready")
        buffer += data
    line = bytes(buffer[:end])
    del buffer[: end + 1]
    return line


async def _configure(stdout: trio.abc.ReceiveStream, done: bytes) -> list[bytes]:
    """The words of the obfs4 ``CMETHOD``/``SMETHOD`` line, read up to ``done``."""
    buffer, method = bytearray(), None
    while (line := await _next_line(stdout, buffer)) != done:
        words = line.split(b" ")
        if words[0].endswith(b"ERROR"):
            raise RuntimeError(f"obfs4proxy: {line.decode(errors='replace')}")
        if words[0] in (b"CMETHOD", b"SMETHOD") and words[1] == b"obfs4":
            method = words
    if method is None:
        raise RuntimeError("obfs4proxy offered no obfs4 method")
    return method


async def _stop(process: trio.Process) -> None:
    """Close stdin (obfs4proxy exits), SIGKILL after a grace period; reap it."""
    if process.stdin is not None:
        await process.stdin.aclose()
    with trio.move_on_after(PROXY_STOP_GRACE):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()


async def run_obfs4proxy(
    binary: str,
    env: dict[str, str],
    done: bytes,
    *,
    task_status: trio.TaskStatus[list[bytes]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one obfs4proxy; report its method line's words once ready; stop it on exit."""
    process = await trio.lowlevel.open_process(
        [binary],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(PROXY_START_TIMEOUT):
            task_status.started(await _configure(process.stdout, done))
        while await process.stdout.receive_some(4096):
            pass  # nothing is expected after DONE; reading keeps the pipe from filling
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process)


async def _read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise RuntimeError("the SOCKS proxy closed the connection")
        data += chunk
    return data


async def socks5_connect(stream: trio.SocketStream, port: int, args: bytes) -> None:
    """SOCKS5 CONNECT to 127.0.0.1:``port``, the bridge's ``k=v;k=v`` as the
    username (RFC 1929, pt-spec 3.5); reads exactly the replies' bytes."""
    await stream.send_all(b"\x05\x01\x02")  # version 5, one method: username/password
    if await _read_exactly(stream, 2) != b"\x05\x02":
        raise RuntimeError("the SOCKS proxy refused username/password")
    await stream.send_all(b"\x01" + bytes([len(args)]) + args + b"\x01\x00")
    if await _read_exactly(stream, 2) != b"\x01\x00":
        raise RuntimeError("the SOCKS proxy refused the bridge's arguments")
    address = bytes([1]) + trio.socket.inet_aton(LOOPBACK) + port.to_bytes(2, "big")
    await stream.send_all(b"\x05\x01\x00" + address)
    head = await _read_exactly(stream, 4)
    if head[:2] != b"\x05\x00":
        raise RuntimeError(f"SOCKS CONNECT failed with reply {head[1]}")
    if head[3] == 3:
        await _read_exactly(stream, (await _read_exactly(stream, 1))[0] + 2)
    else:
        await _read_exactly(stream, (4 if head[3] == 1 else 16) + 2)


def _bridge(smethod: list[bytes]) -> tuple[int, bytes]:
    """Port and SOCKS arguments from ``SMETHOD obfs4 IP:PORT ARGS:cert=C,iat-mode=0``.

    A cert is unpadded base64, so the list needs no unescaping.
    """
    port = int(smethod[2].rpartition(b":")[2])
    args = next(word for word in smethod[3:] if word.startswith(b"ARGS:"))
    return port, args.removeprefix(b"ARGS:").replace(b",", b";")


async def _count_stream(stream: trio.SocketStream) -> int:
    total = 0
    while chunk := await stream.receive_some(CHUNK):
        total += len(chunk)
    return total


async def bare_obfs4proxy(binary: str, state: Path, seconds: float) -> float:
    """A trio socket -> SOCKS -> obfs4proxy client -> obfs4 -> server -> ORPort sink."""
    sink = (await trio.open_tcp_listeners(0, host=LOOPBACK))[0]
    server_env = _proxy_environment(
        state / "server",
        {
            "TOR_PT_SERVER_TRANSPORTS": "obfs4",
            "TOR_PT_SERVER_BINDADDR": f"obfs4-{LOOPBACK}:0",
            "TOR_PT_ORPORT": f"{LOOPBACK}:{sink.socket.getsockname()[1]}",
        },
    )
    client_env = _proxy_environment(state / "client", {"TOR_PT_CLIENT_TRANSPORTS": "obfs4"})
    async with sink, trio.open_nursery() as nursery:
        smethod = await nursery.start(run_obfs4proxy, binary, server_env, b"SMETHODS DONE")
        cmethod = await nursery.start(run_obfs4proxy, binary, client_env, b"CMETHODS DONE")
        bridge_port, args = _bridge(smethod)
        client = await trio.open_tcp_stream(LOOPBACK, int(cmethod[3].rpartition(b":")[2]))
        async with client:
            await socks5_connect(client, bridge_port, args)
            server = await sink.accept()
            async with server:
                count = partial(_count_stream, server)
                rate = await _timed(
                    seconds, partial(client.send_all, PAYLOAD), client.aclose, count
                )
        nursery.cancel_scope.cancel()
    return rate


# -- the run and the report -----------------------------------------------------


def build_measures(state: Path, binary: str | None) -> dict[str, Measure]:
    """Every row's measurement; the transports keep their keys in ``state``."""
    transports: dict[str, Transport] = {
        "tcp": TcpTransport(),
        "ws": WsTransport(),
        "tls": TlsTransport(cert_dir=state / "tls"),
        "obfs": ObfsTransport(state_dir=state / "obfs"),
    }
    measures: dict[str, Measure] = {
        key: partial(link_goodput, transport, Endpoint.parse(LISTEN[key]))
        for key, transport in transports.items()
    }
    if binary is not None:
        measures["pt"] = partial(pt_goodput, binary, state / "pt")
        measures["bare"] = partial(bare_obfs4proxy, binary, state / "bare")
    return measures


def _row(key: str, samples: dict[str, list[float]]) -> list[str]:
    series = samples[key]
    peer = samples.get("bare") if key in ("obfs", "pt", "bare") else None
    return [
        LABELS[key],
        f"{median(series):.1f}",
        f"{min(series):.1f}",
        f"{max(series):.1f}",
        f"{paired_ratio(series, samples['tcp']):.3f}",
        f"{paired_ratio(series, peer):.3f}" if peer is not None else "",
    ]


def _ratio_lines(samples: dict[str, list[float]]) -> list[str]:
    lines = [
        f"  {key} / tcp: {paired_ratio(samples[key], samples['tcp']):.3f}"
        for key in ("ws", "tls", "obfs", "pt")
        if key in samples
    ]
    if "bare" not in samples:
        return [*lines, "  obfs / bare obfs4proxy, pt / bare obfs4proxy: skipped, no obfs4proxy"]
    for subject, reference, goal in GOALS:
        ratio = paired_ratio(samples[subject], samples[reference])
        verdict = "met" if ratio >= goal else "not met"
        lines.append(f"  {subject} / bare obfs4proxy: {ratio:.3f}  (goal >= {goal:.1f}: {verdict})")
    return lines


def report(samples: dict[str, list[float]], seconds: float, rounds: int) -> str:
    """The table and the derived ratios, as printed."""
    lines = [
        f"p2pmsg transport goodput: {rounds} interleaved rounds x {seconds:g} s, "
        "one link, 64 KiB sends, medians, MB = 10^6 B",
        environment(),
    ]
    if "bare" not in samples:
        lines.append(MISSING)
    lines += [
        "",
        table(HEADER, [_row(key, samples) for key in LABELS if key in samples]),
        "",
        "ratios (median of per-round ratios):",
        *_ratio_lines(samples),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("Goodput of every transport and of bare obfs4proxy on loopback.", argv)
    with tempfile.TemporaryDirectory(prefix="p2pmsg-bench-") as state:
        measures = build_measures(Path(state), obfs4proxy_binary())
        samples = trio.run(run_rounds, measures, args.seconds, args.rounds)
    print(report(samples, args.seconds, args.rounds))


if __name__ == "__main__":
    main()
