"""
Unit-test a filter in memory: fake clients, no server, no sockets, no reactor.

A filter is a function of what arrives (a handshake, a message, a close, a
pub/sub message) and what it does to connections (``sendMessage``, ``close``,
the broadcasts, the token groups). :class:`FakeServer` gives it both without
the network: it loads the filter modules with fws's own loader
(:func:`fws.pipeline.load_pipeline`, options parsed as ``fws_server`` parses
them), runs each event's chain as the server does
(:func:`fws.pipeline.run_chain`, one connection's messages in arrival order
through :class:`fws.ordered.Ordered` even when filters go asynchronous, the
disconnect chain after them, pub/sub through the real in-memory storage
object), and records what a client would have seen::

    from fws.testing import FakeServer

    server = FakeServer("shout", "fws.filters.echo")
    alice = server.connect()
    alice.client_send("hello")
    assert alice.sent == [(b"HELLO", False)]        # (payload, is_binary)

:class:`FakeConnection` and :class:`FakeServer` are the
:class:`fws.connection.Connection` and :class:`fws.connection.Server` the
filters get (``mypy`` checks that they keep that promise), so a filter that
sticks to the public API behaves here as it does on a real server. Time is a
:class:`twisted.internet.task.Clock` (:attr:`FakeServer.clock`): every method
that feeds an event returns once what it set off has settled (whatever was
due now has run: pub/sub delivery, a close), and :meth:`FakeServer.advance`
moves time on for filters that wait on timers. A filter that raises fails
the test: the method that fed the event raises :class:`FilterFailed` (the
server itself would log it and skip the rest of the chain).

What fws does before the chains, on the wire (size, rate and connection
limits, Origin, compression, slow clients but for :attr:`FakeConnection.send_full`)
is not simulated here: that is fws's, and tested over real sockets.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from fws._wire.payload import normalize_payload
from fws.config import resolve
from fws.connection import CloseInfo, Connection, Payload, Server
from fws.filters.base import EVENTS, Refuse, StopChain
from fws.limits import Limits
from fws.metrics import FwsMetrics
from fws.ordered import Ordered
from fws.pipeline import FAILED, FilterEntry, FilterPipeline, load_pipeline, run_chain
from fws.storage_objects import StorageObject, StorageServer
from fws.storage_objects.memory import MemoryStorage

#: One message as a client received it: its payload and whether it came as a binary frame.
Sent = tuple[bytes, bool]

State = Literal["connecting", "open", "closing", "closed", "refused"]

#: The most pub/sub messages one step delivers before the fake decides that
#: filters keep publishing for each other forever (and raises rather than hang).
MAX_TURNS = 10_000


class FilterFailed(AssertionError):
    """
    A filter raised (or its Deferred failed): the test fails with the filter's
    name, the event and the exception, which is also this one's ``__cause__``.

    An ``AssertionError``, so that pytest reports it as the failure it is.
    """

    def __init__(self, name: str, event: str, error: BaseException) -> None:
        super().__init__(f"filter {name} failed on {event}: {type(error).__name__}: {error}")
        self.filter = name
        self.event = event
        self.error = error


@dataclass(frozen=True)
class Broadcast:
    """One call of a broadcast, with what it was framed as and who got it."""

    #: ``"local"`` (``broadcast``), ``"all"`` (``broadcast_all``) or ``"group"``.
    kind: str
    payload: bytes
    is_binary: bool
    #: Ids of the connections it was sent to, in order.
    recipients: tuple[str, ...]
    #: The group of ``broadcast_group``, else ``None``.
    group: str | None = None


@dataclass(frozen=True)
class Relay:
    """
    What a storage object that joins nodes (Redis) would relay to the other
    nodes: ``broadcast_all`` (``group`` ``None``) and ``broadcast_group`` do.
    Recorded whatever the storage, since one process has no other node to
    ask.
    """

    group: str | None
    exclude_id: str | None
    is_binary: bool
    payload: bytes


class _RecordingStorage(MemoryStorage):
    """fws's in-memory storage object, noting what is published (a test's view of pub/sub)."""

    def __init__(self, clock: Clock, published: list[tuple[str, bytes]]) -> None:
        super().__init__(clock)
        self._published = published

    def publish(self, channel: str, data: str | bytes) -> Deferred[int]:
        self._published.append((channel, data.encode() if isinstance(data, str) else bytes(data)))
        return super().publish(channel, data)


class FakeConnection:
    """
    One fake client's connection: what filters see as ``web_socket_instance``
    (:class:`fws.connection.Connection`), and the client's side for the test.

    The test drives the client with :meth:`client_send`, :meth:`client_close`
    and :meth:`client_drop`, and reads what the server did to it in
    :attr:`sent`, :attr:`close_sent` and :attr:`close_info`.
    """

    def __init__(self, server: FakeServer, conn_id: str, request: ConnectionRequest,
                 client_ip: str) -> None:
        self.id = conn_id
        self.token: str | None = None
        self.claims: dict[str, Any] | None = None
        self.request: ConnectionRequest | None = request
        self.client_ip = client_ip
        self.is_binary = False
        self.messages_in = 0
        #: Set it to make sends to this client be dropped, as for a slow client
        #: under ``--slow-consumer-action drop``.
        self.send_full = False
        self._server = server
        self._groups_joined: set[str] = set()
        self._ordered: Ordered | None = None
        #: Where the connection is: ``connecting`` (its connect chain is still
        #: waiting), ``open``, ``closing`` (the server closed it; its disconnect
        #: chain is due), ``closed`` or ``refused``.
        self.state: State = "connecting"
        #: Every message sent to this client, in order: ``(payload, is_binary)``.
        self.sent: list[Sent] = []
        #: ``(code, reason)`` of the server's close (``close``), as the frame carried it.
        self.close_sent: tuple[int, str | None] | None = None
        #: What the disconnect chain got, once the connection has closed.
        self.close_info: CloseInfo | None = None
        #: What the data chain left of each read (:meth:`client_send_raw`).
        self.raw: list[bytes] = []
        self._raw_runner: Ordered | None = None
        #: The refusal of the handshake (a connect filter's, or 500 when one failed).
        self.refusal: Refuse | None = None

    # --- what filters use (fws.connection.Connection) ----------------------------------

    @property
    def users(self) -> Mapping[str, FakeConnection]:
        """All users of the server: id -> connection."""
        return self._server.users

    @property
    def storage_object(self) -> StorageObject:
        """The server's storage object."""
        return self._server.storage_object

    @property
    def factory(self) -> FakeServer:
        """The server this connection belongs to."""
        return self._server

    @property
    def groups_joined(self) -> set[str]:
        """Every token group this connection has joined."""
        return self._groups_joined

    def sendMessage(self, payload: Payload, isBinary: bool | None = None) -> None:
        """Record the message as the client would get it; nothing once not open."""
        data, binary = normalize_payload(payload, isBinary)
        self._deliver(data, binary)

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        """
        Record the close frame and close the connection on the clock's next
        turn, as the client's answer would (so the filter calling ``close``
        finishes first, and the disconnect chain runs after it).
        """
        if not (code == 1000 or 1001 <= code <= 1003 or 1007 <= code <= 1014
                or 3000 <= code <= 4999):
            raise ValueError(f"close code {code} may not be sent: use 1000-1003, 1007-1014 "
                             "or 3000-4999")
        if self.state != "open":
            return
        if reason:
            reason = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
        self.state = "closing"
        self.close_sent = (code, reason or None)
        self._server.clock.callLater(0, self._server._closed, self,
                                     CloseInfo(code, reason or None, True))

    # --- the test's side ---------------------------------------------------------------

    def client_send(self, payload: str | bytes, binary: bool | None = None) -> None:
        """
        The client sends one message: ``str`` as a text frame, ``bytes`` as a
        binary one unless ``binary=False``. Returns once it has settled.
        """
        if self.state != "open":
            raise RuntimeError(f"connection {self.id} is {self.state}: its client cannot send")
        if isinstance(payload, str):
            data, is_binary = payload.encode("utf-8"), bool(binary)
        else:
            data, is_binary = bytes(payload), binary is not False
        self.messages_in += 1
        self._server._message(self, data, is_binary)

    def client_send_raw(self, data: bytes) -> None:
        """
        Bytes arrive on the TCP connection: the data chain runs on them (in
        order, as reads do), and what it leaves is appended to :attr:`raw`
        (the fake has no WebSocket parser to hand it to).
        """
        if self.state != "open":
            raise RuntimeError(f"connection {self.id} is {self.state}: its client cannot send")
        self._server._raw(self, bytes(data))

    def client_close(self, code: int | None = 1000, reason: str | None = None) -> None:
        """The client closes cleanly with ``code`` (``None``: a close frame without one, 1005)."""
        self._client_gone(CloseInfo(1005 if code is None else code, reason, True))

    def client_drop(self) -> None:
        """The client's TCP connection is lost without a closing handshake (1006)."""
        self._client_gone(CloseInfo(1006, "connection was closed uncleanly", False))

    @property
    def texts(self) -> list[str]:
        """The text messages sent to this client, decoded (binary ones left out)."""
        return [payload.decode("utf-8") for payload, binary in self.sent if not binary]

    def take(self) -> list[Sent]:
        """What was sent since the last ``take``: the list, emptied (for tests in steps)."""
        sent, self.sent = self.sent, []
        return sent

    # --- fws's side ---------------------------------------------------------------------

    def _deliver(self, data: bytes, binary: bool) -> bool:
        if self.state != "open" or self.send_full:
            return False
        self.sent.append((data, binary))
        return True

    def _client_gone(self, info: CloseInfo) -> None:
        if self.state not in ("open", "closing"):
            raise RuntimeError(f"connection {self.id} is {self.state}: it cannot close")
        self._server._closed(self, info)
        self._server.settle()

    def __repr__(self) -> str:
        return f"<FakeConnection {self.id} {self.state}>"


