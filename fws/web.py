"""
Plain HTTP next to the WebSocket server: health, readiness, metrics and static files.

The admin endpoint (``--admin tcp:9100:interface=127.0.0.1``) serves
``/healthz``, ``/readyz`` and ``/metrics`` with twisted.web.  The public
WebSocket port stays a bare Autobahn factory (nothing of twisted.web on the
hot path) unless ``--static DIR``, ``--public-health`` or
``--public-metrics`` asks for HTTP there too; then it is a twisted.web
``Site`` whose root hands every request with ``Upgrade: websocket`` (on any
path) to Autobahn's ``WebSocketResource`` and serves the rest.
"""

from __future__ import annotations

import json
import time
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from fws._wire.handshake import not_http
from fws.static import StaticFiles

#: How often the heartbeat that measures reactor lag ticks, in seconds.
HEARTBEAT = 1.0


class Heartbeat:
    """
    Measures how late the reactor runs a timer: the lag ``/healthz`` reports.

    A reactor blocked by a filter that does blocking I/O answers nothing while
    it is blocked; afterwards the lag says how long that was.
    """

    def __init__(self, reactor: Any, interval: float = HEARTBEAT) -> None:
        self.reactor = reactor
        self.interval = interval
        self.lag = 0.0
        self.max_lag = 0.0
        self._expected = 0.0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    def start(self) -> None:
        self._expected = self.reactor.seconds() + self.interval
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        now = self.reactor.seconds()
        self.lag = max(0.0, now - self._expected)
        self.max_lag = max(self.max_lag, self.lag)
        self._expected = now + self.interval


def _json(request: Any, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return (json.dumps(body, sort_keys=True) + "\n").encode()


class HealthResource(Resource):
    """``/healthz``: 200 while the process runs and its reactor answers."""

    isLeaf = True

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Any) -> bytes:
        beat = self.service.heartbeat
        return _json(request, 200, {
            "status": "ok",
            "reactor_lag_seconds": round(beat.lag, 6) if beat else None,
            "uptime_seconds": round(time.time() - self.service.factory.stats.started, 3),
        })


class ReadyResource(Resource):
    """
    ``/readyz``: 200 when this node should get traffic, 503 with the reasons
    when it should not (not listening yet, draining, Redis down or not
    subscribed).
    """

    isLeaf = True

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Any) -> bytes:
        ready, checks = self.service.readiness()
        return _json(request, 200 if ready else 503,
                     {"status": "ready" if ready else "not ready", "checks": checks})


class MetricsResource(Resource):
    """``/metrics``: the Prometheus text exposition format."""

    isLeaf = True

    def __init__(self, metrics: Any) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        body, content_type = self.metrics.exposition()
        request.setHeader(b"content-type", content_type.encode())
        return bytes(body)


class AdminRoot(Resource):
    """The admin endpoint's ``/``: says what is there."""

    def __init__(self, service: Any, metrics: Any) -> None:
        super().__init__()
        self.putChild(b"healthz", HealthResource(service))
        self.putChild(b"readyz", ReadyResource(service))
        if metrics is not None:
            self.putChild(b"metrics", MetricsResource(metrics))

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path == b"":
            return self
        return notFound()

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        names = sorted(name.decode() for name in self.children)
        return ("fws admin: " + " ".join(f"/{n}" for n in names) + "\n").encode()


def _wants_websocket(request: Any) -> bool:
    upgrade = request.getHeader(b"upgrade")
    return upgrade is not None and upgrade.strip().lower() == b"websocket"


class _Handover:
    """
    What ``WebSocketResource`` builds its connection with: the fws factory
    without the accept cap, which the HTTP connection has passed already
    (:meth:`_PublicSite.buildProtocol`).
    """

    def __init__(self, factory: Any) -> None:
        self.buildProtocol = factory.build


class _TakeOver(Resource):
    """
    Autobahn's ``WebSocketResource``, minus the HTTP channel's idle timeout
    (which would otherwise fire on a connection twisted.web no longer owns).
    """

    isLeaf = True

    def __init__(self, factory: Any) -> None:
        super().__init__()
        self.inner = WebSocketResource(_Handover(factory))

    def render(self, request: Any) -> Any:
        channel = request.channel
        channel.setTimeout(None)
        if isinstance(channel, _BoundedChannel):
            channel.release()  # Autobahn's open handshake timeout takes over from here
        return self.inner.render(request)


