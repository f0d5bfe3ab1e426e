"""The pt transport over real obfs4proxy on 127.0.0.1, and over fake proxies.

Tests marked ``needs_obfs4proxy`` skip when the binary is not installed
(``apt-get install -y obfs4proxy``). The fake proxies are small Python
scripts that print managed-proxy lines, to reach the failure paths.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from p2pmsg.abc import Link
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import UnsupportedEndpoint
from p2pmsg.testing.conformance import CHECKS, Check
from transports.pt import PtDialTimeout, PtProxyError, PtTransport, parse_pt_endpoint
from transports.pt_proto import SocksReplyError

OBFS4PROXY = shutil.which("obfs4proxy")
needs_obfs4proxy = pytest.mark.skipif(
    OBFS4PROXY is None, reason="obfs4proxy is not installed (apt-get install -y obfs4proxy)"
)
LISTEN = Endpoint.parse("pt:obfs4:127.0.0.1:0")
GUARD = 20.0  # a hang guard, not a timing assertion


def our_children(name: str) -> list[int]:
    """Pids of processes called ``name`` whose parent is this test process."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and comm == name[:15] and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


@asynccontextmanager
async def running(transport: PtTransport) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        yield nursery
        nursery.cancel_scope.cancel()


async def echo(link: Link) -> None:
    while True:
        try:
            data = await link.receive()
        except trio.EndOfChannel:
            return
        await link.send(data)


def fake_proxy(
    tmp_path: Path, output: str, then: str = "import sys; sys.stdin.read()"
) -> PtTransport:
    script = tmp_path / "fake_proxy.py"
    script.write_text(f"import sys\nsys.stdout.write({output!r})\nsys.stdout.flush()\n{then}\n")
    return PtTransport(sys.executable, binary_args=[str(script)], start_timeout=1.0, stop_grace=0.5)


# -- endpoints -----------------------------------------------------------------


def test_endpoint_split() -> None:
    endpoint = Endpoint.parse("pt:obfs4:192.0.2.9:443;cert=abc\\=;iat-mode=0")
    assert (endpoint.transport, endpoint.address) == ("pt", "obfs4:192.0.2.9:443")
    assert endpoint.args == (("cert", "abc="), ("iat-mode", "0"))
    assert parse_pt_endpoint(endpoint) == ("obfs4", "192.0.2.9", 443)
    assert parse_pt_endpoint(Endpoint.parse("pt:obfs4:[2001:db8::1]:1")) == (
        "obfs4",
        "2001:db8::1",
        1,
    )


@pytest.mark.parametrize(
    "text",
    [
        "tcp:1.2.3.4:5",
        "pt:obfs4",
        "pt:obfs4:",
        "pt:obfs4:host",
        "pt:meek_lite:1.2.3.4:5",
        "pt:obfs4:1.2.3.4:0",
    ],
)
def test_can_dial_refuses(text: str) -> None:
    assert not PtTransport().can_dial(Endpoint.parse(text))


async def test_dial_refusals_are_unsupported_endpoint() -> None:
    transport = PtTransport()
    for text in ("pt:obfs4:1.2.3.4:0", "pt:obfs4:1.2.3.4:5;k=" + "v" * 600):
        with pytest.raises(UnsupportedEndpoint):
            await transport.dial(Endpoint.parse(text))


async def test_dial_without_run_is_a_clear_error() -> None:
    with pytest.raises(PtProxyError, match=r"run is not running"):
        await PtTransport().dial(Endpoint.parse("pt:obfs4:127.0.0.1:9;cert=x"))


# -- proxy failures ------------------------------------------------------------


async def test_missing_binary(tmp_path: Path) -> None:
    transport = PtTransport(str(tmp_path / "no-such-obfs4proxy"))
    async with running(transport):
        with pytest.raises(PtProxyError, match="cannot start") as info:
            await transport.dial(Endpoint.parse("pt:obfs4:127.0.0.1:9;cert=x"))
    assert isinstance(info.value, OSError)
    assert info.value.user_message().startswith("The pluggable-transport proxy could not")
    with pytest.raises(PtProxyError, match="cannot start"):
        await transport.serve(LISTEN, echo)  # not wrapped in an exception group


@pytest.mark.parametrize(
    ("output", "then", "match"),
    [
        ("", "sys.exit(1)", "exited before it was ready"),
        ("VERSION 1\nENV-ERROR no TOR_PT_X\n", "", "ENV-ERROR no TOR_PT_X"),
        ("VERSION-ERROR no-version\n", "", "VERSION-ERROR no-version"),
        ("VERSION 1\nPROXY-ERROR bad proxy\n", "", "PROXY-ERROR bad proxy"),
        ("VERSION 1\nCMETHOD-ERROR obfs4 no rocks\nCMETHODS DONE\n", "", "obfs4 refused: no rocks"),
        ("VERSION 1\nCMETHODS DONE\n", "", "no obfs4 method"),
        ("VERSION 1\nCMETHOD obfs4 socks4 127.0.0.1:1\nCMETHODS DONE\n", "", "only socks4"),
        ("VERSION 7\n", "", "version we did not offer"),
        ("VERSION 1\n", "import time; time.sleep(60)", "not ready within"),
    ],
)
async def test_failing_client_proxy(tmp_path: Path, output: str, then: str, match: str) -> None:
    transport = fake_proxy(tmp_path, output, then)
    with trio.fail_after(GUARD):
        async with running(transport):
            with pytest.raises(PtProxyError, match=match):
                await transport.dial(Endpoint.parse("pt:obfs4:127.0.0.1:9;cert=x"))
            assert our_children(Path(sys.executable).name) == []  # even one ignoring stdin is gone


