"""
The wire side of one fws server: what every connection's wire shares.

:class:`WireFactory` builds the connections (:class:`fws._wire.protocol.WireProtocol`)
and owns what sits between them and the sockets: the accept cap, Autobahn's
protocol options baked onto the protocol class, Autobahn's batched timer
(:class:`fws.timers.BucketTimer`), the framing of one message once for many
recipients (:meth:`WireFactory.send_all`) and the end-of-turn flush of every
lane. It knows nothing of users, groups or filters:
:class:`fws.factory.FwsServerFactory`, the server filters see, is built on it.
"""

from __future__ import annotations

import itertools
from collections.abc import Container, Iterable
from typing import Any, Generic, TypeVar

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fws._wire.handshake import SharedStrings
from fws._wire.outbound import Lane
from fws._wire.protocol import WireProtocol
from fws.limits import Limits
from fws.metrics import Stats
from fws.timers import BucketTimer
from fws.versions import SERVER

#: The connection class a factory builds.
P = TypeVar("P", bound=WireProtocol)

#: ``_flush_call`` while a flush waits in the reactor's after-I/O list.
_AFTER_IO = object()
#: Seconds between the summary lines while TCP connections are closed at accept.
ACCEPT_LOG_INTERVAL = 5.0


class WireFactory(WebSocketServerFactory, Generic[P]):
    """
    Autobahn's server factory with fws's wire: see the module's docstring.

    :param reactor: The reactor connections and timers use.
    :param limits: Size, rate, connection, buffer and keepalive limits.
    :param stats: The counters the wire adds to.
    :param node_id: Prefix of connection ids.
    :param log_connections: One info line per connection open and close.
    :param protocol: The connection class (a :class:`WireProtocol`); Autobahn's
        options are baked onto a subclass of it made for this factory.
    :ivar connections: every connection, open or still in its handshake.
    :ivar http_channels: HTTP connections of the port's twisted.web site
        (:mod:`fws.web`) not taken over by a WebSocket: they count towards
        the accept cap with ``connections``.
    :ivar pending_per_ip: TCP peer address -> its connections in their
        handshake or plain HTTP (what ``--max-pending-per-ip`` bounds at accept).
    """

    protocol: type[P]  # type: ignore[assignment]
    noisy = False  # no "Starting factory" lines; fws logs what matters itself
    _log = Logger()

    def __init__(self, *, reactor: IReactorTime, limits: Limits, stats: Stats, node_id: str,
                 log_connections: bool, protocol: type[P] | None = None) -> None:
        # "Server: fws/VERSION" rather than Autobahn's name and version in every handshake response.
        super().__init__(url=None, reactor=reactor, server=SERVER)  # type: ignore[no-untyped-call]
        # Autobahn's handshake, ping and close timeouts, with O(1) cancel (see fws.timers).
        self._batched_timer = BucketTimer(reactor)
        self.strings = SharedStrings()
        self.limits = limits
        self.stats = stats
        self.node_id = node_id
        self.log_connections = log_connections
        self.connections: set[P] = set()
        self.http_channels = 0
        self.pending_per_ip: dict[str, int] = {}
        #: Connections closed at accept since the last log line; None: no run going on.
        self._accept_refusals: int | None = None
        self._accept_log_call: Any = None
        self._dirty: list[Lane] = []
        self._flush_call: Any = None
        self._ids = itertools.count(1)
        if protocol is not None:
            self.protocol = protocol
        self._baked: type[P] | None = None
        self.setProtocolOptions(**limits.protocol_options())

    def setProtocolOptions(self, **options: Any) -> None:  # type: ignore[override]
        """
        Autobahn's, plus: the options become class attributes of a protocol
        class made for this factory.

        Autobahn copies its 29 protocol options from the factory onto every
        connection unless the protocol already has them: as class attributes
        they cost no memory per connection and no copying per handshake.
        """
        super().setProtocolOptions(**options)  # type: ignore[no-untyped-call]
        if getattr(self, "_baked", False) is False:
            return  # Autobahn's __init__ sets its defaults before fws's __init__ runs
        if self._baked is None or self.protocol is not self._baked:
            base = self.protocol
            # The factory too is a class attribute: one key fewer in every connection's dict.
            self._baked = type(base.__name__, (base,), {"__module__": base.__module__,
                                                        "__qualname__": base.__qualname__,
                                                        "factory": self,
                                                        "_options_baked": True})
            self.protocol = self._baked
        for name in self._baked.CONFIG_ATTRS:
            value = getattr(self, name)
            if hasattr(value, "__get__"):  # a function (perMessageCompressionAccept) stays unbound
                value = staticmethod(value)
            setattr(self._baked, name, value)
        # The largest frame the inbound fast path takes: the same for every connection
        # of this factory, so the class's (an instance copy cost a dict key each).
        self._baked._fast_limit = min(self.limits.max_message_size, self.limits.max_frame_size)

    def stopFactory(self) -> None:
        if self._accept_log_call is not None and self._accept_log_call.active():
            self._accept_log_call.cancel()
        self._accept_log_call = self._accept_refusals = None
        super().stopFactory()  # type: ignore[no-untyped-call]

    def buildProtocol(self, addr: Any) -> P | None:  # type: ignore[override]
        """
        A connection for a TCP connection just accepted, or ``None`` (Twisted
        then closes the socket at once) when :meth:`admit` refuses it.
        """
        if not self.admit(addr):
            return None
        return self.build(addr)

    def build(self, addr: Any) -> P:
        """A connection, without the accept cap (a connection twisted.web hands over has passed it)."""
        proto: P = self.protocol()
        if self.protocol is not self._baked:  # the baked class has the factory (setProtocolOptions)
            proto.factory = self
        proto.id = f"{self.node_id}-{next(self._ids)}"
        return proto

    def admit(self, addr: Any) -> bool:
        """
        Whether a TCP connection just accepted may stay: the accept cap of this
        factory's port and of the HTTP site that shares it (:mod:`fws.web`).

        Refused when ``connections`` (open and in-handshake alike) plus the
        HTTP channels not yet taken over by a WebSocket (``http_channels``) are
        at ``max_connections + max_pending_handshakes``, or when the TCP peer
        already has ``max_pending_per_ip`` connections in their handshake (or
        plain HTTP ones) and is not a trusted proxy.

        The 503 of the handshake counts open users only, so without this any
        number of clients could sit in their opening handshake, each holding
        a file descriptor until ``--open-handshake-timeout``: a flood of idle
        sockets ran the process out of descriptors and locked everyone out;
        and without the per-address bound one address could take all of the
        pending headroom.
        """
        limits = self.limits
        cap = limits.max_connections
        if cap and len(self.connections) + self.http_channels >= cap + limits.max_pending_handshakes:
            self._refuse_accept("max_connections")
            return False
        most = limits.max_pending_per_ip
        if most:
            host = getattr(addr, "host", None)
            if (host is not None and self.pending_per_ip.get(host, 0) >= most
                    and not limits.is_trusted_proxy(host)):
                self._refuse_accept("max_pending_per_ip", host)
                return False
        return True

    def pending_started(self, host: str | None) -> None:
        """A connection from ``host`` (a TCP peer address) is in its handshake, or plain HTTP."""
        if host is not None and self.limits.max_pending_per_ip:  # counted only to be bounded
            self.pending_per_ip[host] = self.pending_per_ip.get(host, 0) + 1

    def pending_ended(self, host: str | None) -> None:
        """The connection of :meth:`pending_started` opened, was handed over, or was lost."""
        if host is None:
            return
        left = self.pending_per_ip.get(host, 1) - 1
        if left > 0:
            self.pending_per_ip[host] = left
        else:
            self.pending_per_ip.pop(host, None)

    def _refuse_accept(self, limit: str, host: str | None = None) -> None:
        """
        Count a TCP connection closed at accept; log the first of a run, then
        one summary line per :data:`ACCEPT_LOG_INTERVAL` while they go on (a
        flood of sockets makes a few lines, not one per socket).
        """
        self.stats.hit(limit)
        if self._accept_refusals is not None:
            self._accept_refusals += 1
            return
        self._accept_refusals = 0
        if limit == "max_pending_per_ip":
            self._log.warn("connection cap reached for {host} ({count} of its connections in "
                           "their handshake, --max-pending-per-ip {most}): closing its new TCP "
                           "connections as they are accepted", host=host,
                           count=self.pending_per_ip.get(host or "", 0),
                           most=self.limits.max_pending_per_ip)
        else:
            self._log.warn("connection cap reached ({count} connections open or in their "
                           "handshake, --max-connections {cap} + --max-pending-handshakes "
                           "{pending}): closing new TCP connections as they are accepted",
                           count=len(self.connections) + self.http_channels,
                           cap=self.limits.max_connections,
                           pending=self.limits.max_pending_handshakes)
        self._accept_log_call = self.reactor.callLater(ACCEPT_LOG_INTERVAL, self._accept_summary)

    def _accept_summary(self) -> None:
        count = self._accept_refusals or 0
        if not count:
            self._accept_refusals = self._accept_log_call = None
            return  # the run is over; its next refusal logs a first line again
        self._log.warn("connection cap: closed {count} more TCP connection{s} at accept in the "
                       "last {seconds:g} s ({open} open or in their handshake)", count=count,
                       s="" if count == 1 else "s", seconds=ACCEPT_LOG_INTERVAL,
                       open=len(self.connections) + self.http_channels)
        self._accept_refusals = 0
        self._accept_log_call = self.reactor.callLater(ACCEPT_LOG_INTERVAL, self._accept_summary)

    # --- sending -------------------------------------------------------------------------

    def send_all(self, data: bytes, binary: bool, exclude: WireProtocol | None,
                 lanes: Iterable[Lane]) -> int:
        """
        Frame once, queue for every open recipient but ``exclude``.

        This is the fan-out hot path. A recipient whose lane is ``ok`` (open,
        uncompressed, reading, nothing in its transport's buffer: the usual
        case) costs a look at its lane and a list append; the connection
        object itself is not touched, here or in :meth:`_flush`, because with
        thousands of recipients each object touched is a cache miss, and
        those misses were most of fws's own time per delivery. Other
        recipients are checked one by one; those that negotiated compression
        get ``sendPreparedMessage``, which compresses for them.
        """
        targets = tuple(lanes)  # a recipient closing during the loop must not upset it
        if not targets:
            return 0
        prepared = self.prepareMessage(data, binary)
        frame = prepared.payloadHybi
        dirty = self._dirty
        sent = 0
        open_state = WireProtocol.STATE_OPEN
        for lane in targets:
            if not lane.ok:
                conn = lane.conn
                if conn is exclude or conn.state != open_state or lane.full:
                    continue
                if conn._perMessageCompress is not None:
                    conn.sendPreparedMessage(prepared)
                    sent += 1
                    continue
            elif lane.conn is exclude:
                continue
            # One frame is kept as bytes, which the garbage collector does not
            # track: a list per recipient per message would trigger collections.
            out = lane.out
            if out is None:
                lane.out = frame
                dirty.append(lane)
            elif out.__class__ is list:
                out.append(frame)
            else:
                lane.out = [out, frame]  # type: ignore[list-item]
            sent += 1
        return self._sent(sent, sent * len(frame), dirty)

    def send_split(self, data: bytes, headed: bytes, binary: bool, exclude: WireProtocol | None,
                   lanes: Iterable[Lane], skip: Container[str] | None = None) -> int:
        """
        :meth:`send_all` of one message that has two forms: ``headed`` (a
        header, then the payload) for the lanes that take headers
        (``lane.headed``), ``data`` for the others. Each form is framed once,
        so the header costs once per message, not once per recipient.

        :param skip: Ids of headed recipients not to send to (their history is
            being replayed: they get the message after the replay).
        """
        targets = tuple(lanes)
        if not targets:
            return 0
        plain_prepared = self.prepareMessage(data, binary)
        headed_prepared = self.prepareMessage(headed, binary)
        plain, with_header = plain_prepared.payloadHybi, headed_prepared.payloadHybi
        dirty = self._dirty
        sent = size = 0
        open_state = WireProtocol.STATE_OPEN
        for lane in targets:
            conn = lane.conn
            if conn is exclude:
                continue
            if lane.headed:
                if skip and conn.id in skip:
                    continue
                frame, prepared = with_header, headed_prepared
            else:
                frame, prepared = plain, plain_prepared
            if not lane.ok:
                if conn.state != open_state or lane.full:
                    continue
                if conn._perMessageCompress is not None:
                    conn.sendPreparedMessage(prepared)
                    sent += 1
                    continue
            out = lane.out
            if out is None:
                lane.out = frame
                dirty.append(lane)
            elif out.__class__ is list:
                out.append(frame)
            else:
                lane.out = [out, frame]  # type: ignore[list-item]
            sent += 1
            size += len(frame)
        return self._sent(sent, size, dirty)

    def _sent(self, sent: int, size: int, dirty: list[Lane]) -> int:
        """The end of a broadcast that queued ``sent`` frames (``size`` bytes): counted, flushed."""
        if sent:
            stats = self.stats
            stats.broadcasts += 1
            stats.deliveries += sent
            stats.messages_out += sent
            stats.bytes_out += size
        if dirty and self._flush_call is None:
            self._schedule_flush()
        return sent

    def mark_dirty(self, lane: Lane) -> None:
        """``lane`` has frames queued: write them at the end of this reactor turn."""
        self._dirty.append(lane)
        if self._flush_call is None:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        """
        Run :meth:`_flush` at the end of this reactor turn: right after the
        current poll's events on fws's reactor (no DelayedCall), else with
        ``callLater(0)`` (other reactors, or a send from a timer).
        """
        reactor = self.reactor
        if getattr(reactor, "fws_dispatching", False):
            reactor.fws_after_io.append(self._flush)
            self._flush_call = _AFTER_IO
        else:
            self._flush_call = reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """
        Write every connection's queued frames, once per reactor turn.

        Everything a turn sends to one client leaves in one ``send``; that is
        what lets one core serve many thousands of deliveries per second
        (writes coalesce under load, and an unloaded message costs one system
        call per client, not a write plus two poller updates). An ``ok`` lane
        is sent to here, from the lane alone (see :meth:`send_all`); the rest
        go through :meth:`Lane.write_out`, which checks the
        transport, and sets ``ok`` again once a direct send went through.
        """
        self._flush_call = None
        dirty, self._dirty = self._dirty, []
        for lane in dirty:
            out = lane.out
            if out is None:  # already written (sendData writes what is queued first)
                continue
            if lane.ok:
                data = out if out.__class__ is bytes else b"".join(out)  # type: ignore[arg-type]
                try:
                    sent = lane.sock.send(data)
                except OSError:  # EAGAIN, or an error Twisted will find and report itself
                    sent = 0
                if sent == len(data):
                    lane.out = None
                    continue
                lane.out = data[sent:]  # the rest through the transport, in order
            lane.write_out()
