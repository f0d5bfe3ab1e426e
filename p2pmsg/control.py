"""The local control socket: JSON lines between the CLI and a running node.

One request per connection: a JSON object on one line, answered by one JSON
object on one line (``{"ok": true, ...}`` or ``{"ok": false, "error":
"..."}``). :func:`parse_request` is the pure, size-capped parser; the server
and client are thin trio adapters. The socket lives in the owner-only home
directory and is itself chmod 0600.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pmsg.delivery import files
from p2pmsg.delivery.frames import MessageKind
from p2pmsg.errors import (
    ControlError,
    HomeError,
    NodeNotRunning,
    NodeRefused,
    NotFound,
    P2PMsgError,
)
from p2pmsg.store_schema import OutboxMessage, OutboxState

if TYPE_CHECKING:
    from p2pmsg.dht.peer import Peer
    from p2pmsg.node import Node

log = logging.getLogger(__name__)

MAX_LINE = 256 * 1024
MAX_LIMIT = 1000
OPS = frozenset({"send", "send_file", "inbox", "outbox", "status", "peers", "lookup"})
TIMEOUT = 30.0
LOOKUP_TIMEOUT = 110.0  # a DHT lookup may need many round trips; the CLI waits 120 s
MAX_SOCKET_PATH = 108  # sun_path on Linux, NUL included


@dataclass(frozen=True)
class Request:
    op: str
    to: str = ""
    text: str = ""
    limit: int = 100
    node_id: bytes = b""
    direct: bool = False
    path: str = ""
    """For ``send_file``: the file, read by the node (the socket is the owner's only)."""


def parse_request(line: bytes) -> Request:
    """Raises :class:`ControlError` for anything but a well-formed request."""
    if len(line) > MAX_LINE:
        raise ControlError("request too large")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ControlError("request is not JSON") from exc
    op = data.get("op") if isinstance(data, dict) else None
    if not isinstance(op, str) or op not in OPS:
        raise ControlError("unknown operation")
    if op in ("send", "send_file"):
        what = "text" if op == "send" else "path"
        to, text, direct = data.get("to"), data.get(what), data.get("direct", False)
        if not isinstance(to, str) or not isinstance(text, str):
            raise ControlError(f"{op} needs string 'to' and '{what}'")
        if not isinstance(direct, bool):
            raise ControlError("'direct' is true or false")
        if op == "send_file":
            return Request(op, to=to, path=text, direct=direct)
        return Request(op, to=to, text=text, direct=direct)
    if op == "lookup":
        node_id = data.get("id")
        if not isinstance(node_id, str) or not re.fullmatch(r"[0-9a-f]{64}", node_id):
            raise ControlError("lookup needs 'id': a node id of 64 hex digits")
        return Request(op, node_id=bytes.fromhex(node_id))
    limit = data.get("limit", 100)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_LIMIT:
        raise ControlError(f"limit must be 1-{MAX_LIMIT}")
    return Request(op, limit=limit)


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


Handler = Callable[[Request], Awaitable[dict[str, Any]]]


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE + 1:
            raise ControlError("request too large")
    return bytes(buf.split(b"\n", 1)[0])


async def _answer(stream: trio.SocketStream, handler: Handler) -> None:
    try:
        with trio.fail_after(TIMEOUT):
            line = await _read_line(stream)
    except (trio.TooSlowError, trio.BrokenResourceError):
        return  # a client that never finished its request gets nothing
    try:
        request = parse_request(line)
        with trio.fail_after(LOOKUP_TIMEOUT if request.op == "lookup" else TIMEOUT):
            reply = {"ok": True, **(await handler(request))}
    except P2PMsgError as exc:
        reply = {"ok": False, "error": exc.user_message()}
    except ValueError as exc:
        reply = {"ok": False, "error": str(exc)}
    except trio.TooSlowError:
        reply = {"ok": False, "error": f"the node did not finish {request.op!r} in time"}
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(encode(reply))


async def bind_control(path: Path) -> trio.SocketListener:
    """A listening unix socket at ``path``, replacing a stale one.

    Raises :class:`HomeError` when a live node already answers there or the
    path is too long for a unix socket.
    """
    check_socket_path(path)
    try:
        probe = await trio.open_unix_socket(os.fspath(path))
    except OSError:
        await trio.to_thread.run_sync(partial(path.unlink, missing_ok=True))
    else:
        await probe.aclose()
        raise HomeError(f"a node is already running in {path.parent}")
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return trio.SocketListener(sock)


def check_socket_path(path: Path) -> None:
    """Raises :class:`HomeError` for a path longer than a unix socket allows."""
    if len(os.fsencode(path)) >= MAX_SOCKET_PATH:
        raise HomeError(f"{path} is too long for a unix socket; use a shorter --home")


async def serve_control(
    listener: trio.SocketListener,
    path: Path,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``listener`` (from :func:`bind_control` at
    ``path``) until cancelled; the socket file is removed on the way out."""

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await _answer(stream, handler)
            except Exception:  # one request must never take the node down
                log.exception("control request failed")

    try:
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(one, stream)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def call(path: Path, request: dict[str, Any], *, timeout: float = TIMEOUT) -> dict[str, Any]:
    """One request to the node at ``path``.

    Raises :class:`NodeNotRunning` when nothing listens there and
    :class:`ControlError` when the node answered with an error.
    """
    check_socket_path(path)
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(os.fspath(path))
            async with stream:
                await stream.send_all(encode(request))
                line = await _read_line(stream)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NodeNotRunning(str(path.parent)) from exc
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise NodeNotRunning(f"no answer from {path.parent}") from exc
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise ControlError("the node's answer is not JSON") from exc
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else None
        raise NodeRefused(str(error or ""))
    return reply


def node_handler(node: Node) -> Handler:
    """The control operations of a running node, as a :data:`Handler`."""

    async def peer_name(peer: bytes) -> str:
        contact = await node.store.contact_by_node_id(peer)
        return contact.name if contact else peer.hex()

    async def handle(request: Request) -> dict[str, Any]:
        if request.op == "send":
            message_id = await node.send(request.to, request.text, direct=request.direct)
            return {"id": message_id.hex()}
        if request.op == "send_file":
            data = await _read_file(request.path)
            name = Path(request.path).name
            file_id = await node.send_file(request.to, data, name, direct=request.direct)
            return {"id": file_id.hex()}
        if request.op == "status":
            return await node.status()
        if request.op == "lookup":
            return await _lookup(node, request.node_id)
        if request.op == "peers":
            peers = node.dht.table.peers()[: request.limit]
            return {"items": [_peer_item(p) for p in peers]}
        items = []
        if request.op == "inbox":
            for m in await node.store.list_inbox(request.limit):
                text = _text(m.kind, m.body, m.id)
                name = await peer_name(m.peer)
                items.append(_item(m.id, name, text, "received", m.received))
        else:
            files_seen = set()
            for o in await node.store.list_outbox(request.limit):
                message_id, state, text = o.id, _shown(o), _text(o.kind, o.body, o.id)
                if o.kind is MessageKind.FILE_PART:  # one line per file, not per part
                    part = files.decode_part(o.body)
                    if part.file in files_seen:
                        continue
                    files_seen.add(part.file)
                    acked, count = await node.store.file_progress(o.peer, part.file)
                    message_id, text = part.file, f"[file {part.name}: {acked} of {count} parts]"
                    state = "delivered" if acked == count else state
                time_ = o.delivered if o.delivered is not None else o.created
                items.append(_item(message_id, await peer_name(o.peer), text, state, time_))
        return {"items": items}

    return handle


async def _lookup(node: Node, node_id: bytes) -> dict[str, Any]:
    found = await node.find(node_id)
    if found is None:
        raise NotFound(node_id.hex())
    return _peer_item(found)


def _peer_item(peer: Peer) -> dict[str, Any]:
    return {"node_id": peer.node_id.hex(), "endpoints": list(peer.endpoints), "prefix": peer.prefix}


async def _read_file(path: str) -> bytes:
    """The file to send; :class:`ControlError` when it cannot be read or is too large."""
    file = trio.Path(path)
    try:
        if (await file.stat()).st_size > files.MAX_FILE_BYTES:
            raise ControlError(f"{path}: larger than {files.MAX_FILE_BYTES >> 20} MiB")
        return await file.read_bytes()
    except OSError as exc:
        raise ControlError(f"cannot read {path}: {exc.strerror}") from None


def _text(kind: MessageKind, body: bytes, message_id: bytes) -> str:
    """A message's body as a listing shows it: a file as its name and size."""
    if kind is MessageKind.FILE:
        name, data = files.decode_file(body)
        return f"[file {name}, {len(data):,} bytes: p2pmsg save {message_id.hex()}]"
    return body.decode("utf-8", errors="replace")


def _shown(message: OutboxMessage) -> str:
    """queued (never left the host), sent (awaiting its ack), delivered or expired."""
    if message.state is OutboxState.QUEUED and message.attempts:
        return "sent"
    return message.state.value


def _item(message_id: bytes, peer: str, text: str, state: str, time_: float) -> dict[str, Any]:
    return {"id": message_id.hex(), "peer": peer, "text": text, "state": state, "time": time_}
