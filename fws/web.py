"""
Plain HTTP next to the WebSocket server: health, readiness, metrics and static files.

The admin endpoint (``--admin tcp:9100:interface=127.0.0.1``) serves
``/healthz``, ``/readyz`` and ``/metrics`` with twisted.web.  The public
WebSocket port stays a bare Autobahn factory (nothing of twisted.web on the
hot path) unless ``--static DIR``, ``--public-health`` or
``--public-metrics`` asks for HTTP there too; then it is a twisted.web
``Site`` whose root hands every request with ``Upgrade: websocket`` (on any
path) to Autobahn's ``WebSocketResource`` and serves the rest, over an HTTP
channel held to the WebSocket handshake's limits
(:class:`fws._wire.http.BoundedChannel`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.task import LoopingCall
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from fws._wire.http import BoundedChannel, hand_over
from fws.metrics import LagHistogram
from fws.static import StaticFiles
from fws.versions import SERVER

#: How often the heartbeat that measures reactor lag ticks, in seconds.
HEARTBEAT = 1.0


class Heartbeat:
    """
    Measures how late the reactor runs a timer: the lag ``/healthz`` reports.

    A reactor blocked by a filter that does blocking I/O answers nothing while
    it is blocked; afterwards the lag says how long that was.  Every tick's lag
    goes to ``lags``, the ``fws_reactor_lag_seconds`` histogram of ``/metrics``.
    """

    def __init__(self, reactor: Any, interval: float = HEARTBEAT) -> None:
        self.reactor = reactor
        self.interval = interval
        self.lag = 0.0
        self.max_lag = 0.0
        self.lags = LagHistogram()
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
        self.lags.observe(self.lag)
        # When the loop calls next: the next point of its grid (start + n * interval), not
        # now + interval, which after a late tick would hide as much lag from the next one.
        start = self._loop.starttime
        assert start is not None  # set by start(), before the first tick
        self._expected = now + self.interval - (now - start) % self.interval


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
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
        details = self.service.storage.details()
        if details:
            body["storage"] = dict(details)
        return _json(request, 200 if ready else 503, body)


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
        hand_over(request)  # Autobahn's open handshake timeout takes over from here
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


class _FwsRequest(Request):
    """
    twisted.web's request, saying ``Server: fws/VERSION`` as the WebSocket
    handshake does: twisted.web sets its own name and version
    (``TwistedWeb/...``) on every response before the resource renders, and a
    server's name should be one, whichever of its ports or pages answers.
    """

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        key = name.lower() if isinstance(name, bytes) else name.lower().encode()
        super().setHeader(name, SERVER if key == b"server" else value)


class _QuietSite(Site):
    """
    A ``Site`` without an access log (probes every few seconds would flood it),
    whose responses say ``Server: fws/VERSION``.
    """

    requestFactory = _FwsRequest

    def log(self, request: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "fws-http"


class _PublicSite(_QuietSite):
    """A ``Site`` that starts and stops the WebSocket factory it hands connections to."""

    protocol = BoundedChannel  # type: ignore[assignment]  # plain HTTP/1.1: no HTTP/2 here
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
