"""The report's pictures and its one self-contained HTML page.

Two PNG plots (matplotlib's ``Figure``: no pyplot state, no display): the
share of messages delivered within the deadline over simulated time, one
line per seed, with the censor's actions marked; and the latency CDF of every
delivered message, with the deadline marked. The HTML page embeds both (as
data URIs) beside the summary table, so it can be mailed or archived as one
file.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from matplotlib.figure import Figure

from p2pmsg.sim.report import Verdict, table

BIN = 1800.0
"""Seconds of send time per point of the delivery plot."""


def delivery_over_time(v: Verdict, path: Path) -> Path:
    within = v.scenario.passes.within
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    for r in v.results:
        bins: dict[int, list[bool]] = {}
        for key, sent in r.sent.items():
            lag = r.received.get(key, float("inf")) - sent
            bins.setdefault(int((sent - r.t0) // BIN), []).append(lag <= within)
        xs = sorted(bins)
        ax.plot(
            [(x + 0.5) * BIN / 3600 for x in xs],
            [sum(bins[x]) / len(bins[x]) for x in xs],
            marker="o",
            label=f"seed {r.seed}",
        )
    events: dict[float, list[str]] = {}
    for when, what in v.results[0].censor_events if v.results else ():
        events.setdefault(when, []).append(what)
    for when, whats in events.items():
        ax.axvline(when / 3600, color="red", alpha=0.4, linestyle="--")
        ax.annotate("; ".join(whats), (when / 3600, 0.02), rotation=90, fontsize=6, color="red")
    ax.axhline(v.scenario.passes.delivery, color="grey", linewidth=0.8)
    ax.set(
        xlabel="hours after t0 (send time)",
        ylabel=f"delivered within {within:g} s",
        ylim=(0, 1.05),
        title=f"{v.scenario.id}: delivery over time",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def latency_cdf(v: Verdict, path: Path) -> Path:
    lags = sorted(
        r.received[k] - t for r in v.results for k, t in r.sent.items() if k in r.received
    )
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    if lags:
        ax.step(lags, [(i + 1) / len(lags) for i in range(len(lags))], where="post")
        ax.set_xscale("log")
    ax.axvline(v.scenario.passes.within, color="grey", linewidth=0.8)
    ax.set(
        xlabel="seconds from send to delivery",
        ylabel="share of delivered messages",
        ylim=(0, 1.02),
        title=f"{v.scenario.id}: latency CDF",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def write_all(v: Verdict, out: Path) -> Path:
    """The two PNGs and ``report.html`` in ``out``; the HTML's path."""
    out.mkdir(parents=True, exist_ok=True)
    images = [
        delivery_over_time(v, out / "delivery.png"),
        latency_cdf(v, out / "latency.png"),
    ]
    embedded = "".join(
        f'<p><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></p>'
        for p in images
    )
    story = html.escape(v.scenario.story.strip())
    page = (
        "<!doctype html><meta charset='utf-8'>"
        f"<title>{html.escape(v.scenario.id)}: {html.escape(v.scenario.title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "pre{background:#f4f4f4;padding:1em}</style>"
        f"<h1>{html.escape(v.scenario.id)}: {html.escape(v.scenario.title)}</h1>"
        f"<p>{story}</p><pre>{html.escape(table(v))}</pre>{embedded}"
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
