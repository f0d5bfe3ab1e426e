"""The control socket: the pure request parser, then a real unix socket under trio.

The socket tests run the real ``bind_control`` / ``serve_control`` / ``call``
with a stub handler (the node is tested elsewhere). Socket paths live in a
short directory under /tmp so they fit ``sun_path``.
"""

from __future__ import annotations

import json
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from p2pmsg.control import (
    MAX_LIMIT,
    MAX_LINE,
    MAX_SOCKET_PATH,
    TIMEOUT,
    Handler,
    Request,
    bind_control,
    call,
    check_socket_path,
    encode,
    parse_request,
    serve_control,
)
from p2pmsg.errors import (
    ControlError,
    HomeError,
    NodeNotRunning,
    NodeRefused,
    P2PMsgError,
    UnknownContact,
)

# --- parse_request -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"op":"send","to":"bob","text":"hi"}', Request("send", to="bob", text="hi")),
        (b'{"op": "send", "to": "", "text": ""}', Request("send", to="", text="")),
        ('{"op":"send","to":"zoë","text":"😀"}'.encode(), Request("send", "zoë", "😀")),
        (b'{"op":"send","to":"b","text":"\\ud83d\\ude00"}', Request("send", "b", "😀")),
        (
            b'{"op":"send","to":"b","text":"t","direct":true}',
            Request("send", "b", "t", direct=True),
        ),
        (
            b'{"op":"send_file","to":"b","path":"/tmp/a.jpg"}',
            Request("send_file", "b", path="/tmp/a.jpg"),
        ),
        (b'{"op":"inbox"}', Request("inbox", limit=100)),
        (b'{"op":"inbox","limit":1}', Request("inbox", limit=1)),
        (b'{"op":"outbox","limit":1000}', Request("outbox", limit=MAX_LIMIT)),
        (b'{"op":"status"}', Request("status")),
        (b'{"op":"status"}\n', Request("status")),
        (b' \t{"op":"status"}\r\n', Request("status")),
    ],
)
def test_parse_request_accepts(line: bytes, expected: Request) -> None:
    assert parse_request(line) == expected


@given(st.text(), st.text())
def test_send_round_trips_through_the_wire_encoding(to: str, text: str) -> None:
    line = encode({"op": "send", "to": to, "text": text}).rstrip(b"\n")
    assert parse_request(line) == Request("send", to=to, text=text)


@given(st.sampled_from(["inbox", "outbox", "status"]), st.integers(1, MAX_LIMIT))
def test_limits_round_trip_through_the_wire_encoding(op: str, limit: int) -> None:
    assert parse_request(encode({"op": op, "limit": limit})) == Request(op, limit=limit)


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"status", id="not-json"),
        pytest.param(b'{"op":"status"', id="truncated-json"),
        pytest.param(b'{"op":"status"}{}', id="two-values"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b'{"op":"st\xe9tus"}', id="latin1-in-string"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'["status"]', id="array-of-op"),
        pytest.param(b'"status"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"1", id="number"),
        pytest.param(b"{}", id="no-op"),
        pytest.param(b'{"op":null}', id="null-op"),
        pytest.param(b'{"op":1}', id="numeric-op"),
        pytest.param(b'{"op":true}', id="bool-op"),
        pytest.param(b'{"op":"SEND","to":"a","text":"b"}', id="upper-case-op"),
        pytest.param(b'{"op":"delete"}', id="unknown-op"),
        pytest.param(b'{"op":"send"}', id="send-without-fields"),
        pytest.param(b'{"op":"send","to":"bob"}', id="send-without-text"),
        pytest.param(b'{"op":"send","text":"hi"}', id="send-without-to"),
        pytest.param(b'{"op":"send","to":1,"text":"hi"}', id="numeric-to"),
        pytest.param(b'{"op":"send","to":"bob","text":null}', id="null-text"),
        pytest.param(b'{"op":"send","to":"bob","text":["hi"]}', id="list-text"),
        pytest.param(b'{"op":"send","to":"b","text":"t","direct":"yes"}', id="direct-not-bool"),
        pytest.param(b'{"op":"send_file","to":"b","text":"t"}', id="send-file-without-path"),
        pytest.param(b'{"op":"send_file","to":"b","path":1}', id="numeric-path"),
        pytest.param(b'{"op":"inbox","limit":true}', id="limit-true"),
        pytest.param(b'{"op":"inbox","limit":false}', id="limit-false"),
        pytest.param(b'{"op":"inbox","limit":0}', id="limit-0"),
        pytest.param(b'{"op":"inbox","limit":-1}', id="limit-negative"),
        pytest.param(b'{"op":"inbox","limit":1001}', id="limit-1001"),
        pytest.param(b'{"op":"outbox","limit":10.0}', id="limit-float"),
        pytest.param(b'{"op":"outbox","limit":NaN}', id="limit-nan"),
        pytest.param(b'{"op":"outbox","limit":Infinity}', id="limit-infinity"),
        pytest.param(b'{"op":"outbox","limit":"10"}', id="limit-string"),
        pytest.param(b'{"op":"status","limit":null}', id="limit-null"),
        pytest.param(b'{"op":"status","limit":' + b"9" * 5000 + b"}", id="limit-huge-int"),
        pytest.param(b'{"op":"status"}' + b" " * MAX_LINE, id="oversize"),
    ],
)
def test_parse_request_refuses(line: bytes) -> None:
    with pytest.raises(ControlError):
        parse_request(line)


