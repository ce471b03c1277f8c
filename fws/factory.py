"""
The Autobahn factory: owns the user registry, the token groups, the storage
object and the pipeline of one server, and frames broadcasts once.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from fws.limits import CLOSE_GOING_AWAY, CLOSE_IDLE, Limits
from fws.metrics import Stats
from fws.pipeline import FilterPipeline, run_chain
from fws.protocol import FwsRawDataProtocol, FwsServerProtocol, Lane, normalize_payload, unsent_bytes
from fws.storage_objects import StorageObject
from fws.timers import BucketTimer

#: ``_flush_call`` while a flush waits in the reactor's after-I/O list.
_AFTER_IO = object()
#: Seconds between the summary lines while TCP connections are closed at accept.
ACCEPT_LOG_INTERVAL = 5.0


class FwsServerFactory(WebSocketServerFactory):
    """
    One fws server: what every connection shares.

    :param pipeline: The filter chains this server runs.
    :param storage_object: Shared storage and pub/sub; ``attach(self)`` is
        called on it so that pub/sub messages (and, with Redis, broadcasts
        relayed by other nodes) reach this server.
    :param reactor: The reactor connections and timers use.
    :param node_id: Prefix of connection ids; random by default so that ids
        are unique across processes.
    :param limits: Size, rate, connection, buffer and keepalive limits.
    :param options: Every resolved option, for filters to read
        (``web_socket_instance.factory.options["jwt_audience"]``).
    :ivar users: id -> open connection; what ``web_socket_instance.users`` is.
    :ivar groups: token group name -> {id: connection}, local members only.
    :ivar connections: every connection, open or still in its handshake.
    :ivar finishing: connections closed whose disconnect chain has not finished.
    """

    protocol = FwsServerProtocol  # type: ignore[assignment]
    noisy = False  # no "Starting factory" lines; fws logs what matters itself
    _log = Logger()

    def __init__(
        self,
        pipeline: FilterPipeline,
        storage_object: StorageObject,
        *,
        reactor: IReactorTime,
        node_id: str | None = None,
        limits: Limits | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        # "Server: fws" rather than Autobahn's name and version in every handshake response.
        super().__init__(url=None, reactor=reactor, server="fws")
        # Autobahn's handshake, ping and close timeouts, with O(1) cancel (see fws.timers).
        self._batched_timer = BucketTimer(reactor)
        self.pipeline = pipeline
        self.limits = limits or Limits()
        self.options: Mapping[str, Any] = options or {}
        self.per_ip: dict[str, int] = {}
        self._idle_sweep: LoopingCall | None = None
        #: Every user's :class:`~fws.protocol.Lane`, in the order of ``users``:
        #: what a broadcast to everyone walks instead of the connections.
        self._lanes: dict[str, Lane] = {}
        self._dirty: list[Lane] = []
        self._flush_call: Any = None
        self.storage_object = storage_object
        #: Counters for metrics (plain integers: cheap enough to keep always).
        self.stats = Stats()
        #: The Prometheus registry when metrics are served (:class:`fws.metrics.FwsMetrics`).
        self.metrics: Any = None
        #: One info line per connection open and close (off below --log-level info).
        level = "debug" if self.options.get("debug") else self.options.get("log_level") or "info"
        self.log_connections = level in ("debug", "info")
        self.node_id = node_id or secrets.token_hex(6)
        self.users: dict[str, FwsServerProtocol] = {}
        self.groups: dict[str, dict[str, FwsServerProtocol]] = {}
        #: The members' lanes, group by group, in the same order (see ``_lanes``).
        self._group_lanes: dict[str, dict[str, Lane]] = {}
        self.connections: set[FwsServerProtocol] = set()
        #: HTTP connections of the port's twisted.web site (fws.web) not taken
        #: over by a WebSocket: they count towards the accept cap with ``connections``.
        self.http_channels = 0
        #: TCP peer address -> its connections in their handshake or plain HTTP
        #: (what ``--max-pending-per-ip`` bounds at accept).
        self.pending_per_ip: dict[str, int] = {}
        #: Connections closed at accept since the last log line; None: no run going on.
        self._accept_refusals: int | None = None
        self._accept_log_call: Any = None
        #: Connections gone from ``connections`` whose disconnect chain still runs
        #: (an asynchronous filter, or one queued behind the message chain).
        self.finishing: set[FwsServerProtocol] = set()
        #: While :meth:`close_all` waits: connection -> what fires once it is gone
        #: and its disconnect chain has finished (see :meth:`_settled`).
        self._gone: dict[FwsServerProtocol, Deferred[None]] | None = None
        self._past_deadline = False
        self._ids = itertools.count(1)
        self._consumer_backlog: deque[tuple[str, bytes, str | None]] | None = None
        #: (close code, reason) once close_all has run: what connections that
        #: finish their handshake afterwards are closed with.
        self.closing: tuple[int, str] | None = None
        if pipeline.data:
            self.protocol = FwsRawDataProtocol
        self._baked: type[FwsServerProtocol] | None = None
        self.setProtocolOptions(**self.limits.protocol_options())
        # The hooks of a storage object that joins several nodes into one server (the
        # Redis one): relaying broadcasts, and mirroring group membership. None for
        # one process, so that a broadcast pays for nothing it does not need.
        shared = storage_object.shared
        self._relay = storage_object.relay if shared else None
        self._member_joined = storage_object.member_joined if shared else None
        self._member_left = storage_object.member_left if shared else None
        storage_object.attach(self)

    def setProtocolOptions(self, **options: Any) -> None:  # type: ignore[override]
        """
        Autobahn's, plus: the options become class attributes of a protocol
        class made for this factory.

        Autobahn copies its 29 protocol options from the factory onto every
        connection unless the protocol already has them: as class attributes
        they cost no memory per connection and no copying per handshake.
        """
        super().setProtocolOptions(**options)
        if getattr(self, "_baked", False) is False:
            return  # Autobahn's __init__ sets its defaults before fws's __init__ runs
        if self._baked is None or self.protocol is not self._baked:
            base = self.protocol
            self._baked = type(base.__name__, (base,), {"__module__": base.__module__,
                                                        "__qualname__": base.__qualname__})
            self.protocol = self._baked
        for name in self._baked.CONFIG_ATTRS:
            value = getattr(self, name)
            if hasattr(value, "__get__"):  # a function (perMessageCompressionAccept) stays unbound
                value = staticmethod(value)
            setattr(self._baked, name, value)

    def startFactory(self) -> None:
        super().startFactory()
        self._log.info("fws node {node_id}: connection ids are {node_id}-<n>", node_id=self.node_id)
        idle = self.limits.idle_timeout
        if idle > 0:
            self._idle_sweep = LoopingCall(self._close_idle)
            self._idle_sweep.clock = self.reactor
            self._idle_sweep.start(min(max(idle / 4.0, 0.05), 5.0), now=False)

    def stopFactory(self) -> None:
        if self._idle_sweep is not None and self._idle_sweep.running:
            self._idle_sweep.stop()
        if self._accept_log_call is not None and self._accept_log_call.active():
            self._accept_log_call.cancel()
        self._accept_log_call = self._accept_refusals = None
        super().stopFactory()

    def _close_idle(self) -> None:
        """Close connections that received no message for ``idle_timeout`` seconds."""
        now = self.reactor.seconds()
        for conn in list(self.users.values()):
            if conn.messages_in != conn._idle_mark:
                conn._idle_mark, conn._idle_since = conn.messages_in, now
            elif now - conn._idle_since >= self.limits.idle_timeout:
                self.stats.hit("idle_timeout")
                conn.close(CLOSE_IDLE, "idle timeout")

    def buildProtocol(self, addr: Any) -> FwsServerProtocol | None:  # type: ignore[override]
        """
        A connection for a TCP connection just accepted, or ``None`` (Twisted
        then closes the socket at once) when :meth:`admit` refuses it.
        """
        if not self.admit(addr):
            return None
        return self.build(addr)

    def build(self, addr: Any) -> FwsServerProtocol:
        """A connection, without the accept cap (a connection twisted.web hands over has passed it)."""
        proto: FwsServerProtocol = super().buildProtocol(addr)  # type: ignore[assignment]
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

    # --- registry -------------------------------------------------------------------------

    def register(self, conn: FwsServerProtocol) -> None:
        """Called when a connection opens: it becomes a user."""
        self.users[conn.id] = conn
        self._lanes[conn.id] = conn._lane
        ip = conn.client_ip
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        conn._idle_since = self.reactor.seconds()

    def unregister(self, conn: FwsServerProtocol) -> None:
        """Called when an opened connection closes: it leaves ``users`` and its group."""
        conn._lane.ok = False
        self._lanes.pop(conn.id, None)
        if self.users.pop(conn.id, None) is not None:
            ip = conn.client_ip
            left = self.per_ip.get(ip, 1) - 1
            if left > 0:
                self.per_ip[ip] = left
            else:
                self.per_ip.pop(ip, None)
        self.leave_group(conn)
        if self.pipeline.disconnect:
            # onClose runs the disconnect chain next (or queues it behind the message
            # chain); until disconnect_finished, close_all waits for it.
            self.finishing.add(conn)
        self._settled(conn)

    def stop_waits_for(self, conn: FwsServerProtocol) -> bool:
        """Whether :meth:`close_all` is waiting for ``conn`` (and so bounds how long it may linger)."""
        gone = self._gone
        return gone is not None and conn in gone

    def disconnect_finished(self, result: Any, conn: FwsServerProtocol) -> Any:
        """``conn``'s disconnect chain has finished; passes ``result`` on (a callback)."""
        self.finishing.discard(conn)
        self._settled(conn)
        return result

    def _closed(self, result: Any, conn: FwsServerProtocol) -> Any:
        """``conn``'s ``is_closed`` fired (a callback that passes ``result`` on)."""
        self._settled(conn)
        return result

    def _settled(self, conn: FwsServerProtocol) -> None:
        """
        Fire :meth:`close_all`'s wait for ``conn`` if it is over: the
        connection is closed, no longer a user, and its disconnect chain is
        done (past the stop deadline, closed and unregistered is enough: no
        filter holds the stop beyond it).

        Autobahn fires ``is_closed`` before ``onClose``; an open connection
        is still in ``users`` then, and is settled by :meth:`unregister` or
        :meth:`disconnect_finished` instead.
        """
        gone = self._gone
        if not gone or conn not in gone or conn.state != conn.STATE_CLOSED:
            return
        if self.users.get(conn.id) is conn:
            return
        if conn in self.finishing and not self._past_deadline:
            return
        gone.pop(conn).callback(None)

    def join_group(self, conn: FwsServerProtocol, name: str) -> None:
        """Put ``conn`` in token group ``name``, leaving any group it was in."""
        if conn.token == name and conn.id in self.groups.get(name, {}):
            return
        self.leave_group(conn)
        self.groups.setdefault(name, {})[conn.id] = conn
        self._group_lanes.setdefault(name, {})[conn.id] = conn._lane
        conn.token = name
        if self._member_joined is not None:
            self._member_joined(name, conn.id)

    def leave_group(self, conn: FwsServerProtocol) -> None:
        """Take ``conn`` out of its token group, if any."""
        name = conn.token
        if name is None:
            return
        members = self.groups.get(name)
        if members is not None:
            members.pop(conn.id, None)
            if not members:
                del self.groups[name]
        lanes = self._group_lanes.get(name)
        if lanes is not None:
            lanes.pop(conn.id, None)
            if not lanes:
                del self._group_lanes[name]
        conn.token = None
        if self._member_left is not None:
            self._member_left(name, conn.id)

    # --- sending -------------------------------------------------------------------------

    def broadcast(
        self,
        payload: str | bytes | bytearray | memoryview,
        isBinary: bool | None = None,
        *,
        exclude: FwsServerProtocol | None = None,
        recipients: Iterable[FwsServerProtocol] | None = None,
    ) -> int:
        """
        Send one message to many connections, framing it once.

        :param payload: str (text) or bytes; the kind is chosen as for
            :meth:`FwsServerProtocol.sendMessage`.
        :param exclude: A connection to skip (usually the sender).
        :param recipients: Connections to send to; every user by default.
        :returns: How many connections it was written to.
        """
        data, binary = normalize_payload(payload, isBinary)
        if recipients is None:
            return self._send_all(data, binary, exclude, self._lanes.values())
        return self._send_all(data, binary, exclude, (conn._lane for conn in recipients))

    def _send_all(self, data: bytes, binary: bool, exclude: FwsServerProtocol | None,
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
        open_state = FwsServerProtocol.STATE_OPEN
        for lane in targets:
            if not lane.ok:
                conn = lane.conn
                if conn is exclude or conn.state != open_state or conn.send_full:
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
        if sent:
            stats = self.stats
            stats.broadcasts += 1
            stats.deliveries += sent
            stats.messages_out += sent
            stats.bytes_out += sent * len(frame)
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
        is sent to here, from the lane alone (see :meth:`_send_all`); the rest
        go through :meth:`FwsServerProtocol.write_out`, which checks the
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
            lane.conn.write_out()

    def broadcast_all(
        self,
        payload: str | bytes | bytearray | memoryview,
        isBinary: bool | None = None,
        *,
        exclude: FwsServerProtocol | None = None,
    ) -> int:
        """
        Send one message to every user of the logical server: here, and on every
        other node when the storage object joins nodes (Redis).

        :returns: How many local connections it was written to.
        """
        data, binary = normalize_payload(payload, isBinary)
        sent = self._send_all(data, binary, exclude, self._lanes.values())
        if self._relay is not None:
            self._relay(None, exclude.id if exclude is not None else None, binary, data)
        return sent

    def broadcast_group(
        self,
        group: str,
        payload: str | bytes | bytearray | memoryview,
        isBinary: bool | None = None,
        *,
        exclude: FwsServerProtocol | None = None,
    ) -> int:
        """
        Send one message to every member of token group ``group``, on every node.

        :returns: How many local connections it was written to.
        """
        data, binary = normalize_payload(payload, isBinary)
        lanes = self._group_lanes.get(group)
        sent = self._send_all(data, binary, exclude, lanes.values()) if lanes else 0
        if self._relay is not None:
            self._relay(group, exclude.id if exclude is not None else None, binary, data)
        return sent

    def deliver_relayed(
        self, group: str | None, exclude_id: str | None, is_binary: bool, payload: bytes
    ) -> int:
        """
        Deliver a broadcast that another node relayed (the storage object calls this).

        :param group: Token group name, or ``None`` for every user.
        :param exclude_id: Id of the sender, never sent back to.
        """
        self.stats.relayed_received += 1
        if group is None:
            lanes: Iterable[Lane] = self._lanes.values()
        else:
            group_lanes = self._group_lanes.get(group)
            if not group_lanes:
                return 0
            lanes = group_lanes.values()
        exclude = self.users.get(exclude_id) if exclude_id is not None else None
        return self._send_all(payload, is_binary, exclude, lanes)

    # --- pub/sub -------------------------------------------------------------------------

    def deliver_pubsub(self, channel: str, data: bytes, pattern: str | None = None) -> None:
        """
        Feed one pub/sub message to the consumer chain (the storage object calls this).

        Messages are processed in arrival order even when consumer filters go
        asynchronous.
        """
        self.stats.pubsub_received += 1
        if not self.pipeline.consumer:
            return
        if self._consumer_backlog is not None:
            self._consumer_backlog.append((channel, data, pattern))
            return
        outcome = self._run_consumer(channel, data, pattern)
        if outcome is not None and isinstance(outcome, Deferred):
            self._consumer_backlog = deque()
            outcome.addBoth(self._resume_consumer)

    def _run_consumer(self, channel: str, data: bytes, pattern: str | None) -> Any:
        message = {"type": "message", "pattern": pattern, "channel": channel, "data": data}
        return run_chain(self.pipeline.consumer, self, message, event="consumer", conn_id="server")

    def _resume_consumer(self, _: Any = None) -> None:
        backlog = self._consumer_backlog
        while backlog:
            outcome = self._run_consumer(*backlog.popleft())
            if outcome is not None and isinstance(outcome, Deferred):
                outcome.addBoth(self._resume_consumer)
                return
        self._consumer_backlog = None

    # --- shutdown ------------------------------------------------------------------------

    def close_all(
        self,
        code: int = CLOSE_GOING_AWAY,
        reason: str = "server shutting down",
        timeout: float = 5.0,
        drain_period: float = 0.0,
    ) -> Deferred[None]:
        """
        Close every connection and fire once all are gone, their disconnect
        chains included.

        Open connections get a close frame with ``code``, spread evenly over
        ``drain_period`` seconds so that clients do not all reconnect at the
        same moment. A connection still in its opening handshake (accepted just
        before the stop, its request maybe not even read yet) is not reset: it
        completes the handshake and gets the same close frame at once, so its
        client sees an ordinary close and reconnects.

        Each close frame goes after what was already queued for its client,
        and the close handshake timeout only starts once the client has all
        of it (:meth:`FwsServerProtocol.close` with ``drain``): a client that
        reads slowly gets every message, then the close, for as long as
        ``timeout`` allows. Whatever is still connected ``drain_period +
        timeout`` seconds after the call (``timeout`` after the last close
        frame at the latest) is aborted, with one log line for all of them.

        "Gone" is after ``connectionLost``, not Autobahn's ``is_closed``
        (which fires when Autobahn drops the TCP connection, before
        ``onClose``): the connection has left ``users`` and its group, and
        its disconnect chain has finished, asynchronous filters too (each
        bounded by ``--filter-timeout`` when set). What runs after this
        fires (the service tree stops storage next) therefore finds no user
        registered and no disconnect filter still writing to storage;
        connections that closed by themselves just before the call and are
        still in their disconnect chain are waited for as well. At the
        deadline a disconnect chain still running is no longer waited for.
        """
        self.closing = (code, reason)
        conns = list(self.connections)
        waiting = conns + [conn for conn in self.finishing if conn not in self.connections]
        if not waiting:
            return succeed(None)
        gone = self._gone
        if gone is None:
            gone = self._gone = {}
            self._past_deadline = False
        waits = []
        for conn in waiting:
            wait = gone.get(conn)
            if wait is None:
                wait = gone[conn] = Deferred()
                conn.is_closed.addBoth(self._closed, conn)  # may settle it at once
            waits.append(wait)
        opened = [conn for conn in conns if conn.state == conn.STATE_OPEN]
        steps = max(1, min(len(opened), int(drain_period / 0.05))) if drain_period > 0 else 1
        per_step = -(-len(opened) // steps)
        for step in range(steps):
            batch = opened[step * per_step:(step + 1) * per_step]
            if batch:
                delay = drain_period * step / steps
                self.reactor.callLater(delay, self._close_batch, batch, code, reason)
        done: Deferred[None] = DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)
        timer = self.reactor.callLater(drain_period + timeout, self._abort_remaining, waiting)
        done.addBoth(self._waited, timer)
        return done

    def _waited(self, result: Any, timer: Any) -> Any:
        """close_all's wait is over: no deadline to keep, nothing to wait for."""
        if timer.active():
            timer.cancel()
        if not self._gone:
            self._gone = None
        return result

    @staticmethod
    def _close_batch(batch: list[FwsServerProtocol], code: int, reason: str) -> None:
        for conn in batch:
            conn.close(code, reason, drain=True)

    def _abort_remaining(self, conns: list[FwsServerProtocol]) -> None:
        """
        The stop timeout is up: abort what is still connected, stop waiting
        for disconnect chains still running, and say so in one line (a
        thousand slow clients make one event, not a thousand lines).
        """
        self._past_deadline = True
        late = [conn for conn in conns if conn in self.connections and conn.transport is not None]
        chains = sum(1 for conn in conns if conn in self.finishing and conn not in self.connections)
        if late:
            unsent = [sum(unsent_bytes(conn.transport)) for conn in late]
            receiving = sum(1 for n in unsent if n)
            ids = ", ".join(conn.id for conn in late[:5]) + (", ..." if len(late) > 5 else "")
            self._log.warn(
                "stop timeout: aborting {count} connection{s} still open ({receiving} with "
                "{unsent} bytes not yet delivered, {waiting} waiting for the close handshake)"
                "{chains}: {ids}", count=len(late), s="" if len(late) == 1 else "s",
                receiving=receiving, unsent=sum(unsent), waiting=len(late) - receiving,
                chains=f"; {chains} disconnect chain{'' if chains == 1 else 's'} still running"
                if chains else "", ids=ids)
        elif chains:
            self._log.warn("stop timeout: {count} disconnect chain{s} still running; not waiting "
                           "for {them}", count=chains, s="" if chains == 1 else "s",
                           them="it" if chains == 1 else "them")
        for conn in late:
            conn.transport.abortConnection()
        for conn in conns:  # those only in their disconnect chain are released now
            self._settled(conn)
