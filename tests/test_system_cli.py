"""The ``p2pmsg`` command as people and scripts use it: real processes on 127.0.0.1.

Each test inits its own homes (``init --listen tcp:127.0.0.1:0``, so no fixed
ports), starts ``p2pmsg run`` processes and drives them only through the CLI
contract: ``send`` returns once the message is durably queued, ``inbox`` and
``outbox --json`` print one JSON object per line, ``status --json`` one
object, and a person's mistake ends in one line on stderr and a non-zero
exit. Waiting is polling the CLI up to a deadline (see ``syshelpers``);
nothing asserts on timing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from syshelpers import (
    Done,
    NodeProcess,
    assert_clean_error,
    befriend,
    cli,
    cli_sync,
    command,
    init,
    mode,
    ok,
    poll,
    running,
    short_base,
)

pytestmark = pytest.mark.system

MESSAGES = 20
ITEM_KEYS = {"id", "peer", "text", "state", "time"}


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    with short_base(tmp_path) as path:
        yield path


def pair(base: Path) -> tuple[Path, Path]:
    return base / "alice", base / "bob"


async def send(home: Path, to: str, text: str) -> str:
    done = await ok(home, "send", "--direct", to, text)
    assert len(done.lines) == 1, str(done)
    message_id = done.lines[0]
    assert len(message_id) == 32, str(done)
    int(message_id, 16)
    return message_id


async def send_all(home: Path, to: str, texts: list[str]) -> dict[str, str]:
    """Send every text with concurrent ``send`` processes; return {id: text}."""
    sent: dict[str, str] = {}

    async def one(text: str) -> None:
        sent[await send(home, to, text)] = text

    async with trio.open_nursery() as nursery:
        for text in texts:
            nursery.start_soon(one, text)
    assert len(sent) == len(texts), "two sends returned the same id"
    return sent


async def box(home: Path, which: str) -> list[dict[str, Any]]:
    items = (await ok(home, which, "--json")).json_lines()
    for item in items:
        assert set(item) == ITEM_KEYS, item
    return items


async def until_delivered(
    sender: Path, receiver: Path, expected: dict[str, str], nodes: list[NodeProcess]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Poll until the receiver's inbox holds every expected id and the sender's
    outbox shows each delivered; return (inbox, outbox)."""

    async def check() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        boxes: dict[str, list[dict[str, Any]]] = {}

        async def read(home: Path, which: str) -> None:
            boxes[which] = await box(home, which)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, receiver, "inbox")
            nursery.start_soon(read, sender, "outbox")
        inbox, outbox = boxes["inbox"], boxes["outbox"]
        received = {m["id"] for m in inbox}
        delivered = {m["id"] for m in outbox if m["state"] == "delivered"}
        if expected.keys() <= received and expected.keys() <= delivered:
            return inbox, outbox
        return None

    what = f"{len(expected)} message(s) {sender.name} -> {receiver.name}"
    return await poll(check, what, node_logs=nodes)


def assert_received_once(inbox: list[dict[str, Any]], peer: str, expected: dict[str, str]) -> None:
    mine = [m for m in inbox if m["id"] in expected]
    assert sorted(m["id"] for m in mine) == sorted(expected), "a message arrived twice"
    for m in mine:
        assert m["peer"] == peer, m
        assert m["text"] == expected[m["id"]], m
        assert m["state"] == "received", m
        assert isinstance(m["time"], float), m


# messaging


async def test_two_nodes_exchange_messages_both_ways(base: Path) -> None:
    alice, bob = pair(base)
    await befriend({"alice": alice, "bob": bob})
    async with running(alice, bob) as nodes:
        to_bob = {await send(alice, "bob", "hello bob"): "hello bob"}
        to_alice = {await send(bob, "alice", "héllo alice ✉"): "héllo alice ✉"}
        inbox_bob, outbox_alice = await until_delivered(alice, bob, to_bob, nodes)
        inbox_alice, outbox_bob = await until_delivered(bob, alice, to_alice, nodes)
    assert_received_once(inbox_bob, "alice", to_bob)
    assert_received_once(inbox_alice, "bob", to_alice)
    (bob_id,) = to_bob
    (alice_id,) = to_alice
    assert [(m["id"], m["peer"], m["text"], m["state"]) for m in outbox_alice] == [
        (bob_id, "bob", "hello bob", "delivered")
    ]
    assert [(m["id"], m["peer"], m["state"]) for m in outbox_bob] == [
        (alice_id, "alice", "delivered")
    ]


