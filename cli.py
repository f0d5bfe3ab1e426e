"""The ``p2pmsg`` command: the only place that picks concrete transports.

Every subcommand is one small function; every error a person can cause ends
in one line on stderr and a non-zero exit, never a traceback. Quick local
commands (``init``, ``invite``, ``contacts``) work on the home directly;
``send``, ``inbox``, ``outbox`` and ``status`` ask the running node over its
control socket.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import platformdirs
import trio

from p2pmsg import bootstrap, control
from p2pmsg.abc import Transport
from p2pmsg.admission import Limits
from p2pmsg.bridges import Supply
from p2pmsg.contacts import contact_from_text
from p2pmsg.delivery import files
from p2pmsg.dht import records
from p2pmsg.distributor import FRESH_FOR
from p2pmsg.endpoint import Endpoint, Invite
from p2pmsg.errors import (
    BadEndpoint,
    BadInvite,
    FileUnusable,
    HomeError,
    NoSuchFile,
    NotFound,
    P2PMsgError,
)
from p2pmsg.home import MAX_LIMIT, MIB, Config, Home
from p2pmsg.keys import Identity, decode_key, encode_key
from p2pmsg.node import Node
from p2pmsg.ports import free_listen_port
from p2pmsg.sim.scenario import parse_time
from p2pmsg.store import Database, Store
from transports.obfs import ObfsTransport, load_or_create_key
from transports.pt import PtTransport
from transports.tcp import TcpTransport
from transports.tls import TlsTransport
from transports.tls_certs import encode_pin, load_or_create
from transports.ws import WsTransport

log = logging.getLogger("p2pmsg")
T = TypeVar("T")
Command = Callable[[argparse.Namespace], int]


def production_transports(home: Home) -> list[Transport]:
    """tcp, ws, tls and obfs always; obfs4 through Debian's obfs4proxy when it is installed."""
    found: list[Transport] = [
        TcpTransport(),
        WsTransport(),
        TlsTransport(cert_dir=home.path / "tls"),
        ObfsTransport(state_dir=home.path / "obfs"),
    ]
    if shutil.which("obfs4proxy"):
        found.append(PtTransport(state_dir=home.path / "pt"))
    return found


def _listen_endpoint(text: str) -> Endpoint:
    """``--listen`` text: ``obfs4:HOST:PORT`` is our ``pt`` transport driving obfs4proxy."""
    if text.startswith("obfs4:"):
        text = "pt:" + text
    return _resolve_port_zero(Endpoint.parse(text))


async def _with_obfs4_certs(home: Home, listen: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """Start obfs4proxy once on each obfs4 endpoint to learn the bridge cert
    (made and kept in HOME/pt) that invites must carry."""
    out = []
    for endpoint in listen:
        if endpoint.transport != PtTransport.name:
            out.append(endpoint)
            continue
        transport = PtTransport(state_dir=home.path / "pt")
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(transport.serve, endpoint, _refuse)
            nursery.cancel_scope.cancel()
        out.append(Endpoint(endpoint.transport, endpoint.address, bound.args))
    return tuple(out)


def _with_key_args(home: Home, endpoint: Endpoint) -> Endpoint:
    """A tls endpoint with the pin of the node's certificate, an obfs endpoint
    with the node's obfs server key (each made now, kept in HOME/tls or
    HOME/obfs): invites must carry them, as an obfs4 bridge line does its cert."""
    if endpoint.transport == TlsTransport.name:
        home.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert = load_or_create(home.path / "tls", now=time.time(), rng=os.urandom)
        name, value = "pin", encode_pin(cert.pin)
    elif endpoint.transport == ObfsTransport.name:
        home.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        name, value = (
            "key",
            encode_key(load_or_create_key(home.path / "obfs", rng=os.urandom).public),
        )
    else:
        return endpoint
    args = tuple((k, v) for k, v in endpoint.args if k != name)
    return Endpoint(endpoint.transport, endpoint.address, (*args, (name, value)))


async def _refuse(link: Any) -> None:
    await link.aclose()


def run_trio(fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """``trio.run``, with a lone p2pmsg error lifted out of its exception groups
    so that the person sees one line, not a traceback."""
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], P2PMsgError):
            raise leaves[0] from group
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _out(line: str) -> None:
    print(line, flush=True)


