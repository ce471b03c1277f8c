"""
The connection filters see (``web_socket_instance``): the wire's upcalls
turned into the connect, data, message and disconnect chains.

No business logic lives here: :class:`FwsServerProtocol` admits a handshake
(the connection limits, Origin, the connect chain), keeps one connection's
messages in arrival order even when filters go asynchronous (one
:class:`fws.ordered.Ordered` runner, its disconnect last), applies the
message rate limit, and makes ``sendMessage`` forgiving (str or bytes, text
stays text, a closed connection is a no-op: :mod:`fws._wire.payload`). An event whose chain is empty
does no work at all. What happens on the wire is :mod:`fws._wire`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from autobahn.twisted.websocket import ConnectionDeny
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred

from fws._wire.payload import normalize_payload
from fws._wire.protocol import WireHost, WireProtocol
from fws.connection import CloseInfo, Server
from fws.filters.base import Refuse
from fws.history import RESUME_PARAM, SUBPROTOCOL, Replay, ResumeError, parse_resume
from fws.limits import CLOSE_POLICY, TokenBucket, origin_allowed
from fws.ordered import MAX_BACKLOG, Ordered
from fws.pipeline import FAILED, run_chain

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from fws.pipeline import FilterPipeline
    from fws.storage_objects import StorageObject

__all__ = ["MAX_BACKLOG", "CloseInfo", "ConnectionHost", "FwsRawDataProtocol", "FwsServerProtocol",
           "normalize_payload"]


class ConnectionHost(WireHost, Server, Protocol):
    """
    What a connection calls on the server it belongs to (the factory), on
    top of the wire's own (:class:`fws._wire.factory.WireFactory`).

    Declared here, below the server, so that this module imports nothing
    above it: the factory imports this module and satisfies this interface,
    which mypy checks where the two meet (:func:`fws.service.make_service`).
    On top of the public :class:`fws.connection.Server`: the pipeline a
    connection runs, the registry it joins and leaves, and the stop it
    may have to follow.
    """

    pipeline: FilterPipeline
    per_ip: dict[str, int]
    closing: tuple[int, str] | None

    @property
    def users(self) -> dict[str, FwsServerProtocol]: ...

    def register(self, conn: FwsServerProtocol) -> None: ...
    def unregister(self, conn: FwsServerProtocol) -> None: ...
    def disconnect_finished(self, result: Any, conn: FwsServerProtocol) -> Any: ...
    def wants_headers(self, offered: Iterable[str]) -> str | None: ...
    def resume(self, conn: FwsServerProtocol, positions: dict[str, tuple[str, int]]) -> None: ...

    @property
    def history(self) -> Any: ...


_DISCONNECT = object()


class FwsServerProtocol(WireProtocol):
    """
    One client connection, as filters see it (``web_socket_instance``).

    The public API is :class:`fws.connection.Connection`; everything else
    here is fws's own and may change in any release.

    :ivar id: Unique id (``<node>-<n>``), unique across nodes as well.
    :ivar token: Name of the broadcast group the connection is in, or ``None``.
    :ivar is_binary: Whether the message being filtered arrived as a binary frame.
    :ivar request: The handshake request (Autobahn ``ConnectionRequest``:
        ``path``, ``params``, ``headers``, ``peer``), once it has arrived.
    """

    factory: ConnectionHost

    token: str | None = None
    is_binary: bool = False
    #: Claims of the verified token (set by ``fws.filters.auth_jwt``), or ``None``.
    claims: dict[str, Any] | None = None
    _groups_joined: set[str] | None = None
    #: The runner of this connection's message and disconnect chains, made the
    #: first time one goes asynchronous (see :mod:`fws.ordered`).
    _ordered: Ordered | None = None
    #: The message budget (``--max-message-rate``), or ``None``: off, or it has acted.
    _messages: TokenBucket | None = None
    _idle_mark = -1
    _idle_since = 0.0
    #: With ``--history``: the positions ``?resume=`` named, until the connection opens,
    #: and the replays of them that run (fws.history).
    _resume: dict[str, tuple[str, int]] | None = None
    _replays: list[Replay] | None = None

    # --- what filters use ----------------------------------------------------------------

    @property
    def users(self) -> dict[str, FwsServerProtocol]:
        """All local users: id -> connection (shared with the factory)."""
        return self.factory.users

    @property
    def storage_object(self) -> StorageObject:
        """The server's storage object (in-memory or Redis)."""
        return self.factory.storage_object

    @property
    def groups_joined(self) -> set[str]:
        """Token groups this connection has joined so far (for the per-connection limit)."""
        if self._groups_joined is None:
            self._groups_joined = set()
        return self._groups_joined

    # --- the wire's upcalls --------------------------------------------------------------

    def admit(self, request: ConnectionRequest) -> Deferred[None] | None:
        """The checks of the handshake: the connection limits and Origin, then the connect chain."""
        factory = self.factory
        limits = factory.limits
        if limits.trusted_proxies:
            self.client_ip = _forwarded_client(self.client_ip, request, limits)
        if limits.allowed_origins or limits.require_origin:
            refusal = _origin_refusal(request, limits)
            if refusal is not None:
                factory.stats.hit(refusal[0])
                raise ConnectionDeny(403, refusal[1])
        if limits.max_connections and len(factory.users) >= limits.max_connections:
            factory.stats.hit("max_connections")
            raise ConnectionDeny(503, "too many connections")
        if limits.max_connections_per_ip and (
            factory.per_ip.get(self.client_ip, 0) >= limits.max_connections_per_ip
        ):
            factory.stats.hit("max_connections_per_ip")
            raise ConnectionDeny(429, "too many connections from this address")
        if factory.history is not None and RESUME_PARAM in request.params:
            self._take_resume(request)
        chain = factory.pipeline.connect
        if not chain:
            return None
        try:
            outcome = run_chain(
                chain, self, request, event="connect", conn_id=self.id, propagate=(Refuse,)
            )
        except Refuse as e:
            self._refusal_detail = e.detail
            raise ConnectionDeny(e.status, e.reason or "") from None
        if outcome is not None and isinstance(outcome, Deferred):
            return outcome.addCallbacks(_accept_or_fail, self._deny)
        _accept_or_fail(outcome)
        return None

    def _take_resume(self, request: ConnectionRequest) -> None:
        """Check ``?resume=`` (with ``--history``): a bad one is refused with 400, saying why."""
        try:
            positions = parse_resume(request.params.get(RESUME_PARAM))
        except ResumeError as e:
            self.factory.stats.hit("resume")
            raise ConnectionDeny(400, str(e)) from None
        if positions and SUBPROTOCOL not in request.protocols:
            self.factory.stats.hit("resume")
            raise ConnectionDeny(400, f"resume needs the {SUBPROTOCOL} subprotocol")
        self._resume = positions or None

    def subprotocol(self, offered: Sequence[str]) -> str | None:
        """``fws.v1`` when offered and the server keeps history: group messages get headers."""
        chosen = self.factory.wants_headers(offered)
        if chosen is not None:
            self._lane.headed = True
        return chosen

    def _deny(self, failure: Any) -> None:
        error = failure.value
        if isinstance(error, Refuse):
            self._refusal_detail = error.detail
            raise ConnectionDeny(error.status, error.reason or "")
        failure.raiseException()

    def opened(self) -> None:
        """Open: a user now, with its message budget; closed at once while the server stops."""
        factory = self.factory
        limits = factory.limits
        if limits.max_message_rate > 0:
            self._messages = TokenBucket(limits.max_message_rate, limits.message_burst,
                                         factory.reactor.seconds())
        factory.register(self)
        if factory.closing is not None:  # the server is stopping: this one goes too
            self.close(*factory.closing, drain=True)
        elif self._resume is not None:
            positions, self._resume = self._resume, None
            factory.resume(self, positions)

    def message(self, payload: bytes, is_binary: bool) -> None:
        """One message: through the rate limit, then the message chain, in arrival order."""
        if self._messages is not None and not self._take_token():
            return
        if not self.factory.pipeline.message:
            return
        ordered = self._ordered
        if ordered is not None:
            ordered.submit((payload, is_binary))
            return
        if is_binary or self.is_binary:  # text only: the class's False (one dict key fewer)
            self.is_binary = is_binary
        outcome = run_chain(self.factory.pipeline.message, self, bytearray(payload),
                            event="message", conn_id=self.id, binary=is_binary)
        if outcome is not None and isinstance(outcome, Deferred):
            self._ordered = Ordered(self._run_item, busy_with=outcome, pause=self._pause_reading,
                                    resume=self._resume_reading)

    def closed(self, info: CloseInfo) -> None:
        """
        Closed: no longer a user; the disconnect chain runs after every message before it.

        The runner holds this connection (its bound methods) and the
        connection the runner: the connection lets go of it here, so that
        the two make no reference cycle (issue 14); the runner finishes what
        it holds, the disconnect last, held by the Deferred it waits for.
        """
        factory = self.factory
        factory.unregister(self)
        ordered = self._ordered
        if ordered is not None:
            self._ordered = None
        if not factory.pipeline.disconnect:
            return
        if ordered is not None:
            ordered.submit((_DISCONNECT, info))
            return
        self._run_disconnect(info)

    def _take_token(self) -> bool:
        """Token bucket: ``--max-message-rate`` per second, ``--message-burst`` at once."""
        bucket = self._messages
        assert bucket is not None
        if bucket.take(1.0, self.factory.reactor.seconds()):
            return True
        self.factory.stats.hit("max_message_rate")
        if self.factory.limits.rate_limit_action == "close":
            self._log.info("connection {conn_id} sent faster than {rate}/s; closing",
                           conn_id=self.id, rate=bucket.rate)
            self.close(CLOSE_POLICY, "message rate limit exceeded")
            self._messages = None  # one close is enough; whatever else arrives is ignored
        return False

    # --- ordering ----------------------------------------------------------------------------

    def _run_message(self, payload: bytes, is_binary: bool) -> Any:
        self.is_binary = is_binary
        return run_chain(self.factory.pipeline.message, self, bytearray(payload), event="message",
                         conn_id=self.id, binary=is_binary)

    def _run_item(self, item: tuple[Any, Any]) -> Any:
        """One item of the runner: a message, or the disconnect that comes after them."""
        payload, flag = item
        if payload is _DISCONNECT:
            return self._run_disconnect(flag)
        return self._run_message(payload, flag)

    def _pause_reading(self) -> None:
        if self.transport:
            self.transport.pauseProducing()

    def _resume_reading(self) -> None:
        if self.transport:
            self.transport.resumeProducing()

    def _run_disconnect(self, info: CloseInfo) -> Any:
        """The disconnect chain; the factory hears when it is over (a graceful stop waits)."""
        outcome = run_chain(
            self.factory.pipeline.disconnect, self, info, event="disconnect", conn_id=self.id
        )
        if outcome is not None and isinstance(outcome, Deferred):
            return outcome.addBoth(self.factory.disconnect_finished, self)
        return self.factory.disconnect_finished(outcome, self)