class PublicRoot(Resource):
    """
    The root of the WebSocket port when it also speaks plain HTTP: WebSocket
    upgrades (any path) go to the fws factory, ``/healthz`` and ``/readyz``
    (with ``--public-health``) and ``/metrics`` (``--public-metrics``) are
    answered, everything else comes from ``--static DIR`` (:class:`fws.static.StaticFiles`,
    which decides what of DIR may be served), or is a 404.
    """

    def __init__(self, factory: Any, service: Any, static: str | None, health: bool,
                 metrics: Any) -> None:
        super().__init__()
        self.websocket = _TakeOver(factory)
        self.special: dict[bytes, Resource] = {}
        if health:
            self.special[b"healthz"] = HealthResource(service)
            self.special[b"readyz"] = ReadyResource(service)
        if metrics is not None:
            self.special[b"metrics"] = MetricsResource(metrics)
        self.static = StaticFiles(static) if static else None

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        if _wants_websocket(request):
            return self.websocket
        special = self.special.get(path)
        if special is not None and len(request.postpath) == 0:
            return special
        if self.static is not None:
            return self.static  # a leaf: it reads the whole path from the request itself
        return notFound()

    def render(self, request: Any) -> Any:
        # Only reached with an empty path (no segment at all), e.g. "GET  HTTP/1.1".
        return self.getChildWithDefault(b"", request).render(request)


class _QuietSite(Site):
    """A ``Site`` without an access log (probes every few seconds would flood it)."""

    def log(self, request: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "fws-http"


def _positive(value: bytes) -> bool:
    """A Content-Length above zero (one that is not a number is twisted.web's 400)."""
    try:
        return int(value.strip()) > 0
    except ValueError:
        return False


class _BoundedChannel(HTTPChannel):
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

    _log = Logger()
    #: The call that closes the connection if its request is not complete by then.
    _deadline: Any = None
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
        super().connectionMade()
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        timeout = self.factory.websocket_factory.limits.open_handshake_timeout
        self._deadline = self.callLater(timeout, self._expire)

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
        self.loseConnection()  # what the last response left buffered still goes out
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)

    def timeoutConnection(self) -> None:
        # The idle timeout (Site.timeOut): as the deadline, without twisted.web's log line.
        self._expire()

    def connectionLost(self, reason: Any = None) -> None:
        self._disarm()
        self._unhold()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self.line_mode and not self._handlingRequest and not self._head_bytes:
            # The request line has not ended yet: a control character says it is not HTTP.
            if not_http(data.split(b"\r\n", 1)[0]):
                self._refuse(400, "Bad Request", "not an HTTP request")
                return
        super().dataReceived(data)
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
        super().lineReceived(line)

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
        return bool(super().headerReceived(line))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._too_large("max_handshake_size")

    def allContentReceived(self) -> None:
        self._disarm()
        self._head_bytes = 0
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        if self.persistent:
            self._arm()  # before: buffered pipelined requests may be handled inside
        super().requestDone(request)

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
            transport.write(f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
                            "Content-Length: 0\r\n\r\n".encode())
            self.loseConnection()


class _PublicSite(_QuietSite):
    """A ``Site`` that starts and stops the WebSocket factory it hands connections to."""

    protocol = _BoundedChannel  # type: ignore[assignment]  # plain HTTP/1.1: no HTTP/2 here
    websocket_factory: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        """
        An HTTP channel, or ``None`` (the socket is closed at once) over the
        WebSocket factory's accept cap, which HTTP channels count towards
        (:meth:`fws.factory.FwsServerFactory.admit`).
        """
        if not self.websocket_factory.admit(addr):
            return None
        return super().buildProtocol(addr)

    def startFactory(self) -> None:
        super().startFactory()
        self.websocket_factory.doStart()

    def stopFactory(self) -> None:
        self.websocket_factory.doStop()
        super().stopFactory()


def public_site(factory: Any, service: Any, static: str | None, health: bool,
                metrics: Any) -> Site:
    """The twisted.web site the WebSocket port serves when it also speaks HTTP."""
    # Idle keep-alive connections (and any pause in a request) get what a handshake gets.
    site = _PublicSite(PublicRoot(factory, service, static, health, metrics),
                       timeout=factory.limits.open_handshake_timeout)
    site.websocket_factory = factory
    site.displayTracebacks = False
    site.noisy = False
    return site


def admin_site(service: Any, metrics: Any) -> Site:
    """The admin endpoint's site: ``/healthz``, ``/readyz``, ``/metrics``."""
    site = _QuietSite(AdminRoot(service, metrics))
    site.displayTracebacks = False
    site.noisy = False
    return site


__all__ = ["AdminRoot", "Heartbeat", "PublicRoot", "admin_site", "public_site"]
