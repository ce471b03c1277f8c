"""
txredisapi made safe for a daemon: a command connection and a subscriber
connection as one Twisted service.

txredisapi 1.6.0 on its own (see the project's research notes) does not
re-subscribe after a reconnect, queues commands without bound while Redis is
down, turns payloads such as ``b"007"`` into ``7`` by default, mis-pairs
replies when one SUBSCRIBE names several channels, and backs off up to 10 s.
This module fixes each of those:

* both factories use ``charset=None, convertNumbers=False`` (bytes in, bytes out);
* reconnect backoff starts at 0.1 s and is capped below a second;
* while the command connection is down, commands fail at once with
  :class:`RedisUnavailable` instead of queueing;
* the subscriber subscribes on every (re)connect, one channel per command;
* a PING on the subscriber every ``ping_interval`` seconds detects a silently
  dead connection and reconnects;
* outages, their end and what was lost are logged;
* PUBLISH, the command on every relayed broadcast, is written straight to the
  command connection (:meth:`RedisService.publish`): no per-command reply timer,
  one watchdog per connection instead.

Everything runs on the reactor; nothing blocks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

MessageHandler = Callable[[bytes, bytes, "bytes | None"], None]
_BINARY = (bytes, bytearray)


class RedisUnavailable(txredisapi.ConnectionError):
    """A command was issued while fws has no connection to Redis; it was not sent."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to log in; built from options or a URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def describe(self) -> str:
        """For logs: never includes the password."""
        user = f"{self.username}@" if self.username else ""
        if self.path:
            return f"unix://{user}{self.path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """
    Parse ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS)
    or ``unix://[[user]:password@]/path/to/socket[?db=N]``.

    :raises ValueError: with a one-line explanation.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"invalid Redis URL {url!r}: {e}") from None
    scheme = parts.scheme.lower()
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    query = parse_qs(parts.query)
    db_text = query.get("db", [""])[0]
    if scheme in ("redis", "rediss"):
        path_db = parts.path.lstrip("/")
        db_text = path_db or db_text
        if not parts.hostname:
            raise ValueError(f"invalid Redis URL {url!r}: no host")
    elif scheme == "unix":
        if not parts.path:
            raise ValueError(f"invalid Redis URL {url!r}: no socket path")
    else:
        raise ValueError(f"invalid Redis URL {url!r}: the scheme must be redis, rediss or unix")
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise ValueError(f"invalid Redis URL {url!r}: database {db_text!r} is not a number") from None
    if scheme == "unix":
        return RedisAddress(path=parts.path, db=db, username=username, password=password)
    return RedisAddress(host=parts.hostname or "localhost", port=port or 6379, db=db,
                        username=username, password=password, tls=scheme == "rediss")


def make_endpoint(reactor: Any, address: RedisAddress, timeout: float) -> IStreamClientEndpoint:
    """A client endpoint on the injected reactor (txredisapi's helpers use the global one)."""
    if address.path:
        return UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, address.host, address.port,
                                                       timeout=timeout)
    if address.tls:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(address.host), endpoint)
    return endpoint


class _Backoff:
    """Reconnect quickly: 0.1 s, doubling, capped so that jitter stays under a second."""

    initialDelay = 0.1
    factor = 2.0
    maxDelay = 0.8
    owner: RedisService
    kind = ""

    def retryDelay(self, attempt: int) -> float:
        self.owner._attempt_failed(self.kind, attempt)
        delay: float = txredisapi.RedisFactory.retryDelay(self, attempt)  # type: ignore[arg-type]
        return delay


class _FailFastHandler(txredisapi.ConnectionHandler):
    """Commands fail at once while nothing is connected, instead of queueing forever."""

    def __getattr__(self, method: str) -> Any:
        wrapped = txredisapi.ConnectionHandler.__getattr__(self, method)
        factory = self._factory

        def call(*args: Any, **kwargs: Any) -> Deferred[Any]:
            if factory.size == 0:
                factory.owner._dropped += 1
                factory.owner.failed_fast += 1
                return fail(RedisUnavailable("Redis is not connected"))
            result: Deferred[Any] = wrapped(*args, **kwargs)
            return result

        return call


