"""Process helpers for the system tests: real ``p2pmsg`` processes on 127.0.0.1.

Theory of operation. Every command runs as ``python -m p2pmsg --home DIR ...``
in its own process, exactly as a person would type it; nothing here imports
the node. Processes talk to each other only through their homes, their
control sockets and TCP on 127.0.0.1, with ports picked by ``init --listen
tcp:127.0.0.1:0``.

Across processes there is no event to wait on, so waiting is polling the CLI
with a deadline (:func:`poll`); a deadline that passes is a failure that
shows the last answer and the node's log, never a timing assertion. A
``run`` process logs to ``NAME.log`` next to its home (appended across
restarts) and is always reaped: :func:`running` terminates it on the way
out, then kills it if it does not stop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

ROOT = Path(__file__).resolve().parent.parent
P2PMSG = (sys.executable, "-m", "p2pmsg")
DEADLINE = 60.0
POLL_INTERVAL = 0.2
STOP_GRACE = 10.0
# sockaddr_un.sun_path is 108 bytes with the NUL; leave room for HOME/control.sock.
MAX_BASE_CHARS = 60

T = TypeVar("T")


@contextmanager
def short_base(tmp_path: Path) -> Iterator[Path]:
    """A directory short enough for homes whose control socket must bind."""
    if len(str(tmp_path)) <= MAX_BASE_CHARS:
        yield tmp_path
        return
    base = Path(tempfile.mkdtemp(prefix="p2s", dir="/tmp"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Done:
    """One finished CLI command."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def __str__(self) -> str:
        args = " ".join(self.args)
        return f"p2pmsg {args} -> {self.code}\nstdout: {self.out!r}\nstderr: {self.err!r}"


def command(home: Path, *args: str) -> list[str]:
    return [*P2PMSG, "--home", str(home), *args]


def cli_sync(home: Path, *args: str) -> Done:
    """Run one command to completion, synchronously."""
    done = subprocess.run(
        command(home, *args),
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        timeout=DEADLINE,
    )
    return Done(args, done.returncode, done.stdout, done.stderr)


async def cli(home: Path, *args: str, prefix: tuple[str, ...] = ()) -> Done:
    """Run one command to completion under trio (after ``prefix``, such as
    ``ip netns exec NS``)."""
    with trio.fail_after(DEADLINE):
        done = await trio.run_process(
            [*prefix, *command(home, *args)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
    return Done(args, done.returncode, done.stdout.decode(), done.stderr.decode())


async def ok(home: Path, *args: str, prefix: tuple[str, ...] = ()) -> Done:
    """Run one command that must succeed."""
    done = await cli(home, *args, prefix=prefix)
    assert done.code == 0, str(done)
    assert "Traceback" not in done.err, str(done)
    return done


def assert_clean_error(done: Done) -> None:
    """The contract for a person's mistake: non-zero, one line on stderr, no traceback."""
    assert done.code != 0, str(done)
    assert len(done.err.splitlines()) == 1, str(done)
    assert done.err.startswith("p2pmsg: "), str(done)
    assert "Traceback" not in done.out + done.err, str(done)


async def init(home: Path, *listen: str) -> str:
    """``init`` a home listening on ``listen`` (default: a free port on 127.0.0.1);
    return its invite link."""
    flags = [arg for endpoint in (listen or ("tcp:127.0.0.1:0",)) for arg in ("--listen", endpoint)]
    done = await ok(home, "init", *flags)
    assert done.lines[0].startswith("p2pmsg://"), str(done)
    return done.lines[0]


async def befriend(homes: dict[str, Path]) -> None:
    """Init two homes and add each as the other's contact, by name."""
    (a, a_home), (b, b_home) = homes.items()
    links: dict[str, str] = {}

    async def init_one(name: str, home: Path) -> None:
        links[name] = await init(home)

    async with trio.open_nursery() as nursery:
        for name, home in homes.items():
            nursery.start_soon(init_one, name, home)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ok, a_home, "contacts", "add", b, links[b])
        nursery.start_soon(ok, b_home, "contacts", "add", a, links[a])


async def poll(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    *,
    node_logs: Any = (),
    within: float = DEADLINE,
) -> T:
    """Call ``check`` until it returns something other than ``None``; fail after
    ``within`` seconds (default :data:`DEADLINE`) with ``what`` and the nodes' logs."""
    deadline = trio.current_time() + within
    while True:
        result = await check()
        if result is not None:
            return result
        if trio.current_time() > deadline:
            logs = "\n".join(node.log_tail() for node in node_logs)
            raise AssertionError(f"gave up waiting for {what}\n{logs}")
        await trio.sleep(POLL_INTERVAL)


class NodeProcess:
    """One ``p2pmsg run`` process (and its restarts) for one home."""

    def __init__(self, home: Path, tag: str = "", prefix: tuple[str, ...] = ()) -> None:
        self.home = home
        self.prefix = prefix  # run under this, e.g. ip netns exec NS
        self.log = home.with_name(f"{home.name}{tag}.log")
        self.process: trio.Process | None = None

    def __repr__(self) -> str:
        return f"NodeProcess({self.home.name})"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return f"--- {self.log.name} ---\n{text[-chars:]}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        """Start ``run`` and return once ``status`` answers."""
        await self.spawn()
        await poll(self._ready, f"{self.home.name} to answer status")

    async def spawn(self) -> None:
        """Start ``run`` without waiting for it."""
        assert self.process is None or self.process.returncode is not None
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [*self.prefix, *command(self.home, "run")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=ROOT,
            )

    async def _ready(self) -> bool | None:
        done = await cli(self.home, "status", "--json")
        if done.code == 0:
            return True
        assert self.process is not None
        if self.process.returncode is not None:
            raise AssertionError(f"run exited with {self.process.returncode}\n{self.log_tail()}")
        return None

    async def signal(self, signum: int) -> int:
        """Send ``signum`` and return the exit code once the process has gone."""
        assert self.process is not None
        self.process.send_signal(signum)
        with trio.move_on_after(STOP_GRACE):
            return await self.process.wait()
        raise AssertionError(f"run ignored {signal.Signals(signum).name}\n{self.log_tail()}")

    async def kill9(self) -> None:
        code = await self.signal(signal.SIGKILL)
        assert code == -signal.SIGKILL, code

    async def aclose(self) -> None:
        """Make sure the process is gone: SIGTERM, then SIGKILL after a grace period."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(STOP_GRACE):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@asynccontextmanager
async def running(
    *homes: Path, prefixes: tuple[tuple[str, ...], ...] = ()
) -> AsyncIterator[list[NodeProcess]]:
    """Start ``run`` in each home (concurrently; the i-th under ``prefixes[i]``
    if given); stop them all on the way out."""
    nodes = [
        NodeProcess(home, prefix=pre)
        for home, pre in zip(homes, prefixes or [()] * len(homes), strict=True)
    ]
    try:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node.start)
        yield nodes
    finally:
        for node in nodes:
            await node.aclose()


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777