def test_the_size_cap_is_inclusive() -> None:
    line = b'{"op":"status"}'
    assert parse_request(line + b" " * (MAX_LINE - len(line))) == Request("status")


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(
            b'{"op":[]}',
            id="list-op",
        ),
        pytest.param(
            b'{"op":{"a":1}}',
            id="object-op",
        ),
        pytest.param(
            b"[" * 100_000,
            id="deep-nesting",
        ),
    ],
)
def test_parse_request_refuses_hostile_json_with_control_error(line: bytes) -> None:
    with pytest.raises(ControlError):
        parse_request(line)


# --- the unix socket ---------------------------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="p2c", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def echo(request: Request) -> dict[str, Any]:
    return {"op": request.op, "to": request.to, "text": request.text, "limit": request.limit}


async def start(nursery: trio.Nursery, path: Path, handler: Handler = echo) -> None:
    listener = await bind_control(path)
    await nursery.start(serve_control, listener, path, handler)


async def test_round_trip(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, path)
        send = await call(path, {"op": "send", "to": "bob", "text": "hi 😀"})
        inbox = await call(path, {"op": "inbox", "limit": 7})
        nursery.cancel_scope.cancel()
    assert send == {"ok": True, "op": "send", "to": "bob", "text": "hi 😀", "limit": 100}
    assert inbox == {"ok": True, "op": "inbox", "to": "", "text": "", "limit": 7}
    assert not path.exists()  # serve_control removes its socket on the way out


async def test_socket_is_owner_only(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, path)
        mode = path.stat().st_mode
        nursery.cancel_scope.cancel()
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


async def test_handler_errors_reach_the_caller_once(sock_dir: Path) -> None:
    async def refuse(request: Request) -> dict[str, Any]:
        raise UnknownContact(request.to)

    path = sock_dir / "c.sock"
    sentence = UnknownContact("bob").user_message()
    assert sentence == "There is no contact by that name. (bob)"
    async with trio.open_nursery() as nursery:
        await start(nursery, path, refuse)
        with pytest.raises(NodeRefused) as caught:
            await call(path, {"op": "send", "to": "bob", "text": "hi"})
        nursery.cancel_scope.cancel()
    assert isinstance(caught.value, ControlError)
    assert caught.value.user_message() == sentence
    assert caught.value.user_message().count("There is no contact by that name.") == 1
    assert "refused" not in caught.value.user_message()  # no NodeRefused prefix


async def test_a_value_error_in_the_handler_is_a_refusal(sock_dir: Path) -> None:
    async def refuse(request: Request) -> dict[str, Any]:
        raise ValueError("a contact name is 1 to 256 characters")

    path = sock_dir / "c.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, path, refuse)
        with pytest.raises(NodeRefused) as caught:
            await call(path, {"op": "status"})
        nursery.cancel_scope.cancel()
    assert caught.value.user_message() == "a contact name is 1 to 256 characters"


