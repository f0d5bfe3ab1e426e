"""mDNS discovery: the TXT codec (pure) and :class:`MdnsDiscovery` on 127.0.0.1.

The codec has round-trip, known-answer and tamper tests and is checked
against zeroconf's own TXT packing. The discovery tests run real zeroconf
instances bound to 127.0.0.1 only (multicast on loopback works between
sockets and processes), in real time: zeroconf has threads of its own, so no
autojump clock. Each test browses a service type of its own, so runs in
parallel never see each other. ``trio.fail_after(HANG_GUARD)`` only turns a
hang into a failure; nothing asserts on timing. Where no event exists (a
counter going up), :func:`wait_until` polls up to the same bound.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from functools import partial

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import ServiceInfo, Zeroconf

from p2pmsg.discovery.mdns import MdnsDiscovery
from p2pmsg.discovery.txt import (
    CHUNK,
    MAX_PAYLOAD,
    MAX_TXT,
    build_rdata,
    decode_txt,
    encode_txt,
    parse_rdata,
    rdata_size,
)
from p2pmsg.errors import LocalProtocolError, RemoteProtocolError

LOOPBACK = "127.0.0.1"
HANG_GUARD = 30.0
POLL_INTERVAL = 0.05

payloads = st.binary(min_size=1, max_size=MAX_PAYLOAD)


# -- the TXT codec ----------------------------------------------------------------


@given(payloads)
def test_txt_round_trips(payload: bytes) -> None:
    properties = encode_txt(payload)
    assert decode_txt(properties) == payload
    rdata = build_rdata(properties)  # raises if a string were over 255 bytes
    assert len(rdata) == rdata_size(properties) <= MAX_TXT
    assert parse_rdata(rdata) == properties
    assert decode_txt(parse_rdata(rdata)) == payload


@given(payloads)
def test_zeroconf_packs_and_unpacks_the_txt_as_we_do(payload: bytes) -> None:
    properties = encode_txt(payload)
    name = "x._p2pmsg._tcp.local."
    packed = ServiceInfo("_p2pmsg._tcp.local.", name, properties=dict(properties))
    assert packed.text == build_rdata(properties)
    received = ServiceInfo("_p2pmsg._tcp.local.", name, properties=build_rdata(properties))
    assert received.properties == properties


def test_txt_known_answer() -> None:
    payload = b"\x00" * CHUNK + b"\xff"
    properties = encode_txt(payload)
    assert properties == {b"v": b"1", b"n": b"2", b"r0": b"\x00" * CHUNK, b"r1": b"\xff"}
    assert list(properties) == [b"v", b"n", b"r0", b"r1"]  # the version goes first
    expected = b"\x03v=1\x03n=2" + bytes([3 + CHUNK]) + b"r0=" + b"\x00" * CHUNK + b"\x04r1=\xff"
    assert build_rdata(properties) == expected


def test_txt_max_payload_fits_the_dns_limits() -> None:
    rdata = build_rdata(encode_txt(bytes(MAX_PAYLOAD)))
    assert len(rdata) <= MAX_TXT


@pytest.mark.parametrize("payload", [b"", bytes(MAX_PAYLOAD + 1)], ids=["empty", "too_large"])
def test_txt_refuses_to_advertise_out_of_bounds(payload: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        encode_txt(payload)


TWO = bytes(range(CHUNK)) + b"!"
VALID = encode_txt(TWO)
DROP = object()


def tampered(**changes: object) -> dict[bytes, bytes | None]:
    properties: dict[bytes, bytes | None] = dict(VALID)
    for key, value in changes.items():
        if value is DROP:
            del properties[key.encode()]
        else:
            assert value is None or isinstance(value, bytes)
            properties[key.encode()] = value
    return properties


@pytest.mark.parametrize(
    "properties",
    [
        pytest.param({}, id="empty"),
        pytest.param(tampered(v=DROP), id="no_version"),
        pytest.param(tampered(v=b"2"), id="unknown_version"),
        pytest.param(tampered(v=None), id="version_flag"),
        pytest.param(tampered(n=DROP), id="no_count"),
        pytest.param(tampered(n=None), id="count_flag"),
        pytest.param(tampered(n=b"0"), id="count_zero"),
        pytest.param(tampered(n=b"02"), id="count_leading_zero"),
        pytest.param(tampered(n=b"+2"), id="count_plus"),
        pytest.param(tampered(n=b" 2"), id="count_space"),
        pytest.param(tampered(n=b"\xd9\xa2"), id="count_arabic_digit"),
        pytest.param(tampered(n=b"1"), id="count_too_low"),
        pytest.param(tampered(n=b"3"), id="count_too_high"),
        pytest.param(tampered(n=b"6"), id="count_over_max"),
        pytest.param(tampered(n=b"9" * 400), id="count_huge"),
        pytest.param(tampered(r1=DROP), id="missing_last_chunk"),
        pytest.param(tampered(r0=DROP), id="missing_first_chunk"),
        pytest.param(tampered(r1=None), id="chunk_flag"),
        pytest.param(tampered(r1=b""), id="empty_chunk"),
        pytest.param(tampered(r0=TWO[: CHUNK - 1]), id="short_inner_chunk"),
        pytest.param(tampered(r1=bytes(CHUNK + 1)), id="oversize_chunk"),
        pytest.param(tampered(r2=b"x"), id="stray_chunk"),
        pytest.param(tampered(r00=b"x"), id="stray_chunk_leading_zero"),
        pytest.param(tampered(pad=bytes(MAX_TXT)), id="oversize_record"),
    ],
)
def test_txt_decoder_rejects_tampered_records(properties: dict[bytes, bytes | None]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_txt(properties)


def test_txt_decoder_ignores_keys_it_does_not_know() -> None:
    properties = tampered(x=b"y", flag=None, r=b"not a chunk", rx=b"nor this")
    assert decode_txt(properties) == TWO


def test_parse_rdata_follows_rfc_6763() -> None:
    rdata = b"\x03a=1" + b"\x00" + b"\x02=x" + b"\x03a=2" + b"\x04flag" + b"\x02e="
    assert parse_rdata(rdata) == {b"a": b"1", b"flag": None, b"e": b""}


@pytest.mark.parametrize(
    "rdata",
    [b"\x04v=1", b"\x03v=1\x05n=2", bytes([255]) * (MAX_TXT + 1)],
    ids=["cut_short", "second_cut_short", "too_large"],
)
def test_parse_rdata_rejects_broken_records(rdata: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_rdata(rdata)


@pytest.mark.parametrize(
    "properties",
    [{b"": b"x"}, {b"a=b": b"x"}, {b"k": bytes(254)}],
    ids=["empty_key", "equals_in_key", "string_too_long"],
)
def test_build_rdata_refuses_what_dns_cannot_carry(properties: dict[bytes, bytes]) -> None:
    with pytest.raises(LocalProtocolError):
        build_rdata(properties)


# -- MdnsDiscovery: construction ---------------------------------------------------


def unique_service_type() -> str:
    return f"_t{secrets.token_hex(6)}._tcp.local."


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("not an address",), {}),
        (("0.0.0.0",), {}),
        (("224.0.0.251",), {}),
        ((LOOPBACK,), {"service_type": "_p2pmsg._tcp.local"}),
        ((LOOPBACK,), {"service_type": "p2pmsg._tcp.local."}),
        ((LOOPBACK,), {"service_type": "_much-too-long-name._tcp.local."}),
        ((LOOPBACK,), {"instance": ""}),
        ((LOOPBACK,), {"instance": "a.b"}),
        ((LOOPBACK,), {"instance": "with space"}),
        ((LOOPBACK,), {"instance": "-leading-hyphen"}),
        ((LOOPBACK,), {"instance": "x" * 64}),
        ((LOOPBACK,), {"max_queue": 0}),
    ],
)
def test_constructor_checks_its_arguments(args: tuple[str], kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        MdnsDiscovery(*args, **kwargs)  # type: ignore[arg-type]


def test_instance_names_are_random_and_not_the_hostname() -> None:
    first, second = MdnsDiscovery(LOOPBACK), MdnsDiscovery(LOOPBACK)
    assert first.instance != second.instance
    assert socket.gethostname().lower() not in first.name.lower()
    assert first.name == f"{first.instance}._p2pmsg._tcp.local."


@pytest.mark.parametrize("payload", [b"", bytes(MAX_PAYLOAD + 1)], ids=["empty", "too_large"])
async def test_run_refuses_a_bad_payload_before_any_io(payload: bytes) -> None:
    send, _ = trio.open_memory_channel[bytes](1)
    with no_new_threads(), pytest.raises(LocalProtocolError):
        await MdnsDiscovery(LOOPBACK).run(payload, send)


async def test_run_on_an_address_no_interface_has_raises_oserror() -> None:
    send, _ = trio.open_memory_channel[bytes](1)
    discovery = MdnsDiscovery("192.0.2.1", service_type=unique_service_type())  # TEST-NET-1
    with no_new_threads(), pytest.raises(OSError) as raised:  # noqa: PT011 - errno below
        await discovery.run(b"nowhere", send)
    assert raised.value.errno == errno.EADDRNOTAVAIL


# -- MdnsDiscovery on 127.0.0.1 ----------------------------------------------------


@contextmanager
def no_new_threads() -> Iterator[None]:
    """Fail when a thread started inside is still alive afterwards (trio's own
    idle worker threads, which it reuses and reaps itself, excepted)."""
    before = set(threading.enumerate())
    yield
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert [name for name in left if not name.startswith("Trio thread")] == []


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Bounded polling, for counters: there is no event to wait on."""
    deadline = trio.current_time() + HANG_GUARD
    while not condition():
        if trio.current_time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await trio.sleep(POLL_INTERVAL)


