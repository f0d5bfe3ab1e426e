"""The ``obfs`` transport: our own keyed look-like-nothing layer, obfs4-shaped.

Endpoints are ``obfs:HOST:PORT;key=KEY``: ``KEY`` is the server's X25519
public key in lower-case base32 (52 characters, like node keys). A client
needs it to dial; ``serve`` reports its endpoint with ``key=`` added (port 0
resolved), as tls reports ``pin=``, so invites carry it.

Theory of operation. The wire format (a hello in low-weight printable
letters that the GFW's fully-encrypted-traffic detector exempts, the keyed
answer, sealed frames, padding) is the sans-IO core in
:mod:`transports.obfs_core`. This module is the trio adapter over any inner
:class:`~p2pmsg.abc.Link` (tcp by default, or a simulated one): ``dial`` runs
the handshake under :data:`HANDSHAKE_TIMEOUT`; one ``send`` is one message of
up to :data:`~p2pmsg.abc.MAX_SEND` bytes and ``receive`` returns it whole
(``framed``). There is no close frame: the inner stream's end between two
messages is the end (the secure link above authenticates its own close). The
server's key is made on the first ``serve`` and kept in ``state_dir``
(:data:`KEY_FILE`, 0600, directory 0700), so invites stay valid.

Probe resistance, as obfs4 does it. A server that gets bytes which do not
authenticate (noise, a wrong key, a replayed, stale or cut hello) answers
nothing: it reads and discards until its deadline (the handshake timeout
plus a delay in [0, 60) s, from the accept) or until a byte budget (1 to 2
of the longest hellos) came in, then closes. Both are fixed per server,
drawn from its secret (:attr:`~transports.obfs_core.ServerKey.close_policy`),
so it acts like one service with one timeout and one buffer, and every
invalid input, whenever recognised, meets the same reaction; a client that
closes first is closed at once. Replays are refused by a
:class:`~p2pmsg.link.replay.ReplayWindow` per transport object, in memory,
unless a node hands over its own with :meth:`ObfsTransport.keep_replays`:
then each hello's tag (widened to 32 bytes, personalised, so it shares the
window and table of the secure link's flights) is saved before the answer
goes out, and a restart forgets no hello it answered. obfs4's filter lives
in memory only; a prober that replays a recorded hello after a restart
gets an answer from it, and blocks the server.

Cancellation. A cancelled ``receive`` loses nothing (partial messages stay in
the framer). A cancelled ``send`` breaks the link even if no byte had left
(frames are numbered; a sealed frame cannot be taken back): the inner link is
closed. ``aclose`` closes the inner link; pending operations get
``ClosedResourceError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from p2pmsg.abc import Link, LinkHandler, Transport, remote_host
from p2pmsg.endpoint import Endpoint, format_address
from p2pmsg.errors import BadEndpoint, BadKey, StoreError, UnsupportedEndpoint
from p2pmsg.keys import decode_key, encode_key
from p2pmsg.link.replay import Replays, ReplayWindow, SavedReplay
from transports.inner import ReportAs, feed
from transports.obfs_core import (
    KEY_BYTES,
    MAX_MESSAGE,
    NEED_DATA,
    REPLAY_WINDOW,
    ClientHandshake,
    Established,
    Message,
    NeedData,
    ObfsFramer,
    ObfsProtocolError,
    PeerClosed,
    Rejected,
    ServerHandshake,
    ServerKey,
)
from transports.tcp import TcpTransport

HANDSHAKE_TIMEOUT = 30.0
REPLAY_CAPACITY = 65_536
KEY_FILE = "obfs-server.key"
_KEY_MAGIC = b"p2pmsg-obfs-server-v1\n"
_OWNER_ONLY = 0o600

log = logging.getLogger(__name__)


class ObfsHandshakeFailed(ObfsProtocolError, ConnectionError):
    """The obfs handshake with the server failed."""


@dataclass(frozen=True)
class ObfsTarget:
    """What an obfs endpoint says: where to connect and the server's key."""

    host: str
    port: int
    key: bytes | None

    @property
    def address(self) -> str:
        """``HOST:PORT`` (``[V6]:PORT``) for the inner transport."""
        return format_address(self.host, self.port)


