"""A node's home directory: identity key, config and database.

``HOME/identity.key`` (owner-only), ``HOME/config.json``, ``HOME/p2pmsg.db``
and, while the node runs, ``HOME/control.sock``. The directory itself is
created 0700 so that nothing in it is reachable by other users, including
the control socket in the short window before its own chmod.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from p2pmsg.admission import Limits
from p2pmsg.endpoint import Endpoint, Invite
from p2pmsg.errors import BadEndpoint, BadInvite, BadKey, HomeError
from p2pmsg.keys import Identity, decode_key, load_identity, save_identity, write_private_file

KEY_FILE = "identity.key"
CONFIG_FILE = "config.json"
DB_FILE = "p2pmsg.db"
CONTROL_SOCKET = "control.sock"
MAX_CONFIG_BYTES = 64 * 1024
MIB = 1024 * 1024
LIMIT_KEYS = (
    "links", "links_per_address", "links_per_prefix", "pending", "pending_per_address",
    "pending_per_prefix", "opens_per_second", "opens_burst", "memory_mib",
)  # fmt: skip
"""The keys of config.json's ``limits``: :class:`Limits`' fields, the memory cap in MiB."""
MAX_LIMIT = 2**53


def _str_list(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


@dataclass(frozen=True)
class Config:
    """What ``init`` decided; ``listen`` endpoints are also what invites carry."""

    listen: tuple[Endpoint, ...] = ()
    bootstrap: tuple[str, ...] = field(default=())
    #: The address of the one interface mDNS runs on; None: no mDNS.
    mdns: str | None = None
    #: An unlisted node (a bridge): reachable only through its invite.
    bridge: bool = False
    #: Invites of bridges that every connection goes through (Tor's
    #: ``UseBridges``); empty: peers are dialled directly.
    use_bridges: tuple[Invite, ...] = ()
    #: Keys of the publishers whose signed bootstrap lists we take
    #: (:mod:`p2pmsg.bootstrap`), as printed by ``p2pmsg bootstrap sign``.
    publishers: tuple[str, ...] = ()
    #: Limits on inbound links and their memory (:mod:`p2pmsg.admission`),
    #: as a relay operator sets Tor's ``ConnLimit`` and ``MaxMemInQueues``.
    #: None: the defaults, or what the application passes in ``NodeOptions``.
    limits: Limits | None = None
    #: Hand out the bridges offered to this node (:mod:`p2pmsg.bridges`).
    distribute: bool = False
    #: Invites of the nodes asked for more bridges when ours fail.
    distributors: tuple[Invite, ...] = ()

    def publisher_keys(self) -> tuple[bytes, ...]:
        return tuple(decode_key(k) for k in self.publishers)

    def to_json(self) -> str:
        data = {
            "version": 1,
            "listen": [str(e) for e in self.listen],
            "bootstrap": self.bootstrap,
            "mdns": self.mdns,
            "bridge": self.bridge,
            "use_bridges": [str(b) for b in self.use_bridges],
            "publishers": list(self.publishers),
        }
        if self.distribute:
            data["distribute"] = True
        if self.distributors:
            data["distributors"] = [str(d) for d in self.distributors]
        if self.limits is not None:
            data["limits"] = _limits_to_json(self.limits)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Config:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise HomeError(f"config.json is damaged: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise HomeError("config.json is damaged: not an object")
        listen, bootstrap = data.get("listen"), data.get("bootstrap", [])
        if not _str_list(listen) or not _str_list(bootstrap):
            raise HomeError("config.json is damaged: listen and bootstrap are lists of text")
        mdns = data.get("mdns")
        if mdns is not None and not isinstance(mdns, str):
            raise HomeError("config.json is damaged: mdns is an address or null")
        bridge = data.get("bridge", False)
        if not isinstance(bridge, bool):
            raise HomeError("config.json is damaged: bridge is true or false")
        use_bridges = data.get("use_bridges", [])
        if not _str_list(use_bridges):
            raise HomeError("config.json is damaged: use_bridges is a list of invites")
        publishers = data.get("publishers", [])
        if not _str_list(publishers):
            raise HomeError("config.json is damaged: publishers is a list of keys")
        limits = data.get("limits")
        limits = None if limits is None else _limits_from_json(limits)
        distribute, distributors = data.get("distribute", False), data.get("distributors", [])
        if not isinstance(distribute, bool) or not _str_list(distributors):
            raise HomeError(
                "config.json is damaged: distribute is true or false,"
                " distributors a list of invites"
            )
        try:
            for key in publishers:
                decode_key(key)
            return cls(
                tuple(Endpoint.parse(e) for e in listen),
                tuple(bootstrap),
                mdns,
                bridge,
                tuple(Invite.parse(b) for b in use_bridges),
                tuple(publishers),
                limits,
                distribute,
                tuple(Invite.parse(d) for d in distributors),
            )
        except (BadEndpoint, BadInvite, BadKey) as exc:
            raise HomeError(f"config.json is damaged: {exc}") from exc


def _limits_to_json(limits: Limits) -> dict[str, float]:
    values = dataclasses.asdict(limits)
    values["memory_mib"] = limits.memory / MIB
    return {key: values[key] for key in LIMIT_KEYS}


def _limits_from_json(data: object) -> Limits:
    """config.json's ``limits``: any of :data:`LIMIT_KEYS`, the rest default."""
    if not isinstance(data, dict):
        raise HomeError("config.json is damaged: limits is an object")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in LIMIT_KEYS:
            known = ", ".join(LIMIT_KEYS)
            raise HomeError(f"config.json: limits.{key} is unknown (known: {known})")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not 0 < value <= MAX_LIMIT:
            raise HomeError(
                f"config.json: limits.{key} must be a number in (0, 2**53], not {value!r}"
            )
        if key == "memory_mib":
            values["memory"] = int(value * MIB)
        elif key.startswith("opens_"):
            values[key] = float(value)
        elif isinstance(value, int):
            values[key] = value
        else:
            raise HomeError(f"config.json: limits.{key} must be a whole number, not {value!r}")
    try:
        return Limits(**values)
    except ValueError as exc:
        raise HomeError(f"config.json: limits: {exc}") from exc