async def raw_exchange(path: Path, data: bytes) -> Any:
    async with await trio.open_unix_socket(str(path)) as stream:
        await stream.send_all(data)
        await stream.send_eof()  # so that a request without a newline still ends
        received = b""
        while chunk := await stream.receive_some():
            received += chunk
    assert received.endswith(b"\n") and received.count(b"\n") == 1
    return json.loads(received)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"hello\n", "(request is not JSON)"),
        (b'{"op":"delete"}\n', "(unknown operation)"),
        (b'{"op":"inbox","limit":0}\n', "(limit must be 1-1000)"),
        (b'{"op":"status"', "(request is not JSON)"),  # the client stopped mid-line
    ],
)
async def test_bad_requests_get_one_error_line(sock_dir: Path, data: bytes, error: str) -> None:
    path = sock_dir / "c.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, path)
        reply = await raw_exchange(path, data)
        still_serving = await call(path, {"op": "status"})
        nursery.cancel_scope.cancel()
    assert reply == {"ok": False, "error": f"The running node refused the request. {error}"}
    assert still_serving["ok"] is True


async def test_only_the_first_line_is_read(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, path)
        reply = await raw_exchange(path, b'{"op":"status"}\n{"op":"send"}\n')
        nursery.cancel_scope.cancel()
    assert reply["ok"] is True
    assert reply["op"] == "status"


async def test_connections_are_served_concurrently(sock_dir: Path) -> None:
    released = trio.Event()

    async def handler(request: Request) -> dict[str, Any]:
        if request.op == "inbox":
            await released.wait()  # answered only once a second request gets through
        else:
            released.set()
        return {"op": request.op}

    path = sock_dir / "c.sock"
    replies: list[str] = []

    async def one(op: str) -> None:
        replies.append((await call(path, {"op": op}))["op"])

    async with trio.open_nursery() as nursery:
        await start(nursery, path, handler)
        async with trio.open_nursery() as clients:
            clients.start_soon(one, "inbox")
            await trio.testing.wait_all_tasks_blocked()
            clients.start_soon(one, "status")
        nursery.cancel_scope.cancel()
    assert replies == ["status", "inbox"]


async def test_second_bind_on_a_live_socket_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, path)
        with pytest.raises(HomeError, match="already running"):
            await bind_control(path)
        # the live node keeps its socket
        assert (await call(path, {"op": "status"}))["ok"] is True
        nursery.cancel_scope.cancel()


async def test_a_stale_socket_file_is_replaced(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a node that died without removing its socket
    dead.close()
    assert stat.S_ISSOCK(path.stat().st_mode)
    with pytest.raises(NodeNotRunning):
        await call(path, {"op": "status"})
    async with trio.open_nursery() as nursery:
        await start(nursery, path)
        assert (await call(path, {"op": "status"}))["ok"] is True
        nursery.cancel_scope.cancel()


async def test_call_with_nothing_listening(sock_dir: Path) -> None:
    with pytest.raises(NodeNotRunning) as caught:
        await call(sock_dir / "c.sock", {"op": "status"})
    assert caught.value.user_message().startswith("The node is not running")


async def test_too_long_paths_are_refused(sock_dir: Path) -> None:
    path = sock_dir / ("s" * MAX_SOCKET_PATH)
    with pytest.raises(HomeError, match="too long"):
        await bind_control(path)
    with pytest.raises(HomeError, match="too long"):
        await call(path, {"op": "status"})
    assert not path.exists()


def test_socket_path_limit_counts_bytes_and_the_nul() -> None:
    check_socket_path(Path("/" + "a" * (MAX_SOCKET_PATH - 2)))  # 107 bytes + NUL fits
    with pytest.raises(HomeError):
        check_socket_path(Path("/" + "a" * (MAX_SOCKET_PATH - 1)))
    with pytest.raises(HomeError):
        check_socket_path(Path("/" + "é" * (MAX_SOCKET_PATH // 2)))  # 2 bytes each


async def test_a_hostile_request_does_not_stop_the_server(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, path)
        with pytest.raises(NodeRefused, match="unknown operation"):
            await call(path, {"op": []})
        assert (await call(path, {"op": "status"}))["ok"] is True
        nursery.cancel_scope.cancel()


def test_errors_form_one_tree() -> None:
    assert issubclass(NodeRefused, ControlError)
    assert issubclass(ControlError, P2PMsgError)
    assert issubclass(NodeNotRunning, P2PMsgError)
    assert NodeRefused("").user_message() == "The running node refused the request."


async def test_a_handler_that_overruns_gets_an_error_reply(
    sock_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def stuck(request: Request) -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    path = sock_dir / "c.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, path, stuck)
        with pytest.raises(NodeRefused, match="did not finish 'status' in time"):
            await call(path, {"op": "status"}, timeout=TIMEOUT + 10)
        nursery.cancel_scope.cancel()
