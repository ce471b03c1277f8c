"""
The wire side of one WebSocket connection: everything fws does to Autobahn's
server protocol, in one class the connection filters see is built on.

:class:`WireProtocol` owns the bytes of one connection: the opening
handshake's bounds, the inbound fast parser and the frame budget every
frame passes, the outbound lane (:class:`fws._wire.outbound.Lane`), the close
handshake as RFC 6455 wants it (bad close frames answered, 1014 accepted,
lingering and draining closes bounded), and the memory Autobahn would keep
per connection that fws never reads. It knows nothing of filters, users or
groups: it tells the layer above about the connection's life through five
upcalls, :class:`Upcalls` (``admit``, ``subprotocol``, ``opened``, ``message``, ``closed``),
which :class:`fws.protocol.FwsServerProtocol` implements.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from inspect import iscoroutine
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import autobahn.websocket.protocol as _autobahn_protocol
from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.twisted.websocket import ConnectionDeny, WebSocketServerProtocol
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.compress import PERMESSAGE_COMPRESSION_EXTENSION
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from fws._wire.framing import encode_frame, parse_frames
from fws._wire.handshake import (
    LEAN_HOST,
    LEAN_KEY,
    REFUSAL_HEADERS,
    SharedStrings,
    accept_key,
    parse_head,
    refusal_headers,
    request_line_so_far,
    split_target,
)
from fws._wire.outbound import Lane, can_write_directly, unsent_bytes
from fws._wire.payload import normalize_payload
from fws.connection import CloseInfo
from fws.limits import CLOSE_POLICY, TokenBucket

if TYPE_CHECKING:
    from fws.limits import Limits
    from fws.metrics import Stats
    from fws.timers import BucketTimer


class Upcalls(Protocol):
    """
    What the wire tells the layer above about a connection, and nothing else.

    The wire calls these on the connection itself (the layer above is its
    subclass), each at one point of the connection's life; everything that
    knows Autobahn's or Twisted's state happens around them, here.
    """

    def admit(self, request: ConnectionRequest) -> Deferred[None] | None:
        """
        The opening handshake's request is in and within the wire's limits:
        accept it (return ``None``, or a Deferred that fires), or refuse it
        by raising (or failing with) Autobahn's ``ConnectionDeny``.
        """

    def opened(self) -> None:
        """The connection is open: it may be sent to, and its messages follow."""

    def message(self, payload: bytes, is_binary: bool) -> None:
        """One whole message from the client, in arrival order (counted already)."""

    def closed(self, info: CloseInfo) -> None:
        """A connection that was open is closed (once, after its last message)."""

    def subprotocol(self, offered: Sequence[str]) -> str | None:
        """
        Of the subprotocols the client offered (``Sec-WebSocket-Protocol``,
        in its order), the one to accept, or ``None``; asked once the request
        is admitted.
        """


class WireHost(Protocol):
    """
    What a connection's wire asks of the factory that built it
    (:class:`fws._wire.factory.WireFactory` is one), and nothing else.
    """

    limits: Limits
    stats: Stats
    reactor: Any
    log_connections: bool
    #: Every connection, open or in its handshake (the accept cap counts them).
    connections: set[Any]
    #: Autobahn's batched timer: fws's :class:`fws.timers.BucketTimer`.
    _batched_timer: BucketTimer
    #: One copy of the request strings connections send alike (see :class:`SharedStrings`).
    strings: SharedStrings

    def pending_started(self, host: str | None) -> None: ...
    def pending_ended(self, host: str | None) -> None: ...
    def mark_dirty(self, lane: Lane) -> None: ...


#: How often a connection closed by a graceful stop looks at what the kernel
#: still holds for its client (see :meth:`WireProtocol._check_drained`):
#: the kernel tells no one when a client has acknowledged its last byte.
DRAIN_CHECK_INTERVAL = 0.25


_pformat = _autobahn_protocol.pformat
_Utf8Validator = _autobahn_protocol.Utf8Validator
_url_to_origin = _autobahn_protocol._url_to_origin


def _null_origin(url: str) -> str:
    """
    Stands for Autobahn's ``_url_to_origin`` in ``processHandshake``: every Origin is "null".

    Autobahn 26 judges the Origin header itself, before ``onConnect``: it fails
    an empty or malformed one and ``null`` (sandboxed iframes, ``file://``
    pages) with HTTP 400. fws decides on Origin alone (``_origin_refusal``,
    with its 403 and its log line), so Autobahn sees "null", which the factory
    lets through (``allowNullOrigin`` in ``Limits.protocol_options``); the
    request still carries the header as the client sent it.
    """
    return "null"


class _DebugOnly:
    """
    Autobahn's logger inside ``failHandshake`` and ``dropConnection``: every line at debug.

    Autobahn logs a refused handshake twice ("failing WebSocket opening
    handshake" at info, "dropping connection" at warn) where fws logs it once
    with the peer, status and reason; at ``--log-level debug`` its lines remain.
    """

    __slots__ = ("_log",)

    def __init__(self, log: Any) -> None:
        self._log = log

    def __getattr__(self, level: str) -> Any:
        return self._log.debug


@contextmanager
def _autobahn_at_debug(protocol: Any) -> Iterator[None]:
    """Autobahn's lines for this protocol at debug while inside (nested uses are one)."""
    if "log" in protocol.__dict__:
        yield  # already inside
        return
    protocol.log = _DebugOnly(protocol.log)
    try:
        yield
    finally:
        del protocol.log  # Autobahn's class-level logger again


def _no_validator() -> None:
    """Stands for ``Utf8Validator()`` in ``_connectionMade`` (see ``utf8validator``)."""
    return None


#: Stands for Autobahn's empty send queue until a queued write needs a real one.
_NO_QUEUE: tuple[()] = ()

#: What the opening handshake leaves on the connection that nothing reads once
#: it is open (Autobahn's raw request and response, the key): freed in onOpen.
_HANDSHAKE_LEFTOVERS = ("http_request_data", "http_response_data", "http_status_line", "_wskey",
                        "_head", "_head_done", "_head_line", "_head_crlfs",
                        # Autobahn's TransportDetails (~300 bytes): read by its _onOpen (TLS
                        # channel binding) and nothing after; made again if read (``transport_details``).
                        "_transport_details",
                        # Autobahn's per-connection TrafficStats (176 bytes): see _NoTrafficStats.
                        "trafficStats",
                        # Autobahn's parse of the request, read only while it handles the
                        # handshake; ``request`` (the public API) keeps what filters read.
                        # Nine keys fewer make the instance dict half its size when no
                        # rate limit adds its own (21 keys fit a table of 32 slots).
                        "http_headers", "http_request_host", "http_request_params",
                        "http_request_path", "http_request_uri", "websocket_extensions",
                        "websocket_origin", "websocket_protocols")


class _NoTrafficStats:
    """
    Stands for Autobahn's ``TrafficStats`` once a connection is open: one for all.

    Autobahn adds every frame's and octet's count to its connection's own
    ``TrafficStats`` (176 bytes per connection), which only its parser and
    writer update: fws's fast paths, which carry almost all of the traffic,
    never did, so its numbers were wrong for fws connections anyway. fws's
    own counters are :class:`fws.metrics.Stats`. Additions here are dropped;
    every count reads 0.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> int:
        return 0

    def __setattr__(self, name: str, value: object) -> None:
        return None


_NO_TRAFFIC_STATS = _NoTrafficStats()

#: Autobahn state that sits at None, False or 0 for a connection's whole open
#: life. Autobahn sets each on every instance in ``_connectionMade``; fws makes
#: them class attributes with those values and, once the connection is open,
#: drops the instance copies that still hold them and compacts the instance
#: dict: 68 attributes become about 36, which halves the dict (1584 to 656
#: bytes per connection). A later assignment simply puts one back.
_IDLE_DEFAULTS: dict[str, Any] = {
    name: None for name in (
        "autoPingPending", "autoPingPendingSent", "autoPingTimeoutCall",
        "closeHandshakeTimeoutCall", "current_frame", "localCloseCode", "localCloseReason",
        "openHandshakeTimeoutCall", "remoteCloseCode", "remoteCloseReason", "trackedTimings",
        "wasNotCleanReason", "websocket_protocol_in_use", "_perMessageCompress",
    )
} | {
    name: False for name in (
        "closedByMe", "droppedByMe", "failedByMe", "inside_message", "triggered", "wasClean",
        "wasCloseHandshakeTimeout", "wasMaxFramePayloadSizeExceeded",
        "wasMaxMessagePayloadSizeExceeded", "wasOpenHandshakeTimeout",
        "wasServerConnectionDropTimeout", "wasServingFlashSocketPolicyFile",
    )
} | {"autoPingPendingSeq": 0, "send_state": 0, "websocket_version": 13}
_ABSENT = object()
#: Stands for a Deferred of Autobahn's (is_open, is_closed) that has fired: see WireProtocol.is_open.
_FIRED = object()

#: What every open connection holds alike, Twisted's, Autobahn's and fws's own:
#: the class has these values and the instance only while its own differ
#: (WireProtocol.__init__ sets the values before the opening; _compact drops
#: the copies). With them and the factory (a class attribute of the factory's
#: own protocol class) an idle open connection's dict holds about 9 keys: a
#: table of 16 slots, 272 bytes instead of 464 (issue 16).
_OPEN_STATE: dict[str, Any] = {
    "connected": 1, "state": WebSocketServerProtocol.STATE_OPEN, "data": b"",
    "send_queue": _NO_QUEUE, "_opened": True, "_direct": True, "_is_open": _FIRED,
}
#: The same attributes before the opening (set on the instance by __init__).
_BEFORE_OPEN: dict[str, Any] = {
    "connected": 0, "state": WebSocketServerProtocol.STATE_CONNECTING, "_opened": False,
    "_direct": False, "_is_open": None,
}

#: Stands in :data:`_DROPPED_WHEN_OPEN` for "whatever its value".
_LEFTOVER = object()
#: What :meth:`WireProtocol._compact` drops from an open connection's dict: each
#: name with the value it is dropped at (the class has the same), a leftover of
#: the handshake at any value.
_DROPPED_WHEN_OPEN: dict[str, Any] = {**_IDLE_DEFAULTS, **_OPEN_STATE,
                                      **dict.fromkeys(_HANDSHAKE_LEFTOVERS, _LEFTOVER)}
assert not set(_IDLE_DEFAULTS) & set(_OPEN_STATE)


class _LazyPformat:
    """
    ``pformat(obj)``, computed only when a log observer formats it.

    Autobahn's ``_connectionMade`` pretty-prints its 29 protocol options for a
    debug message on every connection, whether or not debug logging is on:
    55 % of fws's CPU time per handshake. Passed this instead, the debug line
    reads the same when it is emitted and costs nothing when it is not.
    """

    __slots__ = ("obj",)

    def __init__(self, obj: Any, *args: Any, **kwargs: Any) -> None:
        self.obj = obj

    def __format__(self, spec: str) -> str:
        return format(_pformat(self.obj), spec)

    def __str__(self) -> str:
        return str(_pformat(self.obj))

    __repr__ = __str__


class _LazyHighlight(tuple):  # type: ignore[type-arg]
    """
    ``autobahn.util.hltype(obj)`` or ``hlval(obj)``, computed only when a log observer formats it.

    Autobahn passes ``func=hltype(self.method)`` (the method's qualified name,
    coloured by ``click``) to debug lines in its ``dataReceived``, ``sendData``,
    ``_connectionMade``, ``processHandshake``, ``onConnect`` and
    ``_connectionLost``, whether or not debug logging is on: 4.4 us each,
    seven per handshake, about a fifth of a handshake's CPU time. Autobahn's
    two websocket modules use them for nothing else (``test_fast_path`` checks
    every call site), so :func:`_install_lazy_highlights` swaps them for these
    for good; a debug line formats them as before.
    """

    # A tuple (func, obj): made without a Python __init__ call.
    __slots__ = ()

    def __format__(self, spec: str) -> str:
        return format(self[0](self[1]), spec)

    def __str__(self) -> str:
        return str(self[0](self[1]))

    __repr__ = __str__


#: The Autobahn modules whose log lines call hltype and hlval (the server side fws runs).
_HIGHLIGHTING_MODULES = ("autobahn.websocket.protocol", "autobahn.twisted.websocket")


def _install_lazy_highlights() -> None:
    """Make ``hltype``/``hlval`` in :data:`_HIGHLIGHTING_MODULES` lazy (see _LazyHighlight)."""
    import importlib

    from autobahn import util

    def lazy(func: Any) -> Any:
        def highlight(obj: Any) -> _LazyHighlight:
            return _LazyHighlight((func, obj))
        highlight.fws_lazy = True  # type: ignore[attr-defined]
        return highlight

    for name in _HIGHLIGHTING_MODULES:
        module = importlib.import_module(name)
        for helper in ("hltype", "hlval"):
            if not getattr(getattr(module, helper), "fws_lazy", False):
                setattr(module, helper, lazy(getattr(util, helper)))


_install_lazy_highlights()


class WireProtocol(WebSocketServerProtocol):
    """
    Autobahn's server protocol with fws's wire: see the module's docstring.

    The layer above overrides the five :class:`Upcalls`; the defaults accept
    every connection and do nothing with it.
    """

    _log = Logger()  # Autobahn owns ``self.log``
    factory: WireHost

    #: Unique id (``<node>-<n>``), set by the factory that built the connection.
    id: str = ""
    #: The handshake request (Autobahn ``ConnectionRequest``), once it has arrived.
    request: ConnectionRequest | None = None
    #: The client's address: the peer's (the layer above may put the forwarded
    #: one here while it admits the connection).
    client_ip: str = ""
    #: Messages received so far (what the idle timeout watches).
    messages_in = 0
    #: True from onOpen until onClose: the layer above was told it is open
    #: (False before: see _OPEN_STATE and _BEFORE_OPEN).
    _opened = True
    #: Autobahn's is_open Deferred once asked for (see is_open); None before,
    #: the class's _FIRED once it has fired.
    _is_open: object = _FIRED
    #: What a refusal said for the log only (fws.filters.base.Refuse's ``detail``).
    _refusal_detail: str | None = None
    #: The frame budget (see :meth:`_take_frames`): frames the connection may still
    #: send, ``None`` when there is none (``--max-frame-rate 0``) or it has acted.
    _frames: TokenBucket | None = None
    #: True from a draining close (see :meth:`close`) until its output has all
    #: reached the client; ``_drain_call`` is the next look at the kernel's queue.
    _draining = False
    _drain_call: Any = None
    #: After a drop that waits for the output to drain: the abort that bounds the wait.
    _linger_call: Any = None
    #: Set by a graceful stop that waits for this connection: it bounds how long
    #: a drop may linger itself (``FwsServerFactory.close_all``'s deadline).
    held_by_stop = False
    #: Where this connection's outgoing frames wait for the flush (see :class:`Lane`).
    _lane: Lane
    #: A concrete TCP (or TLS, UNIX) transport, whose buffers and socket the wire
    #: code reads; Twisted's ITransport declares none of them.
    transport: Any
    #: Autobahn protocol options, set on the class by the factory.
    autoFragmentSize: int
    autoPingInterval: float
    closeHandshakeTimeout: float
    logOctets: bool
    maxConnections: int
    openHandshakeTimeout: float
    tcpNoDelay: bool
    trustXForwardedFor: int
    versions: Sequence[int]
    perMessageCompressionAccept: Callable[[list[Any]], Any]
    #: Whether the transport is plain TCP whose socket fws may write itself
    #: (set in connectionMade; the class says True, as for most: see _OPEN_STATE).
    _direct = True
    #: Largest frame the inbound fast path takes (larger ones go to Autobahn); set
    #: on the class WireFactory makes for its connections.
    _fast_limit = 0
    # Defaults for what onOpen frees (see _HANDSHAKE_LEFTOVERS).
    trafficStats = _NO_TRAFFIC_STATS  # type: ignore[assignment]
    http_headers: Mapping[str, str] = MappingProxyType({})  # type: ignore[assignment]
    http_request_host = ""
    http_request_params: Mapping[str, list[str]] = MappingProxyType({})  # type: ignore[assignment]
    http_request_path = ""
    http_request_uri = ""
    websocket_extensions: Sequence[Any] = ()  # type: ignore[assignment]
    websocket_origin = ""
    websocket_protocols: Sequence[str] = ()  # type: ignore[assignment]
    #: Empty for a connection without compression: then the class's empty tuple.
    websocket_extensions_in_use: Sequence[Any] = ()  # type: ignore[assignment]
    http_request_data = b""
    http_response_data = ""
    http_status_line = ""
    _wskey = ""

    def __init__(self) -> None:
        # Not Autobahn's __init__: it makes two Deferreds (is_open, is_closed), the
        # observer API's list and dict and a TransportDetails that connectionMade
        # replaces, ~700 bytes and a few microseconds per connection that fws
        # reads only when asked: the Deferreds are made on demand (the properties
        # below), the observer state by on(), the details by connectionMade.
        self.__dict__.update(_BEFORE_OPEN)  # the class has the open values (_OPEN_STATE)
        self._lane = Lane(self)

    # --- the upcalls (Upcalls): the layer above overrides these -------------------------

    def admit(self, request: ConnectionRequest) -> Deferred[None] | None:
        return None

    def opened(self) -> None:
        return None

    def message(self, payload: bytes, is_binary: bool) -> None:
        return None

    def closed(self, info: CloseInfo) -> None:
        return None

    def subprotocol(self, offered: Sequence[str]) -> str | None:
        """The subprotocol to accept of those the client offered, once admitted (none)."""
        return None

    # --- sending ---------------------------------------------------------------------------

    @property
    def send_full(self) -> bool:
        """True while the client is ``--max-send-buffer`` behind and messages to it are dropped."""
        return self._lane.full

    @property
    def send_blocked(self) -> bool:
        """True while the client does not read (its transport paused fws's writes)."""
        return self._lane.blocked

    def sendMessage(
        self,
        payload: str | bytes | bytearray | memoryview,
        isBinary: bool | None = None,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        """
        Send one message (see :func:`fws._wire.payload.normalize_payload` for
        how its kind is chosen), if the connection is open and its client
        keeps up (else it is dropped and counted, ``--slow-consumer-action drop``).
        Sending on a connection that is not open (closing, closed, or still
        in its handshake) does nothing: a broadcast loop never fails because
        one recipient just left.

        The fast path frames it here and queues it on the lane, to leave with
        this reactor turn's flush; compressed, fragmented, "sync" and chopped
        messages go through Autobahn, whose writes the lane orders after what
        it holds (:meth:`sendData`).
        """
        data, binary = normalize_payload(payload, isBinary)
        if self.state != self.STATE_OPEN:
            return
        lane = self._lane
        if lane.full:
            lane.dropped += 1
            return
        if (self._perMessageCompress is None or doNotCompress) and fragmentSize is None \
                and not sync and not self.autoFragmentSize:
            frame = encode_frame(data, binary)
            stats = self.factory.stats
            stats.messages_out += 1
            stats.bytes_out += len(frame)
            out = lane.out
            if out is None:
                lane.out = frame
                self.factory.mark_dirty(lane)
            elif out.__class__ is list:
                out.append(frame)
            else:
                lane.out = [out, frame]  # type: ignore[list-item]
            return
        stats = self.factory.stats
        stats.messages_out += 1
        stats.bytes_out += len(data)
        super().sendMessage(data, binary, fragmentSize, sync, doNotCompress)  # type: ignore[no-untyped-call]

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        What Autobahn still writes itself (handshake, control frames, compressed
        messages) goes through here: after the frames the lane holds
        (:meth:`Lane.autobahn_writes`).
        """
        self._lane.autobahn_writes(len(data))
        if (sync or chopsize) and self.send_queue is _NO_QUEUE:  # type: ignore[comparison-overlap]
            self.send_queue = deque()
        super().sendData(data, sync, chopsize)

    def writes_resumed(self) -> None:
        """The lane's client caught up (its transport resumed it): a draining close looks again."""
        if self._draining and self._drain_call is None:
            self._check_drained()  # Twisted's buffer is empty: what is left is in the kernel

    def close(self, code: int = 1000, reason: str | None = None, *, drain: bool = False) -> None:
        """
        Start the closing handshake with any valid close code.

        Autobahn's ``sendClose`` only lets applications use 1000 and
        3000-4999; a server also needs the protocol codes (1001 going away,
        1008 policy violation, 1009 too big), so this sends the frame itself.
        The frame goes after everything already queued for the client. The
        reason is cut to the 123 bytes a close frame holds, at a character's
        end: a reason cut inside a character is not UTF-8, and the client
        would fail the connection over it.

        :raises ValueError: ``code`` is one no endpoint may send (1004-1006,
            1015, or outside 1000-1014 and 3000-4999): the client would fail
            the connection over it, so it is refused here, where the caller
            can be told.

        :param drain: Start the close handshake timeout only once everything
            queued, the close frame last, has reached the client (see
            :meth:`_drain`). A graceful stop closes this way; its deadline
            (``FwsServerFactory.close_all``) bounds the wait, which nothing
            else would for a client that has stopped reading.
        """
        if not _valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent: use 1000-1003, 1007-1014 "
                             "or 3000-4999")
        if self.state != self.STATE_OPEN:
            return
        reason_utf8 = None
        if reason:
            reason_utf8 = reason.encode("utf-8")
            if len(reason_utf8) > 123:
                reason_utf8 = reason_utf8[:123].decode("utf-8", "ignore").encode("utf-8")
        self.sendCloseFrame(code=code, reasonUtf8=reason_utf8, isReply=False)
        if drain and self.state == self.STATE_CLOSING:
            self._drain()

    def _drain(self) -> None:
        """
        Hold the close handshake timeout while the client is still receiving.

        Autobahn starts it (2 s) when the close frame is queued and then
        aborts the connection, and an abort throws away whatever is still
        queued: in Twisted's buffer and in the kernel's send queue (megabytes
        for a client that reads slowly). Here the timeout starts once all of
        it has been acknowledged by the client (:meth:`_check_drained`), so
        it measures what it is meant to: how long the client takes to answer
        a close frame it has. Keepalive is stopped too: no ping can follow a
        close frame, and a pong stuck behind the queued output must not cut
        a client that is reading it.
        """
        call = self.closeHandshakeTimeoutCall
        if call is not None:
            call.cancel()
            self.closeHandshakeTimeoutCall = None
        for name in ("autoPingPendingCall", "autoPingTimeoutCall"):
            call = getattr(self, name)
            if call is not None:
                call.cancel()
                setattr(self, name, None)
        self.autoPingPending = None  # a late pong is then ignored, silently
        self._draining = True
        self._check_drained()

    def _check_drained(self) -> None:
        """
        Start the close handshake timeout if nothing is left to deliver; else look again.

        While Twisted's buffer holds data and it has paused the lane (the
        existing flow control), nothing needs looking at: Twisted resumes the
        lane when the buffer is empty (:meth:`writes_resumed` calls this).
        What the kernel holds has no such signal, so it is polled, every
        :data:`DRAIN_CHECK_INTERVAL` seconds, on Autobahn's batched timer.
        """
        self._drain_call = None
        transport = self.transport
        if not self._draining or self.state == self.STATE_CLOSED or transport is None:
            return
        buffered, in_kernel = unsent_bytes(transport)
        if self.send_queue:
            buffered += sum(len(item[0]) for item in self.send_queue)
        if buffered or in_kernel:
            if buffered and self._lane.blocked and getattr(transport, "producerPaused", False):
                return  # Twisted resumes the lane once its buffer is empty
            self._drain_call = self.factory._batched_timer.call_later(
                DRAIN_CHECK_INTERVAL, self._check_drained)
            return
        self._draining = False
        if self.closeHandshakeTimeout > 0:
            # Autobahn's attribute is inferred as None only: it holds a timer's call.
            self.closeHandshakeTimeoutCall = self.factory._batched_timer.call_later(  # type: ignore[assignment]
                self.closeHandshakeTimeout, self.onCloseHandshakeTimeout)

    # --- Autobahn callbacks ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        The inbound fast path: complete, unfragmented, masked text and binary
        frames of an open connection are parsed here and handed to
        :meth:`onMessage` directly. Everything else (the handshake, control
        frames, fragments, compression, frames split across reads, anything
        malformed or too big) starts where Autobahn's parser would and goes to
        it, so it keeps enforcing RFC 6455 and the size limits.

        What Autobahn's parser does for every frame, this does once per read
        for all of its frames: they count against the frame budget
        (:meth:`_take_frames`), and, data frames being traffic, they restart
        the keepalive as Autobahn does (``autoPingRestartOnAnyTraffic``, see
        its ``onFrameEnd``), so a client busy sending is not dropped because
        its pong waits behind its own data.
        """
        if (self.state != self.STATE_OPEN or self.data or self.current_frame is not None
                or self.inside_message or self._perMessageCompress is not None):
            super().dataReceived(data)
            return
        frames, pos = parse_frames(data, self._fast_limit)
        if frames:
            if self._frames is not None and not self._take_frames(len(frames)):
                return
            if self.autoPingTimeoutCall is not None and self.autoPingRestartOnAnyTraffic:
                self._cancelAutoPingTimeoutCall()
        stats = self.factory.stats
        for payload, binary in frames:
            # onMessage's counting, inline: one call less per message on the echo path.
            self.messages_in += 1
            stats.messages_in += 1
            stats.bytes_in += len(payload)
            self.message(payload, binary)
            if self.state != self.STATE_OPEN:
                return
        if pos < len(data):
            super().dataReceived(data[pos:] if pos else data)

    #: Autobahn's next auto-ping (a timer call) while auto-ping is on; None until open.
    autoPingPendingCall: Any = None
    #: True on the protocol class a WireFactory makes, which has every Autobahn
    #: option as a class attribute (see WireFactory.setProtocolOptions).
    _options_baked = False

    def _connectionMade(self) -> None:
        """
        Autobahn's server ``_connectionMade``, less what an fws connection has already.

        Autobahn's copies the factory's 29 options onto the connection unless
        it has them (a loop of hasattr, getattr and a list for a debug line),
        then sets 30 attributes to the values every new connection starts
        with, makes a TrafficStats, a deque and a UTF-8 validator, and
        schedules the opening-handshake timeout. On a connection of a baked
        protocol class the options are class attributes and so are those 30
        starting values (``_IDLE_DEFAULTS``, ``_OPEN_STATE``, ``_BEFORE_OPEN``
        from ``__init__``), and the rest is made on demand; what is left is
        the count and the timeout. ``tests/test_fast_path.py`` runs both on
        the same class and requires the same state, attribute by attribute.
        """
        if not self._options_baked:
            self._autobahn_connection_made()
            return
        self.log.debug("{func}: connection accepted from peer {peer}",
                       func=_autobahn_protocol.hltype(self._connectionMade), peer=self.peer)
        factory: Any = self.factory  # Autobahn's factory: its countConnections
        factory.countConnections += 1
        if self.openHandshakeTimeout > 0:
            self.openHandshakeTimeoutCall = factory._batched_timer.call_later(
                self.openHandshakeTimeout, self.onOpenHandshakeTimeout)

    def _autobahn_connection_made(self) -> None:
        """Autobahn's own ``_connectionMade``, with fws's lazy pformat and validator."""
        # See _LazyPformat and utf8validator; the module globals are Autobahn's own
        # again at once.
        _autobahn_protocol.pformat = _LazyPformat  # type: ignore[assignment]
        _autobahn_protocol.Utf8Validator = _no_validator  # type: ignore[assignment,misc]
        try:
            super()._connectionMade()
        finally:
            _autobahn_protocol.pformat = _pformat
            _autobahn_protocol.Utf8Validator = _Utf8Validator  # type: ignore[misc]
        # Autobahn's send queue only serves chopped and "sync" writes, which fws
        # never makes itself; an empty deque costs 760 bytes per connection, so
        # one is made only when such a write comes (see sendData).
        self.send_queue = _NO_QUEUE  # type: ignore[assignment]

    def processHandshake(self) -> None:
        # See _null_origin; Autobahn's own function is back at once.
        _autobahn_protocol._url_to_origin = _null_origin
        try:
            super().processHandshake()
        finally:
            _autobahn_protocol._url_to_origin = _url_to_origin

    #: Whether this connection's handshake may take fws's own path (:meth:`_open_lean`);
    #: the differential tests turn it off on a connection to have Autobahn's.
    _lean_handshake = True

    def _open_lean(self, data: bytes | bytearray, end: int) -> bool:
        """
        Open the common handshake here instead of in Autobahn's ``processHandshake``.

        Autobahn's was 55 % of what a handshake cost fws (profile in
        ``benchmarks/profiles/fws-connect.before-lean.txt``): a general HTTP parse, a
        ``urlparse``, debug lines built and dropped, and a Deferred with two
        callbacks around ``onConnect`` even when it answers at once. Here a
        request that is plainly valid (:func:`parse_head`: ``GET``, HTTP/1.1,
        each header once, printable values; version 13, a well-formed key,
        no refusal to make) is validated as Autobahn validates it, sets the
        same state, builds the same :class:`ConnectionRequest` and is
        admitted with ``onConnect`` called directly (a Deferred it returns is
        waited for as Autobahn waits). Anything else returns False before
        anything has changed, and Autobahn handles the request as before,
        with its own words for whatever is wrong, so every refusal stays
        Autobahn's (or fws's own limits', which come first).
        ``tests/test_handshake_differential.py`` feeds the same requests to
        both paths and requires the same bytes out and the same state.
        """
        if (not self._options_baked or not self._lean_handshake or self.logOctets
                or self.trackedTimings or self.data):
            return False
        parsed = parse_head(data, end)
        if parsed is None:
            return False
        status_line, target, headers = parsed
        if "x-forwarded-for" in headers and self.trustXForwardedFor:
            return False
        where = split_target(target)
        if where is None:
            return False
        path, params = where
        host = headers.get("host")
        if host is None or not LEAN_HOST.fullmatch(host):
            return False
        factory: Any = self.factory  # Autobahn's factory: its options
        if ":" in host and not host.endswith("]"):
            host, port = host.rsplit(":", 1)
            if not port.isdigit() or not port.isascii() or (
                    factory.externalPort and int(port) != factory.externalPort):
                return False
        upgrade = headers.get("upgrade")
        connection = headers.get("connection")
        if (upgrade is None or connection is None or headers.get("sec-websocket-version") != "13"
                or 13 not in self.versions):
            return False
        if upgrade.lower() != "websocket" and not any(
                u.strip().lower() == "websocket" for u in upgrade.split(",")):
            return False
        if connection.lower() != "upgrade" and not any(
                c.strip().lower() == "upgrade" for c in connection.split(",")):
            return False
        offered = headers.get("sec-websocket-protocol")
        protocols = [str(x.strip()) for x in offered.split(",")] if offered is not None else []
        if len(set(protocols)) != len(protocols):
            return False
        origin = headers.get("origin")
        if origin is not None:
            origin = origin.strip()
            if not factory.allowNullOrigin:  # fws's Origin is always "null" to Autobahn
                return False
        key = headers.get("sec-websocket-key")
        if key is None or not LEAN_KEY.fullmatch(key := key.strip()):
            return False
        extensions: list[Any] = []
        offers = headers.get("sec-websocket-extensions")
        if offers is not None:
            try:
                extensions = self._parseExtensionsHeader(offers)  # type: ignore[no-untyped-call]
            except Exception:
                return False
        if self.maxConnections > 0 and factory.countConnections > self.maxConnections:
            return False
        # Valid, as Autobahn would have found it: its state, then onConnect.
        state = self.__dict__
        state["http_request_data"] = bytes(data[:end + 4])
        state["http_status_line"] = status_line
        state["http_headers"] = headers
        state["http_request_uri"] = target
        state["http_request_path"] = path
        state["http_request_params"] = params
        state["http_request_host"] = host
        state["websocket_version"] = 13
        state["websocket_protocols"] = protocols
        state["websocket_origin"] = origin or ""
        state["websocket_extensions"] = extensions
        state["_wskey"] = key
        state["data"] = bytes(data[end + 4:])
        request = ConnectionRequest(self.peer, headers, host, path, params, 13, origin or "",
                                    protocols, extensions)
        try:
            answer = self.onConnect(request)
        except Exception:
            self._handshake_failed(Failure())
            return True
        if answer is None or answer.__class__ is str:  # admitted at once (see Deferred below)
            self.succeedHandshake(answer)
        elif isinstance(answer, Deferred):
            answer.addCallbacks(self.succeedHandshake, self._handshake_failed)
        elif iscoroutine(answer):
            ensureDeferred(answer).addCallbacks(self.succeedHandshake, self._handshake_failed)
        else:
            self.succeedHandshake(answer)
        return True

    def _handshake_failed(self, failure: Failure) -> None:
        """``onConnect`` refused or failed: what Autobahn's ``processHandshake`` does then."""
        error = failure.value
        if isinstance(error, ConnectionDeny):
            self.failHandshake(error.reason, error.code)
            return
        self.log.warn("Unexpected exception in onConnect ['{err.value}']", err=failure)
        self.log.warn("{tb}", tb=failure.getTraceback())
        self.failHandshake(f"Internal server error: {error}", ConnectionDeny.INTERNAL_SERVER_ERROR)

    # The opening handshake, bounded (--max-handshake-size, --max-handshake-headers).
    #: The request as it arrives, until its end of headers (see _dataReceived).
    _head: bytearray | None = None
    #: True once the request head has gone to Autobahn, or has been refused.
    _head_done = False
    #: True once the request line has ended and looks like one.
    _head_line = False
    #: Line ends (CRLF) in ``_head`` so far: the request line's, then one per header.
    _head_crlfs = 0

    def _dataReceived(self, data: bytes) -> None:
        """
        Hold the opening handshake's request here, bounded, until its headers end.

        Autobahn appends every read to ``self.data`` and searches all of it for
        the end of headers again, without any limit: a client sending headers
        that never end is buffered until the handshake timeout, with quadratic
        CPU. Here the end is looked for in the new bytes (and the last 3 of the
        old), lines are counted as they come, and a request is refused with 431
        as soon as it cannot end within ``--max-handshake-size`` bytes or has
        more than ``--max-handshake-headers`` headers; a first line that cannot
        be an HTTP request line (a TLS hello, a stray protocol) gets a 400 when
        it ends, not the timeout. Autobahn gets the complete head in one piece,
        and parses it (strictly) as before.
        """
        if self._head_done or self.state != self.STATE_CONNECTING:
            super()._dataReceived(data)
            return
        limits = self.factory.limits
        head = self._head
        if head is None:
            end = data.find(b"\r\n\r\n")
            if end >= 0:  # the usual case: the whole request in one read
                if self._head_fits(data, end, limits) and not self._open_lean(data, end):
                    super()._dataReceived(data)
                return
            head = self._head = bytearray()
        seen = len(head)
        head += data
        end = head.find(b"\r\n\r\n", max(0, seen - 3))
        if end >= 0:
            self._head = None
            if self._head_fits(head, end, limits) and not self._open_lean(head, end):
                super()._dataReceived(bytes(head))
            return
        if not self._head_line:
            line_end = head.find(b"\r\n", max(0, seen - 1))
            if not request_line_so_far(head, seen, line_end):
                self._refuse_head(400, "Bad Request", None, "not an HTTP request")
                return
            self._head_line = line_end >= 0
        self._head_crlfs += head.count(b"\r\n", max(0, seen - 1))
        if self._head_crlfs - 1 > limits.max_handshake_headers:
            self._refuse_head(431, "Request Header Fields Too Large", "max_handshake_headers",
                              f"over {limits.max_handshake_headers} headers")
        elif len(head) >= limits.max_handshake_size:  # its end could not come in time now
            self._refuse_head(431, "Request Header Fields Too Large", "max_handshake_size",
                              f"request over {limits.max_handshake_size} bytes")

    def _head_fits(self, head: bytes | bytearray, end: int, limits: Any) -> bool:
        """Whether a complete request head (``end``: where its empty line is) is within the limits."""
        self._head_done = True
        if end + 4 > limits.max_handshake_size:
            self._refuse_head(431, "Request Header Fields Too Large", "max_handshake_size",
                              f"request over {limits.max_handshake_size} bytes")
            return False
        if head.count(b"\r\n", 0, end) > limits.max_handshake_headers:
            self._refuse_head(431, "Request Header Fields Too Large", "max_handshake_headers",
                              f"over {limits.max_handshake_headers} headers")
            return False
        return True

    def _refuse_head(self, code: int, reason: str, limit: str | None, detail: str) -> None:
        """Refuse the request before Autobahn has seen it: counted, one log line (failHandshake)."""
        self._head = None
        self._head_done = True
        stats = self.factory.stats
        stats.refused[code] = stats.refused.get(code, 0) + 1
        if limit is not None:
            stats.hit(limit)
        self._refusal_detail = detail
        self.failHandshake(reason, code, REFUSAL_HEADERS)

    def failHandshake(self, reason: str, code: int = 400,
                      responseHeaders: Any = None) -> None:
        """
        Refuse the handshake (fws's refusals and Autobahn's own 400s alike)
        with one log line, fws's; Autobahn's two go to debug (see _DebugOnly).
        """
        if self.factory.log_connections:
            detail = self._refusal_detail
            self._log.info("refused connection {conn_id} from {peer}: {status} {reason}{detail}",
                           conn_id=self.id, peer=self.client_ip, status=code, reason=reason,
                           detail=f" ({detail})" if detail else "")
        with _autobahn_at_debug(self):
            super().failHandshake(reason, code, refusal_headers(responseHeaders))

    @property
    def utf8validator(self) -> Any:
        """
        Autobahn's incremental UTF-8 validator, made when a frame first needs it.

        Autobahn makes one per connection in ``_connectionMade`` (a CFFI object:
        5 % of a handshake's CPU time, and memory for every idle connection);
        only fragmented text messages, which fws's own frame parser hands to
        Autobahn, use it.
        """
        validator = self.__dict__.get("_utf8validator")
        if validator is None:
            validator = self.__dict__["_utf8validator"] = _Utf8Validator()
        return validator

    @utf8validator.setter
    def utf8validator(self, validator: Any) -> None:
        if validator is None:
            self.__dict__.pop("_utf8validator", None)
        else:
            self.__dict__["_utf8validator"] = validator

    def connectionMade(self) -> None:
        transport = self.transport
        peer = transport.getPeer()
        if self._options_baked and self._lean_handshake and not ISSLTransport.providedBy(transport):
            # Autobahn's WebSocketAdapterProtocol.connectionMade, less the TransportDetails
            # it makes for every connection (a dozen attributes, the pid, the thread id:
            # 7 % of a handshake), which only TLS's channel binding in _onOpen reads
            # during the handshake: made when read (see _transport_details).
            self.peer = (f"tcp4:{peer.host}:{peer.port}" if type(peer) is IPv4Address
                         else peer2str(transport))
            try:
                transport.setTcpNoDelay(self.tcpNoDelay)
            except Exception:  # as Autobahn: a unix socket has no Nagle to turn off
                pass
            self._connectionMade()
        else:
            super().connectionMade()
        factory = self.factory
        factory.connections.add(self)
        self.client_ip = str(getattr(peer, "host", None) or getattr(peer, "name", None) or "local")
        # In its handshake until onOpen or connectionLost (--max-pending-per-ip, at accept).
        self._pending_host = getattr(peer, "host", None)
        factory.pending_started(self._pending_host)
        self._direct = can_write_directly(self.transport)
        # The transport pauses this producer when its buffer is full and resumes
        # it when the buffer has drained: that is how fws knows a client is not reading.
        # (A connection taken over from twisted.web still has its HTTP channel registered.)
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.transport.registerProducer(self._lane, True)

    def connectionLost(self, reason: Any = None) -> None:
        lane = self._lane
        lane.ok = False
        if self._drain_call is not None:
            self._drain_call.cancel()
            self._drain_call = None
        if self._linger_call is not None:
            self._linger_call.cancel()
            self._linger_call = None
        self.factory.connections.discard(self)
        self._end_pending()
        super().connectionLost(reason)
        # No reference cycle may outlive the connection: with thousands of
        # connections closing, only the cycle collector would free them, and
        # with the raised thresholds (fws.service.GC_THRESHOLDS) it rarely looks
        # at old ones: RSS stayed up after they had all gone (issue 14).
        lane.close()
        state = self.__dict__
        closed = state.get("_is_closed")
        if closed is None or closed.called:
            # Fired (its result is this connection: held, it would make a cycle)
            # or never asked for: from now on, asking gives one already fired.
            state["_is_closed"] = _FIRED

    # Autobahn's two Deferreds, made when first asked for (Autobahn itself asks
    # only to fire them). Until then an open connection holds neither: they were
    # 368 bytes of every idle connection, and nothing in fws waits on is_open.

    @property
    def is_closed(self) -> Deferred[Any]:
        """
        Autobahn's "closed" Deferred: it fires with this connection when closed.

        Made on demand; once the connection is lost (and it has fired), a new
        one that has already fired: held, it would make a cycle with its result.
        """
        state = self.__dict__
        closed: Deferred[Any] | object | None = state.get("_is_closed")
        if closed is _FIRED:
            return succeed(self)
        if closed is None:
            closed = state["_is_closed"] = Deferred()
        return closed  # type: ignore[return-value]

    @is_closed.setter
    def is_closed(self, closed: Deferred[Any]) -> None:
        self.__dict__["_is_closed"] = closed

    @property
    def is_open(self) -> Deferred[None]:
        """
        Autobahn's "open" Deferred: it fires with None when the handshake succeeds.

        Made on demand until then (Autobahn fires it in succeedHandshake) and
        one already fired afterwards: an open connection keeps none.
        """
        opened: Deferred[None] | object | None = self._is_open  # the class's: _FIRED
        if opened is _FIRED:
            return succeed(None)
        if opened is None:
            opened = self.__dict__["_is_open"] = Deferred()
        return opened  # type: ignore[return-value]

    @is_open.setter
    def is_open(self, opened: Deferred[None]) -> None:
        self.__dict__["_is_open"] = opened

    @property
    def _transport_details(self) -> TransportDetails:
        """
        Autobahn's TransportDetails of this connection, made when first read.

        Autobahn makes it in ``connectionMade``; fws does for a TLS connection
        (whose channel binding ``_onOpen`` fills in) and otherwise when something
        reads it (``transport_details``, Autobahn's public property). Dropped
        once open (see _HANDSHAKE_LEFTOVERS): read then, a new one each time.
        """
        details: TransportDetails | None = self.__dict__.get("_transport_details")
        if details is None and self.transport is not None:
            details = create_transport_details(self.transport, True)
            details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
            if not self._opened:  # an open connection keeps none (see _HANDSHAKE_LEFTOVERS)
                self.__dict__["_transport_details"] = details
        return details  # type: ignore[return-value]  # None: before connectionMade only

    @_transport_details.setter
    def _transport_details(self, details: TransportDetails) -> None:
        self.__dict__["_transport_details"] = details

    @property
    def peer(self) -> str:
        """
        Autobahn's name for the peer (``tcp4:HOST:PORT``): the request's once
        open, which is the same string (one dict key fewer: see _compact).
        """
        peer: str | None = self.__dict__.get("peer")
        if peer is None:
            request = self.request
            return request.peer if request is not None else ""
        return peer

    @peer.setter
    def peer(self, peer: str) -> None:
        self.__dict__["peer"] = peer

    def succeedHandshake(self, res: Any) -> None:
        if self._lean_handshake and self._options_baked:
            self._succeed_lean(res)
        else:
            super().succeedHandshake(res)
        # It has fired is_open (and run its callbacks) if it opened the connection:
        # now the class's _FIRED stands for it, and the dict can be compacted.
        if self.state == self.STATE_OPEN:
            opened = self.__dict__.get("_is_open")
            if isinstance(opened, Deferred) and opened.called:
                del self.__dict__["_is_open"]
            self._compact()

    def _succeed_lean(self, res: Any) -> None:
        """
        Autobahn's ``succeedHandshake``: the same 101 response, byte for byte,
        and the same steps into the open state, less its debug lines (see
        :meth:`_open_lean`). Every browser offers permessage-deflate, so the
        offers are answered here too, as Autobahn answers them: a malformed
        offer fails the handshake with Autobahn's words, and an accepted one
        (``--compression``) makes the connection's compressor and the
        ``Sec-WebSocket-Extensions`` header of the response.
        """
        protocol = None
        headers: Any = {}
        if type(res) is tuple:
            if len(res) > 0:
                protocol = res[0]
            if len(res) > 1:
                headers = res[1]
        else:
            protocol = res
        if protocol is not None and protocol not in self.websocket_protocols:
            raise Exception("protocol accepted must be from the list client sent or None")
        self.websocket_protocol_in_use = protocol
        in_use: list[Any] = []
        self.websocket_extensions_in_use = in_use
        agreed = None
        if self.websocket_extensions:
            offers = []
            for extension, params in self.websocket_extensions:
                kind: Any = PERMESSAGE_COMPRESSION_EXTENSION.get(extension)
                if kind is not None:
                    try:
                        offers.append(kind["Offer"].parse(params))
                    except Exception as e:
                        self.failHandshake(str(e))
                        return
            if offers:
                accept = self.perMessageCompressionAccept(offers)
                if accept is not None:
                    kind = PERMESSAGE_COMPRESSION_EXTENSION[accept.EXTENSION_NAME]
                    self._perMessageCompress = kind["PMCE"].create_from_offer_accept(
                        True, accept)
                    in_use.append(self._perMessageCompress)
                    agreed = accept.get_extension_string()
        factory: Any = self.factory  # Autobahn's factory: its options
        response = "HTTP/1.1 101 Switching Protocols\r\n"
        if factory.server:
            response += f"Server: {factory.server}\r\n"
        response += "Upgrade: WebSocket\r\nConnection: Upgrade\r\n"
        for source in (factory.headers.items(), headers.items()):
            for name, value in source:
                if isinstance(value, str):
                    values: Any = [value]
                else:
                    try:
                        values = iter(value)
                    except TypeError:
                        values = [value]
                for one in values:
                    response += f"{name}: {one}\r\n"
        if protocol is not None:
            response += f"Sec-WebSocket-Protocol: {protocol}\r\n"
        response += f"Sec-WebSocket-Accept: {accept_key(self._wskey)}\r\n"
        if agreed is not None:
            response += f"Sec-WebSocket-Extensions: {agreed}\r\n"
        response += "\r\n"
        self._lane.write(response.encode("utf8"))  # to the socket itself when it can
        self.http_response_data = response
        self.state = self.STATE_OPEN
        call = self.openHandshakeTimeoutCall
        if call is not None:
            call.cancel()
            self.openHandshakeTimeoutCall = None
        self.inside_message = False
        self.current_frame = None  # type: ignore[assignment]
        if self.autoPingInterval:
            self.autoPingPendingCall = factory._batched_timer.call_later(
                self.autoPingInterval, self._sendAutoPing)
        if "_transport_details" in self.__dict__:
            self._onOpen()  # Autobahn's: TLS channel binding into the details, then onOpen
        else:
            self.onOpen()  # no TLS (see connectionMade): all that _onOpen would do
        # Autobahn resolves is_open, made on demand (see is_open); it is the class's
        # _FIRED from now on, whether anyone asked for it or not.
        opened = self.__dict__.pop("_is_open", None)
        if isinstance(opened, Deferred) and not opened.called:
            opened.callback(None)
        if self.data:
            self.consumeData()

    def unsent(self) -> int:
        """Bytes the client has not received yet: in Twisted's buffer and the kernel's."""
        transport = self.transport
        return sum(unsent_bytes(transport)) if transport is not None else 0

    def dropConnection(self, abort: bool = False) -> None:
        """
        Autobahn closes the TCP connection (no close frame, so no sendData): not ``ok`` now.

        For an open connection fws's close line (:meth:`onClose`) says why (a
        close handshake or ping timeout), so Autobahn's warning goes to debug.

        A drop without ``abort`` (Autobahn's, once it has answered a client's
        close frame, or after a refused handshake) closes the TCP connection
        only when Twisted's buffer has drained, and nothing bounds that: a
        client that let megabytes queue up, then sent a close and stopped
        reading, kept its connection for ever (Autobahn's
        ``serverConnectionDropTimeout`` is for clients only). So the
        connection is aborted if it is still there ``closeHandshakeTimeout``
        seconds later (:meth:`_abort_lingering`), unless a graceful stop is
        waiting for it: ``close_all`` aborts it at its own deadline (``--stop-timeout``).
        """
        lingers = not abort and self.state != self.STATE_CLOSED
        self._lane.ok = False
        if self._opened and self.factory.log_connections:
            with _autobahn_at_debug(self):
                super().dropConnection(abort)
        else:
            super().dropConnection(abort)
        if lingers and self.transport is not None and self._linger_call is None \
                and not self.held_by_stop:
            timeout = self.closeHandshakeTimeout if self.closeHandshakeTimeout > 0 else 2.0
            self._linger_call = self.factory._batched_timer.call_later(
                timeout, self._abort_lingering)

    def _abort_lingering(self) -> None:
        """The TCP close has waited its time for the output to drain: abort it."""
        self._linger_call = None
        transport = self.transport
        if transport is not None and not getattr(transport, "disconnected", False):
            transport.abortConnection()

    def onConnect(self, request: ConnectionRequest) -> Any:
        """
        Admit the request (:meth:`admit`), then answer with the subprotocol
        :meth:`subprotocol` chose from the client's offers (Autobahn puts a
        string returned here in ``Sec-WebSocket-Protocol``; ``None``: none).
        """
        self.factory.strings.share_request(request)  # the open connection keeps it
        self.request = request
        try:
            outcome = self.admit(request)
        except ConnectionDeny as e:
            self._refused(e)
            raise
        if outcome is not None and isinstance(outcome, Deferred):
            outcome.addErrback(self._refused_later)
            return outcome.addCallback(self._chosen, request)
        return self.subprotocol(request.protocols) if request.protocols else None

    def _chosen(self, _: Any, request: ConnectionRequest) -> str | None:
        return self.subprotocol(request.protocols) if request.protocols else None

    def _refused(self, deny: ConnectionDeny) -> None:
        # Counted here; logged in failHandshake, which Autobahn calls next.
        self.factory.stats.refused[deny.code] = self.factory.stats.refused.get(deny.code, 0) + 1

    def _refused_later(self, failure: Any) -> Any:
        if failure.check(ConnectionDeny):
            self._refused(failure.value)
        return failure

    def _end_pending(self) -> None:
        host = self.__dict__.pop("_pending_host", None)
        if host is not None:
            self.factory.pending_ended(host)

    def onOpen(self) -> None:
        self._opened = True
        self._end_pending()
        factory = self.factory
        factory.stats.opened += 1
        if factory.log_connections:
            request = self.request
            self._log.info("connection {conn_id} open from {peer} to {path}", conn_id=self.id,
                           peer=self.client_ip, path=request.path if request else "/")
        limits = factory.limits
        if limits.max_frame_rate > 0:
            self._frames = TokenBucket(limits.max_frame_rate, limits.frame_burst,
                                       factory.reactor.seconds())
        self.opened()  # then succeedHandshake compacts the dict (see _compact)

    def _compact(self) -> None:
        """Drop what an open connection does not need from its instance dict (see _IDLE_DEFAULTS)."""
        # One pass that copies what stays (deleting would not shrink the dict;
        # a copy is as small as what it holds): every name _DROPPED_WHEN_OPEN
        # has goes when its value is the class's, or whatever it is for a leftover.
        dropped = _DROPPED_WHEN_OPEN
        kept = {name: value for name, value in self.__dict__.items()
                if (at := dropped.get(name, _ABSENT)) is not value and at is not _LEFTOVER}
        request = self.request
        if request is not None and kept.get("peer") is request.peer:
            del kept["peer"]  # the request has it (see peer)
        if kept.get("websocket_extensions_in_use") == []:
            del kept["websocket_extensions_in_use"]
        if self._listeners is None:
            # Autobahn's observer API (.on/.fire) is unused until .on() is called, which
            # puts its state back (see on); until then the class's None stands in.
            kept.pop("_valid_events", None)
            kept.pop("_results", None)
        self.__dict__ = kept

    def on(self, event: str, handler: Any) -> None:
        """Autobahn's observer API, with the state _compact dropped restored first."""
        if "_valid_events" not in self.__dict__:
            self.set_valid_events(["message"])  # type: ignore[no-untyped-call]
        super().on(event, handler)  # type: ignore[no-untyped-call]

    # Deferred is an Awaitable ABC: isinstance(x, Deferred) costs 0.4 us through
    # ABCMeta unless x is ruled out first, so every such test checks None first.

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Every message, from the fast path or Autobahn's parser: counted, then handed up."""
        self.messages_in += 1
        stats = self.factory.stats
        stats.messages_in += 1
        stats.bytes_in += len(payload)
        self.message(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self._opened:
            return
        self._opened = False
        factory = self.factory
        # The code the close was about: ours when fws closed (the client merely echoes
        # it, or answers 1000), the client's otherwise; 1006 when no close frame came.
        by = "server" if self.closedByMe else "client"
        shown = self.localCloseCode if self.closedByMe and self.localCloseCode else code
        if not wasClean and not self.closedByMe:
            shown = 1006
        elif shown is None:  # a close frame without a code (RFC 6455 7.1.5: 1005)
            shown = 1005 if wasClean else 1006
        if self.closedByMe and self.localCloseCode:
            # Autobahn keeps the reason it sent as the UTF-8 bytes of the frame.
            sent = self.localCloseReason
            reason = sent.decode("utf-8", "replace") if isinstance(sent, bytes) else sent
        stats = factory.stats
        closed = stats.closed
        key = (shown, by)
        closed[key] = closed.get(key, 0) + 1
        if shown == 1009 and by == "server":  # Autobahn closed it: over a size limit
            stats.hit("max_message_size")
        if factory.log_connections:
            n = self.messages_in
            unclean = self.wasNotCleanReason if not wasClean else None
            self._log.info("connection {conn_id} from {peer} closed by the {by}: {code}{reason}, "
                           "after {messages} in{unclean}", conn_id=self.id, peer=self.client_ip,
                           by=by, code=shown, reason=f" {reason}" if reason else "",
                           messages=f"{n} message" if n == 1 else f"{n} messages",
                           messages_in=n, clean=wasClean,
                           unclean=f" ({unclean})" if unclean else "")
        self.closed(CloseInfo(shown, reason, wasClean))

    def _take_frames(self, count: int) -> bool:
        """
        The frame budget: take ``count`` frames from a token bucket of
        ``--max-frame-rate`` per second and ``--frame-burst`` at once; over it,
        close with 1008 and deliver nothing more.

        The message bucket only sees messages: pings (each costs the server a
        pong), pongs, close frames and the fragments of one message pass it,
        and a client sending those by the hundred thousand per second starved
        everyone else on the server (issue 14). Every frame counts here: the
        fast path's once per read (:meth:`dataReceived`), Autobahn's parser's
        once per frame (:meth:`onFrameBegin`). Over the budget the connection
        is closed whatever ``--rate-limit-action`` says: a message can be
        dropped, a frame cannot without corrupting the stream.
        """
        bucket = self._frames
        if bucket is None or bucket.take(count, self.factory.reactor.seconds()):
            return True
        limits = self.factory.limits
        self._frames = None  # one close is enough
        self.factory.stats.hit("max_frame_rate")
        self._log.info("connection {conn_id} sent more than {rate} frames/s; closing",
                       conn_id=self.id, rate=limits.max_frame_rate)
        self.close(CLOSE_POLICY, "frame rate limit exceeded")
        # Autobahn delivers no message of a failed connection (onMessageEnd): nothing
        # the client sent after its budget reaches the filters.
        self.failedByMe = True
        return False

    def onFrameBegin(self) -> None:
        """A frame Autobahn's parser reads (control, continuation, any): one from the budget."""
        if self._frames is not None and self.state == self.STATE_OPEN:
            self._take_frames(1)
        super().onFrameBegin()

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        """
        A close frame from the client: a bad one is answered with 1002 (1007
        for a reason that is not UTF-8) and the TCP connection closed after
        it; 1014 is as valid as 1011.

        Autobahn (with ``failByDrop`` off, as fws runs it) answers a bad close
        frame with its own close frame, then, in the same call, takes the bad
        frame for the client's answer to that close and aborts the connection.
        The abort throws away the close frame before it is sent: the client
        saw a reset where fws's log said 1002. The client has said its last
        word, so no answer is awaited: the connection is closed, not reset,
        once the close frame is out. The frame's own faults (one byte of
        payload, more than 125, fragmented, RSV bits, not masked) Autobahn's
        parser has already answered; a bad code or reason is answered here,
        in Autobahn's words. Autobahn's list of codes also lacks 1014 (bad
        gateway), which IANA registered with 1012 and 1013.
        """
        frame = self.current_frame
        bad_frame = frame is not None and (not frame.fin or frame.rsv or frame.mask is None
                                           or frame.length == 1 or frame.length > 125)
        bad_code = code is not None and not _valid_close_code(code)
        bad_reason = False
        if not bad_frame and not bad_code and reasonRaw is not None:
            try:
                reasonRaw.decode("utf-8")
            except UnicodeDecodeError:
                bad_reason = True
        if not (bad_frame or bad_code or bad_reason):
            if code != 1014:
                return super().onCloseFrame(code, reasonRaw)  # type: ignore[arg-type]
            # Autobahn checks its class's list: with 1014 on it for this call only.
            base = _autobahn_protocol.WebSocketProtocol
            allowed = base.CLOSE_STATUS_CODES_ALLOWED
            base.CLOSE_STATUS_CODES_ALLOWED = [*allowed, 1014]
            try:
                return super().onCloseFrame(code, reasonRaw)  # type: ignore[arg-type]
            finally:
                base.CLOSE_STATUS_CODES_ALLOWED = allowed
        if self.state == self.STATE_OPEN:
            if bad_code:
                self._protocol_violation(f"invalid close code {code}")
            elif bad_reason:
                self._invalid_payload("invalid close reason (non-UTF8 payload)")
            else:
                self._protocol_violation("invalid close frame")
        self.dropConnection(abort=False)
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id} peer={self.peer!r}>"


for _name, _value in (_IDLE_DEFAULTS | _OPEN_STATE).items():
    setattr(WireProtocol, _name, _value)


def _valid_close_code(code: int) -> bool:
    """
    Whether an endpoint may close with ``code``: RFC 6455 7.4's codes that may be
    sent (not 1004, 1005, 1006 or 1015) and IANA's later 1012, 1013 and 1014,
    or one of 3000-4999 (registered and private use).
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
