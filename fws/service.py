"""
The composition root: :func:`make_service` builds the whole service tree.

Building opens nothing (no socket, no Redis connection): twistd calls
``makeService`` before it daemonises and drops privileges.  Listening starts in
``privilegedStartService``, everything else in ``startService``.
"""

from __future__ import annotations

import gc
import re
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from fws._wire import framing
from fws._wire.protocol import Upcalls
from fws._wire.transport import lean_port
from fws.config import Config, ConfigError, load_storage_module
from fws.connection import Connection, Server
from fws.factory import FwsServerFactory
from fws.pipeline import FilterPipeline, load_pipeline
from fws.protocol import ConnectionHost, FwsServerProtocol
from fws.storage_objects import StorageObject, complete

log = Logger()

#: The garbage collector's thresholds fws runs with. Every handshake allocates
#: about a hundred container objects that then live as long as the connection,
#: so with Python's default (700, 10, 10) a young-generation collection ran every
#: few handshakes and an older one every few dozen, each walking the new
#: connections again: +5 % handshakes and +4 % echo round trips with these
#: (benchmarks/results/gc-ab-20261125.md), fan-out and idle memory unchanged.
GC_THRESHOLDS = (10_000, 20, 20)
_PYTHON_GC_DEFAULTS = (700, 10, 10)
#: Running services that hold the thresholds raised: the setting is the process's,
#: so the first to start raises it and the last to stop puts Python's back.
_gc_holders: set[Any] = set()


def _hold_gc_thresholds(service: Any) -> None:
    """Raise the thresholds for ``service``, unless someone else chose their own."""
    if not _gc_holders:
        if gc.get_threshold() != _PYTHON_GC_DEFAULTS:
            return  # an embedding application's or a filter module's choice stays
        gc.set_threshold(*GC_THRESHOLDS)
    _gc_holders.add(service)


def _release_gc_thresholds(service: Any) -> None:
    if service not in _gc_holders:
        return
    _gc_holders.discard(service)
    if not _gc_holders and gc.get_threshold() == GC_THRESHOLDS:
        gc.set_threshold(*_PYTHON_GC_DEFAULTS)


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

    def __init__(self, endpoints: list[tuple[str, IStreamServerEndpoint]], factory: Any,
                 name: str = "websocket", what: str = "fws", label: str = "WebSocket") -> None:
        self.endpoints = endpoints
        self.factory = factory
        self.setName(name)
        self.what = what
        #: Which endpoint a listen failure names ("the WebSocket endpoint", "the admin endpoint").
        self.label = label
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for description, endpoint in self.endpoints:
            kind, args, kwargs = endpoint_arguments(description)
            problem = unix_socket_problem(kwargs.get("address") or (args[0] if args else "")) \
                if kind == "unix" else None
            if problem is not None:  # Twisted would say "No such file" of its lock file
                self._close_ports()
                raise ListenError(f"cannot listen on the {self.label} endpoint {description}: "
                                  f"{problem}")
            results: list[Any] = []
            endpoint.listen(self.factory).addBoth(results.append)
            if not results:
                # Only endpoints that listen asynchronously get here; none of the
                # stock ones do.  Treat a late failure as fatal too.
                raise ListenError(f"endpoint {description} did not start listening synchronously")
            result = results[0]
            if isinstance(result, Failure):
                self._close_ports()
                raise ListenError(f"cannot listen on the {self.label} endpoint {description}: "
                                  f"{_listen_reason(result)}")
            lean_port(result)  # its connections' transports keep fewer strings (issue 16)
            self.ports.append(result)
            log.info("{what} listening on {address} ({endpoint})", what=self.what,
                     address=_address(result), endpoint=description)

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
    return _one_line(error)


def _address(port: IListeningPort) -> str:
    host: Any = port.getHost()  # IPv4Address, IPv6Address or UNIXAddress
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"
    return str(getattr(host, "name", host))


