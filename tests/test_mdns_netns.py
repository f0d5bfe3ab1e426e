"""mDNS discovery between two hosts on a LAN, built from network namespaces (root).

Theory of operation. Three namespaces with names unique to the run: two
hosts and a switch. Each host has a veth interface ``eth0`` on a private /24
whose other end is a port of the Linux bridge in the switch namespace; only
the hosts have addresses. Every interface is created inside those namespaces
(``ip link add ... peer name ... netns SWITCH`` run in the host's namespace),
so nothing appears in the machine's own namespace and no packet of the test
can reach the machine's real network. Each host runs :data:`PEER_SCRIPT` (one
:class:`MdnsDiscovery` bound to the host's address, in a process of its own
under ``ip netns exec``), and each must print the other's payload. The
namespaces are deleted in ``finally``; deleting them takes their interfaces
with them.

Needs root and ``ip`` (Debian package ``iproute2``); skipped with the reason
otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from test_mdns import HANG_GUARD, LineReader, peer_command, stop, unique_service_type

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="network namespaces need root",
    ),
    pytest.mark.skipif(
        shutil.which("ip") is None,
        reason="needs the `ip` command (Debian package iproute2)",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.231.77"  # a private /24 that exists only inside the namespaces


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=HANG_GUARD)


def build_lan(prefix: str, switch: str, hosts: list[Host]) -> None:
    ip("netns", "add", switch)
    ip("-n", switch, "link", "add", "br0", "type", "bridge")
    ip("-n", switch, "link", "set", "br0", "up")
    for index, host in enumerate(hosts):
        port = f"{prefix}p{index}"
        ip("netns", "add", host.namespace)
        ip("-n", host.namespace, "link", "add", "eth0", "type", "veth", "peer", "name", port)
        ip("-n", host.namespace, "link", "set", port, "netns", switch)
        ip("-n", switch, "link", "set", port, "master", "br0")
        ip("-n", switch, "link", "set", port, "up")
        ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "lo", "up")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        # mDNS goes to 224.0.0.251: route multicast out of the LAN interface
        ip("-n", host.namespace, "route", "add", "224.0.0.0/4", "dev", "eth0")


@pytest.fixture
def lan() -> Iterator[list[Host]]:
    """Two hosts on one bridged /24, in namespaces of this run; deleted afterwards."""
    prefix = f"p2m{secrets.token_hex(3)}"
    switch = f"{prefix}-sw"
    hosts = [Host(f"{prefix}-{index}", f"{SUBNET}.{index + 1}") for index in range(2)]
    try:
        build_lan(prefix, switch, hosts)
        yield hosts
    finally:
        for namespace in [switch, *(host.namespace for host in hosts)]:
            subprocess.run(
                ["ip", "netns", "del", namespace],
                check=False,
                capture_output=True,
                timeout=HANG_GUARD,
            )


async def test_two_hosts_on_a_lan_discover_each_other(lan: list[Host]) -> None:
    service_type = unique_service_type()
    payloads = [f"peer record of {host.namespace}".encode() for host in lan]
    processes: list[trio.Process] = []
    try:
        for host, payload in zip(lan, payloads, strict=True):
            command = ["ip", "netns", "exec", host.namespace]
            command += peer_command(host.address, service_type, payload)
            processes.append(
                await trio.lowlevel.open_process(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
                )
            )
        seen: dict[str, bytes] = {}

        async def first_sighting(host: Host, process: trio.Process) -> None:
            assert process.stdout is not None
            reader = LineReader(process.stdout)
            assert await reader.line() == "started"
            seen[host.namespace] = bytes.fromhex(await reader.line())

        with trio.fail_after(HANG_GUARD):
            async with trio.open_nursery() as nursery:
                for host, process in zip(lan, processes, strict=True):
                    nursery.start_soon(first_sighting, host, process)
    finally:
        for process in processes:
            await stop(process)
    assert seen == {lan[0].namespace: payloads[1], lan[1].namespace: payloads[0]}
    assert [process.returncode for process in processes] == [0, 0]