async def start_all(nursery: trio.Nursery, *starts: Callable[..., Awaitable[object]]) -> None:
    """``nursery.start`` every one of ``starts`` concurrently (registering takes ~1.6 s)."""
    async with trio.open_nursery() as starting:
        for start in starts:
            starting.start_soon(nursery.start, start)


async def test_two_instances_see_each_other() -> None:
    service_type = unique_service_type()
    alice, bob = (MdnsDiscovery(LOOPBACK, service_type=service_type) for _ in range(2))
    alice_send, alice_seen = trio.open_memory_channel[bytes](16)
    bob_send, bob_seen = trio.open_memory_channel[bytes](16)
    with no_new_threads():
        async with trio.open_nursery() as nursery:
            await start_all(
                nursery,
                partial(alice.run, b"alice's record", alice_send),
                partial(bob.run, b"bob's record" * 100, bob_send),
            )
            with trio.fail_after(HANG_GUARD):
                # the first sighting is the other's: each skips its own instance
                assert await alice_seen.receive() == b"bob's record" * 100
                assert await bob_seen.receive() == b"alice's record"
            nursery.cancel_scope.cancel()
    assert (alice.malformed, bob.malformed, alice.dropped, bob.dropped) == (0, 0, 0, 0)


#: One MdnsDiscovery in a process of its own: prints "started", then the
#: first sighting in hex, then runs until its stdin is closed.
PEER_SCRIPT = """
import sys
import trio
from p2pmsg.discovery.mdns import MdnsDiscovery

async def main(ip, service_type, payload):
    send, receive = trio.open_memory_channel(16)
    async with trio.open_nursery() as nursery:
        await nursery.start(MdnsDiscovery(ip, service_type=service_type).run, payload, send)
        print("started", flush=True)
        print((await receive.receive()).hex(), flush=True)
        await trio.to_thread.run_sync(sys.stdin.buffer.read)
        nursery.cancel_scope.cancel()

trio.run(main, sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]))
"""


