"""Scenarios as data: the TOML schema, its loader and its errors.

A scenario file (see ``docs/scenarios.md`` for the whole schema, and
``scenarios/`` for the shipped ones) has these tables; times are numbers of
seconds or text with a unit (``"250ms"``, ``"30s"``, ``"5m"``, ``"6h"``,
``"2d"``)::

    id, title, story            what and which real event
    [run]       duration, warmup, drain, seeds
    [topology]  users, isps, country, bootstrap, cloud_prefixes, web,
                latency, border_latency, loss, late_users, alternate,
                transports, abroad, clock_skew, bad_clocks, lan, restarts,
                ip_changes, tampering, duplicate, reorder, mule
    [traffic]   pairs, every, browse_every, local, burst, outbox, volume, file_kib,
                mule_pairs, bridge_days
    [control]   kind, servers, wire, resolve, per_message, media_kib
    [[censor]]  at, every, until, action, target, scope, probability,
                propagation, min_clients, prefix, match, verdict,
                residual, residual_p, kbps, lifetime, isp, flap, latency, loss,
                sybils, prefixes, ids, addresses, victims
    [pass]      delivery, within, eventual, control_max, control_min,
                joined, join_within, lan_discovery, degraded,
                degraded_within, path_median, path_p99, residual_tries, file_rate,
                open_entries,
                unmeasured

Every error names the file, the line and the field, and nothing else is
raised: :class:`ScenarioError`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from p2pmsg.errors import P2PMsgError

ACTIONS: Final = (
    "drop", "blocklist_add", "dpi", "learn_fingerprint", "police", "reset_every", "inject_dns",
    "probe", "delay", "stale_lists", "sybils", "flood",
)  # fmt: skip
"""Censor actions this runner carries out (see docs/scenarios.md)."""
TARGETS: Final = (
    "bootstrap", "servers", "learned", "border", "flows", "victim", "random", "keys", "users",
)  # fmt: skip
MATCHES: Final = ("any", "fully_encrypted", "not_allowlisted", "sni")
CONTROLS: Final = ("fixed_servers", "bootstrap_only")
WIRES: Final = ("plain", "random", "tls")
ALTERNATES: Final = ("invite", "none")
TRANSPORTS: Final = ("sim", "ws", "obfs")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
MAX_USERS: Final = 10_000
MAX_SEEDS: Final = 1000


class ScenarioError(P2PMsgError, ValueError):
    """That scenario cannot be run."""


@dataclass(frozen=True)
class Run:
    duration: float = 6 * 3600.0
    warmup: float = 600.0
    drain: float = 1800.0
    seeds: int = 3


@dataclass(frozen=True)
class Topology:
    users: int = 30
    isps: int = 3
    country: str = "RU"
    bootstrap: int = 3
    cloud_prefixes: int = 2
    web: int = 6
    latency: float = 0.02
    border_latency: float = 0.08
    loss: float = 0.0
    """Share of packets lost; each loss costs its stream a retransmission timeout."""
    late_users: int = 0
    """Users who first start at t0, after the censor's first actions."""
    alternate: str = "invite"
    """What late users have besides the bootstrap list: a friend's invite, or none."""
    transports: tuple[str, ...] = ("sim",)
    """What every p2pmsg node listens on and dials, in order of preference."""
    abroad: int = 0
    """Users outside the censor's country (in ``DE``): their pairs cross the border."""
    clock_skew: float = 0.0
    """Each node's wall clock is off by U(-skew, +skew) seconds."""
    bad_clocks: int = 0
    """Extra users whose clocks are 36 to 48 h off either way: each must say
    so with a clear error (and no other user may)."""
    lan: bool = False
    """Each ISP's users share one LAN, where they find each other by (simulated) mDNS."""
    mule: bool = False
    """With ``lan``: one more node, carried from the first ISP's LAN to the
    second's halfway through (S11; :mod:`p2pmsg.sim.mule`)."""
    restarts: int = 0
    """Each user's node stops and starts again from its home (keys, store and
    queue kept) this many times, at times drawn uniformly over the run."""
    ip_changes: int = 0
    """Each user's node moves to a new address this many times, at times
    drawn uniformly over the run: it stops, and starts again from its home
    on a new host of the same network, so what peers know of its address is
    stale (only with the ``sim`` transport)."""
    tampering: float = 0.0
    """The share of users (at least one if any) whose relays tamper with the
    onion packets they forward (S17): hold each back, forward some twice,
    send them again after the next hop restarted (:mod:`p2pmsg.sim.tamper`)."""
    duplicate: float = 0.0
    """The share of packets a tampering relay forwards twice."""
    reorder: float = 0.0
    """A tampering relay holds each packet back U(0, ``reorder``) seconds."""


