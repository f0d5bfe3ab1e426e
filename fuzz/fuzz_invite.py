"""Fuzz target: invite links (``p2pmsg://KEY@ENDPOINT,...``) into :meth:`Invite.parse`.

The input bytes are decoded as UTF-8 with ``surrogateescape``, so every input
is some text. Only an :class:`Invite` or :class:`BadInvite` may come out; a
parsed invite must format (``str()``) to a link that parses back to an equal
invite. Anything else is a bug.

Run under atheris (see fuzz/README.md)::

    python fuzz/fuzz_invite.py fuzz/corpus/invite
"""

from __future__ import annotations

from p2pmsg.endpoint import MAX_INVITE_ENDPOINTS, Endpoint, Invite
from p2pmsg.errors import BadInvite
from p2pmsg.keys import Identity, encode_key

KEY = Identity(bytes(range(32))).public.encoded()


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        invite = Invite.parse(text)
    except BadInvite:
        return
    assert isinstance(invite, Invite)
    assert len(invite.endpoints) <= MAX_INVITE_ENDPOINTS
    assert all(isinstance(e, Endpoint) for e in invite.endpoints)
    link = str(invite)
    assert Invite.parse(link) == invite, (text, link)


def seeds() -> dict[str, bytes]:
    """Seed inputs for the corpus: links that parse and their near misses."""
    return {
        "key_only": f"p2pmsg://{KEY}".encode(),
        "one_endpoint": f"p2pmsg://{KEY}@tcp:192.0.2.1:4001".encode(),
        "escaped_endpoints": (
            f"p2pmsg://{KEY}@tcp:[::1]:4001,pt:h;k=a%2Cb%25\\;,mdns:Zo%C3%AB"
        ).encode(),
        "upper_case_spaces": f"  P2PMSG://{KEY.upper()}@tcp:h:1\n".encode(),
        "wrong_scheme": f"https://{KEY}@tcp:h:1".encode(),
        "bad_base32": f"p2pmsg://{KEY[:-1]}0@tcp:h:1".encode(),
        "short_key": f"p2pmsg://{encode_key(bytes(31))}@tcp:h:1".encode(),
        "non_canonical_key": f"p2pmsg://{KEY[:-1]}b@tcp:h:1".encode(),
        "invalid_point": f"p2pmsg://{encode_key(bytes(32))}".encode(),
        "percent_not_utf8": f"p2pmsg://{KEY}@tcp:h%FF".encode(),
        "bad_endpoint": f"p2pmsg://{KEY}@TCP:h:1".encode(),
        "too_many_endpoints": f"p2pmsg://{KEY}@{','.join(['t:a'] * 17)}".encode(),
    }


if __name__ == "__main__":
    from _harness import run  # the script's own folder is first on sys.path

    run(TestOneInput, seeds)