def _resolve_port_zero(endpoint: Endpoint) -> Endpoint:
    """Pick a free port now for ``tcp:HOST:0`` or ``ws:HOST:0/PATH`` so that
    invites stay valid across restarts (:mod:`p2pmsg.ports`)."""
    address, slash, path = endpoint.address.partition("/")
    method = ""
    if endpoint.transport == PtTransport.name:
        method, _, address = address.partition(":")
        method += ":"
    elif endpoint.transport not in {"tcp", "ws", "tls", "obfs"}:
        return endpoint
    host, port = Endpoint(endpoint.transport, address).host_port()
    if port:
        return endpoint
    try:
        port = free_listen_port(host)
    except OSError as exc:
        raise BadEndpoint(f"cannot bind {host}: {exc.strerror}") from exc
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Endpoint(endpoint.transport, method + address + slash + path, endpoint.args)


def home_of(args: argparse.Namespace) -> Home:
    if args.home:
        return Home(Path(args.home))
    env = os.environ.get("P2PMSG_HOME")
    return Home(Path(env) if env else Path(platformdirs.user_data_dir("p2pmsg")))


def cmd_init(args: argparse.Namespace) -> int:
    home = home_of(args)
    listen = tuple(_listen_endpoint(text) for text in args.listen)
    if args.mdns is not None:
        try:
            ipaddress.ip_address(args.mdns)
        except ValueError as exc:
            raise BadEndpoint(f"--mdns takes an interface's IP address, not {args.mdns!r}") from exc
    if args.bridge and (not listen or args.mdns is not None):
        raise BadEndpoint("a bridge needs --listen (its invite is how it is found) and no --mdns")
    use_bridges = tuple(Invite.parse(text) for text in args.use_bridge)
    if args.bridge and use_bridges:
        raise BadEndpoint("a bridge reaches the network itself: --bridge and --use-bridge conflict")
    distributors = tuple(Invite.parse(text) for text in args.bridge_distributor)
    if distributors and not use_bridges:
        raise BadEndpoint("--bridge-distributor is asked through a bridge: give a --use-bridge")
    if home.exists():
        raise HomeError(f"{home.path} already holds a node")
    if any(e.transport == PtTransport.name for e in listen):
        home.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        listen = run_trio(_with_obfs4_certs, home, listen)
    listen = tuple(_with_key_args(home, e) for e in listen)
    limits = None
    if args.max_links or args.max_memory:
        default = Limits()
        limits = Limits(
            links=args.max_links or default.links, memory=args.max_memory or default.memory
        )
    config = Config(
        listen=listen,
        bootstrap=tuple(args.bootstrap),
        mdns=args.mdns,
        bridge=args.bridge,
        use_bridges=use_bridges,
        publishers=tuple(encode_key(decode_key(key.strip().lower())) for key in args.publisher),
        limits=limits,
        distribute=args.distribute,
        distributors=distributors,
    )
    home.init(config, Identity.generate())
    with Database.open(home.db_file) as db:
        identity = home.load_identity()
        db.set_identity(identity.public.key, time.time())
    _out(str(home.invite()))
    print(f"created node {identity.node_id.hex()} in {home.path}", file=sys.stderr)
    return 0


def cmd_invite(args: argparse.Namespace) -> int:
    invite = home_of(args).invite()
    _out(str(invite))
    if not invite.endpoints:
        print("note: this node listens nowhere; init it with --listen", file=sys.stderr)
    if args.qr:
        import segno  # noqa: PLC0415 - only this command needs it

        segno.make(str(invite), error="l").terminal(out=sys.stdout, compact=True)
    return 0