async def test_receiver_killed_mid_flight_loses_and_duplicates_nothing(base: Path) -> None:
    alice, bob = pair(base)
    await befriend({"alice": alice, "bob": bob})
    texts = [f"message {n:02d}" for n in range(MESSAGES)]
    async with running(alice, bob) as nodes:
        bob_node = nodes[1]
        sent = await send_all(alice, "bob", texts)
        await bob_node.kill9()  # at once: some messages are on the wire or unacked
        states = [m["state"] for m in await box(alice, "outbox")]
        print(f"at kill -9: {states.count('delivered')}/{MESSAGES} delivered")
        await bob_node.start()
        inbox, outbox = await until_delivered(alice, bob, sent, nodes)
    assert len(inbox) == MESSAGES
    assert len({m["id"] for m in inbox}) == MESSAGES
    assert_received_once(inbox, "alice", sent)
    assert sorted(m["text"] for m in inbox) == texts
    assert len(outbox) == MESSAGES
    assert {m["state"] for m in outbox} == {"delivered"}


async def test_two_nodes_that_share_only_ws_endpoints_exchange_messages(base: Path) -> None:
    """Issue 5: nothing but WebSocket (HTTP/1.1 upgrade) between the two."""
    alice, bob = pair(base)
    links = {
        "alice": await init(alice, "ws:127.0.0.1:0/chat"),
        "bob": await init(bob, "ws:127.0.0.1:0/live"),
    }
    assert all("@ws:127.0.0.1:" in link and ",tcp:" not in link for link in links.values())
    await ok(alice, "contacts", "add", "bob", links["bob"])
    await ok(bob, "contacts", "add", "alice", links["alice"])
    async with running(alice, bob) as nodes:
        to_bob = {await send(alice, "bob", "over websocket"): "over websocket"}
        to_alice = {await send(bob, "alice", "and back"): "and back"}
        inbox_bob, _ = await until_delivered(alice, bob, to_bob, nodes)
        inbox_alice, _ = await until_delivered(bob, alice, to_alice, nodes)
        status = json.loads((await ok(alice, "status", "--json")).lines[0])
    assert_received_once(inbox_bob, "alice", to_bob)
    assert_received_once(inbox_alice, "bob", to_alice)
    assert [e.split(":")[0] for e in status["listening"]] == ["ws"]


@pytest.mark.parametrize(
    ("transport", "arg", "secret_file"),
    [("tls", "pin", "tls/tls-node.pem"), ("obfs", "key", "obfs/obfs-server.key")],
)
async def test_two_nodes_that_share_only_keyed_endpoints_exchange_messages(
    base: Path, transport: str, arg: str, secret_file: str
) -> None:
    """Issue 5: TLS 1.3 without SNI, or our obfs; the invites carry each node's
    certificate pin or obfs key, made at init and kept owner-only."""
    alice, bob = pair(base)
    links = {
        "alice": await init(alice, f"{transport}:127.0.0.1:0"),
        "bob": await init(bob, f"{transport}:127.0.0.1:0"),
    }
    for link in links.values():
        assert f"@{transport}" in link and arg in link and ",tcp" not in link, link
    await ok(alice, "contacts", "add", "bob", links["bob"])
    await ok(bob, "contacts", "add", "alice", links["alice"])
    async with running(alice, bob) as nodes:
        to_bob = {await send(alice, "bob", f"over {transport}"): f"over {transport}"}
        inbox_bob, _ = await until_delivered(alice, bob, to_bob, nodes)
        status = json.loads((await ok(bob, "status", "--json")).lines[0])
        sender_status = json.loads((await ok(alice, "status", "--json")).lines[0])
    assert_received_once(inbox_bob, "alice", to_bob)
    assert [e.split(":")[0] for e in status["listening"]] == [transport]
    assert sender_status["transports"][transport]["successes"] >= 1
    assert ((alice / secret_file).stat().st_mode & 0o077) == 0


