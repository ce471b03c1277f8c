"""
The server filters see (``web_socket_instance.factory``): the registry of
users and token groups, broadcast, relay to other nodes, pub/sub delivery
and the graceful close of everyone, on top of the wire's factory
(:class:`fws._wire.factory.WireFactory`), which frames a broadcast once.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from fws._wire.factory import WireFactory
from fws._wire.outbound import Lane
from fws._wire.payload import normalize_payload
from fws.history import (
    EVERYONE,
    SUBPROTOCOL,
    HistoryStore,
    MemoryHistory,
    Once,
    Replay,
    Replayer,
    header,
)
from fws.limits import CLOSE_GOING_AWAY, CLOSE_IDLE, Limits
from fws.metrics import FwsMetrics, Stats
from fws.ordered import Ordered
from fws.pipeline import FilterPipeline, run_chain
from fws.protocol import FwsRawDataProtocol, FwsServerProtocol
from fws.storage_objects import StorageObject


class FwsServerFactory(WireFactory[FwsServerProtocol]):
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
    :ivar finishing: connections closed whose disconnect chain has not finished.
    """

    protocol = FwsServerProtocol

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
        self.options: Mapping[str, Any] = options or {}
        # One info line per connection open and close (off below --log-level info).
        level = "debug" if self.options.get("debug") else self.options.get("log_level") or "info"
        super().__init__(reactor=reactor, limits=limits or Limits(), stats=Stats(),
                         node_id=node_id or secrets.token_hex(6),
                         log_connections=level in ("debug", "info"),
                         protocol=FwsRawDataProtocol if pipeline.data else None)
        self.pipeline = pipeline
        self.per_ip: dict[str, int] = {}
        self._idle_sweep: LoopingCall | None = None
        #: Every user's :class:`~fws._wire.outbound.Lane`, in the order of ``users``:
        #: what a broadcast to everyone walks instead of the connections.
        self._lanes: dict[str, Lane] = {}
        self.storage_object = storage_object
        #: The Prometheus registry when metrics are served (:class:`fws.metrics.FwsMetrics`).
        self.metrics: FwsMetrics | None = None
        self.users: dict[str, FwsServerProtocol] = {}
        self.groups: dict[str, dict[str, FwsServerProtocol]] = {}
        #: The members' lanes, group by group, in the same order (see ``_lanes``).
        self._group_lanes: dict[str, dict[str, Lane]] = {}
        #: Connections gone from ``connections`` whose disconnect chain still runs
        #: (an asynchronous filter, or one queued behind the message chain).
        self.finishing: set[FwsServerProtocol] = set()
        #: While :meth:`close_all` waits: connection -> what fires once it is gone
        #: and its disconnect chain has finished (see :meth:`_settled`).
        self._gone: dict[FwsServerProtocol, Deferred[None]] | None = None
        self._past_deadline = False
        #: The runner of the consumer chain, once it has gone asynchronous (fws.ordered).
        self._consumer: Ordered | None = None
        #: (close code, reason) once close_all has run: what connections that
        #: finish their handshake afterwards are closed with.
        self.closing: tuple[int, str] | None = None
        # The hooks of a storage object that joins several nodes into one server (the
        # Redis one): relaying broadcasts, and mirroring group membership. None for
        # one process, so that a broadcast pays for nothing it does not need.
        shared = storage_object.shared
        self._relay = storage_object.relay if shared else None
        self._member_joined = storage_object.member_joined if shared else None
        self._member_left = storage_object.member_left if shared else None
        storage_object.attach(self)
        #: With ``--history``: the store that keeps group messages (fws.history), the
        #: node's replays, and group -> {connection id: its replay} while they run.
        self.history: HistoryStore | None = None
        self._replayer: Replayer | None = None
        #: Keyed by (is a channel, name): a token group and a pub/sub channel of one
        #: name are two groups (two histories with Redis: ``hist`` and ``chist``).
        self._replaying: dict[tuple[bool, str], dict[str, Replay]] = {}
        #: While the consumer chain runs a pub/sub message that Redis kept
        #: (``FCALL fws_publish``): (channel, payload, (epoch, offset)), for the
        #: chain's :meth:`broadcast_channel` to deliver with that position.
        self._pubsub_kept: tuple[str, bytes, tuple[str, int]] | None = None
        #: Whether something else than the kept message went to its channel meanwhile.
        self._kept_other = False
        #: Channels whose kept messages a consumer filter changed (warned once each).
        self._changed_warned = Once(1000)
        #: Open users that take headers (fws.v1): while there are none, a group
        #: message is framed once, plain, as without history.
        self._headed = 0
        limits = self.limits
        if limits.history_size > 0:
            self.history = storage_object.history(self, reactor, limits) or MemoryHistory(
                self, reactor, limits.history_size, limits.history_ttl, limits.history_max_bytes)
            self._replayer = Replayer(self, self.history, reactor, limits.history_size,
                                      limits.history_ttl, self.stats)

    def startFactory(self) -> None:
        super().startFactory()  # type: ignore[no-untyped-call]
        self._log.info("fws node {node_id}: connection ids are {node_id}-<n>", node_id=self.node_id)
        idle = self.limits.idle_timeout
        if idle > 0:
            self._idle_sweep = LoopingCall(self._close_idle)
            self._idle_sweep.clock = self.reactor
            self._idle_sweep.start(min(max(idle / 4.0, 0.05), 5.0), now=False)

    def stopFactory(self) -> None:
        if self._idle_sweep is not None and self._idle_sweep.running:
            self._idle_sweep.stop()
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

    # --- registry -------------------------------------------------------------------------

    def register(self, conn: FwsServerProtocol) -> None:
        """Called when a connection opens: it becomes a user."""
        self.users[conn.id] = conn
        self._lanes[conn.id] = conn._lane
        if conn._lane.headed:
            self._headed += 1
        ip = conn.client_ip
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        conn._idle_since = self.reactor.seconds()

    def unregister(self, conn: FwsServerProtocol) -> None:
        """
        Called when an opened connection closes: it leaves ``users`` and its
        group (``token`` still names it, for the disconnect chain).
        """
        conn._lane.ok = False
        self._lanes.pop(conn.id, None)
        if self.users.pop(conn.id, None) is not None:
            if conn._lane.headed:
                self._headed -= 1
            ip = conn.client_ip
            left = self.per_ip.get(ip, 1) - 1
            if left > 0:
                self.per_ip[ip] = left
            else:
                self.per_ip.pop(ip, None)
        token = conn.token
        self.leave_group(conn)
        if conn._replays:
            for replay in list(conn._replays):
                self._end_replay(replay)
            conn._replays = None
        # The group is left, but its name stays readable: a disconnect filter (the
        # 2014 ones do) cleans up what it stored under it.
        conn.token = token
        if self.pipeline.disconnect:
            # onClose runs the disconnect chain next (or queues it behind the message
            # chain); until disconnect_finished, close_all waits for it.
            self.finishing.add(conn)
        self._settled(conn)

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

    def configured(self, module: str) -> Any:
        """What filter module ``module``'s ``configure(config)`` returned (``KeyError`` if none)."""
        return self.pipeline.state[module]

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
        if conn._replays:
            for replay in list(conn._replays):
                if replay.group == name:
                    self._end_replay(replay)
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
            return self.send_all(data, binary, exclude, self._lanes.values())
        return self.send_all(data, binary, exclude, (conn._lane for conn in recipients))

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
        history = self.history
        if history is not None:
            return history.record(EVERYONE, exclude.id if exclude is not None else None, binary,
                                  data)
        sent = self.send_all(data, binary, exclude, self._lanes.values())
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
        history = self.history
        if history is not None:
            return history.record(group, exclude.id if exclude is not None else None, binary, data)
        lanes = self._lanes_of(group)
        sent = self.send_all(data, binary, exclude, lanes) if lanes is not None else 0
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
        lanes = self._lanes_of(group)
        if lanes is None:
            return 0
        return self.send_all(payload, is_binary, self._user(exclude_id), lanes)

    def _lanes_of(self, group: str | None) -> Iterable[Lane] | None:
        """The lanes of token group ``group``'s local members (every user's for ``None``); None: none here."""
        if group is None:
            return self._lanes.values()
        group_lanes = self._group_lanes.get(group)
        return group_lanes.values() if group_lanes else None

    def _user(self, conn_id: str | None) -> FwsServerProtocol | None:
        """The local connection ``conn_id`` names (a sender to leave out), if any."""
        return self.users.get(conn_id) if conn_id is not None else None

    def broadcast_channel(
        self, channel: str, payload: str | bytes | bytearray | memoryview,
        isBinary: bool | None = None,
    ) -> int:
        """
        Send a pub/sub message of ``channel`` to every local user (every node
        receives the message itself): with ``--history``, as a message of the
        group ``channel``; otherwise as :meth:`broadcast` does.

        :returns: How many local connections it was written to.
        """
        data, binary = normalize_payload(payload, isBinary)
        history = self.history
        if history is not None:
            kept = self._pubsub_kept
            if kept is not None and kept[0] == channel:
                if kept[1] == data:
                    # Redis kept it and gave it its place: deliver it there (a second
                    # call for the same message has none: it is taken here). Another
                    # channel's message or another payload leaves it: a filter may
                    # broadcast something else first, and while the chain waits,
                    # anything else may call this.
                    self._pubsub_kept = None
                    epoch, offset = kept[2]
                    return self.deliver_history(channel, epoch, offset, None, binary, data, True)
                # Said when the chain is over, if the kept message itself never came.
                self._kept_other = True
            return history.record(channel, None, binary, data, channel=True)
        return self.send_all(data, binary, None, self._lanes.values())

    # --- history (fws.history) -------------------------------------------------------------

    def deliver_history(self, group: str, epoch: str | None, offset: int | None,
                        exclude_id: str | None, is_binary: bool, payload: bytes,
                        everyone: bool = False) -> int:
        """
        Deliver a group message with its position (the history store calls
        this, on every node): framed once plain and once with its header
        (``fws.v1`` members), held for the members whose replay of the group
        runs. ``everyone``: ``*`` or a pub/sub channel, whose members are
        all users; ``offset`` ``None``: the message could not be kept.
        """
        lanes = self._lanes_of(None if everyone or group == EVERYONE else group)
        if lanes is None:
            return 0
        exclude = self._user(exclude_id)
        if not self._headed:
            return self.send_all(payload, is_binary, exclude, lanes)
        headed = header(group, epoch, offset) + payload
        replaying = self._replaying.get((everyone and group != EVERYONE, group))
        sent = self.send_split(payload, headed, is_binary, exclude, lanes, replaying)
        if replaying:  # (one that could not be kept too: no replay can give it to them)
            replayer = self._replayer
            assert replayer is not None
            for replay in list(replaying.values()):
                if replay.conn is not exclude and not replay.hold(offset, is_binary, headed):
                    replayer.give_up(replay, offset)
        return sent

    def wants_headers(self, offered: Iterable[str]) -> str | None:
        """The subprotocol a connection offering ``offered`` gets: ``fws.v1`` with ``--history``."""
        if self.history is not None and SUBPROTOCOL in offered:
            return SUBPROTOCOL
        return None

    def resume(self, conn: FwsServerProtocol, positions: dict[str, tuple[str, int]]) -> None:
        """
        Rejoin the groups a reconnecting ``fws.v1`` client names, replaying
        what it missed of each (see :mod:`fws.history`). A token group is
        joined as ``token:NAME`` would be, refused as it would be (the same
        reply); ``*`` and pub/sub channels need no joining.
        """
        history, replayer = self.history, self._replayer
        if history is None or replayer is None:
            return
        from fws.filters.broadcast_messages_by_token import join_refusal

        token_groups = "fws.filters.broadcast_messages_by_token" in self.pipeline.modules
        channels = self.delivers_channels
        for group, (epoch, offset) in positions.items():
            channel = group != EVERYONE and history.is_channel(group)
            joins = not (group == EVERYONE or channel or (channels and not token_groups))
            if joins:
                if conn.token is not None and conn.token != group:
                    refusal: str | None = ("Error: a connection is in one broadcast group at a "
                                           f"time: {group}")
                else:
                    refusal = join_refusal(conn, group)
                if refusal is not None:
                    conn.sendMessage(refusal)
                    continue
            # A group that is not joined is a channel's (everyone's, for "*"): its
            # live messages come through broadcast_channel (broadcast_all).
            channel = channel or (not joins and group != EVERYONE)
            replay = Replay(conn, group, epoch, offset, channel)
            # Skipped by live delivery from now on: what comes meanwhile is held.
            self._replaying.setdefault((channel, group), {})[conn.id] = replay
            if conn._replays is None:
                conn._replays = []
            conn._replays.append(replay)
            if joins:
                self.join_group(conn, group)
            replayer.start(replay)

    @property
    def delivers_channels(self) -> bool:
        """
        Whether this node's consumer chain delivers pub/sub channels to its
        users (``broadcast_pubsub`` is in it): what :meth:`resume` takes a
        group name for, and where a channel's unkept messages are worth a
        warning (the storage asks).
        """
        return "fws.filters.broadcast_pubsub" in self.pipeline.modules

    def history_fenced(self, fence: str) -> None:
        """
        A replay's fence came back from the history store (Redis): see
        :class:`fws.history.Replayer`. Once the consumer chain has gone
        asynchronous, a channel's fence queues behind the pub/sub messages
        that arrived before it (kept channel messages still on their way to
        :meth:`broadcast_channel`), so that no replay ends before a live
        message its read already covered is delivered (and held). A token
        group's does not: its messages never pass the consumer chain, and a
        slow one would hold its resumes back for nothing.
        """
        replayer = self._replayer
        if replayer is None:
            return
        if self._consumer is not None and replayer.channel_fence(fence):
            self._consumer.submit((None, fence, None, None))
            return
        replayer.fenced(fence)

    def replay_done(self, replay: Replay) -> None:
        """``replay`` has ended: its connection gets the group's live messages again."""
        key = (replay.channel, replay.group)
        replaying = self._replaying.get(key)
        if replaying is not None and replaying.get(replay.conn.id) is replay:
            del replaying[replay.conn.id]
            if not replaying:
                del self._replaying[key]
        replays = getattr(replay.conn, "_replays", None)
        if replays and replay in replays:
            replays.remove(replay)

    def _end_replay(self, replay: Replay) -> None:
        if self._replayer is not None:
            self._replayer.cancel(replay)
        self.replay_done(replay)

    # --- pub/sub -------------------------------------------------------------------------

    def deliver_pubsub(self, channel: str, data: bytes, pattern: str | None = None, *,
                       position: tuple[str, int] | None = None) -> None:
        """
        Feed one pub/sub message to the consumer chain (the storage object calls this).

        Messages are processed in arrival order even when consumer filters go
        asynchronous.

        :param position: (epoch, offset) the history store gave the message
            already (Redis's ``fws_publish``): the chain's
            :meth:`broadcast_channel` delivers it there instead of recording it.
        """
        self.stats.pubsub_received += 1
        if not self.pipeline.consumer:
            return
        item = (channel, data, pattern, position)
        if self._consumer is not None:
            self._consumer.submit(item)
            return
        outcome = self._run_consumer(item)
        if outcome is not None and isinstance(outcome, Deferred):
            self._consumer = Ordered(self._run_consumer, busy_with=outcome)

    def _run_consumer(self, item: tuple[str | None, Any, str | None, tuple[str, int] | None]) -> Any:
        channel, data, pattern, position = item
        if channel is None:  # a replay's fence, queued behind the messages before it
            if self._replayer is not None:
                self._replayer.fenced(data)
            return None
        message = {"type": "message", "pattern": pattern, "channel": channel, "data": data}
        if position is None:
            return run_chain(self.pipeline.consumer, self, message, event="consumer",
                             conn_id="server")
        self._pubsub_kept = (channel, data, position)
        self._kept_other = False
        outcome = run_chain(self.pipeline.consumer, self, message, event="consumer",
                            conn_id="server")
        if isinstance(outcome, Deferred):
            # The chain went asynchronous: its broadcast_channel may come later, and
            # the next message waits for this one (fws.ordered), so the position waits too.
            outcome.addBoth(self._kept_done, self._pubsub_kept)
        else:
            self._kept_done(None, self._pubsub_kept)
        return outcome

    def _kept_done(self, result: Any, kept: tuple[str, bytes, tuple[str, int]] | None) -> Any:
        """
        A kept message's consumer chain is over: its position goes with it. If
        it was not delivered there, but something else on its channel was, a
        consumer filter most likely changed it: said once per channel.
        """
        if kept is None or self._pubsub_kept is not kept:  # (None: it was delivered)
            return result
        self._pubsub_kept = None
        channel = kept[0]
        if self._kept_other and self._changed_warned.first(channel):
            self._log.warn(
                "a consumer filter changed a kept message of channel {channel} before "
                "broadcast_channel: it is delivered without a place in the history "
                "(null epoch and offset), since a replay would show what was kept, "
                "not what was delivered (said once per channel)", channel=channel)
        return result

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
                conn.held_by_stop = True  # its drops wait for the stop's deadline, not their own
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
            unsent = [conn.unsent() for conn in late]
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