@dataclass(frozen=True)
class Traffic:
    pairs: int = 15
    every: float = 1800.0
    browse_every: float = 900.0
    local: bool = False
    """Pairs only of users on one ISP's network."""
    burst: int = 0
    """Halfway through, one user at home writes this many messages at once to
    a user abroad (S10: more than its outbox holds for one contact)."""
    outbox: int = 1000
    """Messages each node's outbox holds for one contact (a send beyond is refused)."""
    volume: int = 0
    """After each seed's run, this many messages through the component-level
    model of S17's replays (:mod:`p2pmsg.sim.replays`); 0: none."""
    bridge_days: int = 0
    """After each seed's run, this many days of S13's bridge hunt
    (:mod:`p2pmsg.sim.hunt`); 0: none."""
    mule_pairs: int = 0
    """With ``topology.mule``: users of the first LAN each with a contact on
    the second, whose messages the mule must carry."""
    file_kib: int = 0
    """A minute after t0, the first pair's first user sends the other a file
    of this size (:meth:`p2pmsg.node.Node.send_file`); it must arrive whole
    before the run ends (S9, S19). 0: none."""


@dataclass(frozen=True)
class Control:
    kind: str = "fixed_servers"
    servers: int = 3
    wire: str = "plain"
    """How the control client's connections start: plain text, random bytes
    (a fully encrypted protocol) or a TLS ClientHello naming its service."""
    resolve: bool = False
    """Look the servers up by name in cleartext DNS before each connection."""
    per_message: bool = False
    """One connection per message, never retried: counts what single
    connections lose, not what patience recovers."""
    media_kib: int = 0
    """Each control message uploads a photo of this size first (S9)."""


@dataclass(frozen=True)
class CensorRule:
    action: str
    target: str = "flows"
    at: float = 0.0
    every: float = 0.0
    until: float = float("inf")
    scope: str = "country"
    probability: float = 1.0
    propagation: float = 0.0
    min_clients: int = 3
    prefix: int = 32
    match: str = "any"
    """For ``dpi``: which flows, by their first client payloads."""
    verdict: str = "rst"
    """For ``dpi`` and ``learn_fingerprint``: reset the flow, or drop it."""
    residual: float = 0.0
    """After a flow is condemned, its (client, server, port) is blocked this long."""
    residual_p: float = 1.0
    kbps: float = 130.0
    """For ``police``: the rate each direction of a flow is held to."""
    lifetime: float = 20.0
    """For ``reset_every``: the age at which a connection is reset."""
    isp: str = ""
    """Only flows of this ISP's clients (``isp0``, ``isp1``...); all when empty."""
    flap: float = 0.0
    """Rules on flows: on for ``flap`` seconds, then off as long, and again."""
    latency: float = 0.0
    """For ``delay``: one-way latency added to every packet."""
    loss: float = 0.0
    """For ``delay``: share of packets lost, each resent after a timeout."""
    sybils: float = 10.0
    """For ``sybils``: how many per user (``victim``, ``random``), or in all
    (``keys``) (:mod:`p2pmsg.sim.sybils`)."""
    prefixes: int = 16
    """For ``sybils`` near a ``victim``: the /16 networks they come from."""
    ids: int = 1000
    """For ``flood``: the flooder's identities (:mod:`p2pmsg.sim.flood`)."""
    addresses: int = 10
    """For ``flood``: the addresses they share, each in a /24 of its own."""
    victims: int = 1
    """For ``flood``: how many users it hits (the first ones)."""


