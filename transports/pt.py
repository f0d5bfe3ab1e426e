"""Tor pluggable transports: drive an external binary (obfs4proxy) as a managed proxy.

Endpoints are ``pt:METHOD:HOST:PORT;k=v;...``, e.g.
``pt:obfs4:192.0.2.9:443;cert=...;iat-mode=0``: the endpoint parser splits
off the transport name ``pt``, and the address's first ``:`` separates the
pt-spec method name from ``HOST:PORT``. One :class:`PtTransport` drives one
method of one binary; the arguments are the method's (``cert``, ``iat-mode``).

Client. :meth:`PtTransport.run` must be running (``nursery.start``): the
client proxy is started lazily, once, by the first ``dial``, inside run's
nursery, and stopped when run is cancelled. Each dial opens TCP to the
proxy's SOCKS5 port and asks it (socks5's :class:`Socks5Client`, reading
exactly what the handshake needs so no peer byte is swallowed) to CONNECT to
``HOST:PORT`` with the endpoint's arguments. obfs4proxy meets a wrong cert
with 30-80 s of silence, so every dial has its own ``dial_timeout``. If the
proxy dies, the next dial starts a new one.

Server. ``serve`` opens an internal 127.0.0.1 TCP listener (the proxy's
``TOR_PT_ORPORT``: each connection it accepts is a de-obfuscated client,
handed to the handler as a :class:`~transports.tcp.TcpLink`), starts a server
proxy bound to the endpoint's host and port (``TOR_PT_SERVER_BINDADDR``;
the endpoint's arguments become ``TOR_PT_SERVER_TRANSPORT_OPTIONS``, e.g.
``iat-mode=1``), and reports ``pt:METHOD:HOST:PORT`` with the proxy's
``SMETHOD ... ARGS:`` (``cert``, ``iat-mode``) so an invite can carry it. The
host reported is the one asked for: obfs4proxy reports ``[::]`` for 0.0.0.0.
If the server proxy dies later, the error is logged and ``serve`` returns:
this endpoint stops, the node's other transports go on.

Processes. Every proxy lives in a task of a nursery (run's or serve's) and
is stopped in that task's ``finally``, shielded: stdin closed
(``TOR_PT_EXIT_ON_STDIN_CLOSE=1``), then SIGTERM, then SIGKILL, each after
``stop_grace`` seconds. Its stderr is discarded (its stdout is the protocol).
Failures to start (binary missing, early exit, no ``DONE`` within
``start_timeout``, a fatal ``*-ERROR``, our method refused) raise
:class:`PtProxyError`, an ``OSError`` so callers treat it as a failed dial
or listen. ``state_dir`` (created owner-only) keeps the server's identity,
hence its cert, across restarts; without it each proxy gets a temporary one.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from p2pmsg.abc import Link, LinkHandler
from p2pmsg.endpoint import Endpoint, format_address
from p2pmsg.errors import BadEndpoint, LocalProtocolError, P2PMsgError, UnsupportedEndpoint
from transports.pt_proto import (
    CMethod,
    FatalError,
    Log,
    MethodError,
    MethodsDone,
    ProxyEvent,
    ProxyLineParser,
    PtProtocolError,
    Role,
    SMethod,
    child_environment,
    client_environment,
    server_environment,
)
from transports.socks5 import Socks5Client, SocksReplyError
from transports.tcp import TcpLink

log = logging.getLogger(__name__)

__all__ = ["PtDialTimeout", "PtProxyError", "PtTransport", "SocksReplyError"]

READ_CHUNK = 4096


class PtProxyError(P2PMsgError, OSError):
    """The pluggable-transport proxy could not be started or used."""


class PtDialTimeout(SocksReplyError):
    """The pluggable-transport peer did not answer in time (a wrong cert gets silence)."""


def parse_pt_endpoint(endpoint: Endpoint) -> tuple[str, str, int]:
    """``(method, host, port)`` of a pt endpoint. Raises :class:`UnsupportedEndpoint`."""
    if endpoint.transport != PtTransport.name:
        raise UnsupportedEndpoint(f"not a pt endpoint: {endpoint.transport}")
    method, colon, address = endpoint.address.partition(":")
    try:
        if not colon or not address:
            raise BadEndpoint("expected pt:METHOD:HOST:PORT")
        host, port = Endpoint(PtTransport.name, address).host_port()
    except BadEndpoint as exc:
        raise UnsupportedEndpoint(f"bad pt address: {exc}") from exc
    return method, host, port


class PtTransport:
    """Dials and serves ``pt:METHOD:HOST:PORT`` through a managed PT proxy."""

    name = "pt"
    framed = False

    def __init__(
        self,
        binary: str = "obfs4proxy",
        method: str = "obfs4",
        state_dir: Path | str | None = None,
        *,
        binary_args: Sequence[str] = (),
        dial_timeout: float = 8.0,
        start_timeout: float = 10.0,
        stop_grace: float = 2.0,
    ) -> None:
        self.binary = binary
        self.method = method
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.command = (binary, *binary_args)
        self.dial_timeout = dial_timeout
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._nursery: trio.Nursery | None = None
        self._client_state: str | None = None
        self._socks: CMethod | None = None
        self._start_lock = trio.Lock()

    def __repr__(self) -> str:
        return f"PtTransport({self.binary!r}, method={self.method!r})"

    def _parse(self, endpoint: Endpoint) -> tuple[str, int]:
        method, host, port = parse_pt_endpoint(endpoint)
        if method != self.method:
            raise UnsupportedEndpoint(f"this pt transport drives {self.method}, not {method}")
        return host, port

    def can_dial(self, endpoint: Endpoint) -> bool:
        """True for ``pt:<our method>:HOST:PORT`` with a non-zero port."""
        try:
            _, port = self._parse(endpoint)
        except UnsupportedEndpoint:
            return False
        return port != 0

    # -- the client --------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the client proxy (started by the first dial) until cancelled.

        On cancellation the proxy is stopped (see the module docstring) and
        a temporary state directory removed.
        """
        with _state_directory(self.state_dir) as state:
            async with trio.open_nursery() as nursery:
                self._client_state, self._nursery = state, nursery
                try:
                    task_status.started()
                    await trio.sleep_forever()
                finally:
                    self._nursery = self._socks = None

    async def dial(self, endpoint: Endpoint) -> Link:
        """Connect through the proxy; see the module docstring.

        Raises ``UnsupportedEndpoint`` (not ours, port 0, arguments too long
        for SOCKS), :class:`PtProxyError` (no proxy), :class:`SocksReplyError`
        (refused, unreachable...; :class:`PtDialTimeout` after
        ``dial_timeout``), ``OSError`` or :class:`PtProtocolError`.
        Cancellation leaves nothing open.
        """
        host, port = self._parse(endpoint)
        try:
            if port == 0:
                raise LocalProtocolError("cannot dial port 0")
            socks = Socks5Client(host, port, endpoint.args)
        except LocalProtocolError as exc:
            raise UnsupportedEndpoint(f"pt: {exc}") from exc
        proxy = await self._client_proxy()
        with trio.move_on_after(self.dial_timeout):
            stream = await trio.open_tcp_stream(proxy.host, proxy.port)
            try:
                await _socks_handshake(stream, socks)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            return TcpLink(stream)
        raise PtDialTimeout(f"no answer within {self.dial_timeout:g} s")

    async def _client_proxy(self) -> CMethod:
        async with self._start_lock:
            if self._socks is None:
                if self._nursery is None:
                    raise PtProxyError("PtTransport.run is not running")
                self._socks = await self._nursery.start(self._run_client_proxy)
            return self._socks

    async def _run_client_proxy(self, *, task_status: trio.TaskStatus[CMethod]) -> None:
        assert self._client_state is not None
        env = client_environment([self.method], self._client_state)
        try:
            await run_managed_proxy(self._spec(Role.CLIENT, env), task_status=task_status)
        finally:
            self._socks = None  # the next dial starts a new proxy

    def _spec(self, role: Role, env: Mapping[str, str]) -> ProxySpec:
        return ProxySpec(self.command, env, role, self.method, self.start_timeout, self.stop_grace)

    # -- the server --------------------------------------------------------

    async def serve(
        self,
        endpoint: Endpoint,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``endpoint`` through a server proxy; see the module docstring.

        Reports ``pt:METHOD:HOST:PORT;cert=...`` through ``task_status`` and
        runs until cancelled (or until the proxy dies: logged, then returns).
        Raises ``UnsupportedEndpoint``, ``OSError`` or :class:`PtProxyError`
        before reporting. Cancellation stops the proxy.
        """
        host, port = self._parse(endpoint)
        bind_ip = await _resolve_ip(host)
        try:
            with _state_directory(self.state_dir) as state:
                async with trio.open_nursery() as nursery:
                    orport = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
                    serve_links = partial(_run_handler, handler)
                    await nursery.start(trio.serve_listeners, serve_links, [orport])
                    bind, orport_address = (bind_ip, port), orport.socket.getsockname()[:2]
                    env = server_environment(
                        self.method, bind, orport_address, state, endpoint.args
                    )
                    smethod: SMethod = await nursery.start(self._run_server_proxy, env, nursery)
                    address = f"{self.method}:{format_address(host, smethod.port)}"
                    task_status.started(Endpoint(self.name, address, smethod.args))
        except BaseExceptionGroup as group:
            raise _single(group) from None

    async def _run_server_proxy(
        self, env: dict[str, str], nursery: trio.Nursery, *, task_status: trio.TaskStatus[SMethod]
    ) -> None:
        await run_managed_proxy(self._spec(Role.SERVER, env), task_status=task_status)
        nursery.cancel_scope.cancel()  # the proxy died: stop serving this endpoint


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception a start-up failure left in ``group``, else the group."""
    leaves = _leaves(group)
    return leaves[0] if len(leaves) == 1 and isinstance(leaves[0], Exception) else group


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


async def _resolve_ip(host: str) -> str:
    """pt-spec binds only IP addresses: resolve a host name to its first one."""
    try:
        infos = await trio.socket.getaddrinfo(host, 0, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsupportedEndpoint(f"pt: cannot resolve {host!r}") from exc
    return str(infos[0][4][0])


async def _socks_handshake(stream: trio.SocketStream, socks: Socks5Client) -> None:
    """Run the SOCKS5 handshake, reading no byte past the proxy's reply."""
    await stream.send_all(socks.greeting())
    while not socks.connected:
        data = await stream.receive_some(socks.need)
        if not data:
            raise SocksReplyError("the proxy closed the connection during SOCKS")
        if reply := socks.receive_data(bytes(data)):
            await stream.send_all(reply)


async def _run_handler(handler: LinkHandler, stream: trio.SocketStream) -> None:
    """One de-obfuscated client from the proxy; its failure closes its link only."""
    link = TcpLink(stream)
    try:
        await handler(link)
    except Exception as exc:
        log.warning("pt: a link handler failed: %r", exc)
    finally:
        await link.aclose()


@contextmanager
def _state_directory(given: Path | None) -> Iterator[str]:
    """``given`` (created, owner-only), or a temporary directory removed on exit."""
    if given is not None:
        given.mkdir(mode=0o700, parents=True, exist_ok=True)
        given.chmod(0o700)  # the server's identity key lives here
        yield str(given.resolve())
        return
    temporary = tempfile.mkdtemp(prefix="p2pmsg-pt-")
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


# -- the managed proxy process -------------------------------------------------


@dataclass(frozen=True)
class ProxySpec:
    """How to run one managed proxy for one method."""

    command: Sequence[str]
    pt_env: Mapping[str, str]
    role: Role
    method: str
    start_timeout: float
    stop_grace: float


async def run_managed_proxy(
    spec: ProxySpec,
    *,
    task_status: trio.TaskStatus[CMethod] | trio.TaskStatus[SMethod],
) -> None:
    """Start a managed proxy, report ``method`` once it is ready, run until cancelled.

    Reports the method's :class:`CMethod`/:class:`SMethod` through
    ``task_status``. Raises :class:`PtProxyError` before reporting; after
    it, the proxy's exit is logged and this returns. The process never
    outlives this call (see the module docstring).
    """
    name = spec.command[0]
    try:
        process = await trio.lowlevel.open_process(
            list(spec.command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=child_environment(os.environ, spec.pt_env),
        )
    except OSError as exc:
        raise PtProxyError(f"cannot start {name}: {exc.strerror or exc}") from exc
    try:
        assert process.stdout is not None
        parser = ProxyLineParser(spec.role)
        try:
            with trio.fail_after(spec.start_timeout):
                ready = await _configure(process.stdout, parser, spec.method)
        except trio.TooSlowError:
            raise PtProxyError(f"{name} was not ready within {spec.start_timeout:g} s") from None
        except PtProtocolError as exc:
            raise PtProxyError(f"{name}: {exc}") from exc
        task_status.started(ready)  # type: ignore[arg-type]
        await _drain(process.stdout, parser)
        await process.wait()
        log.error("pt: %s exited with status %s", name, process.returncode)
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process, spec.stop_grace)


async def _configure(
    stdout: trio.abc.ReceiveStream, parser: ProxyLineParser, method: str
) -> CMethod | SMethod:
    """Read lines until ``DONE``; our method's line, or :class:`PtProxyError`."""
    found: CMethod | SMethod | None = None
    refused: str | None = None
    while True:
        data = await stdout.receive_some(READ_CHUNK)
        if not data:
            raise PtProxyError("the proxy exited before it was ready")
        for event in parser.receive_data(bytes(data)):
            match event:
                case FatalError(keyword, message):
                    raise PtProxyError(f"{keyword} {message}".strip())
                case CMethod(name) | SMethod(name) if name == method:
                    found = event
                case MethodError(name, message) if name == method:
                    refused = message or "no reason given"
                case MethodsDone():
                    return _chosen(method, found, refused)
                case _:
                    _log_event(event)


def _chosen(method: str, found: CMethod | SMethod | None, refused: str | None) -> CMethod | SMethod:
    if isinstance(found, CMethod) and found.socks != "socks5":
        raise PtProxyError(f"{method} offers only {found.socks}; we speak socks5")
    if found is not None:
        return found
    raise PtProxyError(f"{method} refused: {refused}" if refused else f"no {method} method")


async def _drain(stdout: trio.abc.ReceiveStream, parser: ProxyLineParser) -> None:
    """Read (and log) the proxy's lines until it closes stdout."""
    while data := await stdout.receive_some(READ_CHUNK):
        try:
            events = parser.receive_data(bytes(data))
        except PtProtocolError as exc:
            log.warning("pt: ignoring the rest of the proxy's output: %s", exc)
            while await stdout.receive_some(READ_CHUNK):
                pass
            return
        for event in events:
            _log_event(event)


def _log_event(event: ProxyEvent) -> None:
    if isinstance(event, Log):
        log.debug("pt: %s %s", event.keyword, event.text)  # may name peers: DEBUG only


async def _stop(process: trio.Process, grace: float) -> None:
    """Close stdin, then SIGTERM, then SIGKILL, ``grace`` seconds apart; reap it."""
    if process.stdin is not None:
        await process.stdin.aclose()
    for signal_it in (None, process.terminate, process.kill):
        if signal_it is not None:
            signal_it()
        with trio.move_on_after(grace):
            await process.wait()
        if process.returncode is not None:
            break
    if process.stdout is not None:
        await process.stdout.aclose()
