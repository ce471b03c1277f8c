"""
txredisapi's protocols under fws's own connection lifecycle: the only place
that knows their internals.

:mod:`fws.redis_service` keeps each connection to Redis up itself (its
``_Link``: one deadline for connecting and logging in, a PING watchdog,
reconnecting for as long as the service runs, an allow-list of commands) and
uses txredisapi for the protocol only: encoding commands, parsing replies,
pairing them with their commands. That means subclassing txredisapi's
protocols and going around them where they are slow or do not fit: a PUBLISH
written straight to the transport, one watchdog for every reply owed instead
of a timer per command, the commands a silent Redis leaves waiting failed
with the watchdog's reason. Doing so reads and overrides txredisapi state
that is not its public API (``_ready``, ``connected``, ``inMulti``,
``pipelining``, ``replyQueue`` and its ``waiting`` list, ``execute_command``
and its ``apply_timeout``, ``replyReceived``): all of that is here, each name
listed in :data:`fws._wire.upstream.UPSTREAM_INTERNALS`, so that an upgrade
that renames one fails ``tests/test_upstream.py`` instead of fws quietly.

The protocols ask the link that owns them only what :class:`Link` (and its
:class:`LinkService`) declares; this module imports nothing of fws above the
wire.
"""

# The project's mypy run checks this module for subclassing Any too, as
# ``mypy --strict`` does: its targeted ignores are then used in both runs.
# mypy: disallow-subclassing-any

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure


class LinkService(Protocol):
    """What the protocols ask of the service that owns their link."""

    @property
    def reply_timeout(self) -> float:
        """Seconds Redis may answer nothing while replies are owed (0: never)."""

    #: Commands whose connection was lost before their reply came: the protocol adds to it.
    lost_in_flight: int

    def deliver(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        """A pub/sub message arrived on the subscriber connection."""


class Link(Protocol):
    """What the protocols ask of the connection lifecycle that owns them."""

    @property
    def service(self) -> LinkService:
        """The service the link belongs to."""

    @property
    def reactor(self) -> Any:
        """The reactor (an ``IReactorTime``) the watchdog runs on."""

    def drop(self, proto: Any, reason: str) -> None:
        """Close ``proto`` at once, saying why."""

    def connection_lost(self, proto: Any, why: Failure) -> None:
        """``proto``'s connection is gone, usable or not."""

    def deliver(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        """A pub/sub message for the link itself arrived (on a :class:`WatchProtocol`)."""

    def readonly(self, proto: Any, error: str) -> None:
        """Redis answered ``READONLY`` on ``proto``: it is a replica now, not the master."""


#: txredisapi's Redis command methods (``get``, ``publish``, ``multi`` ...):
#: what its protocol class defines, less its protocol machinery (the line
#: receiver's methods, the ``...Received`` hooks, ``execute_command``, which
#: would run anything, and the pipeline's and reply handling's own methods).
COMMAND_METHODS = frozenset(
    name for name, value in vars(txredisapi.BaseRedisProtocol).items()
    if callable(value) and name.islower() and not name.startswith("_")
    and not hasattr(LineReceiver, name) and "received" not in name.lower()
    and name not in {"execute_command", "execute_pipeline", "handle_reply"}
)

#: Stands in the command connection's reply FIFO for a command of fws's own
#: (:meth:`CommandProtocol.own_command`), so that it is not counted among the
#: commands an outage lost.
_OWN = object()


class CommandProtocol(txredisapi.RedisProtocol):  # type: ignore[misc]  # txredisapi is untyped
    """
    txredisapi's command protocol plus a lean PUBLISH (:meth:`fast_publish`)
    and one watchdog for every reply owed.

    txredisapi spends on every command its encoding, a DeferredQueue get, three
    callbacks and a reply-timeout DelayedCall armed and cancelled again: with few
    receivers per message, a large part of what fws itself spends on the Redis
    path (benchmarks/profiles/fws-redis-fanout-100-64.*). :meth:`fast_publish`
    writes the RESP bytes itself and remembers one Deferred.

    Redis answers in order, so one FIFO (``_order``) pairs every reply with its
    command: ``None`` for a command txredisapi sent (its reply goes to
    txredisapi's reply queue as before), a Deferred for a fast PUBLISH.

    Instead of a timer per command (txredisapi's ``replyTimeout`` is off), one
    watchdog per connection: if replies are owed and Redis answers nothing for
    ``reply_timeout`` seconds, the connection is dropped and made again. A
    silent Redis is noticed between one and two ``reply_timeout`` after it
    stopped answering; a busy but answering one never is.
    """

    link: Link

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._order: deque[Deferred[Any] | object | None] = deque()
        self._answers = 0  # replies received, of any command: the watchdog's sign of life
        self._watch_mark = 0
        self._watchdog: IDelayedCall | None = None
        self._lost_with: Exception | None = None
        #: SHA1s of the scripts Redis has run for this connection (EVALSHA from then on).
        self.scripts: set[bytes] = set()

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
        if self._watchdog is None:
            self._watch()
        return result

    def fast_command(self, *args: bytes) -> Deferred[Any]:
        """
        Any command of bulk-string arguments, written as :meth:`fast_publish`
        writes PUBLISH (fws's history scripts: EVAL and EVALSHA); fires with
        the reply, fails with Redis's error.
        """
        self.transport.write(b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args))
        result: Deferred[Any] = Deferred()
        self._order.append(result)
        if self._watchdog is None:
            self._watch()
        return result

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if not self.connected:
            return super().execute_command(*args, **kwargs)  # raises ConnectionError
        order = self._order
        order.append(None)  # its reply is txredisapi's
        try:
            result = super().execute_command(*args, **kwargs)
        except BaseException:
            order.pop()  # nothing was written (it failed to encode)
            raise
        if self._watchdog is None:
            self._watch()
        return result

    def replyReceived(self, reply: Any) -> None:
        self._answers += 1
        if isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("READONLY"):
            # A master demoted to a replica (a failover) keeps its connections: the
            # link reconnects to the master, the command fails as it is.
            self.link.readonly(self, str(reply)[:200])
        order = self._order
        if order:
            waiting = order.popleft()
            if isinstance(waiting, Deferred):
                # A caller's cancel() left it called: Twisted then ignores this.
                if isinstance(reply, Exception):
                    waiting.errback(reply)
                else:
                    waiting.callback(reply)
                return
        self.replyQueue.put(reply)

    def own_command(self, *args: Any) -> Deferred[Any]:
        """A command of fws's own (login, keepalive): not one an outage could lose."""
        before = len(self._order)
        result: Deferred[Any] = self.execute_command(*args, apply_timeout=False)
        if len(self._order) > before:
            self._order[-1] = _OWN
        return result

    # --- the watchdog --------------------------------------------------------------------

    def _watch(self) -> None:
        timeout = self.link.service.reply_timeout
        if timeout > 0:
            self._watch_mark = self._answers
            self._watchdog = self.link.reactor.callLater(timeout, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self._order:
            return  # the next command arms it again
        if self._answers != self._watch_mark:
            self._watch()  # Redis answered in the meantime: still alive
            return
        # Replies were owed for a whole reply_timeout and nothing came back.
        timeout = self.link.service.reply_timeout
        self._lost_with = txredisapi.TimeoutError(f"Not received Redis response in {timeout} seconds")
        self.link.drop(self, f"Redis did not answer within {timeout}s")

    def connectionLost(self, why: Any) -> None:
        order, self._order = self._order, deque()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        reason = self._lost_with
        if reason is not None:
            # txredisapi would fail its waiting commands with "Lost connection".
            while self.replyQueue.waiting:
                self.replyQueue.put(reason)
        # txredisapi fails its other waiting commands through replyReceived: the
        # FIFO is empty now, so those go to its queue.
        super().connectionLost(why)
        self.link.service.lost_in_flight += sum(1 for waiting in order if waiting is not _OWN)
        self.link.connection_lost(self, why)  # the outage is noticed before its commands fail
        for waiting in order:
            if isinstance(waiting, Deferred):
                waiting.errback(reason if reason is not None
                                else txredisapi.ConnectionError("Lost connection"))


class SubscriberProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]  # txredisapi is untyped
    """txredisapi's subscriber protocol, telling its link of its loss and its messages."""

    link: Link

    def own_command(self, *args: Any) -> Deferred[Any]:
        """A command of fws's own (login, keepalive)."""
        result: Deferred[Any] = self.execute_command(*args, apply_timeout=False)
        return result

    def connectionLost(self, why: Any) -> None:
        super().connectionLost(why)
        self.link.connection_lost(self, why)

    def messageReceived(self, pattern: bytes | None, channel: bytes, message: bytes) -> None:
        self.link.service.deliver(channel, message, pattern)


class WatchProtocol(SubscriberProtocol):
    """A subscriber whose messages are for its link itself (a Sentinel's ``+switch-master``)."""

    def messageReceived(self, pattern: bytes | None, channel: bytes, message: bytes) -> None:
        self.link.deliver(channel, message, pattern)


#: Either protocol a link runs.
LinkProtocol = CommandProtocol | SubscriberProtocol


class LinkFactory(Factory[LinkProtocol]):
    """Builds txredisapi protocols that leave the login to fws (no password, no db)."""

    noisy = False

    def __init__(self, link: Link, protocol: type[LinkProtocol]) -> None:
        self.link = link
        self.protocol_class = protocol

    def buildProtocol(self, addr: Any) -> LinkProtocol:
        # With neither password nor dbid, txredisapi's connectionMade marks the
        # connection usable at once: it never calls stopTrying() on a factory.
        proto = self.protocol_class(charset=None, replyTimeout=None, password=None, dbid=None,
                                    convertNumbers=False)
        proto.factory = self
        proto.link = self.link
        return proto


class QueryProtocol(txredisapi.RedisProtocol):  # type: ignore[misc]  # txredisapi is untyped
    """A connection for a few commands and no more (a question to a Sentinel)."""

    def own_command(self, *args: Any) -> Deferred[Any]:
        """Send one command; fires with its reply (an error reply as a ``ResponseError``)."""
        result: Deferred[Any] = self.execute_command(*args, apply_timeout=False)
        return result


class QueryFactory(Factory[QueryProtocol]):
    """Builds :class:`QueryProtocol`: bytes in, bytes out, no login, no reply timer."""

    noisy = False

    def buildProtocol(self, addr: Any) -> QueryProtocol:
        proto = QueryProtocol(charset=None, replyTimeout=None, password=None, dbid=None,
                              convertNumbers=False)
        proto.factory = self
        return proto


__all__ = ["COMMAND_METHODS", "CommandProtocol", "Link", "LinkFactory", "LinkProtocol", "LinkService",
           "QueryFactory", "QueryProtocol", "SubscriberProtocol", "WatchProtocol"]