@dataclass(frozen=True)
class Pass:
    delivery: float = 0.99
    within: float = 30.0
    eventual: float = 1.0
    control_max: float = 0.05
    joined: float = 0.0
    """Share of late users that must have joined within ``join_within``."""
    join_within: float = 60.0
    control_min: float = 0.0
    """A control that delivers less than this failed differently than stated."""
    lan_discovery: float = 5.0
    """With ``topology.lan``: every user finds each LAN neighbour this soon
    after both are up."""
    degraded: float = 0.99
    """With a ``delay`` rule: the share of messages sent while it is on that
    must arrive within ``degraded_within`` (they leave ``delivery`` out)."""
    degraded_within: float = 120.0
    path_median: float = 0.0
    """With a value: the median seconds from needing a link to having one
    (every dial of users while the traffic runs; a failed dial never does)."""
    path_p99: float = 0.0
    """With a value: the same, at the 99th percentile."""
    residual_tries: int = 0
    """With a value: the most SYNs a user may send on one 3-tuple inside one
    window of a residual block (S4: retried at most once per 180 s)."""
    switches: int = 0
    """With a value: the most transport switches one user may make in any 5
    minutes on a stable network (S12: 1). A switch is a link made over
    another transport than the user's last link; the network is stable from
    the warm-up on, except for a minute after each censor event."""
    file_rate: float = 0.0
    """With a value and a ``police`` rule: the ``traffic.file_kib`` file must
    come at this share of the policed rate or faster (S9: 0.8)."""
    open_entries: float = 0.0
    """With ``traffic.bridge_days``: the share of the hunt's honest users that
    must still have a working bridge on its last day (S13: 0.9)."""
    unmeasured: tuple[str, ...] = ()
    """Pass figures of SCENARIOS.md this runner cannot measure yet: each is
    reported as a failed check that says so."""


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    story: str = ""
    run: Run = field(default_factory=Run)
    topology: Topology = field(default_factory=Topology)
    traffic: Traffic = field(default_factory=Traffic)
    control: Control = field(default_factory=Control)
    censor: tuple[CensorRule, ...] = ()
    passes: Pass = field(default_factory=Pass)
    path: str = ""


_ACTION_TARGETS: Final = {
    "drop": ("bootstrap", "servers", "border", "flows"),
    "blocklist_add": ("learned", "bootstrap", "servers"),
    "sybils": ("victim", "random", "keys"),
    "flood": ("users",),
}
_TIME_FIELDS: Final = {
    "duration", "warmup", "drain", "latency", "border_latency", "every", "browse_every",
    "at", "until", "propagation", "within", "join_within", "residual", "lifetime", "flap",
    "clock_skew", "reorder", "lan_discovery", "degraded_within", "path_median", "path_p99",
}  # fmt: skip
_TABLES: Final = {"run": Run, "topology": Topology, "traffic": Traffic, "control": Control}


class _Where:
    """Finds the line of a field in the file's text, for error messages."""

    def __init__(self, path: str, text: str) -> None:
        self.path, self.lines = path, text.splitlines()

    def line(self, table: str | None, key: str | None, index: int = 0) -> int:
        start = 0
        if table is not None:
            header = re.compile(rf"\s*\[\[?\s*{re.escape(table)}\s*\]\]?")
            hits = [i for i, line in enumerate(self.lines) if header.match(line)]
            if len(hits) > index:
                start = hits[index]
        if key is not None:
            pattern = re.compile(rf"\s*{re.escape(key)}\s*=")
            for i in range(start, len(self.lines)):
                if i > start and table is not None and self.lines[i].lstrip().startswith("["):
                    break
                if table is None and self.lines[i].lstrip().startswith("["):
                    break
                if pattern.match(self.lines[i]):
                    return i + 1
        return start + 1

    def error(
        self, table: str | None, key: str | None, message: str, index: int = 0
    ) -> ScenarioError:
        name = ".".join(p for p in (table, f"[{index}]" if table == "censor" else None, key) if p)
        name = name.replace(".[", "[")
        return ScenarioError(
            f"{self.path}:{self.line(table, key, index)}: {name or 'file'}: {message}"
        )


