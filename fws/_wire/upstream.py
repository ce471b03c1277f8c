"""
The internals of Twisted, Autobahn and txredisapi that fws relies on: every
name that is not their public API (private attributes, undocumented instance
state, module globals fws swaps, methods it overrides that are not documented
hooks), in one place.

fws is fast because it goes around its libraries on the hot paths (its own
frame parser, direct socket writes, an inlined reactor read, a lean Redis
PUBLISH) and hardened because it corrects them where they are wrong (Origin,
close frames, handshake bounds). Both rest on these names. An upgrade that
renames one would break fws quietly, so ``tests/test_upstream.py`` walks this
list against the installed versions (on live objects for instance state), and
checks that no module outside :data:`OWNER`, the package that makes up fws's
wire, names any of the private ones.

Each entry is ``(owner, name, kind)``: ``owner`` the importable dotted path of
the class or module that defines it, ``kind`` one of ``method``, ``class``
(a class attribute), ``instance`` (set on instances; the comment says where)
or ``global`` (a module global). Inventoried against Autobahn 26.11, Twisted
26.10 and txredisapi 1.6.0.
"""

from __future__ import annotations

#: The package that may name what is listed below: fws's wire. Every other
#: module programs against the public APIs and the interfaces the wire declares
#: (fws._wire.protocol's Upcalls and WireHost, fws._wire.http's ChannelHost,
#: fws._wire.redis's Link and LinkService, fws.connection, fws.storage_objects).
OWNER = "fws._wire"