def cmd_bootstrap_sign(args: argparse.Namespace) -> int:
    """Sign a bootstrap list of ``args.invites`` with this node's key, as its publisher."""
    home = home_of(args)
    identity = home.load_identity()
    try:
        invites = [str(Invite.parse(text)) for text in args.invites]
        now = time.time()
        record = records.make_bootstrap_record(
            identity, invites, seq=int(now * 1000), expires=int(now + args.days * records.DAY)
        )
    except ValueError as exc:
        raise BadInvite(str(exc)) from exc
    _out(bootstrap.to_line(record))
    print(
        f"signed by publisher {identity.public.encoded()}; users trust it with "
        "`p2pmsg init --publisher KEY`",
        file=sys.stderr,
    )
    return 0


def cmd_bootstrap_import(args: argparse.Namespace) -> int:
    """Take a signed bootstrap list, pasted or in a file; refused ones say why."""
    home = home_of(args)
    home.load_identity()
    config = home.load_config()
    text = args.list
    if not text.startswith(bootstrap.LINE_PREFIX):
        try:
            with open(text, encoding="utf-8") as fh:
                text = fh.read(bootstrap.MAX_LINE_CHARS + 2)
        except (OSError, UnicodeDecodeError) as exc:
            raise HomeError(f"neither a bootstrap list nor a readable file: {text}") from exc
    record = bootstrap.from_line(text)

    async def take() -> bool:
        store = await Store.open(home.db_file)
        try:
            lists = bootstrap.BootstrapLists(store, config.publisher_keys(), time.time)
            return await lists.accept(record)
        finally:
            await store.close()

    newer = run_trio(take)
    _out(f"bootstrap list number {record.seq}: " + ("taken" if newer else "already held"))
    return 0


def cmd_bridges_offer(args: argparse.Namespace) -> int:
    """Hand a bridge's invite out from this (distributing) node for 7 days."""
    home = home_of(args)
    home.load_identity()
    if not home.load_config().distribute:
        raise HomeError(f"{home.path} does not hand out bridges: init it with --distribute")
    invite = Invite.parse(args.link)

    async def offer() -> bool:
        store = await Store.open(home.db_file)
        try:
            return await Supply(store, time.time, os.urandom).offer(invite)
        finally:
            await store.close()

    new = run_trio(offer)
    _out("offered: handed out for 7 days" if new else "already offered")
    return 0


def cmd_bridges_list(args: argparse.Namespace) -> int:
    """The bridges offered to this node: how old, and whether still handed out."""
    home = home_of(args)
    home.load_identity()

    async def offers() -> list[tuple[str, float]]:
        store = await Store.open(home.db_file)
        try:
            return await Supply(store, time.time, os.urandom).offers()
        finally:
            await store.close()

    now = time.time()
    for invite, offered in run_trio(offers):
        age = (now - offered) / 86_400
        out = age < FRESH_FOR / 86_400
        if args.json:
            _out(json.dumps({"invite": invite, "offered": offered, "handed_out": out}))
        else:
            _out(f"{age:.1f} days\t{'handed out' if out else 'retired'}\t{invite}")
    return 0


