"""The control client: a messenger that depends on a fixed set of servers.

Every scenario runs one beside p2pmsg. It is built the way Telegram was in
April 2018: each client keeps a connection to one of a few servers (data
centres sharing one backend), which relay messages and hold them for
clients that are away. When the censor blocks those servers, the control
must fail as the scenario says; if it does not, the censor model is wrong
and the run is reported as an invalid censor, not as a pass.

Wire (frames of the ``sim`` network): ``HELLO|name``, then ``MSG|peer|id``
both ways (to the server: ``peer`` is the recipient; from it: the sender);
a connection that only sends starts with ``SEND|name`` instead; a photo
goes before its message in ``DATA|...`` frames, which the server drops.
The client pings every ``keepalive`` seconds and reconnects, to the next
server, when nothing came back for twice that (a black-holed connection).
Bounded: each client's outbox and the backend's per-recipient queues hold
at most ``max_queue`` messages (the oldest dropped and counted).

What a censor sees first depends on ``wire``: ``"plain"`` starts with the
HELLO; ``"random"`` with 64 random bytes, as a fully encrypted protocol
does (the server answers with as many, a handshake a prober can see);
``"tls"`` with a real TLS ClientHello naming :data:`SNI` (then the frames
follow in the clear: the censor needs only the name). With ``resolve``, the
client asks a resolver for its server's address in cleartext DNS before
each connection (``A IP`` comes back) and dials what it was told. With
``per_message``, each message goes in a connection of its own, once: the
count of delivered messages is then a count of connections that survived.
"""

from __future__ import annotations

import contextlib
import functools
import random
import ssl
import struct
from collections import deque
from collections.abc import Callable, Sequence

import trio

from p2pmsg.sim.detectors import dns_query_name
from p2pmsg.sim.net import SimNetwork, SimStream

PORT = 443
DNS_PORT = 53
MAX_QUEUE = 10_000
DOMAIN = "messenger.example"
SNI = f"chat.{DOMAIN}"
PREAMBLE = 64
MEDIA_FRAME_KIB = 64
RESOLVER = "dns0"
"""The host of the public resolver the control client asks."""


