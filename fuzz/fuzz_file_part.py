"""Fuzz target: one FILE_PART message body into the file part decoder.

The input is the body of a message of kind FILE_PART, as a contact (or
anyone who opened a session with us) sends it. Only a :class:`FilePart` or
``ValueError`` may come out; a decoded part must encode back to exactly the
input bytes and agree with itself (its data is the length its index and the
file's size give). Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_file_part.py fuzz/corpus/file_part
"""

from __future__ import annotations

from p2pmsg.delivery import files

FILE = bytes(range(16))


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    try:
        part = files.decode_part(data)
    except ValueError:
        return
    assert 0 <= part.index < part.count == files.part_count(part.size)
    assert part.size <= files.MAX_FILE_BYTES
    assert len(part.data) <= files.PART_DATA
    assert "/" not in part.name
    assert files.encode_part(part) == data


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: valid parts and their tampered neighbours."""
    first, last = files.split(FILE, "photo.jpg", bytes(range(256)) * 129)
    return {
        "first": first,
        "last": last,
        "empty_file": files.split(FILE, "empty", b"")[0],
        "cut": first[:-1],
        "longer": last + b"x",
        "head_only": first[:65],
        "name_not_utf8": first[:64] + b"\x02\xc3\x28" + first[76:],
        "name_with_slash": first[:65] + b"photo/jpg" + first[74:],
        "index_past_count": first[:16] + b"\x00\x00\x00\x05" + first[20:],
        "empty": b"",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
