"""Fuzz target: a damaged ``link_replay`` table loaded at a node's start.

The input is turned into rows of the secure link's saved replay tags (see
:mod:`p2pmsg.store_link`) and a saved floor, of any type SQLite stores, with
the table's checks switched off as a damaged or hand-edited file would have
them, in a real database. ``load_link_replay`` must then return, without
raising: a floor, and at most ``capacity`` entries, each a 32-byte tag with
a finite time above the floor. Every well-formed row of a flight that could
be replayed now must stay refused (its tag in the entries, or its time
under the floor), and loading again must
return the same (the damage is repaired once). Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_link_replay_store.py fuzz/corpus/link_replay_store
"""

from __future__ import annotations

import logging
import math
import struct
import tempfile
from pathlib import Path

from p2pmsg.store import Database

NOW = 1_000_000.0
WINDOW = 86_400.0
CAPACITY = 8
MAX_ROWS = 32
_DB = Path(tempfile.mkdtemp(prefix="p2pmsg-fuzz-")) / "db.sqlite"
logging.getLogger("p2pmsg.store_link").setLevel(logging.WARNING)  # damaged rows are expected


def _value(kind: int, data: bytes) -> object:
    """A stored value of one of SQLite's types from 8 bytes of ``data``."""
    raw = data.ljust(8, b"\0")[:8]
    number = struct.unpack(">d", raw)[0]
    values = (
        raw * 4,  # a well-formed 32-byte tag
        raw[: kind % 8],  # a short blob
        raw.hex(),  # text
        int.from_bytes(raw, "big", signed=True),
        NOW + (number if math.isfinite(number) else 0.0) % (2 * WINDOW) - WINDOW,  # in the window
        None if math.isnan(number) else number,  # inf, -inf, huge
        None,
    )
    return values[kind % len(values)]


def _rows(data: bytes) -> tuple[list[tuple[object, object]], object]:
    """Rows of (tag, timestamp) and the saved floor, 18 bytes per row after a floor."""
    floor = _value(data[0] if data else 6, data[1:9])
    rows = []
    for i in range(9, min(len(data), 9 + 18 * MAX_ROWS), 18):
        chunk = data[i : i + 18].ljust(18, b"\0")
        rows.append((_value(chunk[0], chunk[1:9]), _value(chunk[9], chunk[10:18])))
    return rows, floor


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    rows, floor = _rows(data)
    _DB.unlink(missing_ok=True)
    db = Database.open(_DB)
    try:
        with db._write() as conn:  # past the store's API: damage it cannot write
            conn.execute("PRAGMA ignore_check_constraints = ON")
            for tag, timestamp in rows:
                if tag is not None and timestamp is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO link_replay (tag, timestamp) VALUES (?, ?)",
                        (tag, timestamp),
                    )
            if floor is not None:
                conn.execute("INSERT INTO link_replay_floor (singleton, floor) VALUES (1, ?)",
                             (floor,))  # fmt: skip
            conn.execute("PRAGMA ignore_check_constraints = OFF")
            stored = conn.execute("SELECT tag, timestamp FROM link_replay").fetchall()
        state = db.load_link_replay(NOW, WINDOW, CAPACITY)
        assert not math.isnan(state.floor)
        assert len(state.entries) <= CAPACITY
        for tag, timestamp in state.entries:
            assert isinstance(tag, bytes) and len(tag) == 32, tag
            assert math.isfinite(timestamp) and timestamp > state.floor
        kept = {tag for tag, _ in state.entries}
        for tag, timestamp in stored:
            if (
                isinstance(tag, bytes) and len(tag) == 32 and isinstance(timestamp, float)
                and abs(timestamp - NOW) <= WINDOW  # a flight that could be replayed now
            ):  # fmt: skip
                # forgotten only when the floor covers it: still refused
                assert tag in kept or timestamp <= state.floor, (tag, timestamp, state.floor)
        again = db.load_link_replay(NOW, WINDOW, CAPACITY)
        assert sorted(again.entries) == sorted(state.entries)
        assert again.floor == state.floor
    finally:
        db.close()


def _input(floor: tuple[int, bytes], *rows: tuple[int, bytes, int, bytes]) -> bytes:
    out = bytes([floor[0]]) + floor[1].ljust(8, b"\0")[:8]
    for tag_kind, tag, ts_kind, ts in rows:
        out += bytes([tag_kind]) + tag.ljust(8, b"\0")[:8] + bytes([ts_kind]) + ts.ljust(8, b"\0")
    return out


def seeds() -> dict[str, bytes]:
    """Seed inputs: healthy tables and each kind of damage."""
    now = struct.pack(">d", 0.0)
    good = [(0, bytes([i]) * 8, 4, struct.pack(">d", float(i))) for i in range(1, 5)]
    return {
        "empty": b"",
        "healthy": _input((6, b""), *good),
        "healthy_with_floor": _input((4, now), *good),
        "over_capacity": _input((6, b""), *[(0, bytes([i]) * 8, 4, bytes([i])) for i in range(20)]),
        "text_timestamp": _input((6, b""), (0, b"a" * 8, 2, b"x" * 8)),
        "blob_timestamp": _input((6, b""), (0, b"b" * 8, 1, b"y" * 8)),
        "text_tag": _input((6, b""), (2, b"c" * 8, 4, now)),
        "short_tag": _input((6, b""), (1, b"d" * 8, 4, now)),
        "integer_tag": _input((6, b""), (3, b"e" * 8, 4, now)),
        "infinite_timestamp": _input((6, b""), (0, b"f" * 8, 5, struct.pack(">d", math.inf))),
        "text_floor": _input((2, b"g" * 8), *good),
        "infinite_floor": _input((5, struct.pack(">d", math.inf)), *good),
        "negative_infinite_floor": _input((5, struct.pack(">d", -math.inf)), *good),
        "duplicate_tags": _input((6, b""), good[0], good[0]),
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
