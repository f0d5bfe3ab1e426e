"""The simulated internet: deterministic, in-process, on trio time.

:mod:`p2pmsg.sim.net` is the seed: named hosts, listeners and TCP-like,
frame-preserving streams whose every packet passes a policy hook (deliver
with a delay, drop, reset) where censors will plug in.
"""

from p2pmsg.sim.net import (
    DELIVER,
    DROP,
    RESET,
    Deliver,
    Drop,
    Packet,
    Policy,
    Reset,
    SimHost,
    SimListener,
    SimNetwork,
    SimStream,
    Verdict,
    deliver_all,
)

__all__ = [
    "DELIVER",
    "DROP",
    "RESET",
    "Deliver",
    "Drop",
    "Packet",
    "Policy",
    "Reset",
    "SimHost",
    "SimListener",
    "SimNetwork",
    "SimStream",
    "Verdict",
    "deliver_all",
]
