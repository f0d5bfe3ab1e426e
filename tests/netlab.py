"""A censored country in network namespaces: two LANs, a router with nftables.

Theory of operation. Every namespace has a name unique to the run. The
*inside* hosts sit on one bridged /24, the *outside* hosts on another; each
bridge lives in a switch namespace of its own, and a router namespace joins
them, forwarding between its two legs (``.254`` on each LAN) and holding the
censor: an nftables table ``censor`` with a ``forward`` chain. Hosts route
everything through the router. Every interface is created inside these
namespaces, so nothing appears in the machine's own namespace and no packet
reaches its real network. :meth:`Lab.close` deletes the namespaces, which
takes their interfaces and rules with them.

Needs root, ``ip`` (iproute2) and ``nft`` (nftables).
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass, field

GUARD = 30.0
INSIDE, OUTSIDE = "10.231.90", "10.231.91"


def run(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        list(args), check=True, capture_output=True, text=True, input=stdin, timeout=GUARD
    )
    return done.stdout


@dataclass
class Lab:
    prefix: str = field(default_factory=lambda: f"p2f{secrets.token_hex(3)}")
    hosts: dict[str, tuple[str, str]] = field(default_factory=dict)
    """name -> (namespace, address)."""
    _made: list[str] = field(default_factory=list)

    @property
    def router(self) -> str:
        return f"{self.prefix}-rt"

    def _netns(self, name: str) -> str:
        namespace = f"{self.prefix}-{name}"
        run("ip", "netns", "add", namespace)
        self._made.append(namespace)
        run("ip", "-n", namespace, "link", "set", "lo", "up")
        return namespace

    def build(self, inside: list[str], outside: list[str]) -> None:
        router = self._netns("rt")
        run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for side, subnet, names in (("in", INSIDE, inside), ("out", OUTSIDE, outside)):
            switch = self._netns(f"sw{side}")
            run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
            run("ip", "-n", switch, "link", "set", "br0", "up")
            self._plug(router, switch, f"r{side}", f"{subnet}.254")
            for index, name in enumerate(names):
                host = self._netns(name)
                self._plug(host, switch, f"h{side}{index}", f"{subnet}.{index + 1}")
                run("ip", "-n", host, "route", "add", "default", "via", f"{subnet}.254")
                self.hosts[name] = (host, f"{subnet}.{index + 1}")
        rules = (
            "table inet censor {\n"
            "  chain forward { type filter hook forward priority 0; policy accept; }\n"
            "}\n"
        )
        run("ip", "netns", "exec", router, "nft", "-f", "-", stdin=rules)

    def _plug(self, namespace: str, switch: str, port: str, address: str) -> None:
        """A veth from ``namespace`` (``eth-PORT``) to a port of ``switch``'s bridge."""
        port = f"{self.prefix}{port}"
        inner = f"e{port[-6:]}"
        run("ip", "-n", namespace, "link", "add", inner, "type", "veth", "peer", "name", port)
        run("ip", "-n", namespace, "link", "set", port, "netns", switch)
        run("ip", "-n", switch, "link", "set", port, "master", "br0")
        run("ip", "-n", switch, "link", "set", port, "up")
        run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", inner)
        run("ip", "-n", namespace, "link", "set", inner, "up")

    def block(self, rule: str) -> None:
        """Add ``rule`` (nft syntax, e.g. ``ip daddr 10.0.0.1 counter drop``) to the censor."""
        run("ip", "netns", "exec", self.router, "nft", "add", "rule", "inet", "censor", "forward",
            *rule.split())  # fmt: skip

    def counters(self) -> list[int]:
        """Packets counted by each rule of the censor, in order."""
        out = run(
            "ip", "netns", "exec", self.router, "nft", "-j", "list", "table", "inet", "censor"
        )
        packets = []
        for item in json.loads(out)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    packets.append(int(expr["counter"]["packets"]))
        return packets

    def exec_prefix(self, name: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.hosts[name][0])

    def close(self) -> None:
        for namespace in reversed(self._made):
            subprocess.run(
                ["ip", "netns", "del", namespace], check=False, capture_output=True, timeout=GUARD
            )
