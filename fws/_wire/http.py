"""
twisted.web's HTTP channel, held to the limits of the WebSocket handshake: the
only place that knows its internals.

When the WebSocket port also speaks plain HTTP (``--static DIR``,
``--public-health``, ``--public-metrics``), it is a twisted.web ``Site``
(:mod:`fws.web`), and a client reaches it before any WebSocket handshake. Its
channel must then be bounded as the handshake is, or it is the way around
fws's limits: a request's head is held to ``--max-handshake-size`` bytes and
``--max-handshake-headers`` headers (431), to ``--open-handshake-timeout``
seconds (an idle keep-alive connection too), a request with a body is
refused with 413 (nothing on that port takes one), and every HTTP connection
counts towards the WebSocket factory's accept cap until it is lost or a
WebSocket takes it over. twisted.web offers no hooks for any of that: the
channel overrides and reads its undocumented state (``_abortingCall``,
``_handlingRequest``, ``_receivedHeaderCount``,
``_respondToBadRequestAndDisconnect``, LineReceiver's ``_buffer`` and
``line_mode``, ``allContentReceived``, ``headerReceived``, ``requestDone``,
``persistent``, ``requests``, ``forceAbortClient``, a request's ``channel``),
each name listed in :data:`fws._wire.upstream.UPSTREAM_INTERNALS`, so that an
upgrade that renames one fails ``tests/test_upstream.py`` instead of fws
quietly.

The channel asks the WebSocket factory only what :class:`ChannelHost`
declares (through the site's ``websocket_factory``, :class:`ChannelSite`);
this module imports nothing of fws above the wire.
"""

# The project's mypy run checks this module for calls into untyped code too, as
# ``mypy --strict`` does (twisted.web's channel is untyped): its targeted
# ignores are then used in both runs.
# mypy: disallow-untyped-calls

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http import HTTPChannel, Request

from fws._wire.handshake import not_http


class ChannelLimits(Protocol):
    """The limits the channel holds a request to (:class:`fws.limits.Limits`)."""

    @property
    def max_handshake_size(self) -> int:
        """Bytes a request's head may have, line ends included."""

    @property
    def max_handshake_headers(self) -> int:
        """Headers a request may have."""

    @property
    def open_handshake_timeout(self) -> float:
        """Seconds a request has to be complete once the connection is ready for it."""


class ChannelStats(Protocol):
    """The counters the channel adds to (:class:`fws.metrics.Stats`)."""

    #: HTTP status -> requests refused with it.
    refused: dict[int, int]

    def hit(self, limit: str) -> None:
        """The limit named ``limit`` acted."""


class ChannelHost(Protocol):
    """What the channel asks of the WebSocket factory whose port it shares."""

    #: HTTP connections not taken over by a WebSocket: they count towards the
    #: accept cap (the channel adds itself and takes itself off).
    http_channels: int
    #: What responses say in ``Server:`` (the WebSocket handshake's, Autobahn's factory option).
    server: str

    @property
    def limits(self) -> ChannelLimits:
        """The limits of the WebSocket handshake."""

    @property
    def stats(self) -> ChannelStats:
        """The counters refusals and limits add to."""

    @property
    def log_connections(self) -> bool:
        """Whether each refusal gets an info line."""

    def pending_started(self, host: str | None) -> None:
        """A connection from ``host`` has not completed its handshake yet."""

    def pending_ended(self, host: str | None) -> None:
        """A connection from ``host`` counted by :meth:`pending_started` no longer is pending."""


class ChannelSite(Protocol):
    """The site a :class:`BoundedChannel` belongs to (``fws.web``'s public site)."""

    @property
    def websocket_factory(self) -> ChannelHost:
        """The WebSocket factory the site hands connections to."""


def _positive(value: bytes) -> bool:
    """A Content-Length above zero (one that is not a number is twisted.web's 400)."""
    try:
        return int(value.strip()) > 0
    except ValueError:
        return False