@pytest.mark.skipif(
    shutil.which("obfs4proxy") is None,
    reason="obfs4proxy is not installed (apt-get install -y obfs4proxy)",
)
async def test_two_nodes_that_share_only_obfs4_endpoints_exchange_messages(base: Path) -> None:
    """Issue 5: real obfs4proxy processes on both sides; the invites carry the certs."""
    alice, bob = pair(base)
    links = {
        "alice": await init(alice, "obfs4:127.0.0.1:0"),
        "bob": await init(bob, "obfs4:127.0.0.1:0"),
    }
    for link in links.values():
        assert "@pt%3Aobfs4%3A127.0.0.1%3A" in link or "@pt:obfs4:127.0.0.1:" in link, link
        assert "cert" in link and ",tcp" not in link, link
    await ok(alice, "contacts", "add", "bob", links["bob"])
    await ok(bob, "contacts", "add", "alice", links["alice"])
    async with running(alice, bob) as nodes:
        to_bob = {await send(alice, "bob", "through obfs4"): "through obfs4"}
        to_alice = {await send(bob, "alice", "and back"): "and back"}
        inbox_bob, _ = await until_delivered(alice, bob, to_bob, nodes)
        inbox_alice, _ = await until_delivered(bob, alice, to_alice, nodes)
        status = json.loads((await ok(alice, "status", "--json")).lines[0])
    assert_received_once(inbox_bob, "alice", to_bob)
    assert_received_once(inbox_alice, "bob", to_alice)
    assert [e.split(":")[:2] for e in status["listening"]] == [["pt", "obfs4"]]
    assert (alice / "pt").stat().st_mode & 0o077 == 0  # the bridge's keys are private


@pytest.mark.parametrize("receiver_up", [True, False], ids=["receiver-up", "receiver-down"])
async def test_sender_killed_after_send_still_delivers_once(base: Path, receiver_up: bool) -> None:
    # receiver-up: the message may already be out when the sender dies, and the
    # restart must not deliver it again; receiver-down: it can only be in the
    # sender's outbox, so only a durable outbox delivers it.
    alice, bob = pair(base)
    await befriend({"alice": alice, "bob": bob})
    alice_node, bob_node = NodeProcess(alice), NodeProcess(bob)
    nodes = [alice_node, bob_node]
    try:
        if receiver_up:
            await bob_node.start()
        await alice_node.start()
        sent = {await send(alice, "bob", "survives kill -9"): "survives kill -9"}
        await alice_node.kill9()
        await alice_node.start()
        if not receiver_up:
            outbox = await box(alice, "outbox")
            # "sent" once a dial was tried: it left the outbox's queue, never the outbox
            assert [m["id"] for m in outbox] == list(sent)
            assert outbox[0]["state"] in {"queued", "sent"}
            await bob_node.start()
        inbox, outbox = await until_delivered(alice, bob, sent, nodes)
    finally:
        for node in nodes:
            await node.aclose()
    assert len(inbox) == 1
    assert_received_once(inbox, "alice", sent)
    assert [(m["id"], m["state"]) for m in outbox] == [(*sent, "delivered")]


# running and stopping


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_run_cleanly(base: Path, signum: signal.Signals) -> None:
    home = base / "node"
    await init(home)
    sock = home / "control.sock"
    async with running(home) as (node,):
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        code = await node.signal(signum)
    assert code == 0, node.log_tail()
    assert not sock.exists()
    assert "Traceback" not in node.log_tail()
    done = await cli(home, "status")
    assert_clean_error(done)
    assert "not running" in done.err


async def test_status_json_of_a_running_node(base: Path) -> None:
    home = base / "node"
    done = await ok(home, "init", "--listen", "tcp:127.0.0.1:0")
    link = done.lines[0]
    endpoint = link.split("@", 1)[1]
    assert endpoint.startswith("tcp:127.0.0.1:")
    assert not endpoint.endswith(":0")
    async with running(home):
        status = await ok(home, "status", "--json")
        invite = await ok(home, "invite")
    assert len(status.lines) == 1, str(status)
    (reply,) = status.json_lines()
    assert isinstance(reply, dict)
    assert reply["node_id"] in done.err  # init names the node it created
    assert len(reply["node_id"]) == 64
    int(reply["node_id"], 16)
    assert reply["listening"] == [endpoint]
    assert invite.lines[0] == link


