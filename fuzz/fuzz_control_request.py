"""Fuzz target: one control-socket line into :func:`parse_request`.

The input is the line a local client sends to a running node. Only a
:class:`Request` or :class:`ControlError` may come out, and a request must
be one of the four operations with fields of the right types and a limit in
range; re-encoded the way the CLI sends it, it must parse to the same
request. Anything else is a bug (and, in the server, would end the node's
control task).

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_control_request.py fuzz/corpus/control_request
"""

from __future__ import annotations

from typing import Any

from p2pmsg.control import MAX_LIMIT, MAX_LINE, OPS, Request, encode, parse_request
from p2pmsg.errors import ControlError


def _as_json(request: Request) -> dict[str, Any]:
    if request.op == "send":
        return {"op": "send", "to": request.to, "text": request.text, "direct": request.direct}
    if request.op == "send_file":
        return {"op": "send_file", "to": request.to, "path": request.path, "direct": request.direct}
    if request.op == "lookup":
        return {"op": "lookup", "id": request.node_id.hex()}
    return {"op": request.op, "limit": request.limit}


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    try:
        request = parse_request(data)
    except ControlError:
        return
    assert isinstance(request, Request)
    assert request.op in OPS
    assert isinstance(request.to, str) and isinstance(request.text, str)
    assert type(request.limit) is int and 1 <= request.limit <= MAX_LIMIT
    if request.op not in ("send", "send_file"):
        assert request.to == request.text == request.path == ""
    if request.op != "send_file":
        assert request.path == ""
    line = encode(_as_json(request))
    if len(line) <= MAX_LINE:  # \u escapes can make the re-encoding longer than the input
        assert parse_request(line) == request, (data, line)


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: each operation, and the refusals around them."""
    return {
        "send": b'{"op":"send","to":"bob","text":"hi"}\n',
        "send_unicode": '{"op":"send","to":"zoë","text":"😀 \\ud83d\\ude00"}'.encode(),
        "inbox": b'{"op":"inbox","limit":20}',
        "outbox_max": b'{"op":"outbox","limit":1000}',
        "status": b'{"op":"status"}',
        "send_direct": b'{"op":"send","to":"bob","text":"hi","direct":true}',
        "send_file": b'{"op":"send_file","to":"bob","path":"/home/a/photo.jpg"}',
        "send_file_text": b'{"op":"send_file","to":"bob","text":"hi"}',
        "lookup": b'{"op":"lookup","id":"' + b"ab" * 32 + b'"}',
        "send_missing_text": b'{"op":"send","to":"bob"}',
        "limit_bool": b'{"op":"inbox","limit":true}',
        "limit_zero": b'{"op":"inbox","limit":0}',
        "limit_float": b'{"op":"inbox","limit":1e3}',
        "unknown_op": b'{"op":"delete"}',
        "array": b'["status"]',
        "not_json": b"status\n",
        "not_utf8": b'{"op":"st\xff"}',
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
