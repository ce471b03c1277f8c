"""
txredisapi made safe for a daemon: a command connection and a subscriber
connection to one Redis, kept up by fws for as long as the service runs.

txredisapi 1.6.0 on its own (see the project's research notes) does not
re-subscribe after a reconnect, queues commands without bound while Redis is
down, turns payloads such as ``b"007"`` into ``7`` by default, mis-pairs
replies when one SUBSCRIBE names several channels, backs off up to 10 s, and
stops reconnecting *for good* as soon as AUTH or SELECT fails on a new
connection, which includes SELECT merely timing out against a Redis that is
stalled (SIGSTOP, a long fork, a partition): a node was left deaf by a 15 s
stall. So fws uses txredisapi for the protocol only (encoding, parsing,
pairing replies) and owns each connection's lifecycle itself (:class:`_Link`):

* a connection counts as up only once Redis has answered on it: the attempt
  (TCP, TLS, AUTH, SELECT, a PING and, for the subscriber, every SUBSCRIBE)
  has one deadline, ``connect_timeout``;
* every failure (refused, timed out, a login error, a lost, silent or
  half-open connection) closes the connection and tries again after 0.1 s,
  doubling to at most 0.4 s, for as long as the service runs: never giving up
  is the point, a login refused by mistake included (it is logged as an
  error, once per outage);
* a PING on each connection every ``ping_interval`` seconds, and a watchdog on
  replies owed, detect a connection that died silently;
* both connections use ``charset=None, convertNumbers=False`` (bytes in,
  bytes out); the subscriber subscribes on every (re)connect, one channel per
  command;
* while the command connection is down, commands fail at once with
  :class:`RedisUnavailable` instead of queueing;
* an outage is one log line when it starts and one when it ends, with its
  length and what was lost;
* PUBLISH, the command on every relayed broadcast, is written straight to the
  command connection (:meth:`RedisService.publish`): no per-command reply timer,
  one watchdog per connection instead.
* every attempt first asks where the master is: the Sentinels
  (:mod:`fws.redis_sentinel`), or a host name resolved again on every connect
  (a managed Redis whose name moves on failover); ``ROLE`` then confirms that
  it is the master, and the command connection's keepalive is a ``ROLE`` too;
* a master that is no longer one (a ``READONLY`` reply, ``ROLE`` saying
  replica, a Sentinel's ``+switch-master``) closes both connections, which
  reconnect to the new master as after any outage (:meth:`RedisService.master_lost`).

The protocols themselves, txredisapi's subclassed and the only code that knows
its internals, are :mod:`fws._wire.redis`'s; this module names none of them.
Everything runs on the reactor; nothing blocks.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from fws._wire.redis import (
    COMMAND_METHODS,
    CommandProtocol,
    LinkFactory,
    LinkProtocol,
    SubscriberProtocol,
    WatchProtocol,
)
from fws.redis_sentinel import (
    HostPort,
    Sentinels,
    check_master_name,
    client_endpoint,
    format_host_port,
    parse_sentinels,
    parse_switch,
)

log = Logger()

MessageHandler = Callable[[bytes, bytes, "bytes | None"], None]
_BINARY = (bytes, bytearray)


#: What a command fails with when its connection to Redis is gone (or was never there).
RedisConnectionError = txredisapi.ConnectionError


class RedisUnavailable(txredisapi.ConnectionError):
    """A command was issued while fws has no connection to Redis; it was not sent."""


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is and how to log in; built from options or a URL.

    With ``sentinels`` (and ``master_name``), ``host`` and ``port`` are not
    used: the master is wherever the Sentinels say it is, asked again on
    every reconnect.
    """

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # (never in a log)
    tls: bool = False
    sentinels: tuple[HostPort, ...] = ()
    master_name: str | None = None
    #: The Sentinels' own login (``requirepass``, or an ACL user), not the master's.
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def sentinel_login(self) -> tuple[str, ...]:
        """``AUTH`` arguments for the Sentinels; empty for none."""
        if self.sentinel_password is None:
            return ()
        user = (self.sentinel_username,) if self.sentinel_username else ()
        return (*user, self.sentinel_password)

    def describe(self) -> str:
        """For logs: never includes the password."""
        user = f"{self.username}@" if self.username else ""
        if self.sentinels:
            hosts = ",".join(format_host_port(a) for a in self.sentinels)
            return f"redis+sentinel://{user}{hosts}/{self.master_name}?db={self.db}"
        if self.path:
            return f"unix://{user}{self.path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"