async def test_files_are_owner_only(base: Path) -> None:
    home, wide = base / "node", base / "wide"
    wide.mkdir(mode=0o755)
    os.chmod(wide, 0o755)  # whatever the umask
    await init(home)
    await init(wide)
    for where in (home, wide):
        assert mode(where) == 0o700
        assert mode(where / "identity.key") == 0o600
        assert mode(where / "p2pmsg.db") == 0o600
        assert mode(where / "config.json") == 0o600
    async with running(home):
        assert mode(home / "control.sock") == 0o600
        for extra in ("p2pmsg.db-wal", "p2pmsg.db-shm"):
            if (home / extra).exists():
                assert mode(home / extra) == 0o600, extra
        assert mode(home / "p2pmsg.db") == 0o600


# a person's mistakes


async def test_malformed_invites_are_refused(base: Path) -> None:
    home, other = base / "node", base / "other"
    link = await init(other)
    await init(home)
    key = link.removeprefix("p2pmsg://").split("@", 1)[0]
    bad = [
        "hello",
        "p2pmsg://garbage",
        f"p2pmsg://{key[:-1]}@tcp:127.0.0.1:1",
        f"p2pmsg://{key}@bogus",
        "0" * 63,
    ]
    results: list[Done] = []

    async def add(text: str) -> None:
        results.append(await cli(home, "contacts", "add", "x", text))

    async with trio.open_nursery() as nursery:
        for text in bad:
            nursery.start_soon(add, text)
        nursery.start_soon(add, f"{link}\n{link}")
    for done in results:
        assert_clean_error(done)
    assert (await ok(home, "contacts", "list", "--json")).lines == []


async def test_a_file_is_sent_received_and_saved_byte_for_byte(base: Path) -> None:
    alice, bob = pair(base)
    await befriend({"alice": alice, "bob": bob})
    photo = base / "photo.jpg"
    photo.write_bytes(os.urandom(100_000))  # four parts
    saved = base / "saved"
    saved.mkdir()
    (saved / "photo.jpg").write_bytes(b"an older file of that name")
    async with running(alice, bob) as nodes:
        done = await ok(alice, "send-file", "--direct", "bob", str(photo))
        file_id = done.lines[0]
        text = f"[file photo.jpg, 100,000 bytes: p2pmsg save {file_id}]"
        inbox, outbox = await until_delivered(alice, bob, {file_id: text}, nodes)
        refused = [
            await cli(alice, "send-file", "bob", str(base / "missing.bin")),
            await cli(alice, "send-file", "carol", str(photo)),
            await cli(bob, "save", "00" * 16, "--dir", str(saved)),
        ]
    assert_received_once(inbox, "alice", {file_id: text})
    assert [(m["id"], m["text"]) for m in outbox] == [(file_id, "[file photo.jpg: 4 of 4 parts]")]
    done = await ok(bob, "save", file_id, "--dir", str(saved))
    assert done.lines == [str(saved / "photo (2).jpg")]
    refused.append(await cli(bob, "save", file_id, "--dir", str(base / "nowhere")))
    assert (saved / "photo (2).jpg").read_bytes() == photo.read_bytes()
    assert mode(saved / "photo (2).jpg") == 0o600
    for done in refused:
        assert_clean_error(done)
    assert "The file given cannot be read or written" in refused[0].err
    assert "missing.bin: not a file" in refused[0].err
    assert "no contact" in refused[1].err
    assert "No file with that id was received" in refused[2].err
    assert "No such file or directory" in refused[3].err


async def test_send_to_an_unknown_contact_is_refused(base: Path) -> None:
    home = base / "node"
    await init(home)
    async with running(home):
        done = await cli(home, "send", "carol", "hi")
        outbox = await box(home, "outbox")
    assert_clean_error(done)
    assert "no contact" in done.err
    assert outbox == []


async def test_commands_that_need_the_node_say_it_is_not_running(base: Path) -> None:
    home = base / "node"
    await init(home)
    commands = [("send", "bob", "hi"), ("inbox",), ("outbox", "--json"), ("status", "--json")]
    for done in [await cli(home, *args) for args in commands]:
        assert_clean_error(done)
        assert "not running" in done.err