UPSTREAM_INTERNALS: tuple[tuple[str, str, str], ...] = (
    ("autobahn.twisted.websocket.WebSocketAdapterProtocol", "_onOpen", "method"),  # called by WireProtocol._succeed_lean where Autobahn's succeedHandshake calls it
    ("autobahn.twisted.websocket.WebSocketAdapterProtocol", "_transport_details", "instance"),  # set in WebSocketAdapterProtocol.connectionMade (TLS only on fws's path), read in _onOpen; a property on WireProtocol making it when read; popped by _compact
    ("autobahn.twisted.websocket.WebSocketAdapterProtocol", "peer", "instance"),  # set in WebSocketAdapterProtocol.connectionMade ("backward compatibility"); a property on WireProtocol falling back to request.peer once open; borderline
    ("autobahn.twisted.websocket.WebSocketServerProtocol", "log", "class"),  # shadowed per instance by _DebugOnly in _autobahn_at_debug; relies on it being class-level
    ("autobahn.util.ObservableMixin", "_listeners", "class"),
    ("autobahn.util.ObservableMixin", "_results", "instance"),  # set by ObservableMixin.set_valid_events from WebSocketProtocol.__init__ (which WireProtocol skips) or WireProtocol.on; popped by _compact
    ("autobahn.util.ObservableMixin", "_valid_events", "instance"),  # set by ObservableMixin.set_valid_events from WebSocketProtocol.__init__ (which WireProtocol skips) or WireProtocol.on; popped from __dict__ by _compact
    ("autobahn.util.ObservableMixin", "set_valid_events", "method"),  # called to restore state _compact dropped; borderline
    ("autobahn.websocket.protocol", "Utf8Validator", "global"),  # swapped for _no_validator around super()._connectionMade(); saved original made lazily in the utf8validator property
    ("autobahn.websocket.protocol", "_url_to_origin", "global"),  # swapped for _null_origin around super().processHandshake()
    ("autobahn.websocket.protocol", "pformat", "global"),  # swapped for _LazyPformat around super()._connectionMade()
    ("autobahn.websocket.protocol.FrameHeader", "fin", "instance"),  # set in FrameHeader.__init__ (read on self.current_frame)
    ("autobahn.websocket.protocol.FrameHeader", "length", "instance"),  # set in FrameHeader.__init__ (read on self.current_frame)
    ("autobahn.websocket.protocol.FrameHeader", "mask", "instance"),  # set in FrameHeader.__init__ (read on self.current_frame)
    ("autobahn.websocket.protocol.FrameHeader", "rsv", "instance"),  # set in FrameHeader.__init__ (read on self.current_frame)
    ("autobahn.websocket.protocol.PreparedMessage", "payloadHybi", "instance"),  # set in PreparedMessage.__init__ (from factory.prepareMessage)
    ("autobahn.websocket.protocol.WebSocketProtocol", "CLOSE_STATUS_CODES_ALLOWED", "class"),  # class attribute temporarily replaced (adds 1014) around super().onCloseFrame()
    ("autobahn.websocket.protocol.WebSocketProtocol", "STATE_CLOSED", "class"),
    ("autobahn.websocket.protocol.WebSocketProtocol", "STATE_CLOSING", "class"),
    ("autobahn.websocket.protocol.WebSocketProtocol", "STATE_CONNECTING", "class"),
    ("autobahn.websocket.protocol.WebSocketProtocol", "STATE_OPEN", "class"),  # state constant (not in IWebSocketChannel)
    ("autobahn.websocket.protocol.WebSocketProtocol", "_cancelAutoPingTimeoutCall", "method"),  # called (fast path)
    ("autobahn.websocket.protocol.WebSocketProtocol", "_connectionMade", "method"),  # overridden; base does the option copy / pformat / Utf8Validator / send_queue; not called on a baked class (test_fast_path compares the state both leave)
    ("autobahn.websocket.protocol.WebSocketProtocol", "_dataReceived", "method"),  # overridden (handshake bounding)
    ("autobahn.websocket.protocol.WebSocketProtocol", "_invalid_payload", "method"),  # called
    ("autobahn.websocket.protocol.WebSocketProtocol", "_parseExtensionsHeader", "method"),  # called by WireProtocol._open_lean where processHandshake calls it
    ("autobahn.websocket.protocol.WebSocketProtocol", "_perMessageCompress", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "_protocol_violation", "method"),  # called
    ("autobahn.websocket.protocol.WebSocketProtocol", "_sendAutoPing", "method"),  # scheduled by WireProtocol._succeed_lean as succeedHandshake schedules it
    ("autobahn.websocket.protocol.WebSocketProtocol", "autoPingPending", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "autoPingPendingCall", "instance"),  # set in WebSocketProtocol._connectionMade (class default None on WireProtocol, whose _connectionMade does not set it) and _onOpen
    ("autobahn.websocket.protocol.WebSocketProtocol", "autoPingPendingSent", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "autoPingPendingSeq", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "autoPingTimeoutCall", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "closeHandshakeTimeoutCall", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "closedByMe", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "consumeData", "method"),  # called by WireProtocol._succeed_lean for bytes after the request, as succeedHandshake does
    ("autobahn.websocket.protocol.WebSocketProtocol", "current_frame", "instance"),  # set in WebSocketServerProtocol.succeedHandshake; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "data", "instance"),  # set in WebSocketProtocol._connectionMade; class default b"" on WireProtocol (_OPEN_STATE), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "dropConnection", "method"),  # overridden and called
    ("autobahn.websocket.protocol.WebSocketProtocol", "droppedByMe", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "failedByMe", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact; written by fws
    ("autobahn.websocket.protocol.WebSocketProtocol", "inside_message", "instance"),  # set in WebSocketServerProtocol.succeedHandshake; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "is_closed", "instance"),  # set in WebSocketProtocol.__init__, fired in dropConnection/_connectionLost; fws shadows it with a property storing __dict__["_is_closed"], made on demand
    ("autobahn.websocket.protocol.WebSocketProtocol", "is_open", "instance"),  # set in WebSocketProtocol.__init__ (which WireProtocol.__init__ does not call: test_fast_path pins what it does), fired in succeedHandshake; fws shadows it with a property storing __dict__["_is_open"], made on demand
    ("autobahn.websocket.protocol.WebSocketProtocol", "localCloseCode", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "localCloseReason", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "onCloseFrame", "method"),  # overridden
    ("autobahn.websocket.protocol.WebSocketProtocol", "onCloseHandshakeTimeout", "method"),  # scheduled as callback
    ("autobahn.websocket.protocol.WebSocketProtocol", "onFrameBegin", "method"),  # overridden (frame budget)
    ("autobahn.websocket.protocol.WebSocketProtocol", "openHandshakeTimeoutCall", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "remoteCloseCode", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "remoteCloseReason", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "sendCloseFrame", "method"),  # called (fws.close)
    ("autobahn.websocket.protocol.WebSocketProtocol", "sendData", "method"),  # overridden (not a documented hook)
    ("autobahn.websocket.protocol.WebSocketProtocol", "send_queue", "instance"),  # set in WebSocketProtocol._connectionMade; fws replaces it with () after _connectionMade; class default () (_OPEN_STATE)
    ("autobahn.websocket.protocol.WebSocketProtocol", "send_state", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "state", "instance"),  # set in WebSocketProtocol._connectionMade and on every transition; class default STATE_OPEN on WireProtocol (_OPEN_STATE), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "trackedTimings", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "trafficStats", "instance"),  # set in WebSocketProtocol._connectionMade; popped by _compact, class default _NO_TRAFFIC_STATS on WireProtocol
    ("autobahn.websocket.protocol.WebSocketProtocol", "triggered", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "utf8validator", "instance"),  # set in WebSocketProtocol._connectionMade; fws shadows it with a lazy property
    ("autobahn.websocket.protocol.WebSocketProtocol", "wasClean", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "wasCloseHandshakeTimeout", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "wasMaxFramePayloadSizeExceeded", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "wasMaxMessagePayloadSizeExceeded", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "wasNotCleanReason", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "wasOpenHandshakeTimeout", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "wasServerConnectionDropTimeout", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketProtocol", "wasServingFlashSocketPolicyFile", "instance"),  # set in WebSocketProtocol._connectionMade; class default on WireProtocol (_IDLE_DEFAULTS), instance copy dropped by _compact
    ("autobahn.websocket.protocol.WebSocketServerFactory", "_batched_timer", "instance"),  # set in WebSocketServerFactory.__init__; fws replaces it with fws.timers.BucketTimer
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "CONFIG_ATTRS", "class"),  # iterated to bake options onto the protocol class
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "_connectionMade", "method"),  # what super()._connectionMade() resolves to
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "_wskey", "instance"),  # set in WebSocketServerProtocol.processHandshake; popped by _compact (_HANDSHAKE_LEFTOVERS)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "failHandshake", "method"),  # overridden and called
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "http_headers", "instance"),  # set in WebSocketServerProtocol.processHandshake/succeedHandshake; dropped by _compact (class default on WireProtocol)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "http_request_data", "instance"),  # set in WebSocketServerProtocol.processHandshake; popped by _compact (_HANDSHAKE_LEFTOVERS)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "http_request_host", "instance"),  # set in WebSocketServerProtocol.processHandshake/succeedHandshake; dropped by _compact (class default on WireProtocol)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "http_request_params", "instance"),  # set in WebSocketServerProtocol.processHandshake/succeedHandshake; dropped by _compact (class default on WireProtocol)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "http_request_path", "instance"),  # set in WebSocketServerProtocol.processHandshake/succeedHandshake; dropped by _compact (class default on WireProtocol)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "http_request_uri", "instance"),  # set in WebSocketServerProtocol.processHandshake/succeedHandshake; dropped by _compact (class default on WireProtocol)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "http_response_data", "instance"),  # set in WebSocketServerProtocol.succeedHandshake; popped by _compact (_HANDSHAKE_LEFTOVERS)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "http_status_line", "instance"),  # set in WebSocketServerProtocol.processHandshake; popped by _compact (_HANDSHAKE_LEFTOVERS)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "processHandshake", "method"),  # overridden; not reached for the common request, which WireProtocol._open_lean opens (tests/test_handshake_differential.py holds the two alike)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "succeedHandshake", "method"),  # overridden (is_open made on demand: see WireProtocol.is_open); re-implemented by WireProtocol._succeed_lean when no extension is offered
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "websocket_extensions", "instance"),  # set in WebSocketServerProtocol.processHandshake/succeedHandshake; dropped by _compact (class default on WireProtocol)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "websocket_extensions_in_use", "instance"),  # set in WebSocketServerProtocol.processHandshake/succeedHandshake; dropped by _compact (class default on WireProtocol)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "websocket_origin", "instance"),  # set in WebSocketServerProtocol.processHandshake/succeedHandshake; dropped by _compact (class default on WireProtocol)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "websocket_protocol_in_use", "instance"),  # set in WebSocketServerProtocol.succeedHandshake; class default on WireProtocol (_IDLE_DEFAULTS)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "websocket_protocols", "instance"),  # set in WebSocketServerProtocol.processHandshake/succeedHandshake; dropped by _compact (class default on WireProtocol)
    ("autobahn.websocket.protocol.WebSocketServerProtocol", "websocket_version", "instance"),  # set in WebSocketServerProtocol.processHandshake/succeedHandshake; dropped by _compact (class default on WireProtocol)
    ("twisted.internet.abstract.FileDescriptor", "_tempDataBuffer", "instance"),  # set in FileDescriptor.__init__
    ("twisted.internet.abstract.FileDescriptor", "_tempDataLen", "instance"),  # set in FileDescriptor.__init__
    ("twisted.internet.abstract.FileDescriptor", "_writeDisconnected", "class"),  # class default False; set True by FileDescriptor.doWrite
    ("twisted.internet.abstract.FileDescriptor", "bufferSize", "class"),
    ("twisted.internet.abstract.FileDescriptor", "connected", "instance"),  # set in tcp.Server.__init__ (class default FileDescriptor.connected = 0)
    ("twisted.internet.abstract.FileDescriptor", "dataBuffer", "class"),  # class default b""; rebound on the instance by FileDescriptor.doWrite
    ("twisted.internet.abstract.FileDescriptor", "disconnected", "class"),  # class default 0; set by FileDescriptor.connectionLost
    ("twisted.internet.abstract.FileDescriptor", "disconnecting", "class"),  # class default 0; set by FileDescriptor.loseConnection
    ("twisted.internet.abstract.FileDescriptor", "offset", "class"),  # class default 0; rebound by FileDescriptor.doWrite
    ("twisted.internet.abstract._ConsumerMixin", "producer", "class"),  # class default None; set by _ConsumerMixin.registerProducer (@ivar of a private mixin)
    ("twisted.internet.abstract._ConsumerMixin", "producerPaused", "class"),  # class default False; set by FileDescriptor.doWrite/_maybePauseProducer (@ivar of a private mixin)
    ("twisted.internet.defer.DeferredQueue", "waiting", "instance"),  # set in DeferredQueue.__init__ (on txredisapi.ReplyQueue; read in fws._wire.redis.CommandProtocol.connectionLost)
    ("twisted.internet.epollreactor.EPollReactor", "_poller", "instance"),  # set in EPollReactor.__init__
    ("twisted.internet.epollreactor.EPollReactor", "_selectables", "instance"),  # set in EPollReactor.__init__
    ("twisted.internet.epollreactor.EPollReactor", "doIteration", "method"),  # overridden
    ("twisted.internet.epollreactor.EPollReactor", "doPoll", "method"),  # overridden (re-implemented)
    ("twisted.internet.main", "CONNECTION_DONE", "global"),  # module documented as for reactor authors only; borderline
    ("twisted.internet.main", "CONNECTION_LOST", "global"),  # module documented as for reactor authors only; borderline
    ("twisted.internet.posixbase", "_NO_FILEDESC", "global"),
    ("twisted.internet.posixbase._DisconnectSelectableMixin", "_disconnectSelectable", "method"),  # called
    ("twisted.internet.posixbase._PollLikeMixin", "_doReadOrWrite", "method"),  # called; its read path is also mirrored inline in FwsEPollReactor.doPoll (fws/_wire/reactor.py)
    ("twisted.internet.tcp", "Server", "global"),  # exact-class checks (PLAIN_TCP), subclassed by LeanServer; public name, implementation module; borderline
    ("twisted.internet.tcp.Connection", "fileno", "instance"),  # set in tcp.Connection.__init__; a property on LeanServer
    ("twisted.internet.tcp.Connection", "protocol", "instance"),  # set in tcp.Connection.__init__
    ("twisted.internet.tcp.Connection", "socket", "instance"),  # set in tcp.Connection.__init__ (public way: ITCPTransport.getHandle())
    ("twisted.internet.tcp.Port", "_realPortNumber", "instance"),  # set in Port.startListening; read by LeanServer.repstr as Server.__init__ reads it
    ("twisted.internet.tcp.Port", "transport", "class"),  # the transport class Port.doRead builds; set per port to LeanServer by lean_port
    ("twisted.internet.tcp.Server", "_getLogPrefix", "method"),  # called by LeanServer.logstr as Server.__init__ calls it
    ("twisted.internet.tcp.Server", "logstr", "instance"),  # set in Server.__init__; a property on LeanServer
    ("twisted.internet.tcp.Server", "repstr", "instance"),  # set in Server.__init__ and _fromConnectedSocket; a property on LeanServer
    ("twisted.protocols.basic.LineReceiver", "_buffer", "class"),  # class default b""; rebound by LineReceiver.dataReceived
    ("twisted.protocols.basic.LineReceiver", "line_mode", "class"),  # class default 1; set by setLineMode/setRawMode (no @ivar)
    ("twisted.python.usage.Options", "parent", "class"),  # class default None; set by Options.parseOptions on sub-options; borderline
    ("twisted.web.http.HTTPChannel", "_abortingCall", "class"),  # class default None; set by timeoutConnection
    ("twisted.web.http.HTTPChannel", "_handlingRequest", "instance"),  # set in HTTPChannel.__init__
    ("twisted.web.http.HTTPChannel", "_receivedHeaderCount", "class"),  # class default 0; incremented by HTTPChannel.headerReceived
    ("twisted.web.http.HTTPChannel", "_respondToBadRequestAndDisconnect", "method"),  # overridden
    ("twisted.web.http.HTTPChannel", "allContentReceived", "method"),  # overridden
    ("twisted.web.http.HTTPChannel", "forceAbortClient", "method"),  # called
    ("twisted.web.http.HTTPChannel", "headerReceived", "method"),  # overridden
    ("twisted.web.http.HTTPChannel", "persistent", "class"),  # class default 1; set by HTTPChannel.allHeadersReceived
    ("twisted.web.http.HTTPChannel", "requestDone", "method"),  # overridden
    ("twisted.web.http.HTTPChannel", "requests", "instance"),  # set in HTTPChannel.__init__
    ("twisted.web.http.Request", "channel", "instance"),  # set in http.Request.__init__; read in fws._wire.http.hand_over; borderline
    ("twisted.web.resource.Resource", "children", "instance"),  # set in Resource.__init__ (no @ivar); read by fws.web.AdminRoot (not private); borderline
    ("twisted.web.static.File", "encoding", "instance"),  # set in File.render_GET (fws presets it in __init__)
    ("twisted.web.static.File", "type", "class"),  # class default None; set by File.render_GET when None
    ("txredisapi.BaseRedisProtocol", "_ready", "instance"),  # set in BaseRedisProtocol.__init__/connectionMade
    ("txredisapi.BaseRedisProtocol", "connected", "instance"),  # set in BaseRedisProtocol.connectionMade (after AUTH/SELECT) and by Twisted's makeConnection (read in fws._wire.redis)
    ("txredisapi.BaseRedisProtocol", "execute_command", "method"),  # overridden; called with undocumented apply_timeout=False
    ("txredisapi.BaseRedisProtocol", "inMulti", "instance"),  # set in BaseRedisProtocol.__init__
    ("txredisapi.BaseRedisProtocol", "pipelining", "instance"),  # set in BaseRedisProtocol.__init__
    ("txredisapi.BaseRedisProtocol", "replyQueue", "instance"),  # set in BaseRedisProtocol.__init__
    ("txredisapi.BaseRedisProtocol", "replyReceived", "method"),  # overridden
)

__all__ = ["OWNER", "UPSTREAM_INTERNALS"]
