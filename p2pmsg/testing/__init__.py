"""A test kit shipped with the library, so users test their own transports.

:mod:`p2pmsg.testing.conformance` holds the transport conformance suite:
:data:`CHECKS`, :func:`check_transport` and the :func:`open_link_pair` helper.
"""

from p2pmsg.testing.conformance import CHECKS, Check, check_transport, open_link_pair

__all__ = ["CHECKS", "Check", "check_transport", "open_link_pair"]
