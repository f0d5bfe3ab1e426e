"""The home directory, its config file, and turning pasted text into a contact."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import cli
from p2pmsg.admission import Limits
from p2pmsg.contacts import MAX_NAME, check_name, contact_from_text
from p2pmsg.endpoint import Endpoint, Invite
from p2pmsg.errors import BadInvite, HomeError
from p2pmsg.home import MAX_CONFIG_BYTES, MIB, Config, Home
from p2pmsg.keys import Identity, encode_key
from p2pmsg.node import Node

ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(32, 64)))
LISTEN = (Endpoint("tcp", "0.0.0.0:4001"), Endpoint("pt", "[::]:4002", (("k", "a;b,c"),)))
CONFIG = Config(listen=LISTEN, bootstrap=("tcp:seed.example:4001",))
NOW = 1_700_000_000.0

printable = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
endpoints = st.builds(
    Endpoint,
    st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
    st.text(st.one_of(printable, st.sampled_from(" ;=\\,")), min_size=1, max_size=30),
    st.lists(
        st.tuples(st.text(printable, min_size=1, max_size=8), st.text(printable, max_size=8)),
        max_size=3,
    ).map(tuple),
)
configs = st.builds(
    Config,
    st.lists(endpoints, max_size=4).map(tuple),
    st.lists(st.text()).map(tuple),
    bridge=st.booleans(),
    publishers=st.lists(st.binary(min_size=32, max_size=32).map(encode_key), max_size=2).map(tuple),
    limits=st.none()
    | st.builds(
        Limits,
        links=st.integers(1, 10**6),
        opens_per_second=st.floats(0.001, 1e6),
        memory=st.integers(Limits().link_bytes, 2**40),
    ),
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- Home --------------------------------------------------------------------------------


def test_init_creates_an_owner_only_home(tmp_path: Path) -> None:
    home = Home(tmp_path / "deep" / "home")
    assert not home.exists()
    home.init(CONFIG, ALICE)
    assert home.exists()
    assert mode(home.path) == 0o700
    assert mode(home.key_file) == 0o600
    assert mode(home.config_file) == 0o600
    assert home.load_identity().seed() == ALICE.seed()
    assert home.load_config() == CONFIG
    assert home.control_socket == home.path / "control.sock"
    assert home.db_file == home.path / "p2pmsg.db"


def test_init_tightens_an_existing_open_directory(tmp_path: Path) -> None:
    path = tmp_path / "home"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    Home(path).init(CONFIG, ALICE)
    assert mode(path) == 0o700


def test_init_twice_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(CONFIG, ALICE)
    with pytest.raises(HomeError, match="already holds a node"):
        home.init(Config(), BOB)
    assert home.load_identity().seed() == ALICE.seed()
    assert home.load_config() == CONFIG


def test_init_where_a_file_is_in_the_way(tmp_path: Path) -> None:
    path = tmp_path / "home"
    path.write_text("not a directory")
    # (the message wrongly says "already holds a node": mkdir raises FileExistsError)
    with pytest.raises(HomeError):
        Home(path).init(CONFIG, ALICE)
    assert path.read_text() == "not a directory"


def test_load_identity_without_a_home(tmp_path: Path) -> None:
    with pytest.raises(HomeError, match="p2pmsg init"):
        Home(tmp_path / "nothing").load_identity()


def test_a_key_others_can_read_is_a_home_error(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(CONFIG, ALICE)
    home.key_file.chmod(0o644)
    with pytest.raises(HomeError, match="chmod 600"):
        home.load_identity()


def test_invite_carries_the_listen_endpoints(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(CONFIG, ALICE)
    invite = home.invite()
    assert invite == Invite(ALICE.public, LISTEN)
    assert Invite.parse(str(invite)) == invite


def test_a_saved_config_replaces_the_old_one_owner_only(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(CONFIG, ALICE)
    moved = Config(listen=(Endpoint.parse("sim:elsewhere"),))
    home.save_config(moved)
    assert home.load_config() == moved
    assert stat.S_IMODE(home.config_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in home.path.iterdir() if "config" in p.name) == ["config.json"]


# --- Config ------------------------------------------------------------------------------


@given(configs)
def test_config_json_round_trip(config: Config) -> None:
    text = config.to_json()
    assert json.loads(text)["version"] == 1
    assert Config.from_json(text) == config


def test_config_known_answer() -> None:
    assert json.loads(CONFIG.to_json()) == {
        "version": 1,
        "listen": ["tcp:0.0.0.0:4001", r"pt:[::]:4002;k=a\;b,c"],
        "bootstrap": ["tcp:seed.example:4001"],
        "mdns": None,
        "bridge": False,
        "use_bridges": [],
        "publishers": [],
    }


def test_a_config_from_before_bridges_loads_as_a_listed_node() -> None:
    old = {"version": 1, "listen": [], "bootstrap": [], "mdns": None}
    assert Config.from_json(json.dumps(old)).bridge is False
    with pytest.raises(HomeError, match="bridge"):
        Config.from_json(json.dumps({**old, "bridge": "yes"}))
    assert Config.from_json('{"listen": []}') == Config()
    assert Config.from_json('{"listen": [], "mdns": "127.0.0.1"}').mdns == "127.0.0.1"
    with pytest.raises(HomeError, match="mdns"):
        Config.from_json('{"listen": [], "mdns": 5}')


def test_a_config_that_uses_bridges_keeps_their_invites_and_refuses_a_bad_one() -> None:
    bridge = Invite(Identity.generate().public, (Endpoint.parse("tcp:192.0.2.7:443"),))
    config = Config(use_bridges=(bridge,))
    assert Config.from_json(config.to_json()) == config
    with pytest.raises(HomeError, match="use_bridges"):
        Config.from_json('{"listen": [], "use_bridges": "p2pmsg://x"}')
    with pytest.raises(HomeError, match="damaged"):
        Config.from_json('{"listen": [], "use_bridges": ["p2pmsg://not-a-key@tcp:1.2.3.4:5"]}')


def test_a_config_keeps_bridge_distribution_and_refuses_it_damaged() -> None:
    publisher = Invite(Identity.generate().public, (Endpoint.parse("tcp:192.0.2.8:443"),))
    config = Config(distribute=True, distributors=(publisher,))
    assert Config.from_json(config.to_json()) == config
    assert "distribute" not in Config().to_json()  # configs from before stay as they were
    for text in ['"distribute": 1', '"distributors": "p2pmsg://x"', '"distributors": [5]']:
        with pytest.raises(HomeError, match="distribute is true or false"):
            Config.from_json(f'{{"listen": [], {text}}}')


def test_init_sets_up_bridge_distribution_on_both_sides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publisher = Home(tmp_path / "publisher")
    assert cli.main(["--home", str(publisher.path), "init", "--distribute"]) == 0
    bridge = Invite(Identity.generate().public, (Endpoint.parse("tcp:192.0.2.9:443"),))
    offer = ["--home", str(publisher.path), "bridges", "offer", str(bridge)]
    assert cli.main(offer) == 0
    assert cli.main(offer) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "offered: handed out for 7 days",
        "already offered",
    ]
    assert cli.main(["--home", str(publisher.path), "bridges", "list", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["invite"], row["handed_out"]) == (str(bridge), True)
    asks = str(publisher.invite())
    node = tmp_path / "node"
    assert cli.main(["--home", str(node), "init", "--bridge-distributor", asks]) == 1
    assert "give a --use-bridge" in capsys.readouterr().err and not node.exists()
    argv = ["--home", str(node), "init", "--use-bridge", str(bridge), "--bridge-distributor", asks]
    assert cli.main(argv) == 0
    assert Home(node).load_config().distributors == (publisher.invite(),)
    assert cli.main(["--home", str(node), "bridges", "offer", str(bridge)]) == 1
    assert "init it with --distribute" in capsys.readouterr().err


def test_a_config_sets_the_inbound_limits_and_refuses_bad_ones() -> None:
    text = '{"listen": [], "limits": {"links": 8, "opens_per_second": 1, "memory_mib": 16}}'
    limits = Config.from_json(text).limits
    assert limits == Limits(links=8, opens_per_second=1.0, memory=16 * MIB)
    assert Config.from_json('{"listen": []}').limits is None
    for limits_json, says in [
        ('{"conns": 8}', "limits.conns is unknown"),
        ('{"links": true}', "limits.links must be a number in"),
        ('{"links": -1}', "limits.links must be a number in"),
        ('{"links": 2.5}', "limits.links must be a whole number"),
        ('{"memory_mib": Infinity}', "limits.memory_mib must be a number in"),
        ('{"memory_mib": 0.1}', "memory cap must hold at least one link"),
        ('{"memory_mib": 1e308}', r"limits.memory_mib must be a number in \(0, 2\*\*53\]"),
        ('{"opens_burst": 1' + "0" * 400 + "}", "limits.opens_burst must be a number in"),
        ("[8]", "limits is an object"),
    ]:
        with pytest.raises(HomeError, match=says):
            Config.from_json(f'{{"listen": [], "limits": {limits_json}}}')


def test_init_writes_the_limits_a_node_opens_with(tmp_path: Path) -> None:
    home = Home(tmp_path / "relay")
    argv = ["--home", str(home.path), "init", "--max-links", "8", "--max-memory", "16"]
    assert cli.main(argv) == 0
    assert home.load_config().limits == Limits(links=8, memory=16 * MIB)

    async def opened() -> tuple[Limits, dict[str, object]]:
        async with Node.open(home.path, []) as node:
            return node.admission.limits, (await node.status())["inbound"]

    limits, inbound = trio.run(opened)
    assert limits == Limits(links=8, memory=16 * MIB)
    assert (inbound["links_cap"], inbound["memory_cap"]) == (8, 16 * MIB)  # what status shows


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--max-links", "0"], "--max-links: a whole number from 1 to 2**53"),
        (["--max-links", "many"], "--max-links: a whole number from 1 to 2**53"),
        (["--max-links", str(2**53 + 1)], "--max-links: a whole number from 1 to 2**53"),
        (["--max-memory", "0.1"], "--max-memory: MiB from 0.5"),
        (["--max-memory", "nan"], "--max-memory: MiB from 0.5"),
        (["--max-memory", "1e300"], "--max-memory: MiB from 0.5"),
    ],
)
def test_bad_limits_on_init_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--home", str(tmp_path / "node"), "init", *flags])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "node").exists()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("{", id="truncated"),
        pytest.param("null", id="null"),
        pytest.param("[]", id="array"),
        pytest.param('"listen"', id="string"),
        pytest.param("7", id="number"),
        pytest.param("{}", id="no-listen"),
        pytest.param('{"bootstrap": []}', id="only-bootstrap"),
        pytest.param('{"listen": null}', id="null-listen"),
        pytest.param('{"listen": 5}', id="numeric-listen"),
        pytest.param('{"listen": [5]}', id="numeric-endpoint"),
        pytest.param('{"listen": [null]}', id="null-endpoint"),
        pytest.param('{"listen": ["tcp"]}', id="endpoint-without-colon"),
        pytest.param('{"listen": ["TCP:h:1"]}', id="bad-endpoint-name"),
        pytest.param('{"listen": ["tcp:h\\\\"]}', id="dangling-backslash"),
        pytest.param('{"listen": ["tcp:\\u0000"]}', id="nul-in-endpoint"),
        pytest.param('{"listen": ["tcp:\\ud800"]}', id="surrogate-in-endpoint"),
        pytest.param('{"listen": "tcp:h:1"}', id="listen-is-one-string"),
        pytest.param('{"listen": [], "bootstrap": 5}', id="numeric-bootstrap"),
        pytest.param('{"listen": [], "bootstrap": null}', id="null-bootstrap"),
        pytest.param('{"listen": [], "version": 1} x', id="trailing-garbage"),
        pytest.param('{"listen": [], "n": ' + "9" * 5000 + "}", id="huge-int"),
    ],
)
def test_damaged_config_is_a_home_error(text: str) -> None:
    with pytest.raises(HomeError, match="damaged"):
        Config.from_json(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            '{"listen": [["tcp:h:1"]]}',
            id="list-endpoint",
        ),
        pytest.param(
            '{"listen": [{}]}',
            id="object-endpoint",
        ),
        pytest.param(
            '{"listen": [], "bootstrap": ' + "[" * 100_000,
            id="deep-nesting",
        ),
        pytest.param(
            '{"listen": ""}',
            id="empty-string-listen",
        ),
        pytest.param(
            '{"listen": {"tcp:h:1": 0}}',
            id="object-listen",
        ),
        pytest.param(
            '{"listen": [], "bootstrap": "tcp:h:1"}',
            id="string-bootstrap",
        ),
    ],
)
def test_odd_config_shapes_are_home_errors(text: str) -> None:
    with pytest.raises(HomeError):
        Config.from_json(text)


def test_load_config_refusals(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(CONFIG, ALICE)
    home.config_file.write_bytes(b'{"listen": []}' + b" " * MAX_CONFIG_BYTES)
    with pytest.raises(HomeError, match="too large"):
        home.load_config()
    home.config_file.write_bytes(b'{"listen": ["tcp:h\xe9:1"]}')
    with pytest.raises(HomeError, match="not UTF-8"):
        home.load_config()
    home.config_file.write_bytes(b'{"listen": ')
    with pytest.raises(HomeError, match="damaged"):
        home.load_config()
    home.config_file.unlink()
    with pytest.raises(HomeError, match="cannot read"):
        home.load_config()


def test_load_config_size_cap_is_inclusive(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(CONFIG, ALICE)
    text = b'{"listen": []}'
    home.config_file.write_bytes(text + b" " * (MAX_CONFIG_BYTES - len(text)))
    assert home.load_config() == Config()


# --- contacts ----------------------------------------------------------------------------


def test_contact_from_an_invite() -> None:
    invite = Invite(BOB.public, LISTEN)
    contact = contact_from_text("bob", f"  {invite}\n", NOW)
    assert contact.name == "bob"
    assert contact.node_id == BOB.node_id
    assert contact.public_key == BOB.public.key
    assert contact.endpoints == tuple(str(e) for e in LISTEN)
    assert contact.added == NOW


def test_contact_from_an_invite_without_endpoints() -> None:
    contact = contact_from_text("bob", f"p2pmsg://{encode_key(BOB.public.key)}", NOW)
    assert contact.public_key == BOB.public.key
    assert contact.endpoints == ()


@pytest.mark.parametrize(
    "text", [BOB.node_id.hex(), BOB.node_id.hex().upper(), " \t" + BOB.node_id.hex() + "\n"]
)
def test_contact_from_a_bare_node_id(text: str) -> None:
    contact = contact_from_text("bob", text, NOW)
    assert contact.node_id == BOB.node_id
    assert contact.public_key is None
    assert contact.endpoints == ()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("hello bob", id="words"),
        pytest.param(BOB.node_id.hex()[:-1], id="63-hex"),
        pytest.param(BOB.node_id.hex() + "0", id="65-hex"),
        pytest.param(BOB.node_id.hex()[:-1] + "g", id="not-hex"),
        pytest.param(BOB.node_id.hex()[:32] + " " + BOB.node_id.hex()[32:], id="split-hex"),
        pytest.param(encode_key(BOB.public.key), id="bare-key"),
        pytest.param(f"p2pmsg://{encode_key(bytes(32))}", id="invalid-point"),
        pytest.param(f"p2pmsg://{encode_key(BOB.public.key)}@TCP:h:1", id="bad-endpoint"),
        pytest.param(f"https://{encode_key(BOB.public.key)}@tcp:h:1", id="wrong-scheme"),
    ],
)
def test_garbage_is_a_bad_invite(text: str) -> None:
    with pytest.raises(BadInvite):
        contact_from_text("bob", text, NOW)


@pytest.mark.parametrize("name", ["b", "Zoë 😀", "bob (work)", "x" * MAX_NAME])
def test_good_names(name: str) -> None:
    assert check_name(name) == name
    assert contact_from_text(name, BOB.node_id.hex(), NOW).name == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * (MAX_NAME + 1), id="too-long"),
        pytest.param(" bob", id="leading-space"),
        pytest.param("bob ", id="trailing-space"),
        pytest.param("bo\nb", id="newline"),
        pytest.param("bo\tb", id="tab"),
        pytest.param("bob\u200b", id="zero-width-space"),
        pytest.param("\x1b[31mbob", id="terminal-escape"),
        pytest.param("bob\u202e", id="bidi-override"),
    ],
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(BadInvite, match="contact names"):
        contact_from_text(name, BOB.node_id.hex(), NOW)
