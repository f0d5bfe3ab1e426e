"""What the benchmarks share: arguments, interleaved rounds, paired ratios, a table.

Theory of operation: on a shared, noisy two-core machine an absolute figure
says little, so each benchmark measures its subject *and* its reference (a
peer implementation or a hardware/crypto limit) in the same run, round after
round, the order rotated every round. It reports the median of each series
and, for a ratio, the median of the per-round ratios: a slow moment on the
machine then hits a subject and the reference it is compared with alike.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import trio

from p2pmsg.abc import Link
from p2pmsg.endpoint import Endpoint
from p2pmsg.keys import Identity
from transports.tcp import TcpTransport

#: A measurement: given a duration in seconds, return a rate.
Measure = Callable[[float], Awaitable[float]]

LISTEN = Endpoint("tcp", "127.0.0.1:0")
#: Fixed identities: what is measured does not depend on the keys.
INITIATOR = Identity(bytes([1]) * 32)
RESPONDER = Identity(bytes([2]) * 32)
#: Replay window of the listening side, in seconds (as a node would use).
REPLAY_WINDOW = 120.0
#: A handshake here takes milliseconds; a stuck one fails the run instead of hanging it.
HANDSHAKE_TIMEOUT = 10.0


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """``--seconds`` per measurement and ``--rounds``; exits on bad values."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="length of one measurement (default 1.0)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds of every measurement (default 5)"
    )
    args = parser.parse_args(argv)
    if not args.seconds > 0 or args.rounds < 1:
        parser.error("--seconds must be positive and --rounds at least 1")
    return args


async def run_rounds(
    measures: dict[str, Measure], seconds: float, rounds: int
) -> dict[str, list[float]]:
    """Every measurement once per round, the order rotated by one each round."""
    names = list(measures)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            # A lost handler or a stuck peer fails the run rather than hanging it.
            with trio.fail_after(3 * seconds + 30):
                samples[name].append(await measures[name](seconds))
    return samples


def loop_rate(step: Callable[[], object], seconds: float, batch: int = 1) -> float:
    """Calls of ``step`` per second, reading the clock every ``batch`` calls."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            step()
        calls += batch
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def sync_measure(fn: Callable[[float], float]) -> Measure:
    """A blocking measurement, as a :data:`Measure` (it runs between checkpoints)."""

    async def measure(seconds: float) -> float:
        await trio.lowlevel.checkpoint()
        return fn(seconds)

    return measure


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[Link], Awaitable[None]],
) -> AsyncIterator[tuple[TcpTransport, Endpoint]]:
    """A :class:`TcpTransport` listening on loopback for the ``async with`` body."""
    transport = TcpTransport()
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(transport.serve, LISTEN, handler)
        try:
            yield transport, endpoint
        finally:
            nursery.cancel_scope.cancel()


async def count_link(link: Link) -> int:
    """Bytes received on ``link`` until its peer closes it."""
    total = 0
    try:
        while True:
            total += len(await link.receive())
    except trio.EndOfChannel:
        return total


def median(series: Sequence[float]) -> float:
    return statistics.median(series)


def paired_ratio(subject: Sequence[float], reference: Sequence[float]) -> float:
    """Median of the per-round ratios ``subject[i] / reference[i]``."""
    return statistics.median([s / r for s, r in zip(subject, reference, strict=True)])


def environment() -> str:
    """One line naming when and where the numbers were taken."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{now}; Python {platform.python_version()}, trio {trio.__version__}; "
        f"{os.cpu_count()} CPUs; load average {load}"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
