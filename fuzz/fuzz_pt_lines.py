"""Fuzz target: a managed proxy's stdout into the pt-spec line parser.

The first byte picks the role (even: client, odd: server); the rest is what
the proxy printed, fed whole and byte by byte. Only events or
:class:`PtProtocolError` may come out, and both deliveries must agree.
Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_pt_lines.py fuzz/corpus/pt_lines
"""

from __future__ import annotations

from transports.pt_proto import (
    MAX_LINE,
    CMethod,
    FatalError,
    Log,
    MethodError,
    MethodsDone,
    ProxyDone,
    ProxyLineParser,
    PtProtocolError,
    Role,
    SMethod,
    Version,
)

EVENT_TYPES = (Version, FatalError, ProxyDone, CMethod, SMethod, MethodError, MethodsDone, Log)


def _run(role: Role, data: bytes, step: int) -> tuple[list[object], str | None]:
    parser = ProxyLineParser(role)
    events: list[object] = []
    try:
        for i in range(0, len(data), step):
            events += parser.receive_data(data[i : i + step])
    except PtProtocolError as exc:
        return events, str(exc)
    for event in events:
        assert isinstance(event, EVENT_TYPES)
        if isinstance(event, CMethod | SMethod):
            assert 0 < event.port <= 65535
    assert parser.done == any(isinstance(e, MethodsDone) for e in events)
    return events, None


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    if not data:
        return
    role = Role.SERVER if data[0] & 1 else Role.CLIENT
    body = data[1:]
    whole = _run(role, body, max(len(body), 1))
    bytewise = _run(role, body, 1)
    assert whole[1] == bytewise[1]  # the same error, or none
    if whole[1] is None:
        assert whole[0] == bytewise[0]


CERT = "HszPy3vWfjsESCEOo9ZBkRv6zQ/1mGHzc8arF0y2SpwFr3WhsMu8rK0zyaoyERfbz3ddFw"


def seeds() -> dict[str, bytes]:
    """What obfs4proxy 0.0.14 prints, the spec's examples, and broken neighbours."""
    client, server = b"\x00", b"\x01"
    return {
        "obfs4proxy_client": client + b"VERSION 1\nCMETHOD obfs4 socks5 127.0.0.1:33867\n"
        b"CMETHOD-ERROR foo no such transport is supported\nCMETHODS DONE\n",
        "obfs4proxy_server": server
        + b"VERSION 1\nSMETHOD obfs4 [::]:41249 ARGS:cert="
        + CERT.encode()
        + b",iat-mode=0\nSMETHODS DONE\n",
        "spec_client": client + b"VERSION 1\nPROXY DONE\nCMETHOD obfs3 socks5 127.0.0.1:32525\n"
        b"CMETHOD obfs4 socks5 127.0.0.1:37347\nCMETHODS DONE\n",
        "escaped_args": server + b"VERSION 1\nSMETHOD x 10.0.0.1:9 ARGS:a=b\\,c,d=e\\=f\n",
        "env_error": server + b"VERSION 1\nENV-ERROR no TOR_PT_SERVER_BINDADDR environment"
        b" variable\n",
        "version_error": client + b"VERSION-ERROR no-version\n",
        "proxy_error": client + b"VERSION 1\nPROXY-ERROR SOCKS 4 upstream proxies unsupported.\n",
        "log_status": client + b'VERSION 1\nLOG SEVERITY=notice MESSAGE="hi"\nSTATUS X=1\n',
        "unknown_keyword": client + b"VERSION 1\nFUTURE a b c\nCMETHODS DONE\n",
        "method_before_version": client + b"CMETHOD obfs4 socks5 127.0.0.1:1\n",
        "wrong_role": client + b"VERSION 1\nSMETHOD obfs4 127.0.0.1:1\n",
        "bad_port": client + b"VERSION 1\nCMETHOD obfs4 socks5 127.0.0.1:65536\n",
        "v6_unbracketed": server + b"VERSION 1\nSMETHOD obfs4 ::1:5\n",
        "trailing_backslash": server + b"VERSION 1\nSMETHOD obfs4 1.2.3.4:5 ARGS:a=b\\\n",
        "nul": client + b"VERSION 1\x00\n",
        "long_line": client + b"LOG " + b"x" * MAX_LINE + b"\n",
        "after_done": client + b"VERSION 1\nCMETHODS DONE\nCMETHOD a socks5 1.2.3.4:5\n",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