async def test_failing_server_proxy(tmp_path: Path) -> None:
    transport = fake_proxy(tmp_path, "VERSION 1\nSMETHOD-ERROR obfs4 no cows\nSMETHODS DONE\n")
    with pytest.raises(PtProxyError, match="obfs4 refused: no cows"):
        await transport.serve(LISTEN, echo)


async def test_serve_returns_when_its_proxy_dies(tmp_path: Path) -> None:
    lines = "VERSION 1\nSMETHOD obfs4 [::]:4711 ARGS:cert=abc,iat-mode=0\nSMETHODS DONE\n"
    transport = fake_proxy(tmp_path, lines, "sys.exit(0)")
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(transport.serve, Endpoint.parse("pt:obfs4:0.0.0.0:0"), echo)
    assert str(bound) == "pt:obfs4:0.0.0.0:4711;cert=abc;iat-mode=0"


# -- real obfs4proxy -----------------------------------------------------------


@needs_obfs4proxy
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_conformance(check: Check, tmp_path: Path) -> None:
    transport = PtTransport(state_dir=tmp_path / "pt")
    async with running(transport):
        await check(transport, LISTEN)


@needs_obfs4proxy
async def test_bound_endpoint_carries_the_cert_and_state_persists(tmp_path: Path) -> None:
    state = tmp_path / "pt-state"
    transport = PtTransport(state_dir=state)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            first = await nursery.start(transport.serve, LISTEN, echo)
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            again = await nursery.start(transport.serve, LISTEN, echo)
            nursery.cancel_scope.cancel()
    assert first.address.startswith("obfs4:127.0.0.1:")
    assert [k for k, _ in first.args] == ["cert", "iat-mode"]
    assert first.arg("cert") == again.arg("cert")  # derived from the persistent state
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert Endpoint.parse(str(first)) == first


@needs_obfs4proxy
async def test_wrong_cert_fails_within_our_timeout() -> None:
    transport = PtTransport(dial_timeout=1.0)
    with trio.fail_after(GUARD):
        async with running(transport) as nursery:
            bound = await nursery.start(transport.serve, LISTEN, echo)
            cert = bound.arg("cert")
            assert cert is not None
            wrong = ("A" if cert[0] != "A" else "B") + cert[1:]
            endpoint = Endpoint(
                bound.transport, bound.address, (("cert", wrong), ("iat-mode", "0"))
            )
            with pytest.raises(PtDialTimeout) as info:
                await transport.dial(endpoint)
            assert isinstance(info.value, OSError)


@needs_obfs4proxy
async def test_malformed_cert_is_refused_by_the_proxy() -> None:
    transport = PtTransport()
    with trio.fail_after(GUARD):
        async with running(transport):
            with pytest.raises(SocksReplyError):
                await transport.dial(Endpoint.parse("pt:obfs4:127.0.0.1:9;cert=short;iat-mode=0"))


@needs_obfs4proxy
async def test_unknown_method_is_a_clear_error() -> None:
    transport = PtTransport(method="no_such_method")
    async with running(transport):
        with pytest.raises(PtProxyError, match="no_such_method refused"):
            await transport.dial(Endpoint.parse("pt:no_such_method:127.0.0.1:9;a=b"))


@needs_obfs4proxy
async def test_no_obfs4proxy_remains_after_close() -> None:
    transport = PtTransport()
    with trio.fail_after(GUARD):
        async with running(transport) as nursery:
            bound = await nursery.start(transport.serve, LISTEN, echo)
            link = await transport.dial(bound)
            await link.send(b"ping")
            assert await link.receive() == b"ping"
            assert len(our_children("obfs4proxy")) == 2  # the server's and the client's
            await link.aclose()
    assert our_children("obfs4proxy") == []


@needs_obfs4proxy
async def test_next_dial_restarts_a_dead_client_proxy() -> None:
    transport = PtTransport()
    with trio.fail_after(GUARD):
        async with running(transport) as nursery:
            bound = await nursery.start(transport.serve, LISTEN, echo)
            (server,) = our_children("obfs4proxy")
            await (await transport.dial(bound)).aclose()
            (client,) = set(our_children("obfs4proxy")) - {server}
            os.kill(client, signal.SIGKILL)
            while transport._socks is not None:  # the proxy's task notices its death
                await trio.lowlevel.checkpoint()
            link = await transport.dial(bound)
            await link.send(b"again")
            assert await link.receive() == b"again"
            await link.aclose()
            assert client not in our_children("obfs4proxy")
            assert len(our_children("obfs4proxy")) == 2
