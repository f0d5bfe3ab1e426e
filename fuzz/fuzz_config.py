"""Fuzz target: ``config.json`` text into :meth:`Config.from_json`.

The input bytes are decoded as UTF-8 with ``surrogateescape`` (``load_config``
refuses non-UTF-8 before parsing; ``from_json`` itself takes any ``str``).
Only a :class:`Config` or :class:`HomeError` may come out, and a parsed
config must survive ``to_json`` / ``from_json`` unchanged. Anything else is
a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_config.py fuzz/corpus/config
"""

from __future__ import annotations

from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import HomeError
from p2pmsg.home import Config


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        config = Config.from_json(text)
    except HomeError:
        return
    assert isinstance(config, Config)
    assert all(isinstance(e, Endpoint) for e in config.listen)
    assert all(isinstance(b, str) for b in config.bootstrap)
    assert Config.from_json(config.to_json()) == config


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: configs ``init`` writes, and damaged ones."""
    written = Config(
        listen=(Endpoint("tcp", "0.0.0.0:4001"), Endpoint("pt", "[::]:4002", (("k", "a;b"),))),
        bootstrap=("tcp:seed.example:4001",),
        publishers=("a" * 52,),
    )
    return {
        "written_by_init": written.to_json().encode(),
        "empty_listen": b'{"version": 1, "listen": [], "bootstrap": []}\n',
        "listen_only": b'{"listen": ["tcp:127.0.0.1:4001"]}',
        "missing_listen": b'{"version": 1}',
        "bad_endpoint": b'{"listen": ["TCP:h:1"]}',
        "numeric_endpoint": b'{"listen": [5]}',
        "null_bootstrap": b'{"listen": [], "bootstrap": null}',
        "array": b"[]",
        "truncated": b'{"listen": ["tcp:h:1"',
        "not_utf8": b'{"listen": ["tcp:h\xe9:1"]}',
        "bad_bridge_invite": b'{"listen": [], "use_bridges": ["p2pmsg://x@tcp:h:1"]}',
        "bridges_not_a_list": b'{"listen": [], "use_bridges": "p2pmsg://x"}',
        "bad_publisher": b'{"listen": [], "publishers": ["' + b"a" * 51 + b'"]}',
        "publishers_not_a_list": b'{"listen": [], "publishers": "a"}',
        "limits": b'{"listen": [], "limits": {"links": 8, "memory_mib": 16.5}}',
        "bad_limits": b'{"listen": [], "limits": {"links": 1e999, "memory_mib": -0.0}}',
        "distribute": b'{"listen": [], "distribute": true, "distributors": []}',
        "bad_distributors": b'{"listen": [], "distribute": 1, "distributors": ["p2pmsg://x"]}',
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