class FwsRawDataProtocol(FwsServerProtocol):
    """
    The protocol used when the data chain is not empty.

    A separate class so that servers without data filters pay nothing per
    read. While an asynchronous data filter runs, later reads wait (and the
    socket stops being read), so the WebSocket parser sees bytes in order.
    """

    _raw: Ordered | None = None

    def dataReceived(self, data: bytes) -> None:
        raw = self._raw
        if raw is not None:
            raw.submit(data)
            return
        outcome = self._process_raw(data)
        if outcome is not None and isinstance(outcome, Deferred):
            self._raw = Ordered(self._process_raw, busy_with=outcome, pause=self._pause_reading,
                                resume=self._resume_reading, high=0)

    def _process_raw(self, data: bytes) -> Any:
        """Run the data chain on one read, then hand what it left to the WebSocket parser."""
        buf = bytearray(data)
        outcome = run_chain(self.factory.pipeline.data, self, buf, event="data", conn_id=self.id)
        if outcome is not None and isinstance(outcome, Deferred):
            return outcome.addBoth(self._raw_done, buf)
        if buf:
            super().dataReceived(bytes(buf))
        return None

    def _raw_done(self, _: Any, buf: bytearray) -> None:
        if buf:
            super().dataReceived(bytes(buf))

    def connectionLost(self, reason: Any = None) -> None:
        # No reads come after this: the runner (which holds this connection) goes,
        # so that the two make no reference cycle; it finishes what it holds.
        self._raw = None
        super().connectionLost(reason)


