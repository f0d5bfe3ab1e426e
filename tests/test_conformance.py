"""Every transport passes the one conformance suite."""

from __future__ import annotations

import pytest
import trio.testing

from p2pmsg.endpoint import Endpoint
from p2pmsg.sim.net import SimNetwork
from p2pmsg.testing.conformance import CHECKS, Check
from transports.sim import SimTransport
from transports.tcp import TcpTransport

pytestmark = pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)


async def test_tcp(check: Check) -> None:
    await check(TcpTransport(), Endpoint.parse("tcp:127.0.0.1:0"))


async def test_sim(check: Check, autojump_clock: trio.testing.MockClock) -> None:
    await check(SimTransport(SimNetwork(), "a"), Endpoint.parse("sim:a:0"))
