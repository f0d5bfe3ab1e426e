"""Handshakes per second, against the noiseprotocol package and the X25519 limit.

Every row is measured in every round (rounds interleaved, order rotated), in
this process, both sides of each handshake included:

* ``LinkConnection`` pair in memory: the sans-IO core, bytes handed across
  directly (pure CPU: two Noise IK messages with obfuscated framing and
  random padding, the identity check and the replay check);
* the peer: the ``noiseprotocol`` package running the same
  ``Noise_IK_25519_ChaChaPoly_BLAKE2b`` handshake, same prologue, same
  40-byte first payload, in memory;
* ``connect_secure``/``accept_secure`` over ``TcpTransport`` on 127.0.0.1
  (one after another: dial, handshake, wait for the listener's close, close;
  the listener closes first so that TIME_WAIT stays off the client's ports),
  and the same dial-and-close without a handshake as its TCP reference;
* the limit: X25519 ``crypto_scalarmult`` per second. An IK handshake takes
  four DH per side, so a handshake pair can go no faster than rate / 8. Each
  side also derives two public keys (static and ephemeral) with
  ``crypto_scalarmult_base``, measured too: "8 DH + 4 base" is the tighter
  limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import partial

import nacl.bindings as sodium
import trio
from noise.connection import Keypair, NoiseConnection

from bench._common import (
    HANDSHAKE_TIMEOUT,
    INITIATOR,
    REPLAY_WINDOW,
    RESPONDER,
    Measure,
    environment,
    loop_rate,
    median,
    paired_ratio,
    parse_args,
    run_rounds,
    serving,
    sync_measure,
    table,
)
from p2pmsg.abc import Link
from p2pmsg.link import wire
from p2pmsg.link.connection import Established, LinkConnection
from p2pmsg.link.replay import ReplayWindow
from p2pmsg.link.secure import SecureLink, accept_secure, connect_secure

NOISE_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2b"
HELLO = bytes(40)  # the size of the link's first-flight payload (timestamp, Ed25519 key)


def _link_connection_pair(replay: ReplayWindow) -> None:
    now = time.time()
    initiator = LinkConnection(INITIATOR, peer=RESPONDER.public, now=now, rng=os.urandom)
    responder = LinkConnection(RESPONDER, replay=replay, now=now, rng=os.urandom)
    initiator.initiate()
    responder.receive_data(initiator.data_to_send())
    if responder.next_event() != Established(INITIATOR.public):
        raise RuntimeError("the responder did not finish the handshake")
    initiator.receive_data(responder.data_to_send())
    if initiator.next_event() != Established(RESPONDER.public):
        raise RuntimeError("the initiator did not finish the handshake")


def link_connection(seconds: float) -> float:
    return loop_rate(partial(_link_connection_pair, ReplayWindow(REPLAY_WINDOW)), seconds)


def _noise_end(initiator: bool) -> NoiseConnection:
    conn = NoiseConnection.from_name(NOISE_NAME)
    if initiator:
        conn.set_as_initiator()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, INITIATOR.x25519_private)
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, RESPONDER.public.x25519)
    else:
        conn.set_as_responder()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, RESPONDER.x25519_private)
    conn.set_prologue(wire.PROLOGUE)
    conn.start_handshake()
    return conn


def _noise_pair() -> None:
    initiator, responder = _noise_end(True), _noise_end(False)
    if responder.read_message(initiator.write_message(HELLO)) != HELLO:
        raise RuntimeError("noiseprotocol: wrong first payload")
    initiator.read_message(responder.write_message())
    if not (initiator.handshake_finished and responder.handshake_finished):
        raise RuntimeError("noiseprotocol: the handshake did not finish")


def noiseprotocol(seconds: float) -> float:
    return loop_rate(_noise_pair, seconds)


async def _expect_close(channel: SecureLink | Link) -> None:
    try:
        await channel.receive()
    except trio.EndOfChannel:
        return
    raise RuntimeError("the listener sent something instead of closing")


async def tcp_secure(seconds: float) -> float:
    replay = ReplayWindow(REPLAY_WINDOW)

    async def handler(link: Link) -> None:
        secure = await accept_secure(link, RESPONDER, replay, timeout=HANDSHAKE_TIMEOUT)
        await secure.aclose()

    async with serving(handler) as (transport, endpoint):
        count, start = 0, time.perf_counter()
        deadline = start + seconds
        while (now := time.perf_counter()) < deadline or not count:
            link = await transport.dial(endpoint)
            secure = await connect_secure(
                link, INITIATOR, RESPONDER.public, timeout=HANDSHAKE_TIMEOUT
            )
            try:
                await _expect_close(secure)
            finally:
                await secure.aclose()
            count += 1
    return count / (now - start)


async def tcp_dial(seconds: float) -> float:
    async def handler(link: Link) -> None:
        pass  # serve closes the link when the handler returns

    async with serving(handler) as (transport, endpoint):
        count, start = 0, time.perf_counter()
        deadline = start + seconds
        while (now := time.perf_counter()) < deadline or not count:
            link = await transport.dial(endpoint)
            try:
                await _expect_close(link)
            finally:
                await link.aclose()
            count += 1
    return count / (now - start)


def _x25519_rate(seconds: float, base: bool) -> float:
    private = RESPONDER.x25519_private
    if base:
        return loop_rate(partial(sodium.crypto_scalarmult_base, private), seconds, batch=50)
    public = INITIATOR.public.x25519
    return loop_rate(partial(sodium.crypto_scalarmult, private, public), seconds, batch=50)


MEASURES: dict[str, tuple[str, Measure]] = {
    "core": ("LinkConnection pair, in memory", sync_measure(link_connection)),
    "noise": ("noiseprotocol IK pair, in memory", sync_measure(noiseprotocol)),
    "tcp": ("connect/accept_secure over TCP", tcp_secure),
    "dial": ("TcpTransport dial+close, no handshake", tcp_dial),
    "dh": ("X25519 crypto_scalarmult", sync_measure(partial(_x25519_rate, base=False))),
    "base": ("X25519 crypto_scalarmult_base", sync_measure(partial(_x25519_rate, base=True))),
}
HANDSHAKE_ROWS = ("core", "noise", "tcp")
HEADER = ("measurement", "per s", "min", "max", "x noiseprotocol", "x X25519/8")


def _row(
    label: str, series: list[float], samples: dict[str, list[float]], ratios: bool
) -> list[str]:
    return [
        label,
        f"{median(series):,.0f}",
        f"{min(series):,.0f}",
        f"{max(series):,.0f}",
        f"{paired_ratio(series, samples['noise']):.3f}" if ratios else "",
        f"{paired_ratio(series, samples['limit']):.3f}" if ratios else "",
    ]


def report(samples: dict[str, list[float]], seconds: float, rounds: int) -> str:
    """The table and the derived ratios, as printed."""
    samples = dict(samples)
    samples["limit"] = [dh / 8 for dh in samples["dh"]]
    samples["tight"] = [
        1 / (8 / dh + 4 / base) for dh, base in zip(samples["dh"], samples["base"], strict=True)
    ]
    rows = [
        _row(label, samples[key], samples, key in HANDSHAKE_ROWS)
        for key, (label, _) in MEASURES.items()
    ]
    rows.append(_row("limit: X25519 rate / 8", samples["limit"], samples, False))
    rows.append(_row("limit: 8 DH + 4 base per pair", samples["tight"], samples, False))
    ratios = [
        ("LinkConnection / limit 8 DH + 4 base", "core", "tight"),
        ("noiseprotocol / limit 8 DH + 4 base", "noise", "tight"),
        ("TCP handshake / LinkConnection in memory", "tcp", "core"),
        ("TCP handshake / TCP dial+close", "tcp", "dial"),
    ]
    lines = [
        f"p2pmsg link handshakes: {rounds} interleaved rounds x {seconds:g} s, medians",
        environment(),
        "",
        table(HEADER, rows),
        "",
        "ratios (median of per-round ratios):",
        *(f"  {name}: {paired_ratio(samples[a], samples[b]):.3f}" for name, a, b in ratios),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("Secure-link handshakes per second.", argv)
    measures = {key: measure for key, (_, measure) in MEASURES.items()}
    samples = trio.run(run_rounds, measures, args.seconds, args.rounds)
    print(report(samples, args.seconds, args.rounds))


if __name__ == "__main__":
    main()
