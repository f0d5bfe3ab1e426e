"""What the transports that wrap an inner transport (ws, tls, obfs, the
wrappers) share: reporting the inner ``serve``'s endpoint as their own, and
feeding one inner chunk to a sans-IO de-framer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from p2pmsg.abc import Link
from p2pmsg.endpoint import Endpoint


class ReportAs:
    """A ``task_status`` that reports the inner transport's endpoint as ours."""

    def __init__(self, outer: trio.TaskStatus[Endpoint], convert: Callable[[Endpoint], Endpoint]):
        self._outer = outer
        self._convert = convert

    def started(self, value: Endpoint | None = None) -> None:
        assert value is not None
        self._outer.started(self._convert(value))


class Deframer(Protocol):
    def receive_data(self, data: bytes) -> None: ...
    def receive_eof(self) -> None: ...


async def feed(inner: Link, deframer: Deframer, check_usable: Callable[[], None]) -> None:
    """One chunk of ``inner`` into ``deframer``, or its end of stream.

    After our own close of ``inner`` (``ClosedResourceError``) ``check_usable``
    raises what the outer link's state calls for; otherwise the error stands.
    Cancelled: nothing is lost (the inner receive loses nothing).
    """
    try:
        data = await inner.receive()
    except trio.EndOfChannel:
        deframer.receive_eof()
        return
    except trio.ClosedResourceError:
        check_usable()
        raise
    deframer.receive_data(data)