@dataclass(frozen=True)
class Home:
    path: Path

    @property
    def key_file(self) -> Path:
        return self.path / KEY_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def db_file(self) -> Path:
        return self.path / DB_FILE

    @property
    def control_socket(self) -> Path:
        return self.path / CONTROL_SOCKET

    def exists(self) -> bool:
        return self.key_file.exists()

    def init(self, config: Config, identity: Identity) -> None:
        """Create the home. Raises :class:`HomeError` if one is there already."""
        if self.path.exists() and not self.path.is_dir():
            raise HomeError(f"{self.path} is a file, not a directory")
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                os.chmod(self.path, 0o700)
            save_identity(identity, self.key_file)
            write_private_file(self.config_file, config.to_json().encode())
        except FileExistsError as exc:
            raise HomeError(f"{self.path} already holds a node") from exc
        except OSError as exc:
            raise HomeError(f"cannot create {self.path}: {exc.strerror}") from exc

    def save_config(self, config: Config) -> None:
        """Replace the home's config (atomically). Raises :class:`HomeError`."""
        new = self.config_file.with_name(f".{CONFIG_FILE}.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            write_private_file(new, config.to_json().encode())
            os.replace(new, self.config_file)
        except OSError as exc:
            new.unlink(missing_ok=True)
            raise HomeError(f"cannot write {self.config_file}: {exc.strerror}") from exc

    def load_identity(self) -> Identity:
        if not self.exists():
            raise HomeError(f"no node in {self.path} (run `p2pmsg init` first)")
        try:
            return load_identity(self.key_file)
        except BadKey as exc:
            raise HomeError(str(exc)) from exc

    def load_config(self) -> Config:
        try:
            with self.config_file.open("rb") as fh:
                raw = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise HomeError(f"cannot read {self.config_file}: {exc.strerror}") from exc
        if len(raw) > MAX_CONFIG_BYTES:
            raise HomeError("config.json is too large")
        try:
            return Config.from_json(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise HomeError("config.json is not UTF-8") from exc

    def invite(self) -> Invite:
        """This node's invite: its public key and its listen endpoints."""
        return Invite(self.load_identity().public, self.load_config().listen)