_RANGES: Final[dict[tuple[str, str], tuple[float, float]]] = {
    ("topology", "users"): (2, MAX_USERS),
    ("topology", "isps"): (1, MAX_USERS),
    ("topology", "bootstrap"): (1, 1000),
    ("topology", "cloud_prefixes"): (1, 200),
    ("topology", "web"): (0, 1000),
    ("traffic", "pairs"): (1, MAX_USERS * 10),
    ("traffic", "every"): (1e-3, float("inf")),
    ("traffic", "browse_every"): (1e-3, float("inf")),
    ("traffic", "burst"): (0, 100_000),
    ("traffic", "outbox"): (1, 100_000),
    ("traffic", "volume"): (0, 10_000_000),
    ("traffic", "bridge_days"): (0, 365),
    ("traffic", "file_kib"): (0, 16 * 1024),
    ("traffic", "mule_pairs"): (0, MAX_USERS),
    ("pass", "file_rate"): (0, 1),
    ("pass", "open_entries"): (0, 1),
    ("run", "seeds"): (1, MAX_SEEDS),
    ("run", "duration"): (1e-3, float("inf")),
    ("control", "servers"): (1, 1000),
    ("censor", "probability"): (0, 1),
    ("censor", "residual_p"): (0, 1),
    ("censor", "kbps"): (1, 1e7),
    ("censor", "lifetime"): (0.1, float("inf")),
    ("censor", "latency"): (0, 3600),
    ("censor", "loss"): (0, 0.9),
    ("pass", "degraded"): (0, 1),
    ("topology", "loss"): (0, 0.9),
    ("topology", "abroad"): (0, MAX_USERS),
    ("topology", "bad_clocks"): (0, 250),
    ("topology", "restarts"): (0, 100),
    ("topology", "ip_changes"): (0, 100),
    ("topology", "tampering"): (0, 1),
    ("topology", "duplicate"): (0, 1),
    ("topology", "reorder"): (0, 3600),
    ("control", "media_kib"): (0, 16 * 1024),
    ("pass", "control_min"): (0, 1),
    ("censor", "prefix"): (8, 32),
    ("censor", "sybils"): (0.01, 100),
    ("censor", "prefixes"): (1, 250),
    ("censor", "ids"): (1, 100_000),
    ("censor", "addresses"): (1, 250),
    ("censor", "victims"): (1, MAX_USERS),
    ("censor", "min_clients"): (1, MAX_USERS),
    ("pass", "delivery"): (0, 1),
    ("pass", "eventual"): (0, 1),
    ("pass", "control_max"): (0, 1),
    ("pass", "joined"): (0, 1),
    ("topology", "late_users"): (0, MAX_USERS),
    ("pass", "residual_tries"): (0, 100),
}
_CHOICES: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("control", "kind"): CONTROLS,
    ("control", "wire"): WIRES,
    ("topology", "alternate"): ALTERNATES,
    ("topology", "transports"): TRANSPORTS,
    ("censor", "action"): ACTIONS,
    ("censor", "target"): TARGETS,
    ("censor", "scope"): ("country", "border", "wan"),
    ("censor", "match"): MATCHES,
    ("censor", "verdict"): ("rst", "drop"),
}


def parse_time(value: object) -> float:
    """Seconds from a number or ``"30s"``-style text. Raises ``ValueError``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        seconds = float(m[1]) * _UNITS[m[2]]
    else:
        raise ValueError(f"{value!r} is not a time (seconds, or like '30s', '5m', '6h')")
    if not 0 <= seconds < float("inf"):
        raise ValueError("a time is zero or more")
    return seconds


def _value(table: str, key: str, value: object, default: object) -> object:
    """``value`` checked against the field's type, range and choices. Raises ``ValueError``."""
    if key in _TIME_FIELDS:
        value = parse_time(value)
    elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of text")
        value = tuple(value)
    elif type(value) is not type(default):
        raise ValueError(f"expected {type(default).__name__}, got {type(value).__name__}")
    low, high = _RANGES.get((table, key), (-float("inf"), float("inf")))
    if isinstance(value, int | float) and not low <= value <= high:
        raise ValueError(f"{value!r} is out of range: {low:g} to {high:g}")
    choices = _CHOICES.get((table, key))
    for one in value if isinstance(value, tuple) else (value,):
        if choices is not None and one not in choices:
            raise ValueError(f"{one!r} is not one this runner has: {', '.join(choices)}")
    return value