class FakeServer:
    """
    One fake fws server running the real chains of ``filters``: what filters
    see as ``web_socket_instance.factory`` (:class:`fws.connection.Server`) and
    the consumer chain's ``web_socket_instance``.

    :param filters: Module names, as given to ``fws_server -f`` (looked up
        from the current directory first, then installed packages, then the
        bundled filters).
    :param args: More ``fws_server`` options (``["--jwt-secret", "k"]``):
        parsed and checked as ``fws_server`` does, and the source of
        :attr:`options`, :attr:`limits` and each module's ``configure(config)``.
        ``FWS_*`` variables are not read, so a test sees only what it gives.
        ``--filter-timeout`` bounds asynchronous filters on :attr:`clock`.
    :param storage: A storage object to use instead of fws's in-memory one
        (it is attached to this server, its pub/sub deliveries feed the
        consumer chain, and, when it is ``shared``, it gets the relays and
        the group changes, as from fws's server).
    :param node_id: The prefix of connection ids (``test-1``, ``test-2`` ...).
    :raises fws.config.ConfigError: an option is wrong.
    :raises fws.pipeline.FilterLoadError: a module cannot be used as a filter.
    """

    def __init__(self, *filters: str, args: Sequence[str] = (),
                 storage: StorageObject | None = None, node_id: str = "test") -> None:
        if not filters:
            raise ValueError("FakeServer needs at least one filter module")
        config = resolve(["-f", *filters, *args], environ={})
        if config is None:  # -h asked for help, and resolve printed nothing
            raise ValueError("FakeServer does not take -h")
        #: The time filters run on; :meth:`advance` moves it on.
        self.clock = Clock()
        #: The server's ``reactor`` (public API): this clock, so that filters that
        #: take their timers from ``factory.reactor`` run on test time.
        self.reactor: IReactorTime = self.clock
        self.node_id = node_id
        self.options: Mapping[str, Any] = config.options
        self.metrics: FwsMetrics | None = None
        #: fws's limits (``factory.limits``): not public API, but the bundled
        #: ``broadcast_messages_by_token`` reads its group limits from it.
        self.limits: Limits = config.limits
        #: Every filter failure so far (also raised as :class:`FilterFailed`).
        self.errors: list[FilterFailed] = []
        self._reported = 0
        pipeline = load_pipeline(config.filters, config)
        self.pipeline: FilterPipeline = _watched(
            pipeline.with_timeout(config.limits.filter_timeout, self.clock), self.errors)
        self._users: dict[str, FakeConnection] = {}
        self._groups: dict[str, dict[str, FakeConnection]] = {}
        self._consumer: Ordered | None = None
        self._pending_connects = 0
        self._turns = 0
        #: Every connection ever made, by id (a closed one may still run its chains).
        self._every: dict[str, FakeConnection] = {}
        #: Every broadcast call, in order.
        self.broadcasts: list[Broadcast] = []
        #: What a storage object joining nodes would relay to the others.
        self.relayed: list[Relay] = []
        #: ``(group, connection id)`` for each join of a token group, in order.
        self.joins: list[tuple[str, str]] = []
        #: ``(group, connection id)`` for each leave (a join of another group, a close).
        self.leaves: list[tuple[str, str]] = []
        #: ``(channel, data)`` of every publish through the in-memory storage object.
        self.published: list[tuple[str, bytes]] = []
        if storage is None:
            memory = _RecordingStorage(self.clock, self.published)
            memory.startService()
            storage = memory
        self._storage = storage
        storage.attach(self)

    # --- what filters use (fws.connection.Server) --------------------------------------

    @property
    def users(self) -> Mapping[str, FakeConnection]:
        """Every open connection: id -> connection."""
        return self._users

    @property
    def groups(self) -> Mapping[str, Mapping[str, FakeConnection]]:
        """Token group name -> members by id."""
        return self._groups

    @property
    def storage_object(self) -> StorageObject:
        """The storage object (fws's in-memory one unless another was given)."""
        return self._storage

    def configured(self, module: str) -> Any:
        """What filter module ``module``'s ``configure(config)`` returned (``KeyError`` if none)."""
        return self.pipeline.state[module]

    def join_group(self, conn: FakeConnection, name: str) -> None:
        """Put ``conn`` in token group ``name``, leaving any group it was in (recorded)."""
        if conn.token == name and conn.id in self._groups.get(name, {}):
            return
        self.leave_group(conn)
        self._groups.setdefault(name, {})[conn.id] = conn
        conn.token = name
        self.joins.append((name, conn.id))
        if self._storage.shared:
            self._storage.member_joined(name, conn.id)

    def leave_group(self, conn: FakeConnection) -> None:
        """Take ``conn`` out of its token group, if it is in one (recorded)."""
        name = conn.token
        if name is None:
            return
        members = self._groups.get(name)
        if members is not None:
            members.pop(conn.id, None)
            if not members:
                del self._groups[name]
        conn.token = None
        self.leaves.append((name, conn.id))
        if self._storage.shared:
            self._storage.member_left(name, conn.id)

    def broadcast(self, payload: Payload, isBinary: bool | None = None, *,
                  exclude: FakeConnection | None = None,
                  recipients: Iterable[FakeConnection] | None = None) -> int:
        """Send to every user, or to ``recipients``, but ``exclude`` (recorded)."""
        data, binary = normalize_payload(payload, isBinary)
        targets = self._users.values() if recipients is None else recipients
        return self._send_all("local", None, data, binary, exclude, targets)

    def broadcast_channel(self, channel: str, payload: Payload,
                          isBinary: bool | None = None) -> int:
        """A pub/sub message of ``channel`` to every user (recorded as ``broadcast``'s)."""
        data, binary = normalize_payload(payload, isBinary)
        return self._send_all("local", None, data, binary, None, self._users.values())

    def broadcast_all(self, payload: Payload, isBinary: bool | None = None, *,
                      exclude: FakeConnection | None = None) -> int:
        """Send to every user but ``exclude``; recorded as a broadcast and a relay."""
        data, binary = normalize_payload(payload, isBinary)
        sent = self._send_all("all", None, data, binary, exclude, self._users.values())
        self._relay(Relay(None, exclude.id if exclude is not None else None, binary, data))
        return sent

    def broadcast_group(self, group: str, payload: Payload, isBinary: bool | None = None, *,
                        exclude: FakeConnection | None = None) -> int:
        """Send to the members of ``group`` but ``exclude``; recorded as a broadcast and a relay."""
        data, binary = normalize_payload(payload, isBinary)
        members = self._groups.get(group, {}).values()
        sent = self._send_all("group", group, data, binary, exclude, members)
        self._relay(Relay(group, exclude.id if exclude is not None else None, binary, data))
        return sent

    # --- what the storage object calls (fws.storage_objects.StorageServer) -------------

    def deliver_pubsub(self, channel: str, data: bytes, pattern: str | None = None, *,
                       position: tuple[str, int] | None = None) -> None:
        """
        A pub/sub message for the consumer chain, in arrival order as on the
        server (which takes ``position`` too; the fake keeps no history, so a
        message's place in one changes nothing here).
        """
        self._turns += 1
        if self._turns > MAX_TURNS:
            self._turns = 0
            raise RuntimeError(f"{MAX_TURNS} pub/sub messages without a pause: filters keep "
                               "publishing for each other (a consumer filter that publishes on "
                               "the channel it consumes?)")
        if not self.pipeline.consumer:
            return
        item = (channel, data, pattern)
        if self._consumer is not None:
            self._consumer.submit(item)
            return
        outcome = self._run_consumer(item)
        if isinstance(outcome, Deferred):
            self._consumer = Ordered(self._run_consumer, busy_with=outcome)

    def deliver_relayed(self, group: str | None, exclude_id: str | None, is_binary: bool,
                        payload: bytes) -> int:
        """A broadcast another node relayed: delivered to the users (or members) here."""
        targets = self._users.values() if group is None else self._groups.get(group, {}).values()
        exclude = self._users.get(exclude_id) if exclude_id is not None else None
        return sum(conn._deliver(payload, is_binary) for conn in list(targets) if conn is not exclude)

    # --- the test's side ---------------------------------------------------------------

    def connect(self, path: str = "/", *, headers: Mapping[str, str] | None = None,
                client_ip: str = "127.0.0.1") -> FakeConnection:
        """
        A client opens a connection: the connect chain sees its request
        (``path`` with its query string, ``headers``), then it is a user.

        :raises fws.Refuse: a connect filter refused it (the test asserts on
            ``status`` and ``reason``).
        :returns: The connection; ``state`` is ``connecting`` while an
            asynchronous connect filter still waits (it opens, or is refused,
            when that filter finishes).
        """
        conn_id = f"{self.node_id}-{len(self._every) + 1}"
        conn = self._every[conn_id] = FakeConnection(
            self, conn_id, _request(path, headers, client_ip), client_ip)
        chain = self.pipeline.connect
        try:
            outcome = run_chain(chain, conn, conn.request, event="connect", conn_id=conn.id,
                                propagate=(Refuse,)) if chain else None
        except Refuse as e:
            conn.state, conn.refusal = "refused", e
        else:
            if isinstance(outcome, Deferred):
                self._pending_connects += 1
                outcome.addBoth(self._settled_connect, conn)
            else:
                self._admitted(outcome, conn)
        self.settle()
        if conn.state == "refused" and conn.refusal is not None:
            raise conn.refusal
        return conn

    def publish(self, channel: str, data: str | bytes) -> None:
        """Publish on the storage object, as another process would; returns once delivered."""
        self._storage.publish(channel, data)
        self.settle()

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``, run what fell due, and settle."""
        self._turns = 0
        self.clock.advance(seconds)
        self.settle()

    def settle(self) -> None:
        """
        Run every call due now (pub/sub deliveries, closes, zero-delay timers)
        until none is left, then raise :class:`FilterFailed` for a filter that
        failed since the last check.
        """
        self.clock.advance(0)  # runs what is due, and what that makes due now, in order
        self._turns = 0
        if len(self.errors) > self._reported:
            error = self.errors[self._reported]
            self._reported = len(self.errors)
            raise error from error.error

    @property
    def pending(self) -> bool:
        """Whether a chain is still waiting on an asynchronous filter."""
        return bool(self._pending_connects
                    or (self._consumer is not None and self._consumer.busy)
                    or any(runner is not None and runner.busy for c in self._all_conns()
                           for runner in (c._ordered, c._raw_runner)))

    # --- how fws's server runs the chains ----------------------------------------------

    def _all_conns(self) -> Iterable[FakeConnection]:
        return self._every.values()

    def _settled_connect(self, outcome: Any, conn: FakeConnection) -> None:
        """An asynchronous connect chain finished: the connection opens or is refused."""
        self._pending_connects -= 1
        if isinstance(outcome, Failure):
            self._refused(outcome, conn)
        else:
            self._admitted(outcome, conn)

    def _admitted(self, outcome: Any, conn: FakeConnection) -> None:
        if outcome is FAILED:
            conn.state, conn.refusal = "refused", Refuse(500, "Internal Server Error")
            return
        conn.state = "open"
        self._users[conn.id] = conn

    def _refused(self, failure: Failure, conn: FakeConnection) -> None:
        error = failure.value
        conn.state = "refused"
        conn.refusal = error if isinstance(error, Refuse) else Refuse(500, "Internal Server Error")

    def _message(self, conn: FakeConnection, data: bytes, is_binary: bool) -> None:
        if self.pipeline.message:
            if conn._ordered is not None:
                conn._ordered.submit((data, is_binary))
            else:
                outcome = self._run_message(conn, (data, is_binary))
                if isinstance(outcome, Deferred):
                    conn._ordered = Ordered(partial(self._run_item, conn), busy_with=outcome)
        self.settle()

    def _raw(self, conn: FakeConnection, data: bytes) -> None:
        if conn._raw_runner is not None:
            conn._raw_runner.submit(data)
        else:
            outcome = self._run_raw(conn, data)
            if isinstance(outcome, Deferred):
                conn._raw_runner = Ordered(partial(self._run_raw, conn), busy_with=outcome, high=0)
        self.settle()

    def _run_raw(self, conn: FakeConnection, data: bytes) -> Any:
        buf = bytearray(data)
        outcome = run_chain(self.pipeline.data, conn, buf, event="data", conn_id=conn.id)
        if isinstance(outcome, Deferred):
            return outcome.addBoth(lambda _: conn.raw.append(bytes(buf)) if buf else None)
        if buf:
            conn.raw.append(bytes(buf))
        return None

    def _run_item(self, conn: FakeConnection, item: tuple[Any, Any]) -> Any:
        if item[0] is _DISCONNECT:
            return self._run_disconnect(conn, item[1])
        return self._run_message(conn, item)

    def _run_message(self, conn: FakeConnection, item: tuple[bytes, bool]) -> Any:
        data, is_binary = item
        conn.is_binary = is_binary
        return run_chain(self.pipeline.message, conn, bytearray(data), event="message",
                         conn_id=conn.id, binary=is_binary)

    def _closed(self, conn: FakeConnection, info: CloseInfo) -> None:
        """The connection closed: it leaves ``users`` and its group, then the disconnect chain."""
        if conn.state == "closed":
            return
        conn.state = "closed"
        conn.close_info = info
        self._users.pop(conn.id, None)
        token = conn.token
        self.leave_group(conn)
        conn.token = token  # as on the server: the disconnect chain still reads it
        if not self.pipeline.disconnect:
            return
        if conn._ordered is not None:
            conn._ordered.submit((_DISCONNECT, info))
        else:
            self._run_disconnect(conn, info)

    def _run_disconnect(self, conn: FakeConnection, info: CloseInfo) -> Any:
        return run_chain(self.pipeline.disconnect, conn, info, event="disconnect", conn_id=conn.id)

    def _run_consumer(self, item: tuple[str, bytes, str | None]) -> Any:
        channel, data, pattern = item
        message = {"type": "message", "pattern": pattern, "channel": channel, "data": data}
        return run_chain(self.pipeline.consumer, self, message, event="consumer", conn_id="server")

    def _relay(self, relay: Relay) -> None:
        """Record a relay, and hand it to a storage object that joins nodes, as fws does."""
        self.relayed.append(relay)
        if self._storage.shared:
            self._storage.relay(relay.group, relay.exclude_id, relay.is_binary, relay.payload)

    def _send_all(self, kind: str, group: str | None, data: bytes, binary: bool,
                  exclude: FakeConnection | None, targets: Iterable[FakeConnection]) -> int:
        got = tuple(conn.id for conn in list(targets)
                    if conn is not exclude and conn._deliver(data, binary))
        self.broadcasts.append(Broadcast(kind, data, binary, got, group))
        return len(got)


_DISCONNECT = object()
"""In a connection's ordered runner: the disconnect, after every message before it."""