@functools.cache
def client_hello(server_name: str = SNI) -> bytes:
    """A real TLS ClientHello for ``server_name``, from the standard library's
    client (made once: a TLS context costs milliseconds)."""
    tls = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=server_name
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def dns_query(name: str) -> bytes:
    """A DNS query for ``name`` (type A) over TCP: length, header, question."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    message = struct.pack(">HH4H", 0x5050, 0x0100, 1, 0, 0, 0) + labels + b"\0\0\1\0\1"
    return struct.pack(">H", len(message)) + message


def server_name(index: int) -> str:
    return f"s{index}.{DOMAIN}"


async def resolver(net: SimNetwork, host: str, addresses: dict[str, str]) -> None:
    """A DNS resolver on ``host``: answers ``A IP`` for the names in ``addresses``."""
    listener = await net.listen(host, DNS_PORT)
    async with listener, trio.open_nursery() as nursery:
        while True:
            stream = await listener.accept()

            async def answer(stream: SimStream = stream) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.EndOfChannel):
                    name = dns_query_name(await stream.receive()) or ""
                    await stream.send(f"A {addresses.get(name, 'NXDOMAIN')}".encode())
                await stream.aclose()

            nursery.start_soon(answer)


class Backend:
    """What the servers share: who is connected where, and held messages."""

    def __init__(self, max_queue: int = MAX_QUEUE) -> None:
        self.max_queue = max_queue
        self.online: dict[str, SimStream] = {}
        self.held: dict[str, deque[bytes]] = {}
        self.dropped = 0
        self.accepted: dict[str, float] = {}
        """Message id -> when a server took it (what a per-message client delivered)."""

    async def route(self, sender: str, recipient: str, message_id: str) -> None:
        if len(self.accepted) < self.max_queue * 100:
            self.accepted.setdefault(message_id, trio.current_time())
        frame = f"MSG|{sender}|{message_id}".encode()
        stream = self.online.get(recipient)
        if stream is not None:
            try:
                await stream.send(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.online.pop(recipient, None)
            else:
                return
        queue = self.held.setdefault(recipient, deque())
        if len(queue) >= self.max_queue:
            queue.popleft()
            self.dropped += 1
        queue.append(frame)


async def serve(net: SimNetwork, host: str, backend: Backend, wire: str = "plain") -> None:
    """Run one server on ``host`` until cancelled."""
    listener = await net.listen(host, PORT)
    async with listener, trio.open_nursery() as nursery:
        while True:
            nursery.start_soon(_serve_client, await listener.accept(), backend, wire)


async def _serve_client(stream: SimStream, backend: Backend, wire: str) -> None:
    name = None
    try:
        first = await stream.receive()
        if wire == "random":  # the handshake: answer a preamble with one
            await stream.send(bytes(reversed(first)))
        if wire != "plain":
            first = await stream.receive()
        hello = first.decode(errors="replace").split("|")
        if len(hello) != 2 or hello[0] not in ("HELLO", "SEND"):
            return
        name = hello[1]
        if hello[0] == "HELLO":  # SEND: a connection that only sends
            backend.online[name] = stream
            held = backend.held.pop(name, deque())
            while held:
                await stream.send(held.popleft())
        while True:
            parts = (await stream.receive()).decode(errors="replace").split("|")
            if len(parts) == 3 and parts[0] == "MSG":
                await backend.route(name, parts[1], parts[2])
            elif parts == ["PING"]:
                await stream.send(b"PONG")
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
        pass
    finally:
        if name is not None and backend.online.get(name) is stream:
            del backend.online[name]
        await stream.aclose()


class Client:
    """User ``name``'s control messenger on ``host``; :meth:`send` queues, :meth:`run` connects."""

    def __init__(
        self,
        net: SimNetwork,
        host: str,
        servers: Sequence[str],
        *,
        connect_timeout: float = 10.0,
        retry: float = 30.0,
        keepalive: float = 60.0,
        max_queue: int = MAX_QUEUE,
        wire: str = "plain",
        resolve: Callable[[str], str | None] | None = None,
        per_message: bool = False,
        rng: random.Random | None = None,
        media_kib: int = 0,
        name: str = "",
    ) -> None:
        self.media_kib = media_kib
        self.name = name or host
        """The user's name at the servers (the host's when not given)."""
        self.net, self.host, self.servers = net, host, list(servers)
        self.wire, self.resolve, self.per_message = wire, resolve, per_message
        self.rng = rng or random.Random(host)  # noqa: S311 - a reproducible simulation
        self.connect_timeout, self.retry, self.keepalive = connect_timeout, retry, keepalive
        self.outbox: deque[tuple[str, str]] = deque(maxlen=max_queue)
        self.received: dict[str, float] = {}
        self.duplicates = 0
        self.failures = 0
        self.dropped = 0
        self._news = trio.Event()

    def send(self, recipient: str, message_id: str) -> None:
        if len(self.outbox) == self.outbox.maxlen:
            self.dropped += 1  # the deque drops the oldest
        self.outbox.append((recipient, message_id))
        self._news.set()

    async def _connect(self, turn: int) -> SimStream | None:
        """A connection to server ``turn`` (mod their number) that said HELLO, or None."""
        server: str | None = self.servers[turn % len(self.servers)]
        stream = None
        with trio.move_on_after(self.connect_timeout):
            try:
                if self.resolve is not None:
                    server = await self._lookup(turn % len(self.servers))
                if server is not None:
                    stream = await self.net.connect(self.host, server, PORT)
                    await self._hello(stream)
                    return stream
            except (OSError, trio.BrokenResourceError, trio.EndOfChannel):
                pass
        if stream is not None:
            await stream.aclose()
        return None

    async def _lookup(self, index: int) -> str | None:
        """The host the resolver names for server ``index``; None when it has none."""
        assert self.resolve is not None
        stream = await self.net.connect(self.host, RESOLVER, DNS_PORT)
        try:
            await stream.send(dns_query(server_name(index)))
            answer = (await stream.receive()).decode(errors="replace")
        finally:
            await stream.aclose()
        return self.resolve(answer.removeprefix("A "))

    async def _hello(self, stream: SimStream) -> None:
        if self.wire == "random":
            await stream.send(self.rng.randbytes(PREAMBLE))
            await stream.receive()
        elif self.wire == "tls":
            await stream.send(client_hello())
        greeting = "SEND" if self.per_message else "HELLO"
        await stream.send(f"{greeting}|{self.name}".encode())

    async def run(self) -> None:
        """Connect and reconnect until cancelled, starting at a random server
        (clients spread over the data centres) and trying the next after each failure."""
        if self.per_message:
            await self._run_per_message()
        turn = self.rng.randrange(len(self.servers))
        while True:
            stream = await self._connect(turn)
            turn += 1
            if stream is None:
                self.failures += 1
                await trio.sleep(self.retry)
                continue
            try:
                await self._session(stream)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                self.failures += 1
            finally:
                await stream.aclose()
            await trio.sleep(self.retry)

    async def _run_per_message(self) -> None:
        """Each message in a connection of its own, tried once."""
        turn = 0
        while True:
            while not self.outbox:
                self._news = trio.Event()
                await self._news.wait()
            recipient, message_id = self.outbox.popleft()
            stream = await self._connect(turn)
            turn += 1
            if stream is None:
                self.failures += 1
                continue
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._upload(stream, recipient, message_id)
            await stream.aclose()

    async def _upload(self, stream: SimStream, recipient: str, message_id: str) -> None:
        """The message's photo (``media_kib``, in 64 KiB frames), then the message."""
        for _ in range(0, self.media_kib, MEDIA_FRAME_KIB):
            await stream.send(b"DATA|" + bytes(MEDIA_FRAME_KIB * 1024))
        await stream.send(f"MSG|{recipient}|{message_id}".encode())

    async def _session(self, stream: SimStream) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, stream)
            while True:
                while self.outbox:
                    recipient, message_id = self.outbox[0]
                    await self._upload(stream, recipient, message_id)
                    self.outbox.popleft()
                self._news = trio.Event()
                with trio.move_on_after(self.keepalive) as quiet:
                    await self._news.wait()
                if quiet.cancelled_caught:
                    await stream.send(b"PING")

    async def _receive(self, stream: SimStream) -> None:
        """Record messages until the stream breaks or falls silent (then raise)."""
        while True:
            data = None
            with trio.move_on_after(2 * self.keepalive):
                data = await stream.receive()
            if data is None:
                raise trio.BrokenResourceError("the server went silent")
            parts = data.decode(errors="replace").split("|")
            if len(parts) == 3 and parts[0] == "MSG":
                if parts[2] in self.received:
                    self.duplicates += 1
                else:
                    self.received[parts[2]] = trio.current_time()
