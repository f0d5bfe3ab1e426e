"""The ``sim`` transport, where the other transports are: it lives with the
simulator (:mod:`p2pmsg.sim.transport`), whose worlds build on it."""

from p2pmsg.sim.transport import DEFAULT_PORT, SimTransport, parse_sim_endpoint

__all__ = ["DEFAULT_PORT", "SimTransport", "parse_sim_endpoint"]
