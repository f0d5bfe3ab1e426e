"""Fuzz target: a pasted bootstrap list line into :func:`p2pmsg.bootstrap.from_line`.

The input bytes are decoded as UTF-8 with ``surrogateescape``, so every input
is some text. Only a bootstrap-list :class:`Record` or
:class:`BootstrapRefused` may come out; a parsed record must print
(:func:`to_line`) as a line that parses back to an equal record. The same
bytes also go, raw, to the list's value decoder, where only
:class:`InvalidRecord` may come out and a decoded value must encode back to
exactly the input. Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_bootstrap_line.py fuzz/corpus/bootstrap_line
"""

from __future__ import annotations

from p2pmsg.bootstrap import LINE_PREFIX, BootstrapRefused, from_line, to_line
from p2pmsg.dht.records import (
    InvalidRecord,
    RecordType,
    decode_bootstrap_value,
    encode_bootstrap_value,
    make_bootstrap_record,
    make_prekey_record,
)
from p2pmsg.keys import Identity

PUBLISHER = Identity(bytes(range(32)))
INVITES = [
    f"p2pmsg://{Identity(bytes(32)).public.encoded()}@tcp:192.0.2.1:4001",
    f"p2pmsg://{Identity(bytes([1]) * 32).public.encoded()}@ws:[2001:db8::1]:443/p",
]


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        record = from_line(text)
    except BootstrapRefused:
        pass
    else:
        assert record.type is RecordType.BOOTSTRAP
        assert from_line(to_line(record)) == record
    try:
        invites = decode_bootstrap_value(data)
    except InvalidRecord:
        return
    assert encode_bootstrap_value(invites) == data


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: lines that parse and their near misses."""
    good = to_line(make_bootstrap_record(PUBLISHER, INVITES, 7, 1_900_000_000))
    other = to_line(make_prekey_record(PUBLISHER, b"bundle", 1, 1_900_000_000))
    return {
        "list": good.encode(),
        "list_with_spaces": f"  {good}\n".encode(),
        "padded": (good + "==").encode(),
        "truncated": good[:-10].encode(),
        "no_prefix": good[len(LINE_PREFIX) :].encode(),
        "not_base64": (LINE_PREFIX + "!!!!").encode(),
        "prekey_record": other.encode(),
        "value": encode_bootstrap_value(INVITES),
        "value_bad_version": b"\x02" + encode_bootstrap_value(INVITES)[1:],
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