def parse_obfs_endpoint(endpoint: Endpoint) -> ObfsTarget:
    """The :class:`ObfsTarget` of an obfs endpoint. Raises :class:`UnsupportedEndpoint`."""
    if endpoint.transport != ObfsTransport.name:
        raise UnsupportedEndpoint(f"not an obfs endpoint: {endpoint.transport}")
    try:
        host, port = endpoint.host_port()
    except BadEndpoint as exc:
        raise UnsupportedEndpoint(f"bad obfs address: {exc}") from exc
    text = endpoint.arg("key")
    try:
        key = None if text is None else decode_key(text)
    except BadKey as exc:
        raise UnsupportedEndpoint(f"bad obfs key: {exc}") from exc
    return ObfsTarget(host, port, key)


def load_or_create_key(state_dir: Path, *, rng: Callable[[int], bytes]) -> ServerKey:
    """The server key in ``state_dir``, created (0600, directory 0700) on first use.

    Blocking file I/O of a few bytes. Tightens a file others can read to
    0600. Raises ``OSError`` when the directory or file cannot be used,
    :class:`BadKey` when the file is not an obfs server key.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / KEY_FILE
    if not path.exists():
        _write_once(path, _KEY_MAGIC + rng(KEY_BYTES))
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(_OWNER_ONLY)
    content = path.read_bytes()
    if len(content) != len(_KEY_MAGIC) + KEY_BYTES or not content.startswith(_KEY_MAGIC):
        raise BadKey(f"{path} is not an obfs server key")
    return ServerKey(content[len(_KEY_MAGIC) :])


def _write_once(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` unless another writer got there first (then theirs wins)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _OWNER_ONLY)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink()


# --- the trio adapter ----------------------------------------------------------------


class ObfsLink:
    """A framed :class:`~p2pmsg.abc.Link` of sealed obfs frames over an inner link."""

    def __init__(self, inner: Link, framer: ObfsFramer) -> None:
        self._inner = inner
        self._framer = framer
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._closed = False
        self._broken = False

    @property
    def remote_host(self) -> str | None:
        return remote_host(self._inner)

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the link was closed")
        if self._broken:
            raise trio.BrokenResourceError("the obfs link broke")

    async def send(self, data: bytes) -> None:
        """Send ``data`` as one message. Raises ``ClosedResourceError`` after our
        ``aclose``, ``BrokenResourceError`` when the connection broke,
        ``ValueError`` above :data:`~p2pmsg.abc.MAX_SEND` bytes.
        Cancelled: the link is broken (see the module docstring).
        """
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"an obfs message is at most {MAX_MESSAGE} bytes")
        async with self._send_lock:
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()  # a cancel before sealing is harmless
            wire = self._framer.encode(bytes(data))
            try:
                await self._inner.send(wire)
            except trio.Cancelled:
                self._broken = True
                await _close_forcefully(self._inner)
                raise
            except trio.ClosedResourceError:
                self._check_usable()
                raise

    async def receive(self) -> bytes:
        """The next whole message. Raises ``EndOfChannel`` when the peer closed
        between messages, ``BrokenResourceError`` on a reset, a cut message or
        bytes that do not authenticate, ``ClosedResourceError`` after our
        ``aclose``. Cancelled: nothing is lost.
        """
        async with self._receive_lock:
            self._check_usable()
            while True:
                try:
                    event = self._framer.next_event()
                except ObfsProtocolError as exc:
                    await self._fail(exc)
                    raise trio.BrokenResourceError(f"obfs: {exc}") from exc
                if isinstance(event, Message):
                    return event.data
                if isinstance(event, PeerClosed):
                    raise trio.EndOfChannel
                await feed(self._inner, self._framer, self._check_usable)

    async def _fail(self, exc: ObfsProtocolError) -> None:
        if not self._broken:
            self._broken = True
            log.debug("obfs: closing a link that broke the protocol: %s", exc)
            await self._inner.aclose()

    async def aclose(self) -> None:
        """Close the connection (idempotent); pending operations are woken
        with ``ClosedResourceError``."""
        self._closed = True
        await self._inner.aclose()


class ObfsTransport:
    """Dials and serves ``obfs:HOST:PORT;key=KEY`` endpoints over an inner stream transport.

    ``inner`` (default :class:`TcpTransport`) carries the bytes; ``state_dir``
    keeps the server key; ``rng`` draws keys, nonces and padding;
    ``wall_clock`` dates hellos (checked against the replay window).
    """

    name = "obfs"
    framed = True

    def __init__(
        self,
        inner: Transport | None = None,
        *,
        state_dir: Path | str,
        rng: Callable[[int], bytes] = os.urandom,
        wall_clock: Callable[[], float] = time.time,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        replay_capacity: int = REPLAY_CAPACITY,
    ) -> None:
        self._inner: Transport = inner if inner is not None else TcpTransport()
        self._state_dir = Path(state_dir)
        self._rng = rng
        self._wall_clock = wall_clock
        self._timeout = handshake_timeout
        self._replay: Replays = ReplayWindow(REPLAY_WINDOW, replay_capacity)
        self._saved: SavedReplay | None = None

    def keep_replays(self, saved: SavedReplay) -> None:
        """Refuse replayed hellos with ``saved``'s window instead of this
        transport's own, and answer a hello only once ``saved`` has its tag
        on disk (a node calls this with its store's window before serving)."""
        self._saved = saved
        self._replay = _WidenedTags(saved.window)

    def can_dial(self, endpoint: Endpoint) -> bool:
        """True for an ``obfs`` endpoint with a host, a non-zero port and a ``key``."""
        try:
            target = parse_obfs_endpoint(endpoint)
        except UnsupportedEndpoint:
            return False
        return target.port != 0 and target.key is not None

    async def dial(self, endpoint: Endpoint) -> Link:
        """Connect and run the handshake within the handshake timeout.

        Raises ``UnsupportedEndpoint`` (no ``key``, port 0, not obfs),
        ``OSError`` when the connection fails, :class:`ObfsHandshakeFailed`
        (an ``OSError``) when the answer is not the keyed one, ``TimeoutError``
        when there is none (what a wrong key gets). Cancellation closes the
        connection.
        """
        target = parse_obfs_endpoint(endpoint)
        if target.port == 0 or target.key is None:
            raise UnsupportedEndpoint("an obfs endpoint to dial needs a port and key=")
        try:
            handshake = ClientHandshake(target.key, now=self._wall_clock(), rng=self._rng)
        except ObfsProtocolError as exc:
            raise ObfsHandshakeFailed(f"the server's key is not usable: {exc}") from exc
        inner = await self._inner.dial(Endpoint(self._inner.name, target.address))
        try:
            with trio.fail_after(self._timeout):
                established = await _run_client_handshake(inner, handshake)
        except BaseException as exc:
            await _close_forcefully(inner)
            if isinstance(exc, trio.TooSlowError):
                raise TimeoutError("no answer to the obfs handshake") from exc
            raise
        framer = ObfsFramer(established.keys, rng=self._rng, trailing=established.trailing)
        return ObfsLink(inner, framer)

    async def serve(
        self,
        endpoint: Endpoint,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``endpoint``; answer keyed hellos, meet all else with silence.

        Creates the server key in ``state_dir`` on first use. Reports
        ``obfs:HOST:PORT;...;key=KEY`` (port 0 resolved, other arguments
        kept, a given ``key`` replaced) and runs until cancelled. Raises
        ``UnsupportedEndpoint``, ``OSError`` or :class:`BadKey` before
        reporting. A handler's exception closes its link only.
        """
        target = parse_obfs_endpoint(endpoint)
        # A few bytes of file I/O, once per serve: done inline like binding the
        # socket, since a worker thread would let an autojump clock run ahead of it.
        key = load_or_create_key(self._state_dir, rng=self._rng)
        await trio.lowlevel.checkpoint()
        args = (*((k, v) for k, v in endpoint.args if k != "key"), ("key", encode_key(key.public)))

        def report(bound: Endpoint) -> Endpoint:
            return Endpoint(self.name, bound.address, args)

        await self._inner.serve(
            Endpoint(self._inner.name, target.address),
            partial(self._serve_one, key, handler),
            task_status=ReportAs(task_status, report),
        )

    async def _serve_one(self, key: ServerKey, handler: LinkHandler, inner: Link) -> None:
        """Run the handshake and the handler (the inner transport closes ``inner``)."""
        link = await self._accept(key, inner)
        if link is None:
            return
        try:
            await handler(link)
        except Exception as exc:
            # A handler is expected to handle link errors itself: this is a bug upstream.
            log.warning("obfs: a link handler failed: %r", exc)
            log.debug("obfs: the link handler failed", exc_info=True)
        finally:
            await link.aclose()

    async def _accept(self, key: ServerKey, inner: Link) -> ObfsLink | None:
        """The link if the client's hello is ours; else the one silent reaction."""
        delay, budget = key.close_policy
        handshake = ServerHandshake(key, self._replay, now=self._wall_clock(), rng=self._rng)
        outcome: NeedData | Established | Rejected = NEED_DATA
        data, received = b"", 0
        with trio.move_on_after(self._timeout + delay):
            try:
                while isinstance(outcome, NeedData):
                    data = await _receive_or_eof(inner)
                    received += len(data)
                    outcome = handshake.receive_data(data)
                if isinstance(outcome, Established) and await self._tag_saved():
                    await inner.send(outcome.response)
                    framer = ObfsFramer(outcome.keys, rng=self._rng, trailing=outcome.trailing)
                    return ObfsLink(inner, framer)
                if isinstance(outcome, Rejected):
                    log.debug("obfs: refused a connection: %s", outcome.error)
                while data and received < budget:
                    data = await _receive_or_eof(inner)
                    received += len(data)
            except trio.BrokenResourceError:
                pass
        return None

    async def _tag_saved(self) -> bool:
        """Whether every hello accepted so far (this one among them) is saved;
        False refuses the hello (it then meets the same silence as any other)."""
        if self._saved is None:
            return True
        try:
            await self._saved.commit(self._saved.window.accepted)
        except StoreError as exc:
            log.warning("obfs: refused a hello: its replay tag could not be saved (%s)", exc)
            return False
        return True


class _WidenedTags:
    """A shared window seen through obfs's 16-byte hello tags, each widened to
    a 32-byte BLAKE2b digest personalised for obfs, so no obfs tag can stand
    for a secure link's flight (or the reverse) in the window or its table."""

    def __init__(self, window: ReplayWindow) -> None:
        self._window = window

    def accept(self, tag: bytes, timestamp: float, now: float) -> bool:
        wide = hashlib.blake2b(tag, digest_size=32, person=b"p2pmsg-obfs-tag").digest()
        return self._window.accept(wide, timestamp, now)


async def _close_forcefully(link: Link) -> None:
    """Close ``link`` without waiting for anything, like ``trio.aclose_forcefully``."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await link.aclose()


async def _receive_or_eof(inner: Link) -> bytes:
    """The next bytes, ``b""`` once the peer closed."""
    try:
        return await inner.receive()
    except trio.EndOfChannel:
        return b""


async def _run_client_handshake(inner: Link, handshake: ClientHandshake) -> Established:
    """Send the hello and read the answer. Raises :class:`ObfsHandshakeFailed`."""
    try:
        await inner.send(handshake.hello)
        while True:
            outcome = handshake.receive_data(await _receive_or_eof(inner))
            if isinstance(outcome, Established):
                return outcome
    except (ObfsProtocolError, trio.BrokenResourceError) as exc:
        raise ObfsHandshakeFailed(str(exc)) from exc
