"""Wrappers, not flags: ``timeout`` and ``padding`` around any transport.

Both take an inner :class:`~p2pmsg.abc.Transport` and are one, so they stack:
``PaddingTransport(TimeoutTransport(TcpTransport(), ...))`` is ``pad_tcp``
with timeouts.

Theory of operation. :class:`TimeoutTransport` changes no byte: same
``name``, ``framed`` and wire format as the inner one. ``dial`` runs under
``dial_timeout`` and then raises ``TimeoutError`` (an ``OSError``); the
cancelled inner dial closes what it opened. Each link, dialled or accepted,
is a :class:`TimeoutLink`:

* *idle*: receives that have waited ``idle_timeout`` seconds in all without
  data break the link (censors black-hole flows rather than reset them).
  The wait adds up across cancelled receives and any data resets it, so a
  caller polling with short timeouts still sees the silence; time when no
  receive waits does not count (a link nobody reads is unattended, not idle).
* *send*: a ``send`` still blocked after ``send_timeout`` (a peer that stopped
  reading, a window full of black-holed packets) breaks the link.

A broken link closes its inner link; later and pending operations raise
``BrokenResourceError`` (``ClosedResourceError`` after our own ``aclose``).

:class:`PaddingTransport` changes the wire format, so its endpoints have their
own name, ``pad_`` + the inner name (``pad_tcp:HOST:PORT``; inner names of at
most 28 characters fit the endpoint grammar). ``can_dial`` and ``dial`` hand
the inner transport the endpoint renamed to its name, arguments kept;
``serve`` reports the inner bound endpoint under ours. Peers agree on no
setting: any padding up to the core's cap is read and dropped. A
:class:`PaddingLink` is framed (one ``send`` of up to ``MAX_SEND`` bytes is
one ``receive``) over the frames of :mod:`transports.padding_core`:

* each message is one DATA frame with ``0..max_padding`` random bytes of
  padding (uniform), so sizes on the wire do not mirror the payload;
* with ``cover_interval=(low, high)``, a PAD frame of random size goes out
  whenever our direction has been silent for a random ``low..high`` seconds
  *while a receive waits*: the receiving task sends it, so nothing runs that
  a nursery did not start. ``low >= MIN_COVER_INTERVAL`` bounds the rate;
  default off. No cover frame is sent while a ``send`` holds the send lock.

Cancellation: a cancelled ``receive`` loses nothing (partial frames stay in
the de-framer); a cancelled ``send`` follows the inner link (nothing sent, or
the link breaks: tcp aborts a torn write). A frame above ``MAX_SEND`` bytes
(the most a framed inner must take) goes in two inner sends; cancelled
between them, the link breaks. No torn frame is ever followed by another.
A cover send is shielded from the receive's cancellation for at most
:data:`COVER_SEND_GRACE` seconds, then cancelled like any send.

Stack the timeout *inside* the padding, so the peer's cover frames keep a
quiet, healthy link from looking idle; outside, only data resets the timer.

Limits: over plain tcp the 7-byte headers are cleartext (a censor sees the
framing, not the payload sizes); ``pad_ws`` or ``pad_tls`` hide them. Data
frames leave when sent: cover blurs idle periods, not the timing of bursts.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from functools import partial

import trio

from p2pmsg.abc import MAX_SEND, Link, LinkHandler, Transport, remote_host
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import UnsupportedEndpoint
from transports.inner import ReportAs, feed
from transports.padding_core import (
    MAX_PADDING,
    Data,
    Deframer,
    EndOfStream,
    PaddingProtocolError,
    encode_data,
    encode_pad,
)

PAD_PREFIX = "pad_"
DEFAULT_MAX_PADDING = 256
MIN_COVER_INTERVAL = 0.1
COVER_SEND_GRACE = 1.0
_MAX_NAME = 32

log = logging.getLogger(__name__)


def _positive(what: str, value: float) -> float:
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{what} must be positive, not {value!r}")
    return value


# --- timeout -------------------------------------------------------------------


class TimeoutLink:
    """A :class:`~p2pmsg.abc.Link` that breaks when idle or blocked too long."""

    def __init__(self, inner: Link, *, idle_timeout: float, send_timeout: float) -> None:
        self._inner = inner
        self._idle_timeout = _positive("idle_timeout", idle_timeout)
        self._send_timeout = _positive("send_timeout", send_timeout)
        self._receive_lock = trio.Lock()
        self._waited = 0.0  # seconds receives have waited since the last data
        self._closed = False
        self._broken: str | None = None

    @property
    def remote_host(self) -> str | None:
        return remote_host(self._inner)

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the link was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)

    async def send(self, data: bytes) -> None:
        """The inner send; still blocked after ``send_timeout``, it breaks the
        link and raises ``BrokenResourceError``."""
        self._check_usable()
        with trio.move_on_after(self._send_timeout):
            try:
                await self._inner.send(data)
            except trio.ClosedResourceError:
                self._check_usable()
                raise
            return
        raise await self._break(f"a send was blocked for {self._send_timeout} s")

    async def receive(self) -> bytes:
        """The inner receive; after ``idle_timeout`` s of waiting in all without
        data, it breaks the link and raises ``BrokenResourceError``. Cancelled:
        nothing is lost, and the wait so far counts."""
        async with self._receive_lock:
            self._check_usable()
            start = trio.current_time()
            with trio.move_on_at(start + self._idle_timeout - self._waited):
                try:
                    data = await self._inner.receive()
                except trio.ClosedResourceError:
                    self._check_usable()
                    raise
                except trio.Cancelled:
                    self._waited += trio.current_time() - start
                    raise
                self._waited = 0.0
                return data
            raise await self._break(f"nothing received for {self._idle_timeout} s")

    async def _break(self, why: str) -> trio.BrokenResourceError | trio.ClosedResourceError:
        """Mark the link broken, close the inner link; the exception to raise."""
        if self._broken is None:
            self._broken = why
            log.debug("timeout: breaking a link: %s", why)
        await self._inner.aclose()
        if self._closed:
            return trio.ClosedResourceError("the link was closed")
        return trio.BrokenResourceError(self._broken)

    async def aclose(self) -> None:
        """Close the inner link (idempotent); pending operations are woken."""
        self._closed = True
        await self._inner.aclose()


class TimeoutTransport:
    """The inner transport, with dial, idle and send timeouts (see the module doc)."""

    def __init__(
        self, inner: Transport, *, dial_timeout: float, idle_timeout: float, send_timeout: float
    ) -> None:
        self._inner = inner
        self.name: str = inner.name
        self.framed: bool = inner.framed
        self._dial_timeout = _positive("dial_timeout", dial_timeout)
        self._wrap = partial(
            TimeoutLink,
            idle_timeout=_positive("idle_timeout", idle_timeout),
            send_timeout=_positive("send_timeout", send_timeout),
        )

    def can_dial(self, endpoint: Endpoint) -> bool:
        """The inner transport's answer."""
        return self._inner.can_dial(endpoint)

    async def dial(self, endpoint: Endpoint) -> Link:
        """The inner dial, or ``TimeoutError`` (an ``OSError``) after
        ``dial_timeout``; the inner dial is then cancelled and left nothing open."""
        with trio.move_on_after(self._dial_timeout):
            return self._wrap(await self._inner.dial(endpoint))
        raise TimeoutError(f"no connection within {self._dial_timeout} s")

    async def serve(
        self,
        endpoint: Endpoint,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The inner ``serve``, each accepted link wrapped in a :class:`TimeoutLink`."""
        await self._inner.serve(
            endpoint, partial(self._serve_one, handler), task_status=task_status
        )

    async def _serve_one(self, handler: LinkHandler, inner: Link) -> None:
        # The inner transport closes ``inner`` and logs the handler's failure.
        await handler(self._wrap(inner))


# --- padding -------------------------------------------------------------------


def _check_padding_options(max_padding: int, cover_interval: tuple[float, float] | None) -> None:
    """Raises ``ValueError`` for settings that break a cap or the cover rate bound."""
    if not 0 <= max_padding <= MAX_PADDING:
        raise ValueError(f"max_padding must be in 0..{MAX_PADDING}")
    low, high = cover_interval or (MIN_COVER_INTERVAL, MIN_COVER_INTERVAL)
    if not MIN_COVER_INTERVAL <= low <= high < math.inf:
        raise ValueError(f"cover_interval needs {MIN_COVER_INTERVAL} <= low <= high")


class PaddingLink:
    """A framed :class:`~p2pmsg.abc.Link` of padded frames over an inner link."""

    def __init__(
        self,
        inner: Link,
        *,
        max_padding: int = DEFAULT_MAX_PADDING,
        cover_interval: tuple[float, float] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        _check_padding_options(max_padding, cover_interval)
        self._inner = inner
        self._max_padding = max_padding
        self._cover = cover_interval
        self._rng = rng
        self._deframer = Deframer()
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._next_cover: float | None = None
        self._closed = False
        self._broken: str | None = None

    @property
    def remote_host(self) -> str | None:
        return remote_host(self._inner)

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the link was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)

    def _random_below(self, bound: int) -> int:
        return int.from_bytes(self._rng(4), "big") % bound

    def _padding(self) -> bytes:
        size = self._random_below(self._max_padding + 1)
        return self._rng(size) if size else b""

    def _schedule_cover(self) -> None:
        if self._cover is not None:
            low, high = self._cover
            fraction = self._random_below(1 << 32) / (1 << 32)
            self._next_cover = trio.current_time() + low + (high - low) * fraction

    def _cover_deadline(self) -> float:
        if self._cover is not None and self._next_cover is None:
            self._schedule_cover()  # the first wait of the link
        return math.inf if self._next_cover is None else self._next_cover

    async def send(self, data: bytes) -> None:
        """``data`` as one padded frame. Raises ``ValueError`` above ``MAX_SEND``
        bytes, else as the inner send. Cancelled: see the module docstring."""
        if len(data) > MAX_SEND:
            raise ValueError(f"a message is at most {MAX_SEND} bytes")
        async with self._send_lock:
            self._check_usable()
            try:
                await self._send_frame(encode_data(bytes(data), self._padding()))
            except trio.ClosedResourceError:
                self._check_usable()
                raise
            self._schedule_cover()

    async def _send_frame(self, frame: bytes) -> None:
        """Inner sends of at most ``MAX_SEND`` bytes (all a framed inner must take).

        Cancelled between two of them, the frame is torn: the link is broken
        and the inner one closed at once, so the peer sees the cut.
        """
        parts = [frame[i : i + MAX_SEND] for i in range(0, len(frame), MAX_SEND)]
        for index, part in enumerate(parts):
            try:
                await self._inner.send(part)
            except trio.Cancelled:
                if index:
                    self._broken = "a send was cancelled inside a frame"
                    with trio.CancelScope() as abort:
                        abort.cancel()  # an aclose in a cancelled scope does not linger
                        await self._inner.aclose()
                raise

    async def receive(self) -> bytes:
        """The next message, as the inner receive; a bad frame or a stream cut
        inside a frame raise ``BrokenResourceError``. Cancelled: nothing is lost."""
        async with self._receive_lock:
            self._check_usable()
            while True:
                try:
                    event = self._deframer.next_event()
                except PaddingProtocolError as exc:
                    self._broken = f"padding: {exc}"
                    log.debug("padding: closing a link that broke the framing: %s", exc)
                    await self._inner.aclose()
                    raise trio.BrokenResourceError(self._broken) from exc
                if isinstance(event, Data):
                    return event.data
                if isinstance(event, EndOfStream):
                    raise trio.EndOfChannel
                await self._receive_more()

    async def _receive_more(self) -> None:
        """Feed the de-framer one inner chunk, or send a cover frame when it is due."""
        with trio.move_on_at(self._cover_deadline()):
            await feed(self._inner, self._deframer, self._check_usable)
            return
        await self._send_cover()

    async def _send_cover(self) -> None:
        """One PAD frame, unless a send is in progress. Errors are left to receive."""
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            self._schedule_cover()  # the sender makes noise already
            return
        try:
            frame = encode_pad(self._padding())
            with trio.CancelScope(shield=True), trio.move_on_after(COVER_SEND_GRACE):
                await self._inner.send(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the next inner receive reports it, after the peer's last data
        finally:
            self._schedule_cover()
            self._send_lock.release()

    async def aclose(self) -> None:
        """Close the inner link (idempotent); pending operations are woken."""
        self._closed = True
        await self._inner.aclose()


class PaddingTransport:
    """Dials and serves ``pad_<inner>:ADDRESS`` endpoints (see the module doc).

    ``max_padding`` (at most :data:`~transports.padding_core.MAX_PADDING`)
    bounds the random padding of each frame; ``cover_interval=(low, high)``
    turns cover frames on; ``rng`` makes the padding and the intervals.
    """

    framed = True

    def __init__(
        self,
        inner: Transport,
        *,
        max_padding: int = DEFAULT_MAX_PADDING,
        cover_interval: tuple[float, float] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.name: str = PAD_PREFIX + inner.name
        if len(self.name) > _MAX_NAME:
            raise ValueError(f"the inner transport's name {inner.name!r} is too long")
        _check_padding_options(max_padding, cover_interval)
        self._inner = inner
        self._wrap = partial(
            PaddingLink, max_padding=max_padding, cover_interval=cover_interval, rng=rng
        )

    def _inner_endpoint(self, endpoint: Endpoint) -> Endpoint:
        """The endpoint renamed for the inner transport. Raises ``UnsupportedEndpoint``."""
        if endpoint.transport != self.name:
            raise UnsupportedEndpoint(f"not a {self.name} endpoint: {endpoint.transport}")
        return Endpoint(self._inner.name, endpoint.address, endpoint.args)

    def can_dial(self, endpoint: Endpoint) -> bool:
        """True for our name and an address the inner transport can dial."""
        try:
            return self._inner.can_dial(self._inner_endpoint(endpoint))
        except UnsupportedEndpoint:
            return False

    async def dial(self, endpoint: Endpoint) -> Link:
        """Dial the renamed endpoint. Raises ``UnsupportedEndpoint`` or as the inner."""
        return self._wrap(await self._inner.dial(self._inner_endpoint(endpoint)))

    async def serve(
        self,
        endpoint: Endpoint,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the renamed endpoint; report the bound one under our name."""
        await self._inner.serve(
            self._inner_endpoint(endpoint),
            partial(self._serve_one, handler),
            task_status=ReportAs(task_status, lambda e: Endpoint(self.name, e.address, e.args)),
        )

    async def _serve_one(self, handler: LinkHandler, inner: Link) -> None:
        # The inner transport closes ``inner`` and logs the handler's failure.
        await handler(self._wrap(inner))
