"""What one seed of a scenario run saw: raw counts and samples for the report.

:mod:`p2pmsg.sim.runner` fills a :class:`SeedResult` as the run goes;
:mod:`p2pmsg.sim.report` judges a list of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from p2pmsg.dialer import Dialled
from p2pmsg.sim.scenario import CensorRule


@dataclass
class SeedResult:
    seed: int
    sent: dict[str, float] = field(default_factory=dict)
    """Message id -> simulated time sent (after t0)."""
    received: dict[str, float] = field(default_factory=dict)
    cross_border: set[str] = field(default_factory=set)
    """Messages between a user in the country and one abroad."""
    duplicates: int = 0
    control_sent: dict[str, float] = field(default_factory=dict)
    control_received: dict[str, float] = field(default_factory=dict)
    control_duplicates: int = 0
    joined: dict[str, float] = field(default_factory=dict)
    """User -> seconds it took to join the DHT."""
    late_joined: dict[str, float | None] = field(default_factory=dict)
    """Late user -> seconds it took to join, None if it never did."""
    control_joined: dict[str, float | None] = field(default_factory=dict)
    """For a bootstrap_only control: its newcomers, as ``late_joined``."""
    browse_ok: int = 0
    browse_broken: int = 0
    censor_events: list[tuple[float, str]] = field(default_factory=list)
    """(seconds after t0, what the censor did)."""
    failure_classes: dict[str, int] = field(default_factory=dict)
    wire_bytes: int = 0
    payload_bytes: int = 0
    peak_rss_kib: int = 0
    home_bytes: int = 0
    """The nodes' files at the end (their SQLite stores): memory as well when
    the homes are on a RAM disk (:data:`p2pmsg.sim.replays.SCRATCH`)."""
    t0: float = 0.0
    probes: int = 0
    probed_nodes_answering: int = 0
    """p2pmsg nodes that answered a probe with data (S8: must be 0)."""
    node_probes: int = 0
    """Probes sent to p2pmsg nodes, each beside as many random bytes (the reference)."""
    node_probes_unlike_noise: int = 0
    """Of those, the ones whose reaction (answer, close, reset, and when) was
    not the reference's (S8: must be 0)."""
    restarts: int = 0
    """Times a user's node stopped and started again (``topology.restarts``)."""
    ip_changes: int = 0
    """Times a user's node moved to a new address (``topology.ip_changes``)."""
    restart_replays: int = 0
    """First payloads recorded before a p2pmsg node restarted, replayed to it after."""
    restart_replays_answered: int = 0
    """Of those, the ones it answered with data (S8: must be 0)."""
    tampered_twice: int = 0
    """Packets tampering relays forwarded twice (``topology.tampering``, S17)."""
    tampered_replays: int = 0
    """Packets tampering relays sent again after their next hop restarted."""
    residual_retries: list[int] = field(default_factory=list)
    """Per 3-tuple of a user that a residual block held: the most SYNs it
    sent on it inside one window (S4: at most 1)."""
    volume: dict[str, int] = field(default_factory=dict)
    """``traffic.volume``: the replay model's :class:`~p2pmsg.sim.replays.Figures`."""
    hunt: dict[str, Any] = field(default_factory=dict)
    """``traffic.bridge_days``: the bridge hunt's :class:`~p2pmsg.sim.hunt.Figures`."""
    layers_accepted_twice: int = 0
    """Times a node accepted a packet whose layer it had accepted before (S17: 0)."""
    sybil_pings_answered: int = 0
    """PINGs of the victim's Sybils that it answered (S14: the attack reached it)."""
    victim_sybils: list[tuple[int, int]] = field(default_factory=list)
    """At the end: its Sybils in the victim's routing table, and most from one network."""
    victim_lookups: list[bool] = field(default_factory=list)
    """Near the end, the victim's lookup of each other user: found."""
    user_lookups: list[bool] = field(default_factory=list)
    """Near the end, each other user's lookups of three users: found."""
    key_fetches: list[bool] = field(default_factory=list)
    """S15: each fetch of the liars' victim's records got the newest within 10 s."""
    forged_accepted: int = 0
    """Records under the victim's keys that fetches returned and it did not sign."""
    forgeries_served: int = 0
    """Old, altered or self-signed records the liars answered with."""
    flood_tries: dict[str, int] = field(default_factory=dict)
    """S16: the flooder's tries, per attack (:mod:`p2pmsg.sim.flood`)."""
    flood_nodes: list[tuple[int, int]] = field(default_factory=list)
    """S16, per flooded user at the end: the peak bytes its inbound links
    reserved, and its memory cap."""
    flood_refused: dict[str, int] = field(default_factory=dict)
    """S16: the inbound links the flooded users refused, by reason."""
    flooded: set[str] = field(default_factory=set)
    """S16: messages from or to a user the flood hits, sent while it is on."""
    baseline_latencies: list[float] = field(default_factory=list)
    """S16: the latencies of those messages in the same seed's run without the flood."""
    stale_lists: int = 0
    """Expired, rolled-back or untrusted bootstrap lists the censor served (S20)."""
    stale_lists_refused: int = 0
    """Of those, the ones the user's node refused (S20: all)."""
    lists_current: list[bool] = field(default_factory=list)
    """Per user: it held the publisher's newest bootstrap list at the end."""
    dns_lookups: int = 0
    """Cleartext DNS connections p2pmsg's own nodes opened (S3: must be 0)."""
    clock_errors: list[bool] = field(default_factory=list)
    """Per user with a bad clock (``topology.bad_clocks``): it reported a clock error."""
    clock_false_alarms: int = 0
    """Users with a good enough clock that reported a clock error."""
    healed: float | None = None
    """When a ``drop`` of the ``border`` was lifted (S10's heal)."""
    heal_lookups: list[bool] = field(default_factory=list)
    """Per user at home, :data:`~p2pmsg.sim.runner.HEAL_LOOKUP_AFTER` after the heal: whether a
    lookup of a user abroad found it."""
    outbox_refused: int = 0
    """Sends refused because the sender's outbox was full (OutboxFull)."""
    degraded: set[str] = field(default_factory=set)
    """Ids of messages sent while a ``delay`` rule was on."""
    burst: list[str] = field(default_factory=list)
    """Ids of the burst's messages the outbox took (``traffic.burst``)."""
    burst_refused: int = 0
    """The burst's sends refused with OutboxFull."""
    carried: dict[str, float] = field(default_factory=dict)
    """With a mule (S11): the ids of the messages it must carry, and when each was sent."""
    mule_arrived: float | None = None
    """When the mule reached the second LAN."""
    mule_plaintext: int = 0
    """Carried messages whose text was found at the mule (its files, its mailbox entries)."""
    mule_held: int = 0
    """Mailbox entries the mule held at the end."""
    file: tuple[str, float, int] | None = None
    """The file of ``traffic.file_kib``: its id, when it was sent, its bytes
    (it arrived when ``received`` has its id)."""
    path_times: list[float] = field(default_factory=list)
    """Seconds each dial of a user took to a working link while the traffic
    ran (inf: it failed)."""
    switches: list[list[float]] = field(default_factory=list)
    """Per user: when (seconds after t0; negative in the warm-up) a link came
    up over another transport than the last link it made."""
    lan_found: list[float] = field(default_factory=list)
    """Per user and LAN neighbour: seconds from both being up to the first
    sighting (inf if never)."""

    def latencies(self, only: set[str] | None = None) -> list[float]:
        """Seconds from sending to arriving, of each message (of ``only``) that arrived."""
        return [
            self.received[k] - t
            for k, t in self.sent.items()
            if k in self.received and (only is None or k in only)
        ]


#: After a censor event, and after a node starts, its network is unstable for
#: this long (S12's switches).
STABLE_AFTER = 60.0


def transport_switches(
    dials: Sequence[tuple[float, Dialled]], starts: Sequence[float] = ()
) -> list[float]:
    """When, of one node's ``(time, dial)`` in time order, the transport it
    dials first changed (S12's switches; a dial that found none is skipped),
    except within :data:`STABLE_AFTER` of its ``starts``: a node joining
    learns which transports work here."""
    current = [(when, dial.current) for when, dial in dials if dial.current is not None]
    return [
        when
        for (_, before), (when, now) in pairwise(current)
        if now != before and not any(s <= when < s + STABLE_AFTER for s in starts)
    ]


def heals(rule: CensorRule) -> bool:
    """Whether ``rule`` cuts the border for a while, then lifts the cut for good."""
    return (
        rule.action == "drop"
        and rule.target == "border"
        and not rule.flap
        and (rule.until < float("inf"))
    )
