"""S17 at scale: duplicated, reordered and replayed onion packets over 10^6 messages.

Runs :mod:`p2pmsg.sim.replays` (the product's relay code at component level,
on simulated time; its docstring says what is real and what is modelled)
alone, with every knob, and prints what it counted:
``python3 -m bench.replays --messages 1000000``. The lab runs the same model
after each seed of S17 (``traffic.volume``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import trio

from bench._common import environment, table
from p2pmsg.sim import replays
from p2pmsg.sim.replays import HOPS, OPTIONS, Network, Params

# -- the report --------------------------------------------------------------------


def _n(value: int) -> str:
    return f"{value:,}"


def _ages(ages: dict[str, list[float]]) -> list[list[str]]:
    """The time between a layer's first acceptance and its second, by node kind."""
    return [
        [f"  {kind}: {min(a) / 3600:,.1f} to {max(a) / 3600:,.1f} h after the first", "", ""]
        for kind, a in sorted(ages.items())
    ]


def report(net: Network, args: Params, seconds: float) -> tuple[str, bool]:
    c, totals = net.count, sum((n.totals for n in net.nodes), Counter[str]())
    f = replays.figures(net)
    dup, lost, injected = f.duplicated, f.lost, f.injected
    restarts = _n(c["restarts"])
    peaks = [p for p, _ in replays.peaks(net)]
    cap, epoch_cap = OPTIONS.replay_capacity * 3, OPTIONS.replay_capacity
    day_cap = OPTIONS.delivered_capacity
    d_cap = day_cap * OPTIONS.delivered_days
    rows = [
        ["messages sent", _n(args.messages), ""],
        ["messages delivered at least once", _n(args.messages - lost), ""],
        ["messages never delivered", _n(lost), ""],
        ["packets handed to a relay (peeled)", _n(c["peeled"]), ""],
        ["layers accepted", _n(c["accepted"]), ""],
        ["packets refused", _n(c["peeled"] - c["accepted"]), ""],
        ["copies injected", _n(injected), ""],
        [f"  forwarded twice ({args.duplicate:.0%} of each hop)", _n(c["duplicates"]), ""],
        [f"  sent again after a restart ({restarts} restarts)", _n(c["after_restart"]), ""],
        [f"  recorded, sent again <= {args.late_hours:g} h later", _n(c["late"]), ""],
        ["layers accepted twice", _n(c["twice_relay"] + c["twice_user"]), "0"],
        ["  at a relay (onion-key layer)", _n(c["twice_relay"]), "0"],
        ["  at the destination (identity-key layer)", _n(c["twice_user"]), "0"],
        *_ages(net.ages),
        ["deliveries duplicated (on_deliver twice)", _n(dup), "0"],
        ["deliveries to the wrong node", _n(c["misdelivered"]), "0"],
        ["honest packets refused: cache full", _n(c["honest_full"]), ""],
        ["honest packets refused: stale epoch", _n(c["honest_stale"]), ""],
        ["honest packets refused: no key opens it", _n(c["honest_unpeelable"]), ""],
        ["honest packets refused: other", _n(c["honest_other"]), ""],
        ["refusals: replay tag seen", _n(totals["replay"]), ""],
        ["refusals: tag of a stale epoch", _n(totals["stale"]), ""],
        ["refusals: tag cache full", _n(totals["full"]), ""],
        ["refusals: no key opens it (retired epoch)", _n(totals["unpeelable"]), ""],
        ["peak replay tags of a relay", _n(peaks[0]), f"<= {_n(cap)}"],
        ["peak replay tags of a relay, one epoch", _n(peaks[1]), f"<= {_n(epoch_cap)}"],
        ["peak delivered tags of a user", _n(peaks[2]), f"<= {_n(d_cap)}"],
        ["peak delivered tags of a user, one day", _n(peaks[3]), f"<= {_n(day_cap)}"],
        ["wall seconds", f"{seconds:,.0f}", ""],
    ]
    lines = [
        f"p2pmsg S17 replays: {_n(args.messages)} messages over {args.days:g} simulated days"
        f" (then {args.late_hours:g} h of late replays), {args.relays} relays, {args.users}"
        f" users, routes of {HOPS} relays, seed {args.seed}",
        environment(),
        "",
        table(("figure", "count", "must be"), rows),
        "",
        f"{args.messages / seconds:,.0f} messages per wall second; {c['peeled'] / seconds:,.0f}"
        " packets through Relay._process per wall second",
    ]
    lines.append(
        "S17: FAILED" if f.failed else "S17: passed (0 accepted twice, 0 duplicated, caps)"
    )
    return "\n".join(lines), f.failed


def parse_args(argv: Sequence[str] | None) -> tuple[Params, str | None]:
    """The model's parameters and the directory for its SQLite files."""
    d = Params()
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--messages", type=int, default=d.messages, help="messages sent (20000)")
    p.add_argument("--relays", type=int, default=d.relays, help="relays (30)")
    p.add_argument("--users", type=int, default=d.users, help="senders/recipients (10)")
    p.add_argument("--days", type=float, default=d.days, help="days the messages span (10)")
    p.add_argument("--duplicate", type=float, default=d.duplicate, help="share sent twice (0.05)")
    p.add_argument("--reorder", type=int, default=d.reorder, help="reorder window, packets (64)")
    p.add_argument("--record", type=float, default=d.record, help="share replayed late (0.01)")
    p.add_argument("--late-hours", type=float, default=d.late_hours, help="latest replay (570)")
    p.add_argument("--restart-hours", type=float, default=d.restart_hours, help="uptime (24)")
    p.add_argument("--seed", type=int, default=d.seed, help="the model's random choices (1)")
    p.add_argument("--db-dir", default=None, help="SQLite dir (default: /dev/shm if any)")
    args = p.parse_args(argv)
    db_dir = args.db_dir
    del args.db_dir
    params = Params(**vars(args))
    try:
        params.check()
    except ValueError as exc:
        p.error(str(exc))
    return params, db_dir


async def run(args: Params, db_dir: str | None) -> tuple[Network, float]:
    start = time.perf_counter()
    step = max(1, args.messages // 20)
    shown = [0, 0.0]  # messages and day of the last line

    def progress(sent: int, t: float) -> None:
        day = (t - replays.T0) / 86_400
        if sent >= shown[0] + step or (sent == args.messages and day >= shown[1] + 2):
            shown[:] = [sent, day]
            wall = time.perf_counter() - start
            left = f"about {wall * (args.messages / sent - 1):,.0f} s to the last message"
            print(
                f"  {sent:,} sent, day {day:.1f}, {wall:,.0f} s, "
                + (left if sent < args.messages else "late replays only"),
                file=sys.stderr,
                flush=True,
            )

    if db_dir is None:
        with replays.scratch_dir("p2pmsg-bench-replays-") as tmp:
            net = await replays.run(args, Path(tmp), progress)
    else:
        net = await replays.run(args, Path(db_dir), progress)
    return net, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    args, db_dir = parse_args(argv)
    net, seconds = trio.run(run, args, db_dir)
    text, failed = report(net, args, seconds)
    print(text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
