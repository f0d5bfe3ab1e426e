"""``p2pmsg demo``: two nodes in one process exchanging messages.

The caller (the CLI) hands in the transports, as always; the demo makes two
throw-away homes, lets Bob listen on one endpoint per transport, and sends
one message from Alice over each, printing what happens.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from p2pmsg.abc import Transport
from p2pmsg.endpoint import Endpoint
from p2pmsg.home import Config, Home
from p2pmsg.keys import Identity
from p2pmsg.node import Node, NodeOptions
from p2pmsg.store import Contact

DEMO_TIMEOUT = 60.0


def _make_home(root: Path, name: str, listen: Sequence[Endpoint]) -> Home:
    home = Home(root / name)
    home.init(Config(listen=tuple(listen)), Identity.generate())
    return home


async def _one_route(
    alice: Node, bob: Node, label: str, endpoint: Endpoint, out: Callable[[str], None]
) -> bool:
    await alice.store.update_contact_endpoints(bob.identity.node_id, (str(endpoint),))
    text = f"hello over {label}"
    message_id = await alice.send("bob", text, direct=True)
    out(f"[{label}] alice -> bob    queued    {message_id.hex()[:8]}  {text!r}")
    received = await bob.messages().receive()
    out(f"[{label}] bob   <- alice  received  {received.id.hex()[:8]}  {received.text!r}")
    acked = await alice.deliveries().receive()
    out(f"[{label}] alice           acked     {acked.hex()[:8]}")
    return received.id == message_id == acked and received.text == text


async def run_demo(
    alice_transports: Sequence[Transport],
    bob_transports: Sequence[Transport],
    bob_listen: Sequence[tuple[str, Endpoint]],
    out: Callable[[str], None] = print,
    *,
    wall_clock: Callable[[], float] = time.time,
) -> bool:
    """Run the demo; True when every message arrived once and was acked."""
    with tempfile.TemporaryDirectory(prefix="p2pmsg-demo-") as tmp:
        root = Path(tmp)
        alice_home = _make_home(root, "alice", ())
        bob_home = _make_home(root, "bob", [ep for _, ep in bob_listen])
        options = NodeOptions(dial_timeout=5.0, handshake_timeout=5.0)
        with trio.fail_after(DEMO_TIMEOUT):
            async with (
                Node.open(
                    bob_home.path, bob_transports, options=options, wall_clock=wall_clock
                ) as bob,
                Node.open(
                    alice_home.path, alice_transports, options=options, wall_clock=wall_clock
                ) as alice,
            ):
                out(f"alice  node {alice.identity.node_id.hex()[:16]}")
                out(
                    f"bob    node {bob.identity.node_id.hex()[:16]}  listening on "
                    + ", ".join(str(e) for e in bob.listening)
                )
                contact = Contact(
                    "bob", bob.identity.node_id, bob.identity.public.key, (), wall_clock()
                )
                await alice.store.add_contact(contact)
                results = [
                    await _one_route(alice, bob, label, endpoint, out)
                    for (label, _), endpoint in zip(bob_listen, bob.listening, strict=True)
                ]
        ok = all(results)
        out(
            f"{sum(results)} of {len(results)} messages delivered exactly once and acked"
            if ok
            else "the demo FAILED"
        )
        return ok