def _parse_sentinel_url(url: str) -> RedisAddress:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/NAME[?db=N]``."""
    rest = url.split("://", 1)[1]
    rest = rest.partition("#")[0]
    rest, _, query_text = rest.partition("?")
    netloc, _, name = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    try:
        sentinels = parse_sentinels([h for h in hosts.split(",") if h.strip()])
        master = check_master_name(unquote(name.strip("/")))
    except ValueError as e:
        raise ValueError(f"invalid Redis URL {_redacted(url)!r}: {e}") from None
    db_text = parse_qs(query_text).get("db", [""])[0]
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise ValueError(f"invalid Redis URL {_redacted(url)!r}: database {db_text!r} is not a "
                         "number") from None
    return RedisAddress(db=db, username=username, password=password, sentinels=sentinels,
                        master_name=master)


def _redacted(url: str) -> str:
    """``url`` without the password, for an error message."""
    head, sep, tail = url.partition("://")
    netloc, slash, path = tail.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = userinfo.split(":", 1)[0] + ":***@" + hosts
    return head + sep + netloc + slash + path


def parse_redis_url(url: str) -> RedisAddress:
    """
    Parse ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
    ``unix://[[user]:password@]/path/to/socket[?db=N]`` or
    ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/NAME[?db=N]``
    (the Sentinels of master ``NAME``, port 26379 by default; the credentials
    and database are the master's).

    :raises ValueError: with a one-line explanation.
    """
    if url[:17].lower().startswith("redis+sentinel://"):
        return _parse_sentinel_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"invalid Redis URL {_redacted(url)!r}: {e}") from None
    scheme = parts.scheme.lower()
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    query = parse_qs(parts.query)
    db_text = query.get("db", [""])[0]
    if scheme in ("redis", "rediss"):
        path_db = parts.path.lstrip("/")
        db_text = path_db or db_text
        if not parts.hostname:
            raise ValueError(f"invalid Redis URL {_redacted(url)!r}: no host")
    elif scheme == "unix":
        if not parts.path:
            raise ValueError(f"invalid Redis URL {_redacted(url)!r}: no socket path")
    else:
        raise ValueError(f"invalid Redis URL {_redacted(url)!r}: the scheme must be redis, rediss, unix or "
                         "redis+sentinel")
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise ValueError(f"invalid Redis URL {_redacted(url)!r}: database {db_text!r} is not a "
                         "number") from None
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


#: Reconnect backoff: the first retry after this many seconds, doubling ...
RETRY_INITIAL = 0.1
#: ... up to this; with jitter taken off (never added), so that Redis is tried
#: again at most 0.4 s after it starts answering.
RETRY_MAX = 0.4

#: Commands that would take fws's one shared command connection for
#: themselves, change its state for later commands, or end it.
_REFUSED = frozenset({"auth", "select", "quit", "shutdown", "monitor", "multi", "exec",
                      "discard", "commit", "watch", "unwatch", "pipeline", "blpop", "brpop",
                      "brpoplpush",
                      "subscribe", "psubscribe", "unsubscribe", "punsubscribe"})
#: What :meth:`RedisService.execute` runs: txredisapi's command methods (not its
#: protocol machinery, which would run anything), less the refused ones.
_COMMANDS = COMMAND_METHODS - _REFUSED


#: Script text -> its SHA1 (hex, as EVALSHA takes it).
_SHAS: dict[bytes, bytes] = {}


def _bulk(value: str | bytes | bytearray | memoryview | int) -> bytes:
    """One argument of a command as Redis takes it: UTF-8 text, bytes, or a whole number."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):  # (what a message filter holds)
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return b"%d" % value


def _loaded(reply: Any, conn: Any, sha: bytes) -> Any:
    conn.scripts.add(sha)
    return reply


def _each(method: Callable[[list[bytes]], Deferred[Any]], names: Sequence[bytes]) -> Deferred[Any]:
    """One channel per (P)SUBSCRIBE: txredisapi pairs one reply with one command."""
    return gatherResults([method([name]) for name in names], consumeErrors=True)


def _cancel_abort(result: None, abort: IDelayedCall) -> None:
    if abort.active():
        abort.cancel()
    return result


#: Failures that are a configuration to fix, not an outage: said at error level.
_CONFIG_PROBLEMS = ("Redis refused", "no Sentinel knows", "Sentinels refused")


def _peer(proto: Any) -> str | None:
    """``host:port`` of the Redis ``proto`` is connected to (TCP), else None."""
    transport = getattr(proto, "transport", None)
    peer = transport.getPeer() if transport is not None else None
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return format_host_port((host, port))
    return None


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _reason(failure: Failure) -> str:
    """One line for the log, from a connect or login failure."""
    error = failure.value
    while isinstance(error, FirstError):  # a SUBSCRIBE of the gathered ones
        failure = error.subFailure
        error = failure.value
    if isinstance(error, txredisapi.ResponseError):
        return f"Redis refused: {error}"
    return failure.getErrorMessage() or type(error).__name__


class NotMaster(Exception):
    """The Redis fws connected to is not the master (a replica, or a Sentinel)."""


#: What a link asks, on every attempt, for where to connect (the master's current
#: address: the Sentinels' answer, or a host name resolved again on every connect).
Locate = Callable[[], "Deferred[tuple[IStreamClientEndpoint, str]]"]


class _Link:
    """
    One connection to Redis that fws keeps up for as long as the service runs.

    It is in one of five states: waiting to retry, locating (``_locating``:
    asking the Sentinels where the master is), connecting (``_connecting``,
    the endpoint's Deferred), logging in (``_pending``, a connected protocol
    not usable yet) or up (``proto``). Connecting and logging in share one
    deadline (``connect_timeout``), so a Redis that accepts connections but
    answers nothing (stalled, half-open) fails the attempt like a refusal does.
    Every failure leads back to waiting, never to giving up.

    Kinds: ``command`` and ``subscriber`` (to the master), ``sentinel`` (a
    subscriber to one Sentinel's ``+switch-master``, whichever answers).
    """

    def __init__(self, service: RedisService, kind: str, protocol: type[LinkProtocol],
                 locate: Locate,
                 prepare: Callable[[Any], Deferred[Any]] | None = None) -> None:
        self.service = service
        self.kind = kind
        self.reactor = service._reactor
        self._factory = LinkFactory(self, protocol)
        self._locate = locate
        self._prepare = prepare
        #: The usable connection, or None.
        self.proto: Any = None
        #: Where ``proto`` (or the attempt under way) is connected, for logs and readiness.
        self.where: str | None = None
        self._pending: Any = None
        self._locating: Deferred[Any] | None = None
        self._connecting: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None  # the attempt's deadline, or the retry wait
        self._waiting = False  # _timer is the retry wait
        self._kicked_at = float("-inf")  # the last retry_now() that retried
        self._drop_reason: str | None = None
        self._failures = 0
        self._running = False
        self._stop_waiters: list[Deferred[None]] = []
        #: Whether this link was ever up (for "back after" versus "ready").
        self.ever_up = False

    # --- the cycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._attempt()

    def _attempt(self) -> None:
        self._timer = None
        self._waiting = False
        self._drop_reason = None
        locating = self._locating = self._locate()
        locating.addCallbacks(self._located, self._locate_failed)

    def _located(self, found: tuple[IStreamClientEndpoint, str]) -> None:
        self._locating = None
        if not self._running:
            self._maybe_stopped()
            return
        endpoint, self.where = found
        self._timer = self.reactor.callLater(self.service.connect_timeout, self._deadline)
        connecting = self._connecting = endpoint.connect(self._factory)
        connecting.addCallbacks(self._connected, self._connect_failed)

    def _locate_failed(self, failure: Failure) -> None:
        self._locating = None
        if not self._running:
            self._maybe_stopped()
            return
        self._failed(_reason(failure))

    def retry_now(self) -> None:
        """
        If waiting to retry, retry at once (the master is known to have moved);
        at most once per :data:`RETRY_INITIAL`, whatever a Sentinel announces.
        """
        now = self.reactor.seconds()
        if self._running and self._waiting and self._timer is not None \
                and now - self._kicked_at >= RETRY_INITIAL:
            self._kicked_at = now
            self._cancel_timer()
            self._failures = 0
            self._attempt()

    def _deadline(self) -> None:
        self._timer = None
        timeout = self.service.connect_timeout
        if self._connecting is not None:
            self._drop_reason = f"no connection within {timeout}s"
            self._connecting.cancel()
        elif self._pending is not None:
            self.drop(self._pending, f"Redis did not answer within {timeout}s of connecting")

    def _connected(self, proto: Any) -> None:
        self._connecting = None
        if not self._running:
            proto.transport.loseConnection()
            return
        self._pending = proto
        d = Deferred.fromCoroutine(self._login(proto))
        d.addCallbacks(self._usable, self._login_failed, callbackArgs=(proto,),
                       errbackArgs=(proto,))

    async def _login(self, proto: Any) -> None:
        """
        AUTH, SELECT, ROLE (or PING), and the subscriber's SUBSCRIBEs: Redis must
        answer them all, and be the master.
        """
        if self.kind == "sentinel":  # a Sentinel has a login of its own, if any
            login = self.service.address.sentinel_login
            if login:
                await self._check_reply(proto.own_command("AUTH", *login))
            await self._check_reply(proto.own_command("PING"))
        else:
            address = self.service.address
            if address.password is not None:
                args = ([address.username] if address.username else []) + [address.password]
                await self._check_reply(proto.own_command("AUTH", *args))
            if address.db and self.kind == "command":
                await self._check_reply(proto.own_command("SELECT", address.db))
            if self.service.role_checks:
                self.service.check_role(self, await proto.own_command("ROLE"))
            else:
                await self._check_reply(proto.own_command("PING"))
        if self._prepare is not None:
            await self._prepare(proto)

    @staticmethod
    async def _check_reply(d: Deferred[Any]) -> None:
        reply = await d
        if isinstance(reply, Exception):
            raise reply

    def _usable(self, _: Any, proto: Any) -> None:
        if proto is not self._pending or self._drop_reason is not None or not self._running:
            return  # lost, dropped or stopped meanwhile
        self._cancel_timer()
        self._pending = None
        self.proto = proto
        self._failures = 0
        self.service._link_up(self)
        self.ever_up = True

    def _login_failed(self, failure: Failure, proto: Any) -> None:
        if proto is self._pending:
            self.drop(proto, self._drop_reason or _reason(failure))

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        self._cancel_timer()
        if not self._running:
            self._maybe_stopped()
            return
        # Our deadline cancelled it (a ConnectingCancelledError, or CancelledError):
        # its reason is the one to log.
        self._failed(self._drop_reason or _reason(failure))

    def drop(self, proto: Any, reason: str) -> None:
        """Close ``proto`` at once, saying why (the reason the outage is logged with)."""
        if self._drop_reason is None:
            self._drop_reason = reason
        if proto.transport is not None:
            proto.transport.abortConnection()

    def drop_current(self, reason: str) -> None:
        """Close the connection that is up or logging in, if any (the master moved)."""
        for proto in (self.proto, self._pending):
            if proto is not None:
                self.drop(proto, reason)

    def connection_lost(self, proto: Any, why: Failure) -> None:
        """Called by the protocol: usable or not, this connection is gone."""
        reason = self._drop_reason or why.getErrorMessage()
        if proto is self.proto:
            self.proto = None
            self.service._link_down(self, reason)
            self._drop_reason = None
            if self._running:
                self._failures = 0
                self._retry_later()
        elif proto is self._pending:
            self._pending = None
            self._cancel_timer()
            if self._running:
                self._failed(reason)
        self._maybe_stopped()

    def deliver(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        """Called by the watcher's protocol with every message (the Sentinel's)."""
        self.service._sentinel_event(self, channel, data)

    def readonly(self, proto: Any, error: str) -> None:
        """Called by the command protocol: Redis said READONLY, it is a replica now."""
        if proto is self.proto:
            self.service.master_lost(f"Redis answered {error.split('.')[0]}")

    def _failed(self, reason: str) -> None:
        self.service._attempt_failed(self, reason)
        self._retry_later()

    def _retry_later(self) -> None:
        self._failures += 1
        delay = min(RETRY_MAX, RETRY_INITIAL * 2 ** min(self._failures - 1, 16))
        # Jitter keeps many nodes from reconnecting in lockstep; it only shortens the wait.
        delay *= random.uniform(0.75, 1.0)
        self._timer = self.reactor.callLater(delay, self._attempt)
        self._waiting = True

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        self._waiting = False

    # --- health and stop -----------------------------------------------------------------

    def ping(self) -> None:
        """
        PING the usable connection (ROLE on the command connection: a master
        demoted to a replica keeps its connections); no answer within
        ``ping_timeout`` drops it.
        """
        proto = self.proto
        if proto is None:
            return
        timeout = self.service.ping_timeout
        check = self.kind == "command" and self.service.role_checks
        d = proto.own_command("ROLE" if check else "PING")
        d.addTimeout(timeout, self.reactor)
        if check:
            d.addCallback(self._role_answered, proto)
        d.addErrback(self._ping_failed, proto, timeout)

    def _role_answered(self, reply: Any, proto: Any) -> None:
        if proto is not self.proto:
            return
        try:
            self.service.check_role(self, reply)
        except NotMaster as e:
            self.service.master_lost(str(e))

    def _ping_failed(self, failure: Failure, proto: Any, timeout: float) -> None:
        if proto is self.proto:
            self.drop(proto, f"Redis did not answer PING within {timeout}s")

    def stop(self) -> Deferred[None]:
        """Stop trying; close the connection; fire once it is closed."""
        self._running = False
        self._cancel_timer()
        if self._locating is not None:
            self._locating.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        alive = [p for p in (self.proto, self._pending) if p is not None]
        if not alive and self._connecting is None and self._locating is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stop_waiters.append(waiter)
        for proto in alive:
            transport = proto.transport
            if transport is not None:
                transport.loseConnection()
                # A stalled Redis reads nothing, and a close waits for the output to go.
                abort = self.reactor.callLater(2.0, transport.abortConnection)
                waiter.addBoth(_cancel_abort, abort)
        return waiter

    def _maybe_stopped(self) -> None:
        if self._running or self.proto is not None or self._pending is not None \
                or self._connecting is not None or self._locating is not None:
            return
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)


class RedisService(Service):
    """
    A command connection and a subscriber connection to one Redis.

    :param channels: Channels to subscribe to, on every (re)connect.
    :param patterns: Glob patterns to PSUBSCRIBE to.
    :param on_message: ``on_message(channel, data, pattern)``, all bytes.
    :param on_commands_up: Called whenever the command connection becomes
        usable (first connect and every reconnect): the place to restore state
        that a restarted Redis lost.
    :param on_resubscribed: Called once both connections are up again after
        the subscriber connection was lost (not on the first connect): what was
        published meanwhile was not heard, and is worth looking for.
    :param ping_interval: Seconds between PINGs on each connection (0: none).
    :param ping_timeout: Seconds a PING may take before its connection is dropped.
    :param reply_timeout: Seconds Redis may answer nothing while replies are
        owed before the command connection is dropped (0: never).
    :param connect_timeout: Seconds from a connection attempt to Redis's last
        login answer (and every SUBSCRIBE).
    :param sentinel_timeout: Seconds each Sentinel has to say where the master
        is (connecting included), with ``address.sentinels``.
    """

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        *,
        channels: Sequence[bytes] = (),
        patterns: Sequence[bytes] = (),
        on_message: MessageHandler,
        on_commands_up: Callable[[], Any] | None = None,
        on_resubscribed: Callable[[], Any] | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 2.0,
        reply_timeout: float = 5.0,
        connect_timeout: float = 3.0,
        sentinel_timeout: float = 0.5,
    ) -> None:
        self.setName("redis")
        self._reactor = reactor
        self.address = address
        self.channels = tuple(channels)
        self.patterns = tuple(patterns)
        self._on_message = on_message
        self._on_commands_up = on_commands_up
        self._on_resubscribed = on_resubscribed
        #: The subscriber connection came back since both were last up.
        self._resubscribed = False
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.sentinel_timeout = sentinel_timeout
        self._command_link: _Link | None = None
        self._subscriber_link: _Link | None = None
        #: With Sentinels: the one whose ``+switch-master`` is watched.
        self._watch_link: _Link | None = None
        self._sentinels: Sentinels | None = None
        self._watch_next = 0
        self._watch_trouble = False  # the watcher's failure is logged (until it is back)
        #: Whether ROLE is asked on connect and in the keepalive (off if an ACL refuses it).
        self.role_checks = True
        #: Where the command connection is (or was last): ``host:port``.
        self.master: str | None = None
        #: Times the command connection came back on another master than before.
        self.failovers = 0
        self._following: str | None = None  # why both connections were dropped, until back
        self._ping: LoopingCall | None = None
        self._outage_since: float | None = None
        self._refusals: set[str] = set()
        self._ever_ready = False
        self._dropped = 0
        #: Commands whose connection was lost before their reply came (this outage).
        self.lost_in_flight = 0
        #: Connections lost / back after an outage, per kind; commands failed fast (metrics).
        self.outages = {"command": 0, "subscriber": 0}
        self.reconnects = {"command": 0, "subscriber": 0}
        self.failed_fast = 0

    @property
    def commands_connected(self) -> bool:
        """Commands can be sent: Redis answered the command connection's login."""
        return self._command_link is not None and self._command_link.proto is not None

    @property
    def subscribed(self) -> bool:
        """Every channel and pattern is subscribed."""
        return self._subscriber_link is not None and self._subscriber_link.proto is not None

    @property
    def ready(self) -> bool:
        """Commands can be sent and every channel is subscribed."""
        return self.commands_connected and self.subscribed

    @property
    def watching(self) -> bool:
        """With Sentinels: subscribed to one Sentinel's ``+switch-master``."""
        return self._watch_link is not None and self._watch_link.proto is not None

    def where(self) -> str:
        """For logs: the configured address, and with Sentinels the master's."""
        described = self.address.describe()
        if self.address.sentinels and self.master is not None:
            return f"{self.master} (master {self.address.master_name} from Sentinel)"
        return described

    def execute(self, method: str, *args: Any) -> Deferred[Any]:
        """
        Run one command on the command connection; fail with
        :class:`RedisUnavailable` at once when it is not up.

        The command goes straight to the connection: txredisapi's handler would
        take it from a pool through an @inlineCallbacks getConnection() and a
        DeferredQueue, three quarters of what a PUBLISH cost fws
        (benchmarks/profiles/fws-redis-fanout-100-64.*). Commands that would
        hold the one shared connection for themselves or change its state for
        the next command (MULTI, BLPOP, SELECT ...) are refused.
        """
        link = self._command_link
        proto = link.proto if link is not None else None
        if proto is None:
            self._dropped += 1
            self.failed_fast += 1
            return fail(RedisUnavailable("Redis is not connected"))
        if method not in _COMMANDS:
            return fail(ValueError(f"{method.upper()} is not available on fws's shared Redis "
                                   "command connection"))
        command = getattr(type(proto), method)
        try:
            result: Deferred[Any] = command(proto, *args)
        except Exception as e:
            return fail(e)
        return result

    def run_script(self, script: str, keys: Sequence[str | bytes],
                   args: Sequence[str | bytes | int]) -> Deferred[Any]:
        """
        Run a Lua script on the command connection: what makes several
        commands one atomic step. Fails as :meth:`execute` does.

        Written straight to the connection as :meth:`publish` is: EVAL until
        Redis has run the script once on this connection, EVALSHA from then
        on (and EVAL again if Redis answers NOSCRIPT, its scripts flushed: the
        scripts in flight at a SCRIPT FLUSH are then run again in the order
        their NOSCRIPT came back, after any sent meanwhile).
        """
        link = self._command_link
        conn = link.proto if link is not None else None
        if conn is None or not conn.can_publish:
            return self.execute("eval", script, list(keys), list(args))
        body = script.encode()
        sha = _SHAS.get(body)
        if sha is None:
            sha = _SHAS[body] = hashlib.sha1(body).hexdigest().encode()
        rest = [b"%d" % len(keys), *(_bulk(k) for k in keys), *(_bulk(a) for a in args)]
        if sha in conn.scripts:
            d: Deferred[Any] = conn.fast_command(b"EVALSHA", sha, *rest)
            return d.addErrback(self._noscript, conn, body, sha, rest)
        return conn.fast_command(b"EVAL", body, *rest).addCallback(_loaded, conn, sha)

    def _noscript(self, failure: Failure, conn: Any, body: bytes, sha: bytes,
                  rest: list[bytes]) -> Any:
        if not str(failure.value).startswith("NOSCRIPT") or conn.transport is None:
            return failure
        conn.scripts.discard(sha)
        return conn.fast_command(b"EVAL", body, *rest).addCallback(_loaded, conn, sha)

    def command(self, *args: str | bytes | bytearray | memoryview | int) -> Deferred[Any]:
        """
        Any other command, written straight to the command connection as
        :meth:`run_script` writes EVAL (for commands txredisapi has no method
        for: ``FUNCTION LOAD``, ``FCALL``); fails as :meth:`execute` does, and
        refuses the same commands.
        """
        name = _bulk(args[0]).decode("ascii", "replace").lower() if args else ""
        if not name or name in _REFUSED:
            return fail(ValueError(f"{name.upper() or 'an empty command'} is not available on "
                                   "fws's shared Redis command connection"))
        link = self._command_link
        conn = link.proto if link is not None else None
        if conn is None:
            self._dropped += 1
            self.failed_fast += 1
            return fail(RedisUnavailable("Redis is not connected"))
        words = [_bulk(a) for a in args]
        if not conn.can_publish:
            result: Deferred[Any] = conn.execute_command(*words)
            return result
        return conn.fast_command(*words)

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
        link = self._command_link
        conn = link.proto if link is not None else None
        if conn is not None and conn.can_publish:
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

    def deliver(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        """A pub/sub message arrived on the subscriber connection."""
        self._on_message(channel, data, pattern)

    # --- lifecycle -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        address = self.address
        locate: Locate
        if address.sentinels:
            self._sentinels = Sentinels(self._reactor, address.sentinels,
                                        address.master_name or "", self.sentinel_timeout,
                                        address.sentinel_login)
            locate = self._locate_master
            self._watch_link = _Link(self, "sentinel", WatchProtocol, self._locate_sentinel,
                                     prepare=self._watch)
        else:
            # HostnameEndpoint resolves the name again on every connect: a managed
            # Redis whose name moves to another address on failover is followed.
            endpoint = make_endpoint(self._reactor, address, self.connect_timeout)
            plain = address.path or f"{address.host}:{address.port}"
            locate = lambda: succeed((endpoint, plain))  # noqa: E731
        self._command_link = _Link(self, "command", CommandProtocol, locate)
        self._subscriber_link = _Link(self, "subscriber", SubscriberProtocol, locate,
                                      prepare=self._subscribe)
        log.info("connecting to Redis at {address}", address=address.describe())
        self._command_link.start()
        self._subscriber_link.start()
        if self._watch_link is not None:
            self._watch_link.start()
        if self.ping_interval > 0:
            self._ping = LoopingCall(self._send_pings)
            self._ping.clock = self._reactor
            self._ping.start(self.ping_interval, now=False)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        links = [link for link in (self._command_link, self._subscriber_link, self._watch_link)
                 if link is not None]
        stopped = gatherResults([link.stop() for link in links], consumeErrors=True)
        if self._sentinels is not None:
            self._sentinels.stop()  # (the links' questions are cancelled already)
        return stopped.addCallback(lambda _: None)

    def _subscribe(self, proto: SubscriberProtocol) -> Deferred[Any]:
        return gatherResults([_each(proto.subscribe, self.channels),
                              _each(proto.psubscribe, self.patterns)], consumeErrors=True)

    def _send_pings(self) -> None:
        for link in (self._command_link, self._subscriber_link, self._watch_link):
            if link is not None:
                link.ping()

    # --- where the master is -------------------------------------------------------------

    def _locate_master(self) -> Deferred[tuple[IStreamClientEndpoint, str]]:
        """Ask the Sentinels (again: on every attempt) where the master is."""
        assert self._sentinels is not None
        return self._sentinels.master().addCallback(self._master_endpoint)

    def _master_endpoint(self, master: HostPort) -> tuple[IStreamClientEndpoint, str]:
        host, port = master
        endpoint = client_endpoint(self._reactor, host, port, self.connect_timeout)
        return endpoint, format_host_port(master)

    def _locate_sentinel(self) -> Deferred[tuple[IStreamClientEndpoint, str]]:
        """The watcher's next Sentinel: each attempt tries the next one in turn."""
        sentinels = self.address.sentinels
        host, port = sentinels[self._watch_next % len(sentinels)]
        self._watch_next += 1
        endpoint = client_endpoint(self._reactor, host, port, self.connect_timeout)
        return succeed((endpoint, format_host_port((host, port))))

    def _watch(self, proto: SubscriberProtocol) -> Deferred[Any]:
        return _each(proto.subscribe, [b"+switch-master"])

    def check_role(self, link: _Link, reply: Any) -> None:
        """
        Raise :class:`NotMaster` unless ROLE's ``reply`` says master; an ACL that
        refuses ROLE turns the checks off (READONLY replies still tell).
        """
        if isinstance(reply, txredisapi.ResponseError):
            if self.role_checks:
                self.role_checks = False
                log.info("Redis refused ROLE ({error}); a master demoted to a replica is noticed "
                         "by its READONLY replies only", error=str(reply)[:200])
            return
        role = reply[0] if isinstance(reply, list) and reply else None
        if role == b"master":
            return
        where = link.where or self.address.describe()
        if role == b"slave" and len(reply) >= 3:
            host = reply[1][:255].decode("ascii", "replace") if isinstance(reply[1], bytes) else "?"
            port = reply[2] if isinstance(reply[2], int) else "?"
            raise NotMaster(f"{where} is a replica of {host}:{port}, not the master")
        if role == b"sentinel":
            raise NotMaster(f"Redis refused: {where} is a Sentinel, not a Redis server (give "
                            "Sentinels with --redis_sentinel)")
        raise NotMaster(f"{where} is not a master (ROLE: {str(role)[:50]})")

    def master_lost(self, reason: str, *, announced: bool = False) -> None:
        """
        The master fws is connected to is no longer the master (it answered
        READONLY, or ROLE says replica, or a Sentinel announced a failover):
        drop both connections, which ask again where the master is.
        """
        if not self.running:
            return
        links = [link for link in (self._command_link, self._subscriber_link) if link is not None]
        if self._following is None:
            self._following = reason
            if self.commands_connected or self.subscribed:  # (else an outage is logged already)
                log.warn("Redis at {address} is no longer the master ({reason}); reconnecting "
                         "both connections to the master", address=self.where(), reason=reason)
            for link in links:
                link.drop_current(reason)
        if announced:
            for link in links:
                link.retry_now()

    def _sentinel_event(self, link: _Link, channel: bytes, data: bytes) -> None:
        """A message on the watched Sentinel's ``+switch-master``."""
        if channel != b"+switch-master" or self._sentinels is None:
            return
        switch = parse_switch(data, self._sentinels.name)
        if switch is None:
            return
        old, new = switch
        if link.where is not None and self._watch_link is link:
            for address in self.address.sentinels:  # the one that said so knows: ask it first
                if format_host_port(address) == link.where:
                    self._sentinels.prefer(address)
        if self.master == format_host_port(new) and self.ready:
            return  # followed already (a READONLY, or another Sentinel said so first)
        # One line per failover followed, not per announcement (a Sentinel may repeat itself).
        emit = log.info if self._following is None else log.debug
        emit("Sentinel at {sentinel} announced the failover of master {name} from {old} to "
             "{new}", sentinel=link.where, name=self._sentinels.name,
             old=format_host_port(old), new=format_host_port(new))
        self.master_lost(f"Sentinel moved master {self._sentinels.name} to {format_host_port(new)}",
                         announced=True)

    def _verify_master(self) -> None:
        """The watcher is (back) up: a failover announced meanwhile was missed? Ask."""
        if self._sentinels is None:
            return
        d = self._sentinels.master()

        def compare(master: HostPort) -> None:
            if self.ready and self.master is not None and format_host_port(master) != self.master:
                self.master_lost(f"Sentinel says master {self._sentinels.name if self._sentinels else ''} "
                                 f"is {format_host_port(master)}", announced=True)

        d.addCallbacks(compare, lambda f: None)

    # --- state, and the log: one line when an outage starts, one when it ends ------------

    def _attempt_failed(self, link: _Link, reason: str) -> None:
        """An attempt to (re)connect ``link`` failed; the link retries by itself."""
        if not self.running:
            return
        if link.kind == "sentinel":
            if not self._watch_trouble:
                self._watch_trouble = True
                log.warn("cannot watch a Sentinel for failovers ({reason}); trying the next "
                         "one", reason=reason)
            return
        if reason.startswith(_CONFIG_PROBLEMS) and reason not in self._refusals:
            # Not an outage of Redis but a configuration to fix (a password, an ACL):
            # said at error level, once per outage and reason.
            self._refusals.add(reason)
            log.error("Redis at {address} refused the {kind} connection ({reason}); retrying",
                      address=self.where(), kind=link.kind, reason=reason)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warn("cannot reach Redis at {address} ({kind} connection: {reason}); serving "
                     "WebSockets without it and retrying", address=self.where(),
                     kind=link.kind, reason=reason)

    def _link_down(self, link: _Link, reason: str) -> None:
        if not self.running:
            return
        if link.kind == "sentinel":
            self._watch_trouble = True
            log.warn("lost the Sentinel at {sentinel} ({reason}); watching another one for "
                     "failovers", sentinel=link.where, reason=reason)
            return
        self.outages[link.kind] += 1
        if self._outage_since is not None:
            return
        self._outage_since = time.monotonic()
        log.warn("Redis at {address} unavailable ({kind} connection: {reason}); until it is "
                 "back, storage commands and broadcasts to other nodes fail, and messages "
                 "published meanwhile are lost", address=self.where(),
                 kind=link.kind, reason=reason)

    def _link_up(self, link: _Link) -> None:
        if link.kind == "sentinel":
            if self._watch_trouble or not link.ever_up:
                log.info("watching the Sentinel at {sentinel} for failovers of master {name}",
                         sentinel=link.where, name=self.address.master_name)
            self._watch_trouble = False
            if link.ever_up:
                self._verify_master()
            return
        if link.ever_up:
            self.reconnects[link.kind] += 1
            if link is self._subscriber_link:
                self._resubscribed = True
        if link is self._command_link:
            where = _peer(link.proto) or link.where
            if self.master is not None and where != self.master:
                self.failovers += 1
                log.info("Redis master moved from {old} to {new}: failover followed ({n} so "
                         "far)", old=self.master, new=where, n=self.failovers)
            self.master = where
        if link is self._command_link and self._on_commands_up is not None:
            try:
                self._on_commands_up()
            except Exception:
                log.failure("restoring state after the Redis connection came back failed")
        if not self.ready:
            return
        if self._resubscribed:
            self._resubscribed = False
            if self._on_resubscribed is not None:
                try:
                    self._on_resubscribed()
                except Exception:
                    log.failure("looking for what was published while the subscriber "
                                "connection was down failed")
        self._following = None
        since, self._outage_since = self._outage_since, None
        self._refusals.clear()
        dropped, self._dropped = self._dropped, 0
        in_flight, self.lost_in_flight = self.lost_in_flight, 0
        lost = (f"; {_count(dropped, 'command')} failed while it was down, "
                f"{_count(in_flight, 'command')} lost in flight" if dropped or in_flight else "")
        if not self._ever_ready:
            self._ever_ready = True
            names = b", ".join((*self.channels, *self.patterns)).decode("utf-8", "backslashreplace")
            waited = f" after {time.monotonic() - since:.1f}s" if since is not None else ""
            log.info("Redis ready at {address}{waited}; subscribed to {names}",
                     address=self.where(), waited=waited, names=names)
        elif since is not None:
            log.info("Redis at {address} back after {outage:.1f}s{lost}",
                     address=self.where(), outage=time.monotonic() - since, lost=lost)


__all__ = ["NotMaster", "RedisAddress", "RedisConnectionError", "RedisService", "RedisUnavailable",
           "make_endpoint", "parse_redis_url"]
