"""
The composition root: :func:`make_service` builds the whole service tree.

Building opens nothing (no socket, no Redis connection): twistd calls
``makeService`` before it daemonises and drops privileges.  Listening starts in
``privilegedStartService``, everything else in ``startService``.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from fws.config import Config, ConfigError, load_storage_module
from fws.factory import FwsServerFactory
from fws.pipeline import FilterPipeline, load_pipeline

log = Logger()


class ListenError(Exception):
    """An endpoint could not be listened on; the message is one line."""


class ListeningService(Service):
    """
    Listens on every endpoint for one factory, synchronously where possible.

    Unlike ``StreamServerEndpointService`` it keeps the listening ports
    (``ports``, for tests and logs) and reports a failure as a
    :class:`ListenError` from ``privilegedStartService``, after closing the
    ports it had already opened, so nothing is left listening.
    """

    name = "websocket"

    def __init__(self, endpoints: list[tuple[str, IStreamServerEndpoint]], factory: Any) -> None:
        self.endpoints = endpoints
        self.factory = factory
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for description, endpoint in self.endpoints:
            results: list[Any] = []
            endpoint.listen(self.factory).addBoth(results.append)
            if not results:
                # Only endpoints that listen asynchronously get here; none of the
                # stock ones do.  Treat a late failure as fatal too.
                raise ListenError(f"endpoint {description} did not start listening synchronously")
            result = results[0]
            if isinstance(result, Failure):
                self._close_ports()
                raise ListenError(f"cannot listen on {description}: {_listen_reason(result)}")
            self.ports.append(result)
            log.info("fws listening on {address} ({endpoint})", address=_address(result),
                     endpoint=description)

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self._close_ports()

    def _close_ports(self) -> Deferred[Any]:
        from twisted.internet.defer import gatherResults

        ports, self.ports = self.ports, []
        return gatherResults([maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)


def _listen_reason(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, CannotListenError):
        inner = error.socketError
        text = getattr(inner, "strerror", None) or str(inner)
        return str(text).lower() if text else "cannot listen"
    return str(error) or type(error).__name__


def _address(port: IListeningPort) -> str:
    host = port.getHost()
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"
    return str(getattr(host, "name", host))


class FwsService(MultiService):
    """
    The root of the tree: storage, then the WebSocket listener.

    ``stopService`` runs in a fixed order, not MultiService's all-at-once: stop
    accepting, close every client with 1001 and wait (up to
    ``config.stop_timeout``), then stop storage, so nothing a filter does
    during the close handshakes finds storage gone.
    """

    def __init__(self, config: Config, factory: FwsServerFactory, storage: Any,
                 listener: ListeningService) -> None:
        super().__init__()
        self.config = config
        self.factory = factory
        self.storage = storage
        self.listener = listener
        storage.setServiceParent(self)
        listener.setServiceParent(self)

    async def _stop(self) -> None:
        await self.listener.stopService()
        await self.factory.close_all(timeout=self.config.stop_timeout,
                                     drain_period=self.config.limits.drain_period)
        await maybeDeferred(self.storage.stopService)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())


def build_pipeline(config: Config) -> FilterPipeline:
    """Load the filter modules of ``config`` (raises FilterLoadError)."""
    return load_pipeline(config.filters, config)


def parse_endpoints(config: Config, reactor: Any) -> list[tuple[str, IStreamServerEndpoint]]:
    """Parse every listen string now, so a typo or a bad key file fails before anything starts."""
    endpoints = []
    for description in config.listen:
        try:
            endpoints.append((description, serverFromString(reactor, description)))
        except Exception as e:  # ValueError, OpenSSL errors, KeyError for unknown arguments ...
            raise ConfigError(f"bad endpoint {description!r}: {_one_line(e)}") from e
    return endpoints


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if "OpenSSL" in type(e).__module__ or type(e).__name__ == "Error":
        text = f"invalid key or certificate ({text})"
    return " ".join(text.split())


def make_service(
    config: Config, reactor: Any, pipeline: FilterPipeline | None = None
) -> FwsService:
    """
    Build the complete fws service tree without starting it.

    :param config: Fully resolved configuration (:func:`fws.config.resolve`).
    :param reactor: Reactor for listening, storage and timers; a
        ``MemoryReactorClock`` in tests.
    :param pipeline: Already loaded filters; loaded from ``config`` if omitted.
    :returns: An :class:`FwsService` whose ``factory`` is the WebSocket server.
    :raises ConfigError: an endpoint or storage option is unusable.
    :raises fws.pipeline.FilterLoadError: a filter module is.
    """
    if pipeline is None:
        pipeline = build_pipeline(config)
    pipeline = pipeline.with_timeout(config.limits.filter_timeout, reactor)
    storage = load_storage_module(config.storage).make_storage_object(config, reactor)
    factory = FwsServerFactory(pipeline, storage, reactor=reactor, limits=config.limits,
                               options=config.options)
    listener = ListeningService(parse_endpoints(config, reactor), factory)
    return FwsService(config, factory, storage, listener)


def install_stop_signals(reactor: Any) -> None:
    """
    Make SIGTERM and SIGINT stop the reactor gracefully with exit status 0.

    Twisted's own handlers remember the signal and re-raise it after shutdown
    (so the process dies "killed by SIGTERM"); a daemon told to stop that
    stops cleanly should say so with 0.  Call this once the reactor runs, after
    Twisted installed its handlers.
    """

    stopping = []

    def handler(signum: int, frame: Any) -> None:
        if stopping:  # a second signal (e.g. from a process group) changes nothing
            return
        stopping.append(signum)
        log.info("received {signal}, stopping", signal=signal.Signals(signum).name)
        reactor.callFromThread(reactor.stop)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def fail_startup(prog: str, message: str, status: int) -> None:
    """Print one error line to the real stderr and exit (no traceback)."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"{prog}: error: {message}\n")
    stream.flush()
    raise SystemExit(status)
