"""Fuzz target: untrusted bytes into the mailbox codecs, the holder's answers and a store.

The input is what a depositor, a fetcher or an owner sends a holder, or what
a holder sends back. It goes, whole, to the clear-request decoder (a decoded
request must encode back to the input, and is then checked against the key
it names), to each mailbox body decoder (DEPOSIT, FETCH, FETCH reply, CLEAR;
each must round-trip), and to :meth:`Mailboxes.answer` for each mailbox
method, with a holder whose :class:`MailboxStore` is small and already holds
entries, so deposits hit its caps and fetches page. Only
:class:`RemoteProtocolError` may come out, and the store must stay within its
caps; anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_mailbox.py fuzz/corpus/mailbox
"""

from __future__ import annotations

import contextlib

from p2pmsg.dht import rpc
from p2pmsg.dht.mailbox import (
    MailboxStore,
    decode_clear,
    encode_clear,
    entry_id,
    mailbox_keys,
    sign_clear,
    verify_clear,
)
from p2pmsg.dht.mailboxes import Mailboxes
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.keys import Identity

OWNER = Identity(bytes(range(32)))
NOW = 1_800_000_000.0
EPOCH = 20833
KEYS = mailbox_keys(OWNER.node_id, EPOCH)
BLOBS = [bytes([i]) * 300 for i in range(4)]
MAX_ENTRIES = 6


async def _offline(*_: object) -> list[bytes]:
    raise AssertionError("the fuzz target does no I/O")


def _holder() -> Mailboxes:
    store = MailboxStore(max_per_key=MAX_ENTRIES, max_source_per_key=3, max_bytes=8192)
    for i, blob in enumerate(BLOBS):
        store.put(KEYS[i % 3], blob, int(NOW) + 3600, NOW, source=bytes([i]))
    return Mailboxes(bytes(32), _offline, _offline, wall_clock=lambda: NOW, store=store)  # type: ignore[arg-type]


def _clear(data: bytes) -> None:
    try:
        request = decode_clear(data)
    except RemoteProtocolError:
        return
    assert encode_clear(request) == data, "clear request does not round-trip"
    with contextlib.suppress(RemoteProtocolError):
        verify_clear(request, KEYS[request.index])


def _answers(data: bytes) -> None:
    holder = _holder()
    for method in (rpc.Method.FETCH, rpc.Method.CLEAR, rpc.Method.DEPOSIT):
        try:
            reply = holder.answer(method, b"fuzzer", data, NOW)
        except RemoteProtocolError:
            continue
        if method is rpc.Method.FETCH:
            blobs, _ = rpc.decode_fetch_reply(reply)
            assert set(blobs) <= set(BLOBS), "a fetch returned what nobody deposited"
        else:
            assert reply == b""
    assert len(holder.store) <= 3 * MAX_ENTRIES


def _bodies(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        blobs, more = rpc.decode_fetch_reply(data)
        assert rpc.encode_fetch_reply(blobs, more) == data, "fetch reply does not round-trip"
    with contextlib.suppress(RemoteProtocolError):
        key, after, limit = rpc.decode_fetch(data)
        assert rpc.encode_fetch(key, after, limit) == data, "fetch does not round-trip"
    with contextlib.suppress(RemoteProtocolError):
        key, expires, blob = rpc.decode_deposit(data)
        assert rpc.encode_deposit(key, expires, blob) == data, "deposit does not round-trip"


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    _clear(data)
    _bodies(data)
    _answers(data)


def seeds() -> dict[str, bytes]:
    """Seed inputs: valid bodies of every mailbox method and their near misses."""
    ids = [entry_id(b) for b in BLOBS]
    clear = encode_clear(sign_clear(OWNER, EPOCH, 1, ids[1:2]))
    clear_body = rpc.encode_clear_body(KEYS[1], decode_clear(clear))
    deposit = rpc.encode_deposit(KEYS[0], int(NOW) + 86400, b"a fresh packet" * 20)
    return {
        "clear_request": clear,
        "clear_request_flipped": clear[:-1] + bytes([clear[-1] ^ 1]),
        "clear_body": clear_body,
        "clear_body_wrong_key": KEYS[2] + clear,
        "clear_many": encode_clear(sign_clear(OWNER, EPOCH, 0, ids * 10)),
        "deposit": deposit,
        "deposit_duplicate": rpc.encode_deposit(KEYS[0], int(NOW) + 86400, BLOBS[0]),
        "deposit_expired": rpc.encode_deposit(KEYS[0], int(NOW) - 1, b"late"),
        "deposit_no_blob": deposit[:40],
        "fetch": rpc.encode_fetch(KEYS[0], None, 64),
        "fetch_after": rpc.encode_fetch(KEYS[0], ids[0], 1),
        "fetch_after_unknown": rpc.encode_fetch(KEYS[1], bytes(16), 2),
        "fetch_reply": rpc.encode_fetch_reply(BLOBS[:2], more=True),
        "fetch_reply_empty": rpc.encode_fetch_reply([], more=False),
        "empty": b"",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