class _Drain(Service):
    """
    Closes every client (1001) when stopped, and waits for them (up to
    ``config.stop_timeout``): a child of :class:`FwsService` between the
    WebSocket listener and storage, so that is where the drain comes.

    Waited for means unregistered with its disconnect chain finished
    (:meth:`FwsServerFactory.close_all`), not merely disconnected: storage,
    stopped next, must still work for disconnect filters that write to it.
    """

    def __init__(self, root: FwsService) -> None:
        self.setName("drain")
        self.root = root

    def stopService(self) -> Deferred[None]:
        super().stopService()
        config = self.root.config
        return self.root.factory.close_all(timeout=config.stop_timeout,
                                           drain_period=config.limits.drain_period)


class _HeartbeatService(Service):
    """Runs the reactor-lag :class:`fws.web.Heartbeat` while the tree runs."""

    def __init__(self, heartbeat: Any) -> None:
        self.setName("heartbeat")
        self.heartbeat = heartbeat

    def startService(self) -> None:
        super().startService()
        self.heartbeat.start()

    def stopService(self) -> None:
        super().stopService()
        self.heartbeat.stop()


class FwsService(MultiService):
    """
    The root of the tree: storage, the WebSocket listener, and the admin listener.

    Its children start in order and stop in reverse order, as MultiService's
    do, but one after the other (each waits for the one before): a child
    added to the tree is stopped first, then, ``/readyz`` having turned 503
    (draining), the listener stops accepting, every client is closed with 1001
    and waited for, its disconnect chain included (``_Drain``), storage
    stops, so nothing a filter does during the close handshakes or in the
    disconnect chain finds storage gone, and the admin endpoint
    closes last (it is the first child), so that health
    checks see the drain.

    :ivar metrics: The Prometheus registry (:class:`fws.metrics.FwsMetrics`)
        when metrics are served, else ``None``.
    :ivar heartbeat: Measures reactor lag for ``/healthz`` (when served).
    """

    def __init__(self, config: Config, factory: FwsServerFactory, storage: StorageObject,
                 listener: ListeningService, *, metrics: Any = None,
                 heartbeat: Any = None,
                 admin: Callable[[FwsService], ListeningService] | None = None) -> None:
        super().__init__()
        self.config = config
        self.factory = factory
        self.storage = storage
        self.listener = listener
        #: The admin endpoint's listener, if any (set by :func:`make_service`).
        self.admin: ListeningService | None = None
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.draining = False
        # Children stop in reverse order: the admin endpoint (made for this service,
        # whose readiness it answers) is added first so that it closes last.
        if admin is not None:
            self.admin = admin(self)
            self.admin.setServiceParent(self)
        if heartbeat is not None:
            _HeartbeatService(heartbeat).setServiceParent(self)
        storage.setServiceParent(self)
        _Drain(self).setServiceParent(self)
        listener.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError:
            for child in self:  # what listened already closes: a failed start leaves nothing
                if isinstance(child, ListeningService):
                    child._close_ports()
            raise

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """
        Whether this node should get new connections, with one line per check
        (what ``/readyz`` answers).
        """
        checks = {"listening": "ok" if self.listener.ports else "not listening"}
        if self.draining:
            checks["draining"] = "shutting down"
        reason = self.storage.health()
        if self.storage.shared or reason:  # a storage of this process alone is never down
            checks["storage"] = reason or "ok"
        return all(v == "ok" for v in checks.values()), checks

    def startService(self) -> None:
        super().startService()
        _hold_gc_thresholds(self)

    async def _stop(self) -> None:
        self.draining = True
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {service!r} failed", service=child)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        _release_gc_thresholds(self)
        return Deferred.fromCoroutine(self._stop())


def build_pipeline(config: Config) -> FilterPipeline:
    """Load the filter modules of ``config`` (raises FilterLoadError)."""
    return load_pipeline(config.filters, config)