class BoundedChannel(HTTPChannel):
    """
    twisted.web's HTTP channel, held to the limits of the WebSocket handshake.

    twisted.web's own bounds are looser than fws's (500 headers, 16 KB per
    line) and say 400, or nothing at all, for each; its only timeout is reset
    by every byte, so a client sending a byte a second keeps a socket for
    ever. Here a request's head is refused with 431 over
    ``--max-handshake-size`` bytes or ``--max-handshake-headers`` headers, with
    400 when it cannot be HTTP, a request with a body with 413 (static files,
    health and metrics take none), one log line each (as the WebSocket port's
    refusals); and a request must be complete within
    ``--open-handshake-timeout`` seconds of the connection being ready for it
    (connected, or done with the previous response: idle keep-alive
    connections are bounded by the same time), or the connection is closed.
    """

    factory: ChannelSite
    _log = Logger()
    #: The call that closes the connection if its request is not complete by then.
    _deadline: IDelayedCall | None = None
    #: Bytes of the current request's head so far, line ends included.
    _head_bytes = 0
    _refused = False
    #: Whether the channel counts towards the accept cap (from connectionMade
    #: until it is lost or a WebSocket takes the connection over), and its peer's address.
    _held = False
    _host: str | None = None

    def connectionMade(self) -> None:
        factory = self.factory.websocket_factory
        limits = factory.limits
        self._held = True
        transport: Any = self.transport
        self._host = getattr(transport.getPeer(), "host", None)
        factory.http_channels += 1
        factory.pending_started(self._host)
        # twisted.web's checks stay as a backstop; fws's own (below) act first, with 431.
        self.totalHeadersSize = self.MAX_LENGTH = limits.max_handshake_size
        self.maxHeaders = limits.max_handshake_headers
        super().connectionMade()  # type: ignore[no-untyped-call]
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        timeout = self.factory.websocket_factory.limits.open_handshake_timeout
        self._deadline = self.callLater(timeout, self._expire)  # type: ignore[no-untyped-call]

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def release(self) -> None:
        """
        The connection is no longer the channel's (a WebSocket took it): no
        timer of its own, and the WebSocket counts towards the accept cap instead.
        """
        self._disarm()
        self._unhold()

    def _unhold(self) -> None:
        if self._held:
            self._held = False
            factory = self.factory.websocket_factory
            factory.http_channels -= 1
            factory.pending_ended(self._host)

    def _expire(self) -> None:
        """Out of time: an idle connection is closed, one in the middle of a request aborted."""
        self._deadline = None
        transport: Any = self.transport
        if transport is None or getattr(transport, "disconnected", False):
            return
        if self._head_bytes or self._buffer or self.requests:  # part of a request came
            transport.abortConnection()
            return
        # What the last response left buffered still goes out.
        self.loseConnection()  # type: ignore[no-untyped-call]
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(  # type: ignore[no-untyped-call]
                self.abortTimeout, self.forceAbortClient)

    def timeoutConnection(self) -> None:
        # The idle timeout (Site.timeOut): as the deadline, without twisted.web's log line.
        self._expire()

    def connectionLost(self, reason: Any = None) -> None:
        self._disarm()
        self._unhold()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self.line_mode and not self._handlingRequest and not self._head_bytes:
            # The request line has not ended yet: a control character says it is not HTTP.
            if not_http(data.split(b"\r\n", 1)[0]):
                self._refuse(400, "Bad Request", "not an HTTP request")
                return
        super().dataReceived(data)  # type: ignore[no-untyped-call]
        if (not self._refused and self.line_mode and not self._handlingRequest
                and self._head_bytes + len(self._buffer) >= self.totalHeadersSize):
            self._too_large("max_handshake_size")  # it could not end in time now

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        self._head_bytes += len(line) + 2
        if self._head_bytes > self.totalHeadersSize:
            self._too_large("max_handshake_size")
            return
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def headerReceived(self, line: bytes) -> bool:
        if self._refused:
            return False
        if self._receivedHeaderCount >= self.maxHeaders:
            self._too_large("max_handshake_headers")
            return False
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" or (name == b"content-length" and _positive(value)):
            # Nothing on this port takes a body, and twisted.web would store one of
            # any size (in a temporary file past 100 KB) within the deadline.
            self.factory.websocket_factory.stats.hit("request_body")
            self._refuse(413, "Content Too Large", "this port takes no request body")
            return False
        return bool(super().headerReceived(line))  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        self._too_large("max_handshake_size")

    def allContentReceived(self) -> None:
        self._disarm()
        self._head_bytes = 0
        super().allContentReceived()  # type: ignore[no-untyped-call]

    def requestDone(self, request: Any) -> None:
        if self.persistent:
            self._arm()  # before: buffered pipelined requests may be handled inside
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._refuse(400, "Bad Request", "malformed request")

    def _too_large(self, limit: str) -> None:
        limits = self.factory.websocket_factory.limits
        detail = (f"request over {limits.max_handshake_size} bytes"
                  if limit == "max_handshake_size"
                  else f"over {limits.max_handshake_headers} headers")
        self.factory.websocket_factory.stats.hit(limit)
        self._refuse(431, "Request Header Fields Too Large", detail)

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        """Answer ``status``, close, log one line, and read nothing more of the request."""
        if self._refused:
            return
        self._refused = True
        self._disarm()
        factory = self.factory.websocket_factory
        factory.stats.refused[status] = factory.stats.refused.get(status, 0) + 1
        transport: Any = self.transport
        peer = transport.getPeer() if transport is not None else None
        if factory.log_connections:
            self._log.info("refused HTTP request from {peer}: {status} {reason} ({detail})",
                           peer=getattr(peer, "host", None) or str(peer), status=status,
                           reason=reason, detail=detail)
        if transport is not None:
            # The WebSocket handshake's Server (and twisted.web's for the requests it answers).
            transport.write(f"HTTP/1.1 {status} {reason}\r\nServer: {factory.server}\r\n"
                            "Connection: close\r\nContent-Length: 0\r\n\r\n".encode())
            self.loseConnection()  # type: ignore[no-untyped-call]


def hand_over(request: Request) -> None:
    """
    A WebSocket takes ``request``'s connection over from twisted.web: its
    channel's idle timeout is off (it would otherwise fire on a connection
    twisted.web no longer owns), and a :class:`BoundedChannel` is released
    (Autobahn's open handshake timeout takes over from here).
    """
    channel = request.channel
    channel.setTimeout(None)
    if isinstance(channel, BoundedChannel):
        channel.release()


__all__ = ["BoundedChannel", "ChannelHost", "ChannelLimits", "ChannelSite", "ChannelStats",
           "hand_over"]