def peer_command(ip: str, service_type: str, payload: bytes) -> list[str]:
    return [sys.executable, "-W", "error", "-c", PEER_SCRIPT, ip, service_type, payload.hex()]


class LineReader:
    """Lines from a process's stdout, bounded."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def line(self, limit: int = 8192) -> str:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some()
            if not data:
                raise AssertionError(f"the peer exited; it printed {self._buffer!r}")
            self._buffer += data
            assert len(self._buffer) <= limit
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


async def stop(process: trio.Process) -> None:
    """Close the peer's stdin (it exits cleanly on that) and reap it; kill it if it hangs."""
    with trio.CancelScope(shield=True):
        assert process.stdin is not None
        await process.stdin.aclose()
        with trio.move_on_after(HANG_GUARD):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.system
async def test_an_instance_in_another_process_is_seen_and_sees_us() -> None:
    service_type = unique_service_type()
    ours, theirs = b"in the test process", b"in a process of its own"
    local = MdnsDiscovery(LOOPBACK, service_type=service_type)
    send, seen = trio.open_memory_channel[bytes](16)
    process = await trio.lowlevel.open_process(
        peer_command(LOOPBACK, service_type, theirs),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        peer = LineReader(process.stdout)
        async with trio.open_nursery() as nursery:
            await nursery.start(local.run, ours, send)
            with trio.fail_after(HANG_GUARD):
                assert await peer.line() == "started"
                assert await seen.receive() == theirs
                assert bytes.fromhex(await peer.line()) == ours
            nursery.cancel_scope.cancel()
    finally:
        await stop(process)
    assert process.returncode == 0


@asynccontextmanager
async def raw_zeroconf() -> AsyncIterator[Zeroconf]:
    """A bare zeroconf on loopback, for advertising what MdnsDiscovery never would."""
    zc = await trio.to_thread.run_sync(partial(Zeroconf, interfaces=[LOOPBACK], use_asyncio=False))
    try:
        yield zc
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(zc.close)


def raw_service(
    service_type: str, label: str, properties: Mapping[bytes, bytes | None]
) -> ServiceInfo:
    return ServiceInfo(
        service_type,
        f"{label}.{service_type}",
        port=9,
        properties=dict(properties),
        server=f"{label}.local.",
        parsed_addresses=[LOOPBACK],
    )


async def test_malformed_records_are_counted_and_ignored() -> None:
    service_type = unique_service_type()
    discovery = MdnsDiscovery(LOOPBACK, service_type=service_type)
    send, seen = trio.open_memory_channel[bytes](16)
    bad = [
        {b"v": b"1", b"n": b"2", b"r0": b"only one chunk"},
        {b"v": b"2", b"n": b"1", b"r0": b"a later version"},
        {b"hello": b"world"},
    ]
    good = b"well formed"
    services = [raw_service(service_type, f"bad{i}", record) for i, record in enumerate(bad)]
    services.append(raw_service(service_type, "good", encode_txt(good)))
    with no_new_threads():
        async with raw_zeroconf() as zc, trio.open_nursery() as nursery:
            await nursery.start(discovery.run, b"listener", send)
            async with trio.open_nursery() as registering:  # ~1.6 s each, so all at once
                for info in services:
                    register = partial(zc.register_service, info)
                    registering.start_soon(trio.to_thread.run_sync, register)
            with trio.fail_after(HANG_GUARD):
                assert await seen.receive() == good
            await wait_until(lambda: discovery.malformed >= len(bad), "malformed count")
            nursery.cancel_scope.cancel()
    send.close()
    # nothing but the good record (perhaps again) ever came through
    assert {sighting async for sighting in seen} <= {good}


async def test_a_full_channel_drops_and_counts() -> None:
    service_type = unique_service_type()
    listener = MdnsDiscovery(LOOPBACK, service_type=service_type)
    speaker = MdnsDiscovery(LOOPBACK, service_type=service_type)
    send, seen = trio.open_memory_channel[bytes](0)  # nobody waits: every send_nowait fails
    other_send, _ = trio.open_memory_channel[bytes](16)
    with no_new_threads():
        async with trio.open_nursery() as nursery:
            await start_all(
                nursery,
                partial(listener.run, b"listener", send),
                partial(speaker.run, b"speaker", other_send),
            )
            await wait_until(lambda: listener.dropped >= 1, "a dropped sighting")
            with pytest.raises(LocalProtocolError):
                await listener.run(b"again", send)  # one run at a time
            nursery.cancel_scope.cancel()
    with pytest.raises(trio.WouldBlock):
        seen.receive_nowait()


async def test_cancelled_while_registering_leaves_nothing_running() -> None:
    discovery = MdnsDiscovery(LOOPBACK, service_type=unique_service_type())
    send, _ = trio.open_memory_channel[bytes](1)
    with no_new_threads():
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(0.2) as scope:
                await nursery.start(discovery.run, b"short-lived", send)
            assert scope.cancelled_caught
    # and the same object can run again afterwards
    with no_new_threads():
        async with trio.open_nursery() as nursery:
            await nursery.start(discovery.run, b"second life", send)
            nursery.cancel_scope.cancel()