def break_home(base: Path, how: str) -> Path:
    """A home broken in one way a person (or a crash) could break it."""
    home = base / how
    if how == "missing":
        return home
    if how == "not-a-directory":
        home.write_text("hello\n")
        return home
    assert cli_sync(home, "init", "--listen", "tcp:127.0.0.1:0").code == 0
    key = home / "identity.key"
    match how:
        case "garbage-key":
            key.write_bytes(b"\x00garbage\xff" * 10)
        case "key-is-a-directory":
            key.unlink()
            key.mkdir()
        case "key-readable-by-others":
            os.chmod(key, 0o644)
        case "garbage-database":
            (home / "p2pmsg.db").write_bytes(b"not a database" * 100)
        case "garbage-config":
            (home / "config.json").write_text("{")
    return home


BROKEN = [
    "missing",
    "not-a-directory",
    "garbage-key",
    "key-is-a-directory",
    "key-readable-by-others",
    "garbage-database",
    "garbage-config",
]
EVERY_COMMAND: list[tuple[str, ...]] = [
    ("invite",),
    ("send", "bob", "hi"),
    ("run",),
]
# Only the commands that read the damaged file (the rest work without it).
COMMANDS_FOR = {
    "garbage-database": [("contacts", "list"), ("run",)],
    "garbage-config": [("invite",), ("run",)],
}


@pytest.mark.parametrize("how", BROKEN)
async def test_an_unusable_home_is_refused(base: Path, how: str) -> None:
    home = break_home(base, how)
    commands = COMMANDS_FOR.get(how, EVERY_COMMAND)
    results: dict[tuple[str, ...], Done] = {}

    async def one(args: tuple[str, ...]) -> None:
        results[args] = await cli(home, *args)

    async with trio.open_nursery() as nursery:
        for args in commands:
            nursery.start_soon(one, args)
    for done in results.values():
        assert_clean_error(done)
    assert not (home / "control.sock").exists()


async def test_init_twice_is_refused_and_keeps_the_identity(base: Path) -> None:
    home = base / "node"
    link = await init(home)
    key = (home / "identity.key").read_bytes()
    again = await cli(home, "init", "--listen", "tcp:127.0.0.1:0")
    assert_clean_error(again)
    assert (home / "identity.key").read_bytes() == key
    assert (await ok(home, "invite")).lines[0] == link


async def test_a_bridge_is_made_only_with_a_listen_endpoint_and_says_so_in_its_config(
    base: Path,
) -> None:
    home = base / "node"
    assert_clean_error(await cli(home, "init", "--bridge"))
    assert_clean_error(await cli(home, "init", "--bridge", "--listen", "tcp:127.0.0.1:0",
                                 "--mdns", "127.0.0.1"))  # fmt: skip
    assert not home.exists()
    done = await ok(home, "init", "--bridge", "--listen", "obfs:127.0.0.1:0")
    assert "@obfs:127.0.0.1:" in done.lines[0] and "key" in done.lines[0]
    assert json.loads((home / "config.json").read_text())["bridge"] is True


async def test_use_bridge_takes_bridge_invites_and_is_refused_to_a_bridge(base: Path) -> None:
    bridge = (await ok(base / "b", "init", "--bridge", "--listen", "obfs:127.0.0.1:0")).lines[0]
    home = base / "node"
    assert_clean_error(await cli(home, "init", "--use-bridge", "obfs:127.0.0.1:9"))
    assert_clean_error(await cli(home, "init", "--bridge", "--listen", "tcp:127.0.0.1:0",
                                 "--use-bridge", bridge))  # fmt: skip
    assert not home.exists()
    await ok(home, "init", "--use-bridge", bridge)
    assert json.loads((home / "config.json").read_text())["use_bridges"] == [bridge]


@pytest.mark.parametrize(
    "endpoint",
    ["bogus", "tcp:127.0.0.1", "tcp:127.0.0.1:99999", "tcp:127.0.0.1:-1", "TCP!:127.0.0.1:0", ""],
)
async def test_a_bad_listen_endpoint_is_refused_before_anything_is_created(
    base: Path, endpoint: str
) -> None:
    home = base / "node"
    assert_clean_error(await cli(home, "init", "--listen", endpoint))
    assert not home.exists(), "the mistake left a half-made home in the way"