def _request(path: str, headers: Mapping[str, str] | None, client_ip: str) -> ConnectionRequest:
    """The handshake request a connect filter gets, as Autobahn builds it (lower-case headers)."""
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    host = lowered.setdefault("host", "localhost")
    params = parse_qs(urlsplit(path).query)
    return ConnectionRequest(f"tcp:{client_ip}:50000", lowered, host, urlsplit(path).path or "/",
                             params, 13, lowered.get("origin"), [], [])


def _watched(pipeline: FilterPipeline, errors: list[FilterFailed]) -> FilterPipeline:
    """
    ``pipeline`` with each filter's failures noted in ``errors`` (and still
    raised, so that the chain goes on exactly as fws's own server runs it).
    """
    chains: dict[str, Any] = {
        event: tuple(replace(entry, func=_watch(entry, event, errors))
                     for entry in pipeline.chain(event))
        for event in EVENTS
    }
    return replace(pipeline, **chains)


#: What a filter may raise that is no failure: it stops the chain, or refuses the
#: handshake (CancelledError: the filter timed out and was cancelled, which fws logs).
_NOT_FAILURES = (StopChain, Refuse, CancelledError)


def _watch(entry: FilterEntry, event: str,
           errors: list[FilterFailed]) -> Callable[[Any, Any], Any]:
    func = entry.func

    def note(failure: Failure) -> Failure:
        if not failure.check(*_NOT_FAILURES):
            errors.append(FilterFailed(entry.name, event, failure.value))
        return failure

    def watched(target: Any, data: Any) -> Any:
        try:
            result = func(target, data)
        except _NOT_FAILURES:
            raise
        except Exception as e:
            errors.append(FilterFailed(entry.name, event, e))
            raise
        if result is not None and inspect.iscoroutine(result):
            # Here, as in run_chain: the coroutine keeps the context of the call.
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            result.addErrback(note)
        return result

    return watched


def _keeps_the_promises(
    conn: FakeConnection, server: FakeServer
) -> tuple[Connection, Server, StorageServer]:
    """
    Never called: mypy checks here that the fakes are what filters get
    (:mod:`fws.connection`) and what a storage object attaches to, so that a
    test cannot pass on an API the real server does not have.
    """
    return conn, server, server


__all__ = ["Broadcast", "FakeConnection", "FakeServer", "FilterFailed", "Relay", "Sent"]