#: Listen backlog for TCP, TLS and unix endpoints that do not set one. Twisted's
#: default (50) drops SYNs as soon as a burst of clients reconnects at once.
DEFAULT_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """``description`` with ``:backlog=1024`` added when it is a stream endpoint without one."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


def parse_endpoints(config: Config, reactor: Any,
                    descriptions: tuple[str, ...] | None = None
                    ) -> list[tuple[str, IStreamServerEndpoint]]:
    """
    Parse every listen string now, so a typo, a bad key file or an interface
    that cannot be fails before anything starts (and in ``--check``), each in
    words (:func:`endpoint_problem`).
    """
    endpoints = []
    for description in config.listen if descriptions is None else descriptions:
        problem = endpoint_problem(description)
        if problem is not None:
            raise ConfigError(f"bad endpoint {description!r}: {problem}")
        try:
            endpoints.append((description, serverFromString(reactor, with_backlog(description))))
        except Exception as e:  # ValueError, OpenSSL errors, KeyError for unknown arguments ...
            reason = _tls_load_problem(description) or _one_line(e)
            raise ConfigError(f"bad endpoint {description!r}: {reason}") from e
    return endpoints


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:  # "[Errno 2] No such file ...: 'x'" in words
        text = e.strerror.lower() + (f": {e.filename}" if e.filename else "")
    else:
        text = str(e) or type(e).__name__
    if "OpenSSL" in type(e).__module__ or type(e).__name__ == "Error":
        text = f"invalid key or certificate ({text})"
    return " ".join(text.split())


def endpoint_arguments(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    An endpoint string's type (lower case), positional and keyword arguments,
    split as Twisted splits them: ``:`` between arguments, the first ``=`` of
    one between its name and value, ``\\`` escaping the character after it.
    """
    parts: list[list[str]] = [[""]]
    escaped = False
    for char in description:
        if escaped:
            parts[-1][-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append([""])
        elif char == "=" and len(parts[-1]) == 1:
            parts[-1].append("")
        else:
            parts[-1][-1] += char
    kind = parts[0][0].strip().lower() if len(parts[0]) == 1 else ""
    args = [part[0] for part in parts[1:] if len(part) == 1]
    kwargs = {part[0]: part[1] for part in parts[1:] if len(part) == 2}
    return kind, args, kwargs


def endpoint_problem(description: str) -> str | None:
    """
    What is wrong with a ``tcp:`` or ``ssl:`` endpoint string that Twisted
    would only find out when listening (or report as an OpenSSL error tuple):
    a TLS key or certificate that does not load, an interface that is no
    address. ``None`` when nothing is (or for the endpoint types Twisted checks
    alone). A unix socket's directory is looked at when listening
    (:class:`ListeningService`): ``--check`` may run where it is yet to be
    made (systemd's ``RuntimeDirectory=`` makes it just before the start).
    """
    kind, _, kwargs = endpoint_arguments(description)
    if kind in ("tcp", "ssl"):
        interface = kwargs.get("interface", "")
        problem = interface_problem(interface) if interface else None
        if problem is not None:
            return problem
    if kind == "ssl":
        key = kwargs.get("privateKey") or "server.pem"  # Twisted's defaults
        cert = kwargs.get("certKey") or key
        return tls_problem(key, cert, kwargs.get("extraCertChain"), kwargs.get("dhParameters"))
    return None


def interface_problem(interface: str) -> str | None:
    """
    Why ``interface`` cannot be what a TCP listener binds, or ``None``: an IP
    address (IPv4, or IPv6 with an optional ``%scope``), or a host name this
    machine resolves to an IPv4 address (Twisted binds names as IPv4).
    """
    import ipaddress
    import socket

    text = interface.strip()
    try:
        ipaddress.ip_address(text.split("%", 1)[0] if ":" in text else text)
        return None
    except ValueError:
        pass
    if ":" in text or all(c.isdigit() or c == "." for c in text):
        return f"interface {interface} is not an IP address"
    try:
        socket.getaddrinfo(text, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return (f"interface {interface} is neither an IP address nor a host name this machine "
                "resolves")
    return None


def unix_socket_problem(path: str) -> str | None:
    """Why a unix socket cannot be created at ``path`` (its directory), or ``None``."""
    import os

    if not path or path.startswith(("@", "\0")):  # abstract sockets have no directory
        return None
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        return f"the socket's directory {directory} {what} (create it first)"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"the socket's directory {directory} is not writable (the socket goes there)"
    return None


#: A private key's PEM block, whole (group 1: the kind, "RSA ", "ENCRYPTED " ...; group 2: the body).
_PEM_KEY = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----(.*?)-----END \1PRIVATE KEY-----",
                      re.S)
_PEM_KEY_BEGIN = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_PEM_CERT = re.compile(rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----")
_PEM_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def _read_tls_file(label: str, path: str) -> bytes | str:
    """The content of a TLS file, or why it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return f"TLS {label} file {path} does not exist"
    except IsADirectoryError:
        return f"TLS {label} file {path} is a directory"
    except PermissionError:
        return f"TLS {label} file {path} is not readable by this user"
    except OSError as e:
        return f"TLS {label} file {path} cannot be read: {(e.strerror or str(e)).lower()}"


def tls_problem(key: str, cert: str, chain: str | None = None,
                dh: str | None = None) -> str | None:
    """
    Why the files of an ``ssl:`` endpoint cannot serve TLS, in words, or
    ``None`` when this cannot tell (Twisted then loads them).

    Twisted reads the certificate file and then the key file as one text and
    takes the first certificate and the first private key in it (so one file
    holding both serves as either); found here the same way.  An encrypted
    key is refused before OpenSSL sees it: OpenSSL would ask for its
    passphrase on the terminal, which a daemon has not got.
    """
    contents: dict[str, bytes] = {}
    for label, path in (("certificate", cert), ("key", key), ("certificate chain", chain),
                        ("Diffie-Hellman parameters", dh)):
        if path is None or path in contents:
            continue
        data = _read_tls_file(label, path)
        if isinstance(data, str):
            return data
        contents[path] = data
    both = contents[cert] + b"\n" + contents[key]
    owner = cert if _PEM_KEY_BEGIN.search(contents[cert]) else key
    if _PEM_KEY_BEGIN.search(both) is None:
        held = " (it holds a certificate)" if _PEM_CERT.search(contents[key]) else ""
        return f"{key} holds no private key{held}"
    found = _PEM_KEY.search(both)
    if found is None:
        return f"{owner} holds a damaged private key (its PEM block does not end)"
    if b"ENCRYPTED" in found.group(1) or b"Proc-Type: 4,ENCRYPTED" in found.group(2):
        return (f"{owner} holds an encrypted private key, and fws cannot ask for its "
                f"passphrase: decrypt it first (openssl pkey -in {owner} -out plain-key.pem)")
    if _PEM_CERT.search(both) is None:
        held = " (it holds a private key)" if _PEM_KEY.search(contents[cert]) else ""
        return f"{cert} is not a PEM certificate{held}"
    if chain is not None and _PEM_CERT.search(contents[chain]) is None:
        return f"{chain} holds no PEM certificate (extraCertChain= is the chain's file)"
    return None


def _tls_load_problem(description: str) -> str | None:
    """
    Why the key and certificate of an ``ssl:`` endpoint that Twisted could not
    load do not load, in words (rather than OpenSSL's error tuples), or ``None``.
    """
    kind, _, kwargs = endpoint_arguments(description)
    if kind != "ssl":
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    key_path = kwargs.get("privateKey") or "server.pem"
    cert_path = kwargs.get("certKey") or key_path
    try:
        with open(cert_path, "rb") as f:
            cert_data = f.read()
        with open(key_path, "rb") as f:
            key_data = f.read()
    except OSError:
        return None
    both = cert_data + b"\n" + key_data
    found = _PEM_KEY.search(both)
    if found is None:
        return None
    owner = cert_path if _PEM_KEY.search(cert_data) else key_path
    try:
        private = load_pem_private_key(found.group(0), password=None)
    except (ValueError, TypeError):
        return (f"{owner} holds a private key that cannot be read (damaged, or of a kind OpenSSL "
                "does not know)")
    block = _PEM_CERT_BLOCK.search(both)
    if block is None:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(block.group(0))
    except ValueError:
        return f"{cert_path} holds a certificate that cannot be read (damaged?)"
    public = (certificate.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
              private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    if public[0] != public[1]:
        return f"the private key in {owner} does not belong to the certificate in {cert_path}"
    return None


def _keeps_the_promises(
    conn: FwsServerProtocol, server: FwsServerFactory
) -> tuple[Connection, Server, ConnectionHost, Upcalls]:
    """
    Never called: mypy checks here that fws's objects satisfy the public API
    (:mod:`fws.connection`), that the factory is what a connection needs of
    its server (:class:`fws.protocol.ConnectionHost`, which includes what the
    wire needs, :class:`fws._wire.protocol.WireHost`), and that the connection
    answers the wire's upcalls (:class:`fws._wire.protocol.Upcalls`).
    """
    return conn, server, server, conn


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
    metrics = None
    if config.metrics_enabled:
        from fws.metrics import FwsMetrics

        metrics = FwsMetrics()
        pipeline = pipeline.with_metrics(metrics)
    try:
        storage = complete(load_storage_module(config.storage).make_storage_object(config, reactor),
                           config.storage)
    except TypeError as e:
        raise ConfigError(str(e)) from None
    factory = FwsServerFactory(pipeline, storage, reactor=reactor, limits=config.limits,
                               options=config.options)
    factory.metrics = metrics
    endpoints = parse_endpoints(config, reactor)
    admin_endpoints = parse_endpoints(config, reactor, config.admin) if config.admin else []
    heartbeat = None
    if config.admin or config.public_health or config.public_metrics:
        from fws.web import Heartbeat

        heartbeat = Heartbeat(reactor)
    listener = ListeningService(endpoints, factory)
    admin = None
    if admin_endpoints:
        from fws.web import admin_site

        def admin(service: FwsService) -> ListeningService:
            return ListeningService(admin_endpoints, admin_site(service, metrics), name="admin",
                                    what="fws admin (/healthz /readyz /metrics)", label="admin")

    service = FwsService(config, factory, storage, listener, metrics=metrics,
                         heartbeat=heartbeat, admin=admin)
    # The HTTP sites answer for the whole service (readiness), so they come after it.
    if config.public_http:
        from fws.web import public_site

        listener.factory = public_site(factory, service, config.static, config.public_health,
                                       metrics if config.public_metrics else None)
    if metrics is not None:
        metrics.watch(factory, service)
    return service


def check_report(service: FwsService) -> str:
    """What ``--check`` prints: the resolved configuration and the pipeline per event."""
    from fws.filters.base import EVENTS

    config = service.config
    pipeline = service.factory.pipeline
    lines = ["configuration OK"]
    lines.append("listen:  " + "  ".join(config.listen))
    lines.append("admin:   " + ("  ".join(config.admin) if config.admin else "(none)"))
    if config.static:
        lines.append(f"static:  {config.static}")
    lines.append(f"storage: {config.storage}")
    limits = config.limits
    if limits.history_size:
        where = ("one Redis Stream per group" if service.factory.storage_object.shared
                 else "this node's memory")
        lines.append(f"history: {limits.history_size} messages per group for "
                     f"{limits.history_ttl:g} s, in {where} (fws.v1 clients can resume)")
    lines.append(f"framing: {framing.DESCRIPTION}")
    lines.append("filters: " + " ".join(config.filters))
    lines.append("pipeline:")
    width = max(len(e) for e in EVENTS)
    for event in EVENTS:
        names = [entry.name for entry in pipeline.chain(event)]
        lines.append(f"  {event.ljust(width)}  " + (" | ".join(names) if names else "(nothing)"))
    return "\n".join(lines) + "\n"


def install_stop_signals(reactor: Any) -> None:
    """
    Make SIGTERM and SIGINT stop the reactor gracefully with exit status 0.

    Twisted's own handlers remember the signal and re-raise it after shutdown
    (so the process dies "killed by SIGTERM"); a daemon told to stop that
    stops cleanly should say so with 0.  Call this once the reactor runs, after
    Twisted installed its handlers.
    """

    stopping: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if stopping:  # a second signal (e.g. from a process group) changes nothing
            return
        stopping.append(signum)
        log.info("received {signal}, stopping", signal=signal.Signals(signum).name)
        reactor.callFromThread(reactor.stop)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def fail_startup(prog: str, message: str, status: int) -> NoReturn:
    """Print one error line to the real stderr and exit (no traceback)."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"{prog}: error: {message}\n")
    stream.flush()
    raise SystemExit(status)
