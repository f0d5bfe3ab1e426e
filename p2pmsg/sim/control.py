"""The control client: a messenger that depends on a fixed set of servers.

Every scenario runs one beside p2pmsg. It is built the way Telegram was in
April 2018: each client keeps a connection to one of a few servers (data
centres sharing one backend), which relay messages and hold them for
clients that are away. When the censor blocks those servers, the control
must fail as the scenario says; if it does not, the censor model is wrong
and the run is reported as an invalid censor, not as a pass.

Wire (frames of the ``sim`` network): ``HELLO|name``, then ``MSG|peer|id``
both ways (to the server: ``peer`` is the recipient; from it: the sender).
The client pings every ``keepalive`` seconds and reconnects, to the next
server, when nothing came back for twice that (a black-holed connection).
Bounded: each client's outbox and the backend's per-recipient queues hold
at most ``max_queue`` messages (the oldest dropped and counted).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Sequence

import trio

from p2pmsg.sim.net import SimNetwork, SimStream

PORT = 443
MAX_QUEUE = 10_000


class Backend:
    """What the servers share: who is connected where, and held messages."""

    def __init__(self, max_queue: int = MAX_QUEUE) -> None:
        self.max_queue = max_queue
        self.online: dict[str, SimStream] = {}
        self.held: dict[str, deque[bytes]] = {}
        self.dropped = 0

    async def route(self, sender: str, recipient: str, message_id: str) -> None:
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


async def serve(net: SimNetwork, host: str, backend: Backend) -> None:
    """Run one server on ``host`` until cancelled."""
    listener = await net.listen(host, PORT)
    async with listener, trio.open_nursery() as nursery:
        while True:
            nursery.start_soon(_serve_client, await listener.accept(), backend)


async def _serve_client(stream: SimStream, backend: Backend) -> None:
    name = None
    try:
        hello = (await stream.receive()).decode(errors="replace").split("|")
        if len(hello) != 2 or hello[0] != "HELLO":
            return
        name = hello[1]
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
    """One user's control messenger on ``host``; :meth:`send` queues, :meth:`run` connects."""

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
    ) -> None:
        self.net, self.host, self.servers = net, host, list(servers)
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

    async def run(self) -> None:
        turn = 0
        while True:
            server = self.servers[turn % len(self.servers)]
            turn += 1
            stream = None
            with trio.move_on_after(self.connect_timeout), contextlib.suppress(OSError):
                stream = await self.net.connect(self.host, server, PORT)
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

    async def _session(self, stream: SimStream) -> None:
        await stream.send(f"HELLO|{self.host}".encode())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, stream)
            while True:
                while self.outbox:
                    recipient, message_id = self.outbox[0]
                    await stream.send(f"MSG|{recipient}|{message_id}".encode())
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
