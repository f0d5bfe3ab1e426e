"""The pt-spec core: managed-proxy lines, the environment, the SOCKS5 handshake."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmsg.errors import LocalProtocolError, RemoteProtocolError
from p2pmsg.pathscore import Failure, classify
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
    child_environment,
    client_environment,
    parse_address,
    parse_smethod_args,
    server_environment,
)
from transports.socks5 import (
    REPLY_MESSAGES,
    Socks5Client,
    SocksReplyError,
    SocksState,
    decode_socks_args,
    encode_socks_args,
)

CERT = "HszPy3vWfjsESCEOo9ZBkRv6zQ/1mGHzc8arF0y2SpwFr3WhsMu8rK0zyaoyERfbz3ddFw"


def feed(role: Role, text: bytes, *, bytewise: bool = False) -> list[object]:
    parser = ProxyLineParser(role)
    if not bytewise:
        return list(parser.receive_data(text))
    return [e for i in range(len(text)) for e in parser.receive_data(text[i : i + 1])]


# -- lines ---------------------------------------------------------------


CLIENT_SESSION = (
    b"VERSION 1\nPROXY DONE\nCMETHOD obfs3 socks5 127.0.0.1:32525\n"
    b"CMETHOD-ERROR foo no such transport is supported\n"
    b"CMETHOD obfs4 socks4 [::1]:37347\nLOG SEVERITY=notice MESSAGE=hi\nCMETHODS DONE\n"
)
CLIENT_EVENTS = [
    Version("1"),
    ProxyDone(),
    CMethod("obfs3", "socks5", "127.0.0.1", 32525),
    MethodError("foo", "no such transport is supported"),
    CMethod("obfs4", "socks4", "::1", 37347),
    Log("LOG", "SEVERITY=notice MESSAGE=hi"),
    MethodsDone(),
]
SERVER_SESSION = (
    b"VERSION 1\nSMETHOD obfs3 198.51.100.1:1984\n"
    b"SMETHOD obfs4 [::]:43734 ARGS:cert=" + CERT.encode() + b",iat-mode=0\n"
    b"SMETHOD-ERROR meek no cows available\nSTATUS TRANSPORT=obfs4 X=1\nSMETHODS DONE\n"
)
SERVER_EVENTS = [
    Version("1"),
    SMethod("obfs3", "198.51.100.1", 1984),
    SMethod("obfs4", "::", 43734, (("cert", CERT), ("iat-mode", "0"))),
    MethodError("meek", "no cows available"),
    Log("STATUS", "TRANSPORT=obfs4 X=1"),
    MethodsDone(),
]


@pytest.mark.parametrize("bytewise", [False, True])
def test_client_session(bytewise: bool) -> None:
    assert feed(Role.CLIENT, CLIENT_SESSION, bytewise=bytewise) == CLIENT_EVENTS


@pytest.mark.parametrize("bytewise", [False, True])
def test_server_session(bytewise: bool) -> None:
    assert feed(Role.SERVER, SERVER_SESSION, bytewise=bytewise) == SERVER_EVENTS


def test_parser_tracks_version_and_done() -> None:
    parser = ProxyLineParser(Role.CLIENT)
    parser.receive_data(b"VERSION 1\nCMETHODS DONE\nLOG after done is fine\n")
    assert (parser.version, parser.done) == ("1", True)


@pytest.mark.parametrize("keyword", ["VERSION-ERROR", "ENV-ERROR", "PROXY-ERROR"])
def test_fatal_errors_are_events_at_any_time(keyword: str) -> None:
    line = f"{keyword} no TOR_PT_SERVER_BINDADDR environment variable\n".encode()
    expected = FatalError(keyword, "no TOR_PT_SERVER_BINDADDR environment variable")
    assert feed(Role.SERVER, line) == [expected]
    assert feed(Role.SERVER, b"VERSION 1\n" + line) == [Version("1"), expected]


def test_unknown_keywords_are_ignored() -> None:
    assert feed(Role.CLIENT, b"VERSION 1\nFUTURE-THING a b\nX\nCMETHODS DONE\n") == [
        Version("1"),
        MethodsDone(),
    ]


def test_a_partial_line_waits_for_its_newline() -> None:
    parser = ProxyLineParser(Role.CLIENT)
    assert parser.receive_data(b"VERSION") == []
    assert parser.receive_data(b" 1\n") == [Version("1")]


def test_smethod_options_other_than_args_are_ignored() -> None:
    events = feed(Role.SERVER, b"VERSION 1\nSMETHOD x 10.0.0.1:5 FOO:bar ARGS:a=b\n")
    assert events[1] == SMethod("x", "10.0.0.1", 5, (("a", "b"),))


@pytest.mark.parametrize(
    ("role", "text"),
    [
        (Role.CLIENT, b"CMETHOD obfs4 socks5 127.0.0.1:1\n"),  # before VERSION
        (Role.CLIENT, b"CMETHODS DONE\n"),
        (Role.CLIENT, b"PROXY DONE\n"),
        (Role.CLIENT, b"VERSION 2\n"),
        (Role.CLIENT, b"VERSION\n"),
        (Role.CLIENT, b"VERSION 1\nVERSION 1\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHODS DONE\nCMETHOD a socks5 1.2.3.4:5\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHODS DONE\nCMETHODS DONE\n"),
        (Role.CLIENT, b"VERSION 1\nSMETHOD a 1.2.3.4:5\n"),
        (Role.CLIENT, b"VERSION 1\nSMETHOD-ERROR a no\n"),
        (Role.CLIENT, b"VERSION 1\nSMETHODS DONE\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHODS NOT-DONE\n"),
        (Role.CLIENT, b"VERSION 1\nPROXY MAYBE\n"),
        (Role.SERVER, b"VERSION 1\nPROXY DONE\n"),
        (Role.SERVER, b"VERSION 1\nCMETHOD a socks5 1.2.3.4:5\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHOD a socks6 1.2.3.4:5\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHOD a socks5\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHOD a socks5 1.2.3.4:5 extra\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHOD 4a socks5 1.2.3.4:5\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHOD-ERROR 4a no\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHOD a socks5 localhost:5\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHOD a socks5 1.2.3.4:0\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHOD a socks5 1.2.3.4:65536\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHOD a socks5 1.2.3.4:x\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHOD a socks5 1.2.3.4\n"),
        (Role.CLIENT, b"VERSION 1\nCMETHOD a socks5 ::1:5\n"),
        (Role.SERVER, b"VERSION 1\nSMETHOD a\n"),
        (Role.SERVER, b"VERSION 1\nSMETHOD a 1.2.3.4:5 ARGS:novalue\n"),
        (Role.SERVER, b"VERSION 1\nSMETHOD a 1.2.3.4:5 ARGS:=v\n"),
        (Role.SERVER, b"VERSION 1\nSMETHOD a 1.2.3.4:5 ARGS:a=b\\\n"),
        (Role.CLIENT, b"\n"),
        (Role.CLIENT, b" VERSION 1\n"),
        (Role.CLIENT, b"VER:SION 1\n"),
        (Role.CLIENT, b"VERSION 1\x00\n"),
        (Role.CLIENT, "VERSIÖN 1\n".encode()),
        (Role.CLIENT, b"LOG " + b"x" * MAX_LINE + b"\n"),
        (Role.CLIENT, b"LOG " + b"x" * MAX_LINE),
    ],
)
def test_malformed_lines(role: Role, text: bytes) -> None:
    with pytest.raises(PtProtocolError):
        feed(role, text)
    assert issubclass(PtProtocolError, RemoteProtocolError)


def test_parse_address() -> None:
    assert parse_address("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert parse_address("192.0.2.9:1") == ("192.0.2.9", 1)


def test_smethod_args_escapes() -> None:
    assert parse_smethod_args(r"a=b\,c,d=e\=f\\,g=") == (("a", "b,c"), ("d", "e=f\\"), ("g", ""))


# -- the environment -------------------------------------------------------


def test_client_environment() -> None:
    assert client_environment(["obfs4", "meek_lite"], "/s") == {
        "TOR_PT_MANAGED_TRANSPORT_VER": "1",
        "TOR_PT_STATE_LOCATION": "/s",
        "TOR_PT_EXIT_ON_STDIN_CLOSE": "1",
        "TOR_PT_CLIENT_TRANSPORTS": "obfs4,meek_lite",
    }


def test_server_environment() -> None:
    env = server_environment("obfs4", ("::1", 0), ("127.0.0.1", 9), "/s", [("k", "a:b;c=d\\")])
    assert env == {
        "TOR_PT_MANAGED_TRANSPORT_VER": "1",
        "TOR_PT_STATE_LOCATION": "/s",
        "TOR_PT_EXIT_ON_STDIN_CLOSE": "1",
        "TOR_PT_SERVER_TRANSPORTS": "obfs4",
        "TOR_PT_SERVER_BINDADDR": "obfs4-[::1]:0",
        "TOR_PT_ORPORT": "127.0.0.1:9",
        "TOR_PT_EXTENDED_SERVER_PORT": "",
        "TOR_PT_SERVER_TRANSPORT_OPTIONS": "obfs4:k=a\\:b\\;c\\=d\\\\",
    }
    assert "TOR_PT_SERVER_TRANSPORT_OPTIONS" not in server_environment(
        "obfs4", ("0.0.0.0", 1), ("127.0.0.1", 9), "/s"
    )


def test_child_environment_drops_stray_pt_variables() -> None:
    base = {"PATH": "/bin", "TOR_PT_PROXY": "socks5://evil:1", "TOR_PT_ORPORT": "x"}
    assert child_environment(base, {"TOR_PT_ORPORT": "y"}) == {"PATH": "/bin", "TOR_PT_ORPORT": "y"}


# -- SOCKS arguments -----------------------------------------------------------


def test_socks_args_known_answer() -> None:
    assert encode_socks_args([("cert", "a=b;c\\"), ("iat-mode", "0")]) == (
        b"cert=a\\=b\\;c\\\\;iat-mode=0",
        b"\x00",
    )


def test_socks_args_split_past_255_bytes() -> None:
    args = [("cert", "x" * 300)]
    username, password = encode_socks_args(args)
    assert len(username) == 255
    assert username + password == b"cert=" + b"x" * 300
    assert decode_socks_args(username, password) == tuple(args)
    assert encode_socks_args([("k", "v" * 253)])[1] == b"\x00"  # exactly 255 bytes
    assert len(encode_socks_args([("k", "v" * 254)])[1]) == 1  # 256: one byte spills over


@pytest.mark.parametrize("args", [[], [("k", "v" * 509)]])
def test_socks_args_refused(args: list[tuple[str, str]]) -> None:
    with pytest.raises(LocalProtocolError):
        encode_socks_args(args)


@pytest.mark.parametrize("raw", [b"novalue", b"a=b=c", b"a=b\\"])
def test_socks_args_malformed(raw: bytes) -> None:
    with pytest.raises(PtProtocolError):
        decode_socks_args(raw, b"\x00")


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=40)
ARGS = st.lists(st.tuples(_TEXT.filter(bool), _TEXT), min_size=1, max_size=12).filter(
    lambda a: len(";".join(f"{k}={v}" for k, v in a).encode()) <= 300
)


@given(args=ARGS)
def test_socks_args_round_trip(args: list[tuple[str, str]]) -> None:
    try:
        username, password = encode_socks_args(args)
    except LocalProtocolError:
        return  # escaping took it past 510 bytes
    assert 0 < len(username) <= 255 and 0 < len(password) <= 255
    assert decode_socks_args(username, password) == tuple(args)


# -- the SOCKS5 handshake ------------------------------------------------------


def connected_client(args: tuple[tuple[str, str], ...] = (("cert", "c"),)) -> Socks5Client:
    client = Socks5Client("127.0.0.1", 4001, args)
    client.greeting()
    client.receive_data(b"\x05\x02" if args else b"\x05\x00")
    if args:
        client.receive_data(b"\x01\x00")
    return client


def test_handshake_known_answer() -> None:
    client = Socks5Client("127.0.0.1", 4001, [("cert", "c"), ("iat-mode", "0")])
    assert client.greeting() == b"\x05\x01\x02"
    assert client.need == 2
    assert client.receive_data(b"\x05\x02") == b"\x01\x11cert=c;iat-mode=0\x01\x00"
    assert client.state is SocksState.AUTH
    assert client.receive_data(b"\x01\x00") == b"\x05\x01\x00\x01\x7f\x00\x00\x01\x0f\xa1"
    assert client.need == 4
    assert client.receive_data(b"\x05\x00\x00\x01") == b""
    assert client.need == 6
    assert client.receive_data(b"\x0a\x00\x00\x02\x00\x50") == b""
    assert client.connected and client.need == 0
    assert (client.bound, client.leftover) == (("10.0.0.2", 80), b"")


def test_handshake_without_arguments_uses_no_auth() -> None:
    client = Socks5Client("192.0.2.1", 1)
    assert client.greeting() == b"\x05\x01\x00"
    assert client.receive_data(b"\x05\x00") == b"\x05\x01\x00\x01\xc0\x00\x02\x01\x00\x01"


def test_handshake_all_at_once_keeps_the_leftover() -> None:
    client = Socks5Client("example.org", 443, [("a", "b")])
    reply = b"\x05\x02" + b"\x01\x00" + b"\x05\x00\x00\x03\x04host\x01\xbb" + b"first bytes"
    sent = client.receive_data(reply)
    assert sent == b"\x01\x03a=b\x01\x00" + b"\x05\x01\x00\x03\x0bexample.org\x01\xbb"
    assert (client.bound, client.leftover) == (("host", 443), b"first bytes")
    with pytest.raises(LocalProtocolError):
        client.receive_data(b"more")


def test_ipv6_request_and_reply() -> None:
    client = Socks5Client("2001:db8::1", 7, [("a", "b")])
    client.receive_data(b"\x05\x02")
    request = client.receive_data(b"\x01\x00")
    assert request == b"\x05\x01\x00\x04" + ipaddress.ip_address("2001:db8::1").packed + b"\x00\x07"
    client.receive_data(b"\x05\x00\x00\x04" + bytes(16) + b"\x00\x09")
    assert client.bound == ("::", 9)


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 0), ("x" * 256, 1), ("hé.org", 1)])
def test_unencodable_targets(host: str, port: int) -> None:
    with pytest.raises(LocalProtocolError):
        Socks5Client(host, port)


@pytest.mark.parametrize("code", range(1, 256))
def test_every_reply_code_is_a_clear_error(code: int) -> None:
    client = connected_client()
    assert not client.connected
    with pytest.raises(SocksReplyError) as info:
        client.receive_data(bytes([5, code, 0, 1]) + bytes(6))
    assert info.value.code == code
    assert isinstance(info.value, OSError)
    assert (
        str(info.value)
        == f"{REPLY_MESSAGES.get(code, 'an unassigned reply code')} (SOCKS reply {code})"
    )
    assert "(" in info.value.user_message()


@pytest.mark.parametrize(
    ("code", "failure"),
    [(5, Failure.RESET), (3, Failure.TIMEOUT), (4, Failure.TIMEOUT), (6, Failure.TIMEOUT),
     (1, Failure.TIMEOUT), (99, Failure.TIMEOUT)],
)  # fmt: skip
def test_a_refusal_through_the_proxy_is_scored_as_a_refusal(code: int, failure: Failure) -> None:
    """The proxy's reply carries what happened at its end: a refusal (the peer
    is down, or a censor's RST) is RESET, unreachable or expired TIMEOUT, like
    the same errors on a direct dial; the other codes say nothing (TIMEOUT)."""
    client = connected_client()
    with pytest.raises(SocksReplyError) as info:
        client.receive_data(bytes([5, code, 0, 1]) + bytes(6))
    assert classify(info.value, stage="dial") is failure


def test_reply_messages_follow_rfc_1928() -> None:
    assert REPLY_MESSAGES[5] == "connection refused"
    assert sorted(REPLY_MESSAGES) == list(range(1, 9))


@pytest.mark.parametrize(
    ("args", "reply", "error"),
    [
        ((("a", "b"),), b"\x04\x02", PtProtocolError),
        ((("a", "b"),), b"\x05\xff", SocksReplyError),
        ((("a", "b"),), b"\x05\x00", PtProtocolError),  # not what we offered
        ((), b"\x05\x02", PtProtocolError),
        ((("a", "b"),), b"\x05\x02\x05\x00", PtProtocolError),  # auth reply version
        ((("a", "b"),), b"\x05\x02\x01\x01", SocksReplyError),  # arguments refused
        ((), b"\x05\x00\x04\x00\x00\x01", PtProtocolError),
        ((), b"\x05\x00\x05\x00\x01\x01", PtProtocolError),  # reserved byte
        ((), b"\x05\x00\x05\x00\x00\x02", PtProtocolError),  # address type
        ((), b"\x05\x00\x05\x00\x00\x03\x00", PtProtocolError),  # empty name
    ],
)
def test_malformed_replies(args: tuple[tuple[str, str], ...], reply: bytes, error: type) -> None:
    client = Socks5Client("127.0.0.1", 1, args)
    with pytest.raises(error):
        client.receive_data(reply)


def _server_side(client_bytes: bytes) -> tuple[str, int, tuple[tuple[str, str], ...]]:
    """What a SOCKS5 server reads from ``client_bytes`` (greeting, auth, request)."""
    assert client_bytes[:2] == b"\x05\x01"
    method, rest = client_bytes[2], client_bytes[3:]
    args: tuple[tuple[str, str], ...] = ()
    if method == 2:
        ulen = rest[1]
        username, plen = rest[2 : 2 + ulen], rest[2 + ulen]
        password = rest[3 + ulen : 3 + ulen + plen]
        args, rest = decode_socks_args(username, password), rest[3 + ulen + plen :]
    assert rest[:3] == b"\x05\x01\x00"
    atyp, body = rest[3], rest[4:]
    if atyp == 3:
        host, body = body[1 : 1 + body[0]].decode(), body[1 + body[0] :]
    else:
        size = 4 if atyp == 1 else 16
        host, body = str(ipaddress.ip_address(body[:size])), body[size:]
    assert len(body) == 2
    return host, int.from_bytes(body, "big"), args


HOSTS = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True),
)


@given(host=HOSTS, port=st.integers(1, 65535), args=ARGS | st.just([]), split=st.integers(1, 9))
def test_handshake_round_trip(
    host: str, port: int, args: list[tuple[str, str]], split: int
) -> None:
    try:
        client = Socks5Client(host, port, args)
    except LocalProtocolError:
        return  # escaping took the arguments past 510 bytes
    proxy = (b"\x05\x02\x01\x00" if args else b"\x05\x00") + b"\x05\x00\x00\x01" + bytes(6)
    sent = bytearray(client.greeting())
    for i in range(0, len(proxy), split):
        sent += client.receive_data(proxy[i : i + split])
    assert client.connected and client.leftover == b""
    assert _server_side(bytes(sent)) == (host, port, tuple(args))
