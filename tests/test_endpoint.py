"""Endpoints and invite links: round trips, pt-spec escaping and every refusal.

The parsers are pure, so every test here is a plain function: text in, an
:class:`Endpoint` / :class:`Invite` or exactly :class:`BadEndpoint` /
:class:`BadInvite` out.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from p2pmsg.endpoint import (
    INVITE_SCHEME,
    MAX_ARGS,
    MAX_ENDPOINT_CHARS,
    MAX_INVITE_CHARS,
    MAX_INVITE_ENDPOINTS,
    Endpoint,
    Invite,
)
from p2pmsg.errors import BadEndpoint, BadInvite
from p2pmsg.keys import Identity, PublicIdentity, encode_key

ALICE = Identity(bytes(range(32))).public
ALICE_KEY = ALICE.encoded()

# Everything str.isprintable() refuses: controls, format characters,
# surrogates, private use, unassigned, and every separator but the space.
NOT_PRINTABLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")
printable_chars = st.one_of(
    st.sampled_from(" ;=\\,%:@[]/?#&+é€😀"),  # the separators of both layers
    st.characters(exclude_categories=NOT_PRINTABLE),
).filter(str.isprintable)
names = st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)
addresses = st.text(printable_chars, min_size=1, max_size=40)
args = st.tuples(
    st.text(printable_chars, min_size=1, max_size=16),
    st.text(printable_chars, max_size=16),
)
endpoints = st.builds(
    Endpoint, names, addresses, st.lists(args, max_size=6).map(tuple)
)  # at most ~600 characters escaped: far below MAX_ENDPOINT_CHARS
identities = st.binary(min_size=32, max_size=32).map(lambda seed: Identity(seed).public)


# --- Endpoint: round trips and pt-spec escaping -------------------------------------------


@settings(max_examples=300)
@given(endpoints)
@example(Endpoint("pt", "a;b=c\\", (("k;=\\", ";=\\"), ("k", ""))))
@example(Endpoint("x", "\\", (("%", ","),)))
def test_endpoint_round_trip(endpoint: Endpoint) -> None:
    text = str(endpoint)
    assert Endpoint.parse(text) == endpoint
    assert str(Endpoint.parse(text)) == text  # the text form is canonical


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:127.0.0.1:4001", Endpoint("tcp", "127.0.0.1:4001")),
        ("tcp:[::1]:4001", Endpoint("tcp", "[::1]:4001")),
        (
            r"obfs4:192.0.2.1:443;cert=AbC\=\=;iat-mode=0",
            Endpoint("obfs4", "192.0.2.1:443", (("cert", "AbC=="), ("iat-mode", "0"))),
        ),
        (
            r"pt:a\;b;shared\=secret=x\;y\\;empty=",
            Endpoint("pt", "a;b", (("shared=secret", "x;y\\"), ("empty", ""))),
        ),
        ("pt:host;k=v;k=w", Endpoint("pt", "host", (("k", "v"), ("k", "w")))),
        # an escaped ordinary character is just that character
        (r"pt:\a\b;\k=\v", Endpoint("pt", "ab", (("k", "v"),))),
        ("pt:a=b,c%20d", Endpoint("pt", "a=b,c%20d")),  # unescaped = is fine in the address
        ("mdns:Zoë's laptop 😀", Endpoint("mdns", "Zoë's laptop 😀")),
    ],
)
def test_parse_pt_spec_examples(text: str, expected: Endpoint) -> None:
    assert Endpoint.parse(text) == expected


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [
        (Endpoint("tcp", "h:1"), "tcp:h:1"),
        (Endpoint("pt", "a;b", (("k=", "v\\"),)), r"pt:a\;b;k\==v\\"),
        (Endpoint("pt", "a=b", (("k", ""), ("x", "1"))), r"pt:a\=b;k=;x=1"),
        (Endpoint("pt", "a,b%c", (("k", "1,2"),)), "pt:a,b%c;k=1,2"),
    ],
)
def test_format_escapes_exactly_the_specials(endpoint: Endpoint, text: str) -> None:
    assert str(endpoint) == text


def test_unknown_transport_names_parse() -> None:
    endpoint = Endpoint.parse("carrier_pigeon2:loft 7;ring=blue")
    assert endpoint == Endpoint("carrier_pigeon2", "loft 7", (("ring", "blue"),))


def test_arg_returns_the_first_value_or_the_default() -> None:
    endpoint = Endpoint.parse("pt:a;k=1;k=2;e=")
    assert endpoint.arg("k") == "1"
    assert endpoint.arg("e") == ""
    assert endpoint.arg("missing") is None
    assert endpoint.arg("missing", "d") == "d"


def test_limits_are_inclusive() -> None:
    longest = "tcp:" + "a" * (MAX_ENDPOINT_CHARS - 4)
    assert str(Endpoint.parse(longest)) == longest
    most_args = "pt:a" + ";k=v" * MAX_ARGS
    assert len(Endpoint.parse(most_args).args) == MAX_ARGS
    assert Endpoint.parse("a" * 32 + ":x").transport == "a" * 32


# --- Endpoint: refusals ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("tcp", id="no-colon"),
        pytest.param(":127.0.0.1:1", id="no-name"),
        pytest.param("TCP:h:1", id="upper-case-name"),
        pytest.param("1tcp:h:1", id="name-starts-with-digit"),
        pytest.param("_tcp:h:1", id="name-starts-with-underscore"),
        pytest.param("t-cp:h:1", id="dash-in-name"),
        pytest.param("tcp :h:1", id="space-in-name"),
        pytest.param("tcpé:h:1", id="non-ascii-name"),
        pytest.param("a" * 33 + ":x", id="name-too-long"),
        pytest.param("tcp:", id="empty-address"),
        pytest.param("tcp:;k=v", id="empty-address-with-args"),
        pytest.param("tcp:h\\", id="dangling-backslash-address"),
        pytest.param("tcp:h;k=v\\", id="dangling-backslash-value"),
        pytest.param("tcp:h;k\\", id="dangling-backslash-key"),
        pytest.param("tcp:h;k", id="arg-without-equals"),
        pytest.param("tcp:h;", id="empty-arg"),
        pytest.param("tcp:h;k=v;", id="trailing-semicolon"),
        pytest.param("tcp:h;k=v=w", id="two-equals"),
        pytest.param("tcp:h;=v", id="empty-key"),
        pytest.param("tcp:" + "a" * (MAX_ENDPOINT_CHARS - 3), id="too-long"),
        pytest.param("tcp:" + "=" * (MAX_ENDPOINT_CHARS - 4), id="too-long-once-escaped"),
        pytest.param("pt:a" + ";k=v" * (MAX_ARGS + 1), id="too-many-args"),
        pytest.param("tcp:h\x00", id="nul-in-address"),
        pytest.param("tcp:h\n", id="newline-in-address"),
        pytest.param("tcp:h\u200b", id="zero-width-space-in-address"),
        pytest.param("tcp:h\u00a0", id="no-break-space-in-address"),
        pytest.param("tcp:h\ud800", id="lone-surrogate-in-address"),
        pytest.param("tcp:h;k\t=v", id="tab-in-key"),
        pytest.param("tcp:h;k=\x1b[31m", id="escape-in-value"),
        pytest.param("tcp:h;k=\u2028", id="line-separator-in-value"),
    ],
)
def test_malformed_endpoints_are_refused(text: str) -> None:
    with pytest.raises(BadEndpoint):
        Endpoint.parse(text)


@pytest.mark.parametrize(
    ("transport", "address", "arguments"),
    [
        ("", "h", ()),
        ("Tcp", "h", ()),
        ("tcp", "", ()),
        ("tcp", "h\n", ()),
        ("tcp", "h", (("", "v"),)),
        ("tcp", "h", (("k", "\x00"),)),
        ("tcp", "h", (("k\x7f", "v"),)),
        ("tcp", "h", (("k", "v"),) * (MAX_ARGS + 1)),
        ("tcp", "a" * MAX_ENDPOINT_CHARS, ()),
    ],
)
def test_constructor_refuses_what_parse_refuses(
    transport: str, address: str, arguments: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(BadEndpoint):
        Endpoint(transport, address, arguments)


# --- Endpoint.host_port ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "default", "expected"),
    [
        ("127.0.0.1:4001", None, ("127.0.0.1", 4001)),
        ("[::1]:4001", None, ("::1", 4001)),
        ("[fe80::1%eth0]:65535", None, ("fe80::1%eth0", 65535)),
        ("[::1]", 4001, ("::1", 4001)),
        ("example.org", 4001, ("example.org", 4001)),
        ("example.org:", 4001, ("example.org", 4001)),
        ("example.org:0", None, ("example.org", 0)),
    ],
)
def test_host_port(address: str, default: int | None, expected: tuple[str, int]) -> None:
    assert Endpoint("tcp", address).host_port(default) == expected


@pytest.mark.parametrize(
    "address",
    ["example.org", "[::1]", "[::1]x", "[::1]x:1", "h:65536", "h:-1", "h:+1", "h:1a", ":4001"],
)
def test_host_port_refusals(address: str) -> None:
    with pytest.raises(BadEndpoint):
        Endpoint("tcp", address).host_port()


@pytest.mark.parametrize(
    "address",
    [
        pytest.param(
            "h:²",
            id="superscript-port",
        ),
        pytest.param(
            "h:٤٠٠١",
            id="arabic-indic-port",
        ),
        pytest.param(
            "[]",
            id="empty-brackets",
        ),
        pytest.param(
            ":",
            id="lone-colon",
        ),
        pytest.param(
            "::1",
            id="unbracketed-ipv6",
        ),
    ],
)
def test_host_port_refuses_odd_addresses_with_bad_endpoint(address: str) -> None:
    with pytest.raises(BadEndpoint):
        Endpoint("tcp", address).host_port(4001)


# --- Invite ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(identities, st.lists(endpoints, max_size=4).map(tuple))
def test_invite_round_trip(identity: PublicIdentity, eps: tuple[Endpoint, ...]) -> None:
    invite = Invite(identity, eps)
    text = str(invite)
    assert text.startswith(INVITE_SCHEME) and text.isascii()
    assert Invite.parse(text) == invite


def test_invite_known_answer() -> None:
    invite = Invite(ALICE, (Endpoint("tcp", "[::1]:4001"), Endpoint("pt", "h", (("k", "a,b%;"),))))
    key = "aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4a"
    assert encode_key(ALICE.key) == key
    assert str(invite) == f"p2pmsg://{key}@tcp:[::1]:4001,pt:h;k=a%2Cb%25\\;"
    assert Invite.parse(str(invite)) == invite


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"p2pmsg://{ALICE_KEY}", ()),
        (f"p2pmsg://{ALICE_KEY}@", ()),
        (f"  P2PMSG://{ALICE_KEY.upper()}@tcp:h:1\n", (Endpoint("tcp", "h:1"),)),
        (f"p2pmsg://{ALICE_KEY}@,tcp:h:1,,", (Endpoint("tcp", "h:1"),)),
        (f"p2pmsg://{ALICE_KEY}@pt:h;k=x%2Cy", (Endpoint("pt", "h", (("k", "x,y"),)),)),
        (f"p2pmsg://{ALICE_KEY}@pt:h%25zz;k=%zz", (Endpoint("pt", "h%zz", (("k", "%zz"),)),)),
        (f"p2pmsg://{ALICE_KEY}@pt:%E2%82%AC", (Endpoint("pt", "€"),)),
        (f"p2pmsg://{ALICE_KEY}@carrierpigeon:loft%207", (Endpoint("carrierpigeon", "loft 7"),)),
    ],
)
def test_invite_parse_examples(text: str, expected: tuple[Endpoint, ...]) -> None:
    assert Invite.parse(text) == Invite(ALICE, expected)


def test_invite_limits_are_inclusive() -> None:
    most = ",".join(f"tcp:h:{i}" for i in range(MAX_INVITE_ENDPOINTS))
    assert len(Invite.parse(f"p2pmsg://{ALICE_KEY}@{most}").endpoints) == MAX_INVITE_ENDPOINTS
    head = f"p2pmsg://{ALICE_KEY}@"
    filler = ",".join(["tcp:" + "a" * 1000] * 9)
    longest = (head + filler)[:MAX_INVITE_CHARS]  # the ninth endpoint is cut short
    assert len(longest) == MAX_INVITE_CHARS
    assert len(Invite.parse(longest).endpoints) == 9
    with pytest.raises(BadInvite):
        Invite.parse(longest + "a")


def _key_with_low_bits_set() -> str:
    """The last character carries one bit of key and four zero bits: set one."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return ALICE_KEY[:-1] + alphabet[alphabet.index(ALICE_KEY[-1]) | 1]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(f"https://{ALICE_KEY}@tcp:h:1", id="wrong-scheme"),
        pytest.param(f"p2pmsg:/{ALICE_KEY}@tcp:h:1", id="one-slash"),
        pytest.param(f"p2p://{ALICE_KEY}@tcp:h:1", id="other-scheme"),
        pytest.param(f"{ALICE_KEY}@tcp:h:1", id="no-scheme"),
        pytest.param("p2pmsg://@tcp:h:1", id="no-key"),
        pytest.param(f"p2pmsg://{ALICE_KEY[:-1]}0@tcp:h:1", id="bad-base32-digit"),
        pytest.param(f"p2pmsg://{ALICE_KEY[:-1]}=@tcp:h:1", id="padding-in-key"),
        pytest.param(f"p2pmsg://{ALICE_KEY[:-1]}é@tcp:h:1", id="non-ascii-key"),
        pytest.param(f"p2pmsg://{ALICE_KEY[:-1]}@tcp:h:1", id="key-51-chars"),
        pytest.param(f"p2pmsg://{ALICE_KEY}a@tcp:h:1", id="key-53-chars"),
        pytest.param(f"p2pmsg://{encode_key(bytes(31))}@tcp:h:1", id="key-31-bytes"),
        pytest.param(f"p2pmsg://{encode_key(bytes(33))}@tcp:h:1", id="key-33-bytes"),
        pytest.param(f"p2pmsg://{_key_with_low_bits_set()}@tcp:h:1", id="non-canonical-key"),
        pytest.param(f"p2pmsg://{encode_key(bytes(32))}@tcp:h:1", id="key-not-a-point"),
        pytest.param(f"p2pmsg://{ALICE_KEY}@TCP:h:1", id="bad-endpoint-name"),
        pytest.param(f"p2pmsg://{ALICE_KEY}@tcp", id="endpoint-without-colon"),
        pytest.param(f"p2pmsg://{ALICE_KEY}@tcp:h:1,tcp:h%5C", id="dangling-backslash"),
        pytest.param(f"p2pmsg://{ALICE_KEY}@tcp:h%00", id="percent-encoded-nul"),
        pytest.param(f"p2pmsg://{ALICE_KEY}@tcp:h%FF", id="percent-invalid-utf8"),
        pytest.param(f"p2pmsg://{ALICE_KEY}@tcp:h%C3%28", id="percent-bad-continuation"),
        pytest.param(f"p2pmsg://{ALICE_KEY}@tcp:h%E2%82", id="percent-truncated-utf8"),
        pytest.param(f"p2pmsg://{ALICE_KEY}@tcp:h%ED%A0%80", id="percent-encoded-surrogate"),
        pytest.param(
            f"p2pmsg://{ALICE_KEY}@" + ",".join(["tcp:h:1"] * (MAX_INVITE_ENDPOINTS + 1)),
            id="too-many-endpoints",
        ),
        pytest.param(f"p2pmsg://{ALICE_KEY}@tcp:" + "a" * MAX_INVITE_CHARS, id="too-long"),
    ],
)
def test_malformed_invites_are_refused(text: str) -> None:
    with pytest.raises(BadInvite):
        Invite.parse(text)


def test_non_canonical_key_differs_only_in_padding_bits() -> None:
    """The ``non-canonical-key`` case above really is the same key, padded badly."""
    bad = _key_with_low_bits_set()
    assert bad != ALICE_KEY
    assert base64.b32decode(bad.upper() + "====") == ALICE.key


def test_an_invite_too_long_once_formatted_is_refused_when_parsed() -> None:
    # 1,000 euro signs are 1,000 characters here and 9,000 once percent-encoded:
    # such an invite could never be shared, so parsing it refuses it.
    with pytest.raises(BadInvite, match="longer than"):
        Invite.parse(f"p2pmsg://{ALICE_KEY}@pt:" + "€" * 1000)