def _forwarded_client(peer: str, request: ConnectionRequest, limits: Any) -> str:
    """
    The client address behind trusted proxies: the right-most X-Forwarded-For
    hop that is not itself a trusted proxy (hops further left can be forged by
    the client).
    """
    if not limits.is_trusted_proxy(peer):
        return peer
    forwarded = request.headers.get("x-forwarded-for")
    if not forwarded:
        return peer
    hops: list[str] = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not limits.is_trusted_proxy(hop):
            return hop
    return hops[0] if hops else peer



def _origin_refusal(request: ConnectionRequest, limits: Any) -> tuple[str, str] | None:
    """
    ``(limit, reason)`` when the request's Origin is refused with 403, else ``None``.

    A request without an Origin header (servers, bots, health checkers: not a
    browser) passes unless ``--require-origin``, which also refuses an empty
    Origin (browsers always send one that is not empty). Any header present,
    ``null`` and empty included, is an origin that ``--allowed-origins`` must
    list (see :func:`fws.limits.origin_allowed`).
    """
    key = "origin" if request.version >= 13 else "sec-websocket-origin"
    origin = request.origin if key in request.headers else None
    if limits.require_origin and not origin:
        return "require_origin", "origin required"
    if not origin_allowed(origin, limits.allowed_origins):
        return "allowed_origins", "origin not allowed"
    return None



def _accept_or_fail(outcome: Any) -> None:
    if outcome is FAILED:
        raise ConnectionDeny(ConnectionDeny.INTERNAL_SERVER_ERROR, "Internal Server Error")
    return None
