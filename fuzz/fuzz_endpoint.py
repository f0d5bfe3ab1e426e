"""Fuzz target: endpoint text (``NAME:ADDRESS;k=v``) into :meth:`Endpoint.parse`.

The input bytes are decoded as UTF-8 with ``surrogateescape``, so every input
is some text and undecodable bytes become lone surrogates (which the parser
must refuse as unprintable). Only an :class:`Endpoint` or
:class:`BadEndpoint` may come out. On success the text form is canonical:
``str()`` re-parses to an equal endpoint and formats to the same text, and
:meth:`Endpoint.host_port` gives a ``(str, port)`` or :class:`BadEndpoint`.
Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_endpoint.py fuzz/corpus/endpoint
"""

from __future__ import annotations

from p2pmsg.endpoint import MAX_ARGS, MAX_ENDPOINT_CHARS, Endpoint
from p2pmsg.errors import BadEndpoint


def _check_host_port(endpoint: Endpoint) -> None:
    for default in (None, 4001):
        try:
            host, port = endpoint.host_port(default)
        except BadEndpoint:
            continue
        assert isinstance(host, str)
        assert isinstance(port, int) and 0 <= port <= 65535, port


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        endpoint = Endpoint.parse(text)
    except BadEndpoint:
        return
    assert isinstance(endpoint, Endpoint)
    assert len(endpoint.args) <= MAX_ARGS
    canonical = str(endpoint)
    assert len(canonical) <= MAX_ENDPOINT_CHARS
    again = Endpoint.parse(canonical)
    assert again == endpoint, (text, canonical)
    assert str(again) == canonical
    _check_host_port(endpoint)


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: valid endpoints and the classic mistakes."""
    return {
        "tcp_v4": b"tcp:127.0.0.1:4001",
        "tcp_v6": b"tcp:[::1]:4001",
        "pt_escaped_args": rb"obfs4:192.0.2.1:443;cert=AbC\=\=;iat-mode=0;x=a\;b\\",
        "unknown_transport_unicode": "mdns:Zoë's laptop 😀;ring=€".encode(),
        "max_args": b"pt:a" + b";k=v" * MAX_ARGS,
        "too_many_args": b"pt:a" + b";k=v" * (MAX_ARGS + 1),
        "upper_case_name": b"TCP:h:1",
        "no_colon": b"tcp",
        "dangling_backslash": b"tcp:h;k=v\\",
        "arg_without_equals": b"tcp:h;k",
        "nul": b"tcp:h\x00",
        "not_utf8": b"tcp:h\xff\xfe",
        "bad_port": b"tcp:h:65536",
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