def cmd_contacts_add(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.load_identity()
    contact = contact_from_text(args.name, args.link, time.time())
    with Database.open(home.db_file) as db:
        db.add_contact(contact)
    _out(f"added {contact.name} ({contact.node_id.hex()[:16]})")
    return 0


def cmd_contacts_list(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.load_identity()
    with Database.open(home.db_file) as db:
        contacts = db.list_contacts()
    for c in contacts:
        if args.json:
            row = {
                "name": c.name,
                "node_id": c.node_id.hex(),
                "endpoints": list(c.endpoints),
                "added": c.added,
            }
            _out(json.dumps(row))
        else:
            _out(f"{c.name}\t{c.node_id.hex()}\t{' '.join(c.endpoints)}")
    return 0


async def _run_node(home: Home) -> None:
    listener = await control.bind_control(home.control_socket)
    transports = production_transports(home)
    try:
        async with trio.open_nursery() as proxies:  # pt client proxies live here
            for transport in transports:
                if isinstance(transport, PtTransport):
                    await proxies.start(transport.run)
            await _serve_node(home, transports, listener)
            proxies.cancel_scope.cancel()
    finally:
        await listener.aclose()
        home.control_socket.unlink(missing_ok=True)


async def _serve_node(
    home: Home, transports: list[Transport], listener: trio.SocketListener
) -> None:
    async with (
        Node.open(home.path, transports) as node,
        trio.open_nursery() as nursery,
    ):
        handler = control.node_handler(node)
        await nursery.start(control.serve_control, listener, home.control_socket, handler)
        log.info("node %s running; stop with Ctrl-C", node.identity.node_id.hex()[:16])
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("stopping on %s", signal.Signals(signum).name)
                break
        nursery.cancel_scope.cancel()


def cmd_run(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.load_identity()
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_trio(_run_node, home)
    return 0


def _ask(
    home: Home, request: dict[str, Any], *, timeout: float = control.TIMEOUT
) -> dict[str, Any]:
    home.load_identity()
    return run_trio(partial(control.call, timeout=timeout), home.control_socket, request)


def cmd_send(args: argparse.Namespace) -> int:
    request = {"op": "send", "to": args.name, "text": args.text, "direct": args.direct}
    reply = _ask(home_of(args), request)
    _out(reply["id"])
    return 0


def cmd_send_file(args: argparse.Namespace) -> int:
    path = Path(args.path).resolve()
    if not path.is_file():
        raise FileUnusable(f"{args.path}: not a file")
    request = {"op": "send_file", "to": args.name, "path": str(path), "direct": args.direct}
    reply = _ask(home_of(args), request)
    _out(reply["id"])
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    """Write a received file into a directory, under a name nothing there has."""
    home = home_of(args)
    home.load_identity()
    try:
        file_id = bytes.fromhex(args.id)
    except ValueError:
        raise NoSuchFile(f"{args.id!r}: an id is 32 hex digits") from None
    with Database.open(home.db_file) as db:
        found = db.get_file(file_id)
    if found is None:
        raise NoSuchFile(args.id)
    name, data = files.decode_file(found.body)
    target = _free_name(Path(args.dir), name)
    try:
        with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
    except OSError as exc:
        raise FileUnusable(f"{target}: {exc.strerror}") from None
    _out(str(target))
    return 0


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name (2)``, ``name (3)``... if it is taken."""
    stem, dot, ext = name.partition(".") if not name.startswith(".") else (name, "", "")
    target, n = folder / name, 1
    while target.exists():
        n += 1
        target = folder / f"{stem} ({n}){dot}{ext}"
    return target


def _list(args: argparse.Namespace, op: str) -> int:
    reply = _ask(home_of(args), {"op": op, "limit": args.limit})
    for item in reply["items"]:
        if args.json:
            _out(json.dumps(item))
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["time"]))
            _out(f"{stamp}  {item['state']:<9}  {item['peer']}: {item['text']}")
    return 0


def cmd_inbox(args: argparse.Namespace) -> int:
    return _list(args, "inbox")


def cmd_outbox(args: argparse.Namespace) -> int:
    return _list(args, "outbox")


def cmd_status(args: argparse.Namespace) -> int:
    reply = _ask(home_of(args), {"op": "status"})
    reply.pop("ok", None)
    if args.json:
        _out(json.dumps(reply))
    else:
        for key, value in reply.items():
            _out(f"{key}: {_clock_text(value) if key == 'clock' else value}")
    return 0


def _clock_text(clock: dict[str, Any]) -> str:
    """The status's clock check in words: the error or warning, else how far off."""
    if clock["error"] or clock["warning"]:
        return f"{'ERROR' if clock['error'] else 'warning'}: {clock['error'] or clock['warning']}"
    if clock["offset"] is None:
        return f"not checked yet ({clock['peers']} peers heard)"
    return f"ok (peers' clocks {clock['offset']:+.1f} s from ours, median of {clock['peers']})"


def cmd_peers(args: argparse.Namespace) -> int:
    reply = _ask(home_of(args), {"op": "peers", "limit": args.limit})
    for item in reply["items"]:
        _out(json.dumps(item) if args.json else f"{item['node_id']}\t{' '.join(item['endpoints'])}")
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[0-9a-f]{64}", args.node_id.lower()):
        raise NotFound(f"{args.node_id!r} is not a node id of 64 hex digits")
    reply = _ask(home_of(args), {"op": "lookup", "id": args.node_id.lower()}, timeout=120.0)
    reply.pop("ok", None)
    _out(json.dumps(reply) if args.json else f"{reply['node_id']}\t{' '.join(reply['endpoints'])}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from p2pmsg.demo import run_demo  # noqa: PLC0415 - the lab's plotting: not for a node

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    ok = run_demo(_out, Path(args.out))
    return 0 if ok else 1


def cmd_sim_list(args: argparse.Namespace) -> int:
    from p2pmsg.sim import lab  # noqa: PLC0415 - the lab's plotting: not for a node

    return lab.list_scenarios(_out)


def _sim_time(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_sim_run(args: argparse.Namespace) -> int:
    from p2pmsg.sim import lab  # noqa: PLC0415 - the lab's plotting: not for a node
    from transports import simstack  # noqa: PLC0415

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    return lab.run(
        args.scenario,
        seeds=args.seeds,
        nodes=args.nodes,
        duration=args.duration,
        wrappers=simstack.WRAPPERS,
        out_dir=Path(args.out),
        as_json=args.json,
        out=_out,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_LIMIT:
        raise argparse.ArgumentTypeError("a whole number from 1 to 2**53")
    return count


def _memory(text: str) -> int:
    """MiB -> bytes; at least one link's buffers."""
    least = Limits().link_bytes / MIB
    try:
        mib = float(text)
    except ValueError:
        mib = math.nan
    if not least <= mib <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"MiB from {least:g} (one link's buffers) to 2**53")
    return int(mib * MIB)


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not 0 < days <= records.BOOTSTRAP_MAX_TTL / records.DAY:
        raise argparse.ArgumentTypeError("more than 0 and at most 30 days")
    return days


def _add_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", action="append", default=[], metavar="ENDPOINT")
    p.add_argument("--bootstrap", action="append", default=[], metavar="LINK")
    p.add_argument(
        "--mdns", metavar="IP", help="find peers on the LAN of the interface with this address"
    )
    p.add_argument(
        "--bridge",
        action="store_true",
        help="run unlisted: never published in the DHT, reachable only through its invite",
    )
    p.add_argument(
        "--use-bridge",
        action="append",
        default=[],
        metavar="LINK",
        help="reach every peer through this bridge's invite (repeat for more bridges)",
    )
    p.add_argument(
        "--publisher",
        action="append",
        default=[],
        metavar="KEY",
        help="take signed bootstrap lists from this publisher (repeat for more)",
    )
    p.add_argument(
        "--bridge-distributor",
        action="append",
        default=[],
        metavar="LINK",
        help="ask this node for more bridges when fewer than 3 work (repeat for more)",
    )
    p.add_argument(
        "--distribute",
        action="store_true",
        help="hand out the bridges offered with 'bridges offer', 3 per asker per day",
    )
    p.add_argument("--max-links", type=_count, metavar="N", help="inbound links at most (256)")
    p.add_argument(
        "--max-memory", type=_memory, metavar="MIB", help="inbound links' buffers at most (64)"
    )


def _add_publishing(sub: Any) -> None:
    """What publishers hand out: bridges, and signed bootstrap lists."""
    _add_bridges(sub)
    boot = sub.add_parser("bootstrap", help="signed bootstrap lists")
    bsub = boot.add_subparsers(dest="bootstrap_command", required=True, metavar="ACTION")
    p = bsub.add_parser("sign", help="sign a list of invites with this node's key, as publisher")
    p.add_argument("invites", nargs="+", metavar="LINK")
    p.add_argument("--days", type=_days, default=30.0, help="valid this long (at most 30)")
    p.set_defaults(func=cmd_bootstrap_sign)
    p = bsub.add_parser("import", help="take a signed list (the line, or a file holding it)")
    p.add_argument("list", metavar="LINE_OR_FILE")
    p.set_defaults(func=cmd_bootstrap_import)


def _add_bridges(sub: Any) -> None:
    bridges = sub.add_parser("bridges", help="bridges this node hands out (init --distribute)")
    brsub = bridges.add_subparsers(dest="bridges_command", required=True, metavar="ACTION")
    p = brsub.add_parser("offer", help="hand out a bridge's invite, 3 bridges per asker per day")
    p.add_argument("link", metavar="LINK")
    p.set_defaults(func=cmd_bridges_offer)
    p = brsub.add_parser("list", help="the bridges offered: how old, and whether handed out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bridges_list)


def _add_files(add: Callable[[str, Command, str], argparse.ArgumentParser]) -> None:
    p = add("send-file", cmd_send_file, "queue a file (up to 16 MiB) with the running node")
    p.add_argument("name")
    p.add_argument("path")
    p.add_argument("--direct", action="store_true", help="as for send")
    p = add("save", cmd_save, "write a received file (its id is in the inbox) to a directory")
    p.add_argument("id", metavar="FILE_ID")
    p.add_argument("--dir", default=".", help="where to write it (default: here)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pmsg", description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="state directory (default: $P2PMSG_HOME or per-user)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        return p

    _add_init(add("init", cmd_init, "create an identity and config"))
    add("invite", cmd_invite, "print this node's invite link").add_argument(
        "--qr", action="store_true", help="also print a QR code"
    )
    _add_publishing(sub)
    contacts = sub.add_parser("contacts", help="manage contacts")
    csub = contacts.add_subparsers(dest="contacts_command", required=True, metavar="ACTION")
    p = csub.add_parser("add", help="add a contact from an invite link or node id")
    p.set_defaults(func=cmd_contacts_add)
    p.add_argument("name")
    p.add_argument("link", metavar="LINK_OR_ID")
    p = csub.add_parser("list", help="list contacts")
    p.set_defaults(func=cmd_contacts_list)
    p.add_argument("--json", action="store_true")
    add("run", cmd_run, "run the node in the foreground").add_argument(
        "-v", "--verbose", action="store_true"
    )
    p = add("send", cmd_send, "queue a message with the running node")
    p.add_argument("name")
    p.add_argument("text")
    p.add_argument(
        "--direct",
        action="store_true",
        help="skip onion routing: dial the contact (who then learns your address)",
    )
    _add_files(add)
    for name, func in (("inbox", cmd_inbox), ("outbox", cmd_outbox)):
        p = add(name, func, f"list the {name}")
        p.add_argument("--json", action="store_true")
        p.add_argument("--limit", type=int, default=100)
    add("status", cmd_status, "the running node's status").add_argument(
        "--json", action="store_true"
    )
    p = add("peers", cmd_peers, "the running node's DHT routing table")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=1000)
    p = add("lookup", cmd_lookup, "find a node's endpoints in the DHT")
    p.add_argument("node_id", metavar="NODE_ID")
    p.add_argument("--json", action="store_true")
    add("demo", cmd_demo, "Russia 2018 on a simulated internet: what p2pmsg survives").add_argument(
        "--out", default="p2pmsg-demo", help="where the report goes"
    )
    sim = sub.add_parser("sim", help="the censorship lab: scenarios on a simulated internet")
    ssub = sim.add_subparsers(dest="sim_command", required=True, metavar="ACTION")
    ssub.add_parser("list", help="the scenarios shipped").set_defaults(func=cmd_sim_list)
    p = ssub.add_parser("run", help="run a scenario over seeds and judge it")
    p.set_defaults(func=cmd_sim_run)
    p.add_argument("scenario", metavar="FILE_OR_ID")
    p.add_argument("--seeds", type=int, help="how many seeds (default: the scenario's)")
    p.add_argument("--nodes", type=int, help="users to simulate (default: the scenario's)")
    p.add_argument(
        "--duration",
        type=_sim_time,
        help="simulated time, like 5m or 1h: the scenario's timeline compressed or stretched",
    )
    p.add_argument("--out", default="sim-results", help="where results.json goes")
    p.add_argument("--json", action="store_true", help="print results.json instead of the table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except P2PMsgError as exc:
        print(f"p2pmsg: {exc.user_message()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`p2pmsg invite | head -1`); stop quietly. Point
        # stdout at /dev/null so that the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