async def test_invite_qr_prints_the_link_then_a_qr_block(base: Path) -> None:
    home = base / "node"
    link = await init(home)
    done = await ok(home, "invite", "--qr")
    first, *qr = done.lines
    assert first == link
    assert len(qr) >= 10
    assert len({len(line) for line in qr}) == 1, "the QR block is not rectangular"
    assert set("".join(qr)) <= set(" ▀▄█")
    assert "█" in "".join(qr)


# running twice, odd homes, closed pipes: the contract still holds


async def test_a_second_run_on_a_busy_home_fails_cleanly(base: Path) -> None:
    home = base / "node"
    await init(home)
    async with running(home):
        done = await cli(home, "run")
        still = await cli(home, "status", "--json")
    assert still.code == 0, "the second run disturbed the first"
    assert_clean_error(done)


async def test_a_second_run_never_takes_over_a_running_node(base: Path) -> None:
    home = base / "quiet"
    done = await ok(home, "init")  # listens nowhere, so no port conflict stops the second
    assert done.lines[0].startswith("p2pmsg://")
    sock = home / "control.sock"
    async with running(home) as (first,):
        inode = os.lstat(sock).st_ino
        second = NodeProcess(home, tag="-second")
        try:
            await second.spawn()

            async def settled() -> bool | None:
                assert second.process is not None
                if second.process.returncode is not None:
                    return True
                if not sock.exists() or os.lstat(sock).st_ino != inode:
                    return True
                return None

            await poll(settled, "the second run to exit", node_logs=[first, second])
            took_over = not sock.exists() or os.lstat(sock).st_ino != inode
        finally:
            await second.aclose()
        still = await cli(home, "status")
    assert not took_over, "the second run replaced the first's control socket"
    assert still.code == 0, str(still)
    assert "clock: not checked yet (0 peers heard)" in still.lines, str(still)
    assert second.process is not None
    assert second.process.returncode not in (0, None)
    errors = second.log.read_text().splitlines()
    assert len(errors) == 1, errors
    assert "Traceback" not in second.log.read_text()


async def test_run_in_a_home_too_deep_for_its_socket_fails_cleanly(base: Path) -> None:
    home = base / ("h" * max(1, 110 - len(str(base))))
    assert len(str(home / "control.sock")) > 107
    await init(home)
    assert_clean_error(await cli(home, "run"))
    assert_clean_error(await cli(home, "status"))


def test_output_into_a_closed_pipe_is_not_a_traceback(base: Path) -> None:
    home = base / "node"
    assert cli_sync(home, "init").code == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: like `| head -1`, but certain
    try:
        done = subprocess.run(
            command(home, "invite", "--qr"),
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            check=False,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    assert done.returncode != 0


async def test_the_cli_signs_imports_and_refuses_with_one_line(base: Path) -> None:
    relay = await init(base / "relay")
    await init(base / "publisher")
    signed = await ok(base / "publisher", "bootstrap", "sign", relay, "--days", "7")
    line = signed.lines[0]
    key = signed.err.split("publisher ")[1].split(";")[0]
    await ok(base / "user", "init", "--publisher", key)
    assert "taken" in (await ok(base / "user", "bootstrap", "import", line)).lines[0]
    (base / "list.txt").write_text(line + "\n")
    done = await ok(base / "user", "bootstrap", "import", str(base / "list.txt"))
    assert "already held" in done.lines[0]
    await ok(base / "stranger", "init")
    assert_clean_error(await cli(base / "stranger", "bootstrap", "import", line))
    assert_clean_error(
        await cli(base / "user", "bootstrap", "import", "p2pmsg-bootstrap:" + "AAAA")
    )
    assert_clean_error(await cli(base / "user", "bootstrap", "import", str(base / "none")))
    assert_clean_error(await cli(base / "x", "init", "--publisher", "not-a-key"))
    done = await cli(base / "publisher", "bootstrap", "sign", relay, "--days", "31")
    assert done.code != 0 and "Traceback" not in done.err