class _CommandProtocol(txredisapi.RedisProtocol):  # type: ignore[misc,valid-type]
    """
    txredisapi's command protocol plus a lean PUBLISH (:meth:`fast_publish`).

    txredisapi spends on every command its encoding, a DeferredQueue get, three
    callbacks and a reply-timeout DelayedCall armed and cancelled again: with few
    receivers per message, a large part of what fws itself spends on the Redis
    path (benchmarks/profiles/fws-redis-fanout-100-64.*). :meth:`fast_publish`
    writes the RESP bytes itself and remembers one Deferred.

    Redis answers in order, so one FIFO (``_order``) pairs every reply with its
    command: ``None`` for a command txredisapi sent (its reply goes to
    txredisapi's reply queue as before), a Deferred for a fast PUBLISH.

    Instead of a timer per command, one watchdog per connection: if replies are
    owed and Redis answers nothing for ``replyTimeout`` seconds, the connection is
    aborted (as txredisapi does on its own timeout) and the pool reconnects.
    A silent Redis is noticed between one and two ``replyTimeout`` after it
    stopped answering; a busy but answering one never is.
    """

    factory: _CommandFactory

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._order: deque[Deferred[Any] | None] = deque()
        self._owed = 0  # fast PUBLISHes not answered yet
        self._answers = 0  # replies received, of any command: the watchdog's sign of life
        self._watch_mark = 0
        self._watchdog: Any = None
        self._lost_with: Exception | None = None

    # --- the fast PUBLISH ----------------------------------------------------------------

    @property
    def can_publish(self) -> bool:
        """
        Usable, and not holding back commands for a MULTI or a pipeline.

        ``_ready`` is set and cleared with ``connected``; ``transactions`` (queued
        MULTI commands) is nonzero only while ``inMulti``: neither is checked again.
        """
        return bool(self._ready and not self.pipelining and not self.inMulti)

    def fast_publish(self, channel: bytes, data: bytes) -> Deferred[int]:
        """PUBLISH ``data`` on ``channel``; fires with the number of subscribers reached."""
        self.transport.write(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                             % (len(channel), channel, len(data), data))
        result: Deferred[int] = Deferred()
        self._order.append(result)
        self._owed += 1
        if self._watchdog is None and self.replyTimeout:
            self._watch()
        return result

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if not self.connected:
            return super().execute_command(*args, **kwargs)  # raises ConnectionError
        order = self._order
        order.append(None)  # its reply is txredisapi's
        try:
            return super().execute_command(*args, **kwargs)
        except BaseException:
            order.pop()  # nothing was written (it failed to encode)
            raise

    def replyReceived(self, reply: Any) -> None:
        self._answers += 1
        order = self._order
        if order:
            waiting = order.popleft()
            if waiting is not None:
                self._owed -= 1
                # A caller's cancel() left it called: Twisted then ignores this.
                if isinstance(reply, Exception):
                    waiting.errback(reply)
                else:
                    waiting.callback(reply)
                return
        self.replyQueue.put(reply)

    # --- the watchdog --------------------------------------------------------------------

    def _watch(self) -> None:
        self._watch_mark = self._answers
        self._watchdog = self.factory.owner._reactor.callLater(self.replyTimeout, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self._owed:
            return  # the next PUBLISH arms it again
        if self._answers != self._watch_mark:
            self._watch()  # Redis answered in the meantime: still alive
            return
        # Replies were owed for a whole replyTimeout and nothing came back.
        log.warn("Redis did not answer within {timeout}s; reconnecting the command connection",
                 timeout=self.replyTimeout)
        self._lost_with = txredisapi.TimeoutError(
            f"Not received Redis response in {self.replyTimeout} seconds")
        self.transport.abortConnection()

    def connectionLost(self, why: Any) -> None:
        order, self._order = self._order, deque()
        self._owed = 0
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        # txredisapi fails its waiting commands through replyReceived: the FIFO is
        # empty now, so those go to its queue.
        super().connectionLost(why)
        reason = self._lost_with
        for waiting in order:
            if waiting is not None:
                waiting.errback(reason if reason is not None
                                else txredisapi.ConnectionError("Lost connection"))


class _CommandFactory(_Backoff, txredisapi.RedisFactory):
    kind = "command"
    protocol = _CommandProtocol

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.owner._commands_changed()

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.owner._commands_changed()


class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    factory: _SubscriberFactory

    def connectionMade(self) -> Any:
        # Chain to the base: it logs in, selects, and marks the connection usable.
        d = super().connectionMade()
        self.whenConnected().addCallback(self.factory.owner._subscriber_connected)
        return d

    def connectionLost(self, why: Any) -> None:
        super().connectionLost(why)
        self.factory.owner._subscriber_lost(self)

    def messageReceived(self, pattern: bytes | None, channel: bytes, message: bytes) -> None:
        self.factory.owner._on_message(channel, message, pattern)


class _SubscriberFactory(_Backoff, txredisapi.RedisFactory):
    kind = "subscriber"
    protocol = _SubscriberProtocol


def _each(method: Callable[[list[bytes]], Deferred[Any]], names: Sequence[bytes]) -> Deferred[Any]:
    """One channel per (P)SUBSCRIBE: txredisapi pairs one reply with one command."""
    return gatherResults([method([name]) for name in names], consumeErrors=True)


class RedisService(Service):
    """
    A command connection and a subscriber connection to one Redis.

    :param channels: Channels to subscribe to, on every (re)connect.
    :param patterns: Glob patterns to PSUBSCRIBE to.
    :param on_message: ``on_message(channel, data, pattern)``, all bytes.
    :param on_commands_up: Called whenever the command connection becomes
        usable (first connect and every reconnect): the place to restore state
        that a restarted Redis lost.
    """

    name = "redis"

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        *,
        channels: Sequence[bytes] = (),
        patterns: Sequence[bytes] = (),
        on_message: MessageHandler,
        on_commands_up: Callable[[], Any] | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 2.0,
        reply_timeout: float = 5.0,
        connect_timeout: float = 3.0,
    ) -> None:
        self._reactor = reactor
        self.address = address
        self.channels = tuple(channels)
        self.patterns = tuple(patterns)
        self._on_message = on_message
        self._on_commands_up = on_commands_up
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._reply_timeout = reply_timeout
        self._connect_timeout = connect_timeout
        self._commands: _CommandFactory | None = None
        self._subscriber_factory: _SubscriberFactory | None = None
        self._subscriber: _SubscriberProtocol | None = None
        self._ping: LoopingCall | None = None
        self.commands_connected = False
        self.subscribed = False
        self._down_since: dict[str, float | None] = {"command": None, "subscriber": None}
        self._ever_up = {"command": False, "subscriber": False}
        self._dropped = 0
        #: Connections lost / back after an outage, per kind; commands failed fast (metrics).
        self.outages = {"command": 0, "subscriber": 0}
        self.reconnects = {"command": 0, "subscriber": 0}
        self.failed_fast = 0

    @property
    def ready(self) -> bool:
        """Commands can be sent and every channel is subscribed."""
        return self.commands_connected and self.subscribed

    @property
    def commands(self) -> Any:
        """The command handler: ``.smembers``, ``.sadd``, ``.publish`` ... (fail fast when down)."""
        if self._commands is None:
            raise RedisUnavailable("the Redis service is not running")
        return self._commands.handler

    def execute(self, method: str, *args: Any) -> Deferred[Any]:
        """Run one command, failing with :class:`RedisUnavailable` when not connected."""
        if self._commands is None:
            self._dropped += 1
            self.failed_fast += 1
            return fail(RedisUnavailable("the Redis service is not running"))
        # The fast path: txredisapi's handler takes a connection from its pool through an
        # @inlineCallbacks getConnection() and a DeferredQueue for every command: three
        # quarters of what a PUBLISH cost fws (benchmarks/profiles/fws-redis-fanout-100-64.*).
        # The pool holds one connection and its non-blocking commands all go to it (the
        # handler's peek()), so fws calls the command on that connection itself; blocking
        # commands (MULTI ...), a connection in use by one, or none at all take the handler.
        pending = self._commands.connectionQueue.pending
        if pending:
            conn = pending[0]
            command = getattr(type(conn), method, None)
            if conn.connected and command is not None and not getattr(command, "_blocking", False):
                result: Deferred[Any] = command(conn, *args)
                return result
        result = getattr(self._commands.handler, method)(*args)
        return result

    def publish(self, channel: str | bytes, data: str | bytes) -> Deferred[int]:
        """
        PUBLISH on the command connection without txredisapi's per-command work.

        Fires with the number of subscribers that received it; fails with
        :class:`RedisUnavailable` when not connected, and with txredisapi's
        ``ConnectionError`` (``TimeoutError`` when Redis stopped answering) when
        the connection is lost before the reply came. ``str`` is sent as UTF-8;
        ``bytes``, ``bytearray`` and ``memoryview`` (data) as they are; anything
        else takes txredisapi's encoding (:meth:`execute`).
        """
        commands = self._commands
        if commands is not None and commands.connectionQueue.pending:
            conn = commands.connectionQueue.pending[0]
            if conn.can_publish:
                try:
                    if type(channel) is str:
                        channel = channel.encode()
                    if type(data) is str:
                        data = data.encode()
                    elif type(data) is memoryview:  # txredisapi would send its repr()
                        data = data.tobytes()
                except UnicodeEncodeError:
                    pass  # txredisapi's error (InvalidData) below
                else:
                    if isinstance(channel, _BINARY) and isinstance(data, _BINARY):
                        result: Deferred[int] = conn.fast_publish(channel, data)
                        return result
        return self.execute("publish", channel, data)

    # --- lifecycle -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        address = self.address
        endpoint = make_endpoint(self._reactor, address, self._connect_timeout)
        commands = _CommandFactory(
            address.describe(), address.db, 1, isLazy=True, handler=_FailFastHandler,
            charset=None, password=address.password, replyTimeout=self._reply_timeout,
            convertNumbers=False, username=address.username,
        )
        commands.owner = self
        commands.deferred.addErrback(self._connect_error, "command")
        subscriber = _SubscriberFactory(
            address.describe(), None, 1, isLazy=True, charset=None,
            password=address.password, convertNumbers=False, username=address.username,
        )
        subscriber.owner = self
        subscriber.deferred.addErrback(self._connect_error, "subscriber")
        self._commands, self._subscriber_factory = commands, subscriber
        log.info("connecting to Redis at {address}", address=address.describe())
        commands.startConnecting(endpoint)
        subscriber.startConnecting(endpoint)
        if self._ping_interval > 0:
            self._ping = LoopingCall(self._send_ping)
            self._ping.clock = self._reactor
            self._ping.start(self._ping_interval, now=False)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        factories = [f for f in (self._commands, self._subscriber_factory) if f is not None]
        self.commands_connected = self.subscribed = False
        return gatherResults([f.disconnect() for f in factories], consumeErrors=True).addCallback(
            lambda _: None)

    # --- state tracking ------------------------------------------------------------------

    def _connect_error(self, failure: Any, kind: str) -> None:
        # Authentication or SELECT failed: txredisapi stops trying. Nothing else will say so.
        log.error("Redis {kind} connection refused: {reason}", kind=kind,
                  reason=failure.getErrorMessage())

    def _attempt_failed(self, kind: str, attempt: int) -> None:
        if attempt == 1 and self.running:
            log.warn("cannot reach Redis at {address} ({kind} connection); retrying",
                     address=self.address.describe(), kind=kind)
        if self._down_since[kind] is None:
            self._down_since[kind] = time.monotonic()

    def _went_down(self, kind: str, what_is_lost: str) -> None:
        self._down_since[kind] = time.monotonic()
        self.outages[kind] += 1
        if self.running:
            log.warn("lost the Redis {kind} connection to {address}: {lost}", kind=kind,
                     address=self.address.describe(), lost=what_is_lost)

    def _came_up(self, kind: str, detail: str) -> None:
        since = self._down_since[kind]
        self._down_since[kind] = None
        if not self._ever_up[kind]:
            self._ever_up[kind] = True
            log.info("Redis {kind} connection ready ({address}){detail}", kind=kind,
                     address=self.address.describe(), detail=detail)
        else:
            self.reconnects[kind] += 1
            outage = time.monotonic() - since if since is not None else 0.0
            log.info("Redis {kind} connection back after {outage:.1f}s{detail}", kind=kind,
                     outage=outage, detail=detail)

    def _commands_changed(self) -> None:
        factory = self._commands
        up = factory is not None and factory.size > 0
        if up == self.commands_connected:
            return
        self.commands_connected = up
        if not up:
            self._went_down("command", "storage commands and relayed broadcasts fail until it "
                            "is back")
            return
        dropped, self._dropped = self._dropped, 0
        self._came_up("command", f"; {dropped} commands failed while it was down" if dropped else "")
        if self._on_commands_up is not None:
            try:
                self._on_commands_up()
            except Exception:
                log.failure("restoring state after the Redis connection came back failed")

    def _subscriber_connected(self, proto: _SubscriberProtocol) -> None:
        if not self.running:
            proto.transport.loseConnection()
            return
        self._subscriber = proto
        d = gatherResults([_each(proto.subscribe, self.channels),
                           _each(proto.psubscribe, self.patterns)], consumeErrors=True)
        d.addCallbacks(self._subscribed, self._subscribe_failed, callbackArgs=(proto,),
                       errbackArgs=(proto,))

    def _subscribed(self, _: Any, proto: _SubscriberProtocol) -> None:
        if proto is not self._subscriber:
            return
        self.subscribed = True
        names = b", ".join((*self.channels, *self.patterns)).decode("utf-8", "backslashreplace")
        self._came_up("subscriber", f"; subscribed to {names}")

    def _subscribe_failed(self, failure: Any, proto: _SubscriberProtocol) -> None:
        log.error("subscribing on Redis failed ({reason}); reconnecting",
                  reason=failure.getErrorMessage())
        if proto.transport is not None:
            proto.transport.abortConnection()

    def _subscriber_lost(self, proto: _SubscriberProtocol) -> None:
        if proto is not self._subscriber:
            return
        self._subscriber = None
        was_subscribed, self.subscribed = self.subscribed, False
        if was_subscribed:
            self._went_down("subscriber", "messages published until it is back are lost")

    def _send_ping(self) -> None:
        proto = self._subscriber
        if proto is None or not self.subscribed:
            return
        d = proto.ping()
        d.addTimeout(self._ping_timeout, self._reactor)
        d.addErrback(self._ping_failed, proto)

    def _ping_failed(self, failure: Any, proto: _SubscriberProtocol) -> None:
        if proto is not self._subscriber:
            return
        log.warn("Redis subscriber did not answer PING within {timeout}s; reconnecting",
                 timeout=self._ping_timeout)
        if proto.transport is not None:
            proto.transport.abortConnection()


__all__ = ["RedisAddress", "RedisService", "RedisUnavailable", "make_endpoint", "parse_redis_url"]