def _build(where: _Where, table: str, cls: type, data: object, index: int = 0) -> Any:
    if not isinstance(data, dict):
        raise where.error(table, None, "must be a table", index)
    known = {f.name: f for f in fields(cls)}
    values: dict[str, object] = {}
    for key, value in data.items():
        if key not in known:
            raise where.error(table, key, f"unknown field (known: {', '.join(known)})", index)
        default = known[key].default
        try:
            values[key] = _value(table, key, value, "" if default is MISSING else default)
        except ValueError as exc:
            raise where.error(table, key, str(exc), index) from None
    missing = [n for n, f in known.items() if n not in values and f.default is MISSING]
    if missing:
        raise where.error(table, None, f"missing {', '.join(missing)}", index)
    return cls(**values)


def _check(where: _Where, s: Scenario) -> None:
    """What one field's range cannot say."""
    if s.topology.isps > s.topology.users:
        raise where.error("topology", "isps", "at most one per user")
    users = s.topology.users + s.topology.abroad
    if s.traffic.pairs > users * (users - 1) // 2:
        raise where.error("traffic", "pairs", "at most one per two users")
    if s.traffic.local and s.traffic.pairs > local_pairs(s.topology):
        raise where.error("traffic", "pairs", "at most one per two users of one ISP")
    t = s.topology
    needs = (
        (s.traffic.burst and not t.abroad, "traffic", "burst",
         "needs users abroad ([topology] abroad)"),
        (t.mule and not (t.lan and t.isps >= 2), "topology", "mule",
         "needs lan = true and two ISPs at least"),
        (s.traffic.mule_pairs and not t.mule, "traffic", "mule_pairs",
         "needs a mule ([topology] mule)"),
        (s.control.kind == "bootstrap_only" and not t.late_users, "control", "kind",
         "bootstrap_only needs late_users in [topology]"),
    )  # fmt: skip
    for broken, table, key, why in needs:
        if broken:
            raise where.error(table, key, why)
    if not s.topology.transports:
        raise where.error("topology", "transports", "at least one")
    if len(set(s.topology.transports)) < len(s.topology.transports):
        raise where.error("topology", "transports", "each at most once")
    if s.topology.ip_changes and s.topology.transports != ("sim",):
        raise where.error("topology", "ip_changes", 'only with transports = ["sim"]')
    if s.passes.control_min > s.passes.control_max:
        raise where.error("pass", "control_min", "above control_max")
    for i, rule in enumerate(s.censor):
        targets = _ACTION_TARGETS.get(rule.action, ("flows",))
        if rule.target not in targets:
            wanted = ", ".join(targets)
            raise where.error("censor", "target", f"{rule.action} takes: {wanted}", i)
        if rule.isp and rule.isp not in {f"isp{j}" for j in range(s.topology.isps)}:
            last = f"isp{s.topology.isps - 1}"
            raise where.error("censor", "isp", f"{rule.isp!r} is not one of isp0..{last}", i)


def local_pairs(topology: Topology) -> int:
    """How many pairs of users share an ISP (users are dealt to ISPs in turn)."""
    users, isps = topology.users, topology.isps
    sizes = [users // isps + (j < users % isps) for j in range(isps)]
    return sum(n * (n - 1) // 2 for n in sizes)


def loads(text: str, path: str = "<scenario>") -> Scenario:
    """Parse a scenario. Raises :class:`ScenarioError`."""
    where = _Where(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    top = {f.name for f in fields(Scenario)} - {"passes", "path", "censor", *_TABLES}
    for key, value in data.items():
        if key in top and not isinstance(value, str):
            raise where.error(None, key, "must be text")
        if key not in top | {"pass", "censor", *_TABLES}:
            raise where.error(None, key, "unknown field")
    for key in ("id", "title"):
        if key not in data:
            raise ScenarioError(f"{path}:1: {key}: missing (every scenario has an id and a title)")
    tables = {name: _build(where, name, cls, data.get(name, {})) for name, cls in _TABLES.items()}
    rules = data.get("censor", [])
    if not isinstance(rules, list):
        raise where.error(None, "censor", "must be an array of tables: [[censor]]")
    censor = tuple(_build(where, "censor", CensorRule, r, i) for i, r in enumerate(rules))
    scenario = Scenario(
        id=data["id"], title=data["title"], story=data.get("story", ""), censor=censor,
        passes=_build(where, "pass", Pass, data.get("pass", {})), path=path, **tables,
    )  # fmt: skip
    _check(where, scenario)
    return scenario


def load(path: str | Path) -> Scenario:
    """Read and parse a scenario file. Raises :class:`ScenarioError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    return loads(text, str(path))
