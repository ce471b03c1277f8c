"""
The fast paths, pinned: fws frames messages itself and writes them straight
to the transport, so these tests check that the bytes are exactly Autobahn's,
that the Autobahn internals fws relies on still exist, and, as a regression
guard that does not time anything, how many Python calls one delivery costs.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol

from fws._wire.framing import encode_frame
from tests.helpers import Server, count_calls

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def test_autobahn_internals_fws_relies_on() -> None:
    assert hasattr(PreparedMessage(b"x", False, False, False), "payloadHybi")
    for name in ("STATE_OPEN", "STATE_CONNECTING", "STATE_CLOSING", "STATE_CLOSED"):
        assert isinstance(getattr(WebSocketProtocol, name), int)
    for method in ("sendCloseFrame", "sendPreparedMessage", "sendData", "prepareMessage"):
        assert hasattr(WebSocketProtocol, method) or method == "prepareMessage"


@pytest_twisted.ensureDeferred
async def test_fast_paths_deliver_every_size_intact(reactor: Any) -> None:
    server = Server(reactor, ["echo"]).start()
    try:
        a, b = await server.connect(), await server.connect()
        [conn_a, _conn_b] = sorted(server.factory.users.values(), key=lambda c: c.id)
        assert conn_a._perMessageCompress is None and not conn_a.autoFragmentSize
        for size in SIZES:
            for binary in (False, True):
                payload = (b"\x00" if binary else b"t") * size
                a.send(payload if binary else payload.decode())
                assert await a.recv() == (payload, binary)  # sendMessage's fast path
                assert server.factory.broadcast(payload, binary, exclude=conn_a) == 1
                assert await b.recv() == (payload, binary)  # broadcast's fast path
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_python_calls_per_delivery(reactor: Any) -> None:
    """
    Per recipient, a broadcast and the end-of-turn flush cost one ``send`` on
    its socket and not one Python function call: no fws, Autobahn or Twisted
    code per delivery once a connection's lane is ``ok``. The first message
    to a connection goes through ``write_out``, which checks its transport
    and makes the lane ``ok``. Fails when a change adds per-recipient calls or
    routes deliveries back through Autobahn's or Twisted's write paths.
    """
    server = Server(reactor, ["echo"]).start()
    try:
        for _ in range(60):
            await server.connect()
        factory = server.factory
        users = list(factory.users.values())
        assert all(conn._direct for conn in users)

        def broadcast_and_flush(recipients: list[Any] | None) -> None:
            factory.broadcast(b"x" * 64, False, recipients=recipients)
            factory._flush_call.cancel()
            factory._flush()

        first = count_calls(lambda: broadcast_and_flush(None))
        assert first["fws:write_out"] == 60 and first["socket:send"] == 60, first
        assert all(conn._lane.ok for conn in users)
        small = count_calls(lambda: broadcast_and_flush(users[:20]))
        large = count_calls(lambda: broadcast_and_flush(None))
        extra = dict(large - small)  # what 40 more recipients cost
        assert extra == {"socket:send": 40}, extra
        # A token group's members the same way: 40 more members, 40 sends and no call.
        for conn in users[:50]:
            factory.join_group(conn, "big" if conn in users[:45] else "small")

        def group_and_flush(group: str) -> None:
            factory.broadcast_group(group, b"g" * 64, False)
            factory._flush_call.cancel()
            factory._flush()

        extra = dict(count_calls(lambda: group_and_flush("big"))
                     - count_calls(lambda: group_and_flush("small")))
        assert extra == {"socket:send": 40}, extra
        for client in server.clients:
            assert await client.recv() == (b"x" * 64, False)
            assert await client.recv() == (b"x" * 64, False)
        for client in server.clients[:20]:
            assert await client.recv() == (b"x" * 64, False)
        for client in server.clients[:50]:
            assert await client.recv() == (b"g" * 64, False)
        await server.clients[-1].silent(0.05)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_lane_leaves_the_fast_path_while_its_transport_holds_data(reactor: Any) -> None:
    """
    A ping (written by Autobahn into the transport's buffer) takes the lane
    off the fast path, so the next broadcast cannot overtake it on the wire;
    once ``write_out`` has seen the buffer empty the lane is ``ok`` again.
    """
    server = Server(reactor, ["echo"]).start()
    try:
        client = await server.connect()
        [conn] = server.factory.users.values()
        server.factory.broadcast(b"one", False)
        assert await client.recv() == (b"one", False)
        assert conn._lane.ok
        conn.sendPing(b"p")
        assert not conn._lane.ok and conn.transport._tempDataBuffer  # the ping waits there
        server.factory.broadcast(b"two", False)
        calls = count_calls(lambda: (server.factory._flush_call.cancel(), server.factory._flush()))
        # behind the ping, through the transport's buffer: not sent to the socket first
        assert calls["fws:write_out"] == 1 and calls["twisted:write"] and "socket:send" not in calls
        assert not conn._lane.ok
        assert await client.recv() == (b"two", False)
        assert client.factory.events[-2:] == [("ping", b"p"), ("message", b"two")]
        server.factory.broadcast(b"three", False)
        assert await client.recv() == (b"three", False)
        assert conn._lane.ok
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_broadcasts_and_replies_keep_their_order_with_and_without_compression(
        reactor: Any) -> None:
    """
    Replies queued on a connection and broadcasts share its lane's queue, so
    they leave in the order they were made; a client that negotiated
    compression never takes the fast path (its frames are Autobahn's) and
    gets the same stream.
    """
    from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponseAccept

    server = Server.from_argv(reactor, "-f", "echo", "--compression").start()
    try:
        plain = await server.connect()
        packed = await server.connect(perMessageCompressionOffers=[PerMessageDeflateOffer()],
                                      perMessageCompressionAccept=PerMessageDeflateResponseAccept)
        factory = server.factory
        conns = sorted(factory.users.values(), key=lambda c: c.id)
        assert conns[0]._perMessageCompress is None and conns[1]._perMessageCompress is not None
        for round_ in range(3):  # the first round makes the plain lane ok
            for conn in conns:
                conn.sendMessage(f"reply-a{round_}")
            assert factory.broadcast(f"all{round_}") == 2
            for conn in conns:
                conn.sendMessage(f"reply-b{round_}")
            factory.broadcast_all(f"again{round_}", exclude=conns[1])
            factory._flush_call.cancel()
            factory._flush()
        assert conns[0]._lane.ok and not conns[1]._lane.ok
        for client, excluded in ((plain, False), (packed, True)):
            expected = [m for r in range(3)
                        for m in (f"reply-a{r}", f"all{r}", f"reply-b{r}", f"again{r}")
                        if not (excluded and m.startswith("again"))]
            assert [(await client.recv())[0].decode() for _ in expected] == expected
        await plain.silent(0.05)
        await packed.silent(0.0)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_dropped_connection_gets_nothing_more(reactor: Any) -> None:
    """
    Autobahn drops a connection without a close frame (a protocol error, a
    ping timeout) and its socket is still open until the reactor's next turn:
    its lane must be off the fast path at once, so nothing is sent after it.
    """
    server = Server(reactor, ["echo"]).start()
    try:
        await server.connect()
        other = await server.connect()
        conn = server.factory.users[min(server.factory.users)]
        assert server.factory.broadcast(b"warm", False) == 2
        server.factory._flush_call.cancel()
        server.factory._flush()
        assert conn._lane.ok
        conn.dropConnection(abort=True)
        assert server.factory.broadcast(b"late", False) == 1  # the other one only
        assert await other.recv() == (b"warm", False)
        assert await other.recv() == (b"late", False)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_python_calls_per_echo(reactor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """sendMessage's fast path: no call into Autobahn's frame builder or sendData."""
    server = Server(reactor, ["echo"]).start()
    try:
        client = await server.connect()
        [conn] = server.factory.users.values()

        def reply_twice_and_flush() -> None:
            conn.sendMessage(b"reply", False)
            conn.sendMessage("again")
            server.factory._flush_call.cancel()
            server.factory._flush()

        calls = count_calls(reply_twice_and_flush)
        autobahn = {name: n for name, n in calls.items() if name.startswith("autobahn:")}
        assert autobahn == {}, autobahn
        assert "twisted:write" not in calls  # straight to the socket, not the transport buffer
        assert calls[f"fws:{encode_frame.__name__}"] == 2  # compiled or not, once per message
        assert calls["fws:write_out"] == 1  # one send for both
        assert await client.recv() == (b"reply", False)
        assert await client.recv() == (b"again", False)
    finally:
        await server.stop()


# --- the inbound fast path, against a real process over a raw socket ----------------------------

import time  # noqa: E402

from tests.processes import FwsProcess  # noqa: E402
from tests.rawws import RawClient, frame  # noqa: E402


@pytest.fixture(params=["compiled", "pure"])
def echo_server(request: pytest.FixtureRequest, processes: list[FwsProcess]) -> FwsProcess:
    """An echo server whose inbound fast path is fws._speedups's, or the Python one."""
    proc = FwsProcess([], env={"FWS_PURE_PYTHON": "1" if request.param == "pure" else ""})
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", "echo", "--max-message-rate", "0",
                 "--max-message-size", "5000"]
    processes.append(proc)
    return proc.start()


def test_coalesced_frames_in_order(echo_server: FwsProcess) -> None:
    client = RawClient(echo_server.port)
    client.send(b"".join(frame(f"m{i}".encode()) for i in range(200)))
    assert [client.read_frame() for _ in range(200)] == [(1, f"m{i}".encode()) for i in range(200)]


def test_frames_split_byte_by_byte(echo_server: FwsProcess) -> None:
    client = RawClient(echo_server.port)
    client.sock.setsockopt(__import__("socket").IPPROTO_TCP, __import__("socket").TCP_NODELAY, 1)
    data = frame(b"split" * 40, opcode=2) + frame("héllo".encode())
    for i in range(len(data)):
        client.send(data[i:i + 1])
        if i % 16 == 0:
            time.sleep(0.001)
    assert client.read_frame() == (2, b"split" * 40)
    assert client.read_frame() == (1, "héllo".encode())


def test_control_frames_and_fragments_between_fast_frames(echo_server: FwsProcess) -> None:
    client = RawClient(echo_server.port)
    client.send(frame(b"one") + frame(b"ping!", opcode=9)
                + frame(b"frag", opcode=2, fin=False) + frame(b"-men", opcode=0, fin=False)
                + frame(b"ted", opcode=0) + frame(b"two"))
    assert client.read_frame() == (1, b"one")
    assert client.read_frame() == (10, b"ping!")  # pong
    assert client.read_frame() == (2, b"frag-mented")
    assert client.read_frame() == (1, b"two")


def test_fragmented_text_is_still_validated(echo_server: FwsProcess) -> None:
    """Fragmented text goes through Autobahn's UTF-8 validator, which fws makes on demand."""
    good = RawClient(echo_server.port)
    euro = "€".encode()  # three bytes, split across the fragments
    good.send(frame(b"price: " + euro[:1], opcode=1, fin=False) + frame(euro[1:2], opcode=0,
                                                                         fin=False)
              + frame(euro[2:] + b"5", opcode=0))
    assert good.read_frame() == (1, "price: €5".encode())
    good.send(frame(b"again " + euro[:2], opcode=1, fin=False) + frame(euro[2:], opcode=0))
    assert good.read_frame() == (1, "again €".encode())  # the validator was reset in between
    bad = RawClient(echo_server.port)
    bad.send(frame(b"fine so far ", opcode=1, fin=False) + frame(b"\xc3\x28", opcode=0))
    assert bad.close_code() == 1007


@pytest.mark.parametrize(
    ("tail", "code"),
    [
        (frame(b"start", opcode=1, fin=False) + frame(b"new message inside"), 1002),
        (frame(b"\xc3\x28"), 1007),
        (frame(b"x" * 5001, opcode=2), 1009),
        (frame(b"x" * 200, mask=False), 1002),
    ],
)
def test_violations_after_good_frames(echo_server: FwsProcess, tail: bytes, code: int) -> None:
    client = RawClient(echo_server.port)
    client.send(frame(b"good") + frame(b"x" * 5000, opcode=2) + tail)
    assert client.read_frame() == (1, b"good")
    assert client.read_frame() == (2, b"x" * 5000)  # exactly at the limit: accepted
    assert client.close_code() == code


# --- the handshake: what Autobahn does per connection that fws does not need ------------------


def test_handshake_neither_pretty_prints_nor_copies_options(reactor: Any) -> None:
    """
    Autobahn pretty-prints its protocol options for a debug line on every
    connection (55 % of a handshake's CPU) and copies 29 options onto every
    protocol instance. fws defers the first until a log observer formats it
    and makes the options class attributes of a per-factory protocol class.
    A pure unit test: the protocol is connected to an in-memory transport.
    """
    import inspect
    import pprint

    import autobahn.websocket.protocol as autobahn_protocol
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    # What the workaround relies on is still there (else it is a harmless no-op).
    assert "pformat(configAttrLog)" in inspect.getsource(WebSocketProtocol._connectionMade)
    assert "self.utf8validator = Utf8Validator()" in inspect.getsource(
        WebSocketProtocol._connectionMade)
    validator_class = autobahn_protocol.Utf8Validator
    server = Server.from_argv(reactor, "-f", "echo", "--max-message-size", "777")
    factory = server.factory
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    proto = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    calls = count_calls(lambda: proto.makeConnection(transport))
    try:
        assert not [name for name in calls if "pformat" in name or "safe_repr" in name], calls
        assert autobahn_protocol.pformat is pprint.pformat  # restored at once
        # No UTF-8 validator until a fragmented text message needs one (see utf8validator).
        assert "_utf8validator" not in vars(proto) and "utf8validator" not in vars(proto)
        assert autobahn_protocol.Utf8Validator is validator_class
        assert isinstance(proto.utf8validator, validator_class)
        # The opening-handshake timeout waits in fws's timer (see fws.timers), not txaio's.
        assert factory._batched_timer.pending() == 1
        assert type(proto.openHandshakeTimeoutCall).__name__ == "BucketCall"
        assert not set(vars(proto)) & set(proto.CONFIG_ATTRS)
        assert proto.maxMessagePayloadSize == 777 and proto.openHandshakeTimeout == 10.0
        # Options set later (by a filter's configure hook, say) reach later connections.
        factory.setProtocolOptions(autoPingInterval=12.5)
        assert factory.buildProtocol(peer).autoPingInterval == 12.5
    finally:
        proto.connectionLost(Failure(ConnectionDone()))
    assert factory._batched_timer.pending() == 0  # the lost connection's timeout is cancelled


def test_fws_connection_made_leaves_the_state_autobahns_leaves(reactor: Any) -> None:
    """
    Differential: WireProtocol._connectionMade (the baked class's short one)
    and Autobahn's own, run on two connections of the same class, leave the
    same state, attribute by attribute, for every attribute Autobahn sets;
    and both connections then open and echo alike.
    """
    import base64
    from collections import deque

    from autobahn.websocket.protocol import TrafficStats
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    from fws._wire.protocol import WireProtocol

    server = Server.from_argv(reactor, "-f", "echo")
    peer = IPv4Address("TCP", "127.0.0.1", 40002)

    def connect(autobahns: bool) -> tuple[Any, StringTransport]:
        proto = server.factory.buildProtocol(peer)
        assert proto._options_baked
        if autobahns:  # the same class, made to take Autobahn's own path
            proto._options_baked = False
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        return proto, transport

    ours, our_transport = connect(False)
    theirs, their_transport = connect(True)
    assert "CONFIG_ATTRS" not in vars(ours)
    # Autobahn's path sets these on the instance; fws's finds each on the class.
    assert len(vars(theirs)) > len(vars(ours)) + 20
    for name, value in vars(theirs).items():
        mine = getattr(ours, name)
        if isinstance(value, TrafficStats):
            assert mine.incomingOctetsWireLevel == 0, name  # the shared stand-in
        elif isinstance(value, deque) or name == "send_queue":
            assert len(mine) == len(value) == 0, name
        elif name == "openHandshakeTimeoutCall":
            assert type(mine) is type(value) and mine.active() and value.active()
        elif name in ("transport", "_transport_details", "_lane", "id", "_pending_host",
                      "_options_baked"):
            continue  # per connection by nature
        else:
            assert mine == value, (name, mine, value)
    assert server.factory.countConnections >= 2
    key = base64.b64encode(b"0123456789abcdef")
    request = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    frame = bytes([0x81, 0x82, 1, 2, 3, 4]) + bytes(b ^ m for b, m in zip(b"hi", b"\x01\x02"))
    for proto, transport in ((ours, our_transport), (theirs, their_transport)):
        proto.dataReceived(request)
        assert proto.state == proto.STATE_OPEN
        assert transport.value().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        transport.clear()
        proto.dataReceived(frame)
        proto.factory._flush()
        assert transport.value() == b"\x81\x02hi", transport.value()
        proto.connectionLost(Failure(ConnectionDone()))
    assert isinstance(ours, WireProtocol)


def test_lazy_pformat_formats_as_pformat() -> None:
    """With debug logging on, Autobahn's line reads exactly as before."""
    import pprint

    from twisted.logger import formatEvent

    from fws._wire.protocol import _LazyPformat

    value = [("maxMessagePayloadSize", 1048576, "FwsServerFactory")] * 5
    event = {"log_format": "\n{attrs}", "attrs": _LazyPformat(value)}
    assert formatEvent(event) == "\n" + pprint.pformat(value)
    assert str(_LazyPformat(value)) == pprint.pformat(value)


def test_autobahns_highlights_are_lazy_and_read_the_same() -> None:
    """
    hltype/hlval in Autobahn's websocket modules are computed only when a
    log line is formatted (a fifth of a handshake's CPU otherwise), and every
    call site there is a keyword argument of a log call, so nothing else sees them.
    """
    import importlib
    import inspect
    import re

    from autobahn import util
    from twisted.logger import formatEvent

    from fws._wire.protocol import _HIGHLIGHTING_MODULES, WireProtocol

    for name in _HIGHLIGHTING_MODULES:
        module = importlib.import_module(name)
        assert module.hltype.fws_lazy and module.hlval.fws_lazy
        lines = inspect.getsource(module).splitlines()
        sites = [i for i, line in enumerate(lines) if re.search(r"\bhl(type|val)\(", line)
                 and not line.lstrip().startswith(("from ", "import ", "def "))]
        assert sites, name
        for i in sites:
            assert re.search(r"(^\s*|, )\w+=hl(type|val)\(", lines[i]), (name, i + 1, lines[i])
            assert any(re.search(r"\.log\.\w+\($", line.strip()) or ".log." in line
                       for line in lines[max(0, i - 8):i]), (name, i + 1, lines[i])
    method = WireProtocol.processHandshake
    lazy = importlib.import_module("autobahn.websocket.protocol").hltype(method)
    event = {"log_format": "{func} and {n}", "func": lazy,
             "n": importlib.import_module("autobahn.websocket.protocol").hlval(3)}
    assert formatEvent(event) == f"{util.hltype(method)} and {util.hlval(3)}"
    assert str(lazy) == repr(lazy) == util.hltype(method)


@pytest_twisted.ensureDeferred
async def test_open_connections_keep_a_compact_dict(reactor: Any) -> None:
    """
    Idle memory: an open connection's instance dict holds no handshake leftovers
    and none of the Autobahn state that is still at its default (the class has
    it), and Autobahn's send queue exists only once a chopped write needs it.
    """
    from fws._wire.protocol import _HANDSHAKE_LEFTOVERS, _IDLE_DEFAULTS

    server = Server(reactor, ["echo"]).start()
    try:
        client = await server.connect()
        [conn] = server.factory.users.values()
        state = vars(conn)
        assert not set(state) & set(_HANDSHAKE_LEFTOVERS)
        assert not set(state) & set(_IDLE_DEFAULTS)
        # 10 keys fit a table of 16 slots (272 bytes; 21 need 32: 464): issue 16.
        assert len(state) <= 10, sorted(state)
        assert "factory" not in state and conn.factory is server.factory  # the class's
        from fws._wire.protocol import _OPEN_STATE

        assert not set(state) & set(_OPEN_STATE)
        assert conn.connected == 1 and conn.state == conn.STATE_OPEN and conn._opened
        assert conn.current_frame is None and conn.closedByMe is False  # from the class
        assert conn.send_queue == ()
        assert "_results" not in state and "_valid_events" not in state
        # Autobahn's TransportDetails and TrafficStats are gone too: its parser and
        # writer still run (a fragmented message, a ping) on the shared stand-in.
        assert "trafficStats" not in state and "_transport_details" not in state
        assert conn.trafficStats.incomingOctetsWireLevel == 0
        # Autobahn's public transport_details is still there when read (made anew, not kept).
        assert conn.transport_details.peer == conn.peer and not conn.transport_details.is_secure
        assert "_transport_details" not in vars(conn)
        client.send("still works")
        assert await client.recv() == (b"still works", False)
        # Text messages (the default limits' budgets, messages_in) keep it within 10.
        assert len(vars(conn)) <= 10, sorted(vars(conn))
        assert "is_binary" not in vars(conn)
        client.sendMessage(b"in two", isBinary=False, fragmentSize=3)
        assert await client.recv() == (b"in two", False)
        conn.sendPing(b"ping")
        conn.sendData(encode_frame(b"chopped into 3-byte writes", False), chopsize=3)
        assert await client.recv() == (b"chopped into 3-byte writes", False)
        assert isinstance(conn.send_queue, __import__("collections").deque)
        # Autobahn's observer API still works: .on() restores what _compact dropped.
        conn.on("message", lambda *args, **kwargs: None)
        assert conn._valid_events == ["message"] and conn._results == {"message": None}
        with pytest.raises(RuntimeError):
            conn.on("no such event", lambda: None)
    finally:
        await server.stop()


def test_shared_strings_are_bounded() -> None:
    """One copy of each string connections send alike: bounded; long or per-connection values stay own."""
    from autobahn.websocket.types import ConnectionRequest

    from fws._wire.handshake import SharedStrings

    table = SharedStrings(cap=3, longest=10)
    first = "".join(["web", "socket"])  # made at run time: not the interned literal
    second = "".join(["websock", "et"])
    assert first is not second and table.share(first) is first and table.share(second) is first
    long_one = "x" * 11
    assert table.share(long_one) is long_one and len(table) == 1  # too long: not kept
    table.share("a"), table.share("b")
    assert len(table) == 3
    table.share("c")  # full: it starts afresh rather than grow
    assert len(table) == 1

    def request(key: str) -> ConnectionRequest:
        return ConnectionRequest("tcp4:127.0.0.1:1", {"host": "".join(["h", "ost:1"]),
                                                      "sec-websocket-key": key,
                                                      "user-agent": "".join(["U", "A"])},
                                 "".join(["h", "ost"]), "/", {}, 13, "", [], [])

    table = SharedStrings()
    one, two = request("".join(["k", "1"])), request("".join(["k", "1"]))
    table.share_request(one)
    table.share_request(two)
    assert one.headers == two.headers and one.headers is not two.headers
    assert one.headers["host"] is two.headers["host"] and one.host is two.host
    assert one.headers["user-agent"] is two.headers["user-agent"]
    # The key differs per connection: sharing it would only churn the table.
    assert one.headers["sec-websocket-key"] is not two.headers["sec-websocket-key"]


@pytest_twisted.ensureDeferred
async def test_connections_share_their_alike_request_strings(reactor: Any) -> None:
    """Two real connections with the same headers hold one copy of each alike value."""
    server = Server(reactor, ["echo"]).start()
    try:
        headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) fws-test"}
        await server.connect(headers=headers)
        await server.connect(headers=headers)
        one, two = (conn.request for conn in server.factory.users.values())
        assert one.headers["user-agent"].endswith(headers["User-Agent"])  # after Autobahn's own
        assert one.headers["user-agent"] is two.headers["user-agent"]
        assert one.headers["host"] is two.headers["host"]
        assert one.headers["sec-websocket-key"] != two.headers["sec-websocket-key"]
    finally:
        await server.stop()


def test_autobahns_deferreds_are_made_when_asked_for(reactor: Any) -> None:
    """
    is_open and is_closed (368 bytes of every idle connection) exist only once
    asked for, and still fire as Autobahn's do: is_open when the handshake
    succeeds, is_closed with the connection when it closes; asked for
    afterwards, each has already fired. A unit test on an in-memory transport.
    """
    import base64
    import inspect

    from twisted.internet.address import IPv4Address
    from twisted.internet.defer import Deferred
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    # Autobahn's __init__ is skipped: pin what it did, so a new attribute there shows up.
    assert "self.is_closed = txaio.create_future()" in inspect.getsource(WebSocketProtocol.__init__)
    assert len(inspect.getsource(WebSocketProtocol.__init__).splitlines()) < 20
    server = Server.from_argv(reactor, "-f", "echo")
    peer = IPv4Address("TCP", "127.0.0.1", 40001)

    def handshake(proto: Any) -> None:
        key = base64.b64encode(b"0123456789abcdef")
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key
                           + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    # Asked for before the handshake: it fires when the connection opens.
    proto = server.factory.buildProtocol(peer)
    proto.makeConnection(StringTransport(peerAddress=peer))
    assert not [v for v in vars(proto).values() if isinstance(v, Deferred)]
    opened, closed = proto.is_open, proto.is_closed
    assert not opened.called and not closed.called
    handshake(proto)
    assert proto.state == proto.STATE_OPEN and opened.called
    assert proto.is_closed is closed and not closed.called
    got: list[Any] = []
    closed.addCallback(got.append)
    proto.connectionLost(Failure(ConnectionDone()))
    assert got == [proto]
    assert not [v for v in vars(proto).values() if isinstance(v, Deferred)]  # no cycle kept
    after: list[Any] = []
    proto.is_closed.addCallback(after.append)
    assert after == [proto]

    # Never asked for: an open connection holds none; asked for later, is_open has fired.
    proto = server.factory.buildProtocol(peer)
    proto.makeConnection(StringTransport(peerAddress=peer))
    handshake(proto)
    assert proto.state == proto.STATE_OPEN
    assert not [v for v in vars(proto).values() if isinstance(v, Deferred)]
    assert proto.is_open.called
    closed = proto.is_closed
    proto.connectionLost(Failure(ConnectionDone()))
    assert closed.called and closed.result is proto


# --- the reactor -----------------------------------------------------------------------------


def test_the_reactor_fws_patches_is_twisteds() -> None:
    """FwsEPollReactor.doPoll is Twisted's minus callWithLogger: pin what it mirrors."""
    import inspect

    from twisted.internet.epollreactor import EPollReactor

    source = inspect.getsource(EPollReactor.doPoll)
    assert "self._poller.poll(timeout, len(self._selectables))" in source
    assert "log.callWithLogger(selectable, _drdw, selectable, fd, event)" in source
    assert EPollReactor.doIteration is EPollReactor.doPoll


def test_the_read_path_fws_inlines_is_twisteds() -> None:
    """FwsEPollReactor reads a tcp.Server as these three Twisted methods do: pin them."""
    import inspect

    from twisted.internet import posixbase, tcp

    assert tcp.Server.doRead is tcp.Connection.doRead
    assert tcp.Server._dataReceived is tcp.Connection._dataReceived
    read = inspect.getsource(tcp.Connection.doRead)
    for line in ("data = self.socket.recv(self.bufferSize)", "if se.args[0] == EWOULDBLOCK:",
                 "return main.CONNECTION_LOST", "return self._dataReceived(data)"):
        assert line in read, line
    received = inspect.getsource(tcp.Connection._dataReceived)
    for line in ("return main.CONNECTION_DONE", "self.protocol.dataReceived(data)"):
        assert line in received, line
    dispatch = inspect.getsource(posixbase._PollLikeMixin._doReadOrWrite)
    for line in ("if selectable.fileno() == -1:", "why = _NO_FILEDESC", "why = selectable.doRead()",
                 "inRead = True", "log.err()", "self._disconnectSelectable(selectable, why, inRead)"):
        assert line in dispatch, line


class _Recorder:
    """A protocol that records what the transport hands it (and can raise on demand)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Any] = []
        self.explode = False

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if self.explode:
            raise ValueError("a protocol bug")

    def connectionLost(self, reason: Any) -> None:
        self.lost.append(reason)


@pytest.fixture
def private_reactor() -> Any:
    """fws's reactor, not installed: the test drives its doPoll by hand."""
    from fws._wire.reactor import _reactor_class

    reactor = _reactor_class()()
    yield reactor
    for selectable in list(reactor._selectables.values()):
        if selectable is not reactor.waker:
            reactor.removeReader(selectable)
            selectable.socket.close()
    reactor.waker.connectionLost(None)
    reactor._poller.close()


@pytest.fixture(params=["tcp.Server", "LeanServer"])
def transport_class(request: pytest.FixtureRequest) -> type:
    """Twisted's TCP transport, and fws's (what fws's ports build: see fws._wire.transport)."""
    from twisted.internet import tcp

    from fws._wire.transport import LeanServer

    return tcp.Server if request.param == "tcp.Server" else LeanServer


def _served(reactor: Any, kind: type | None = None) -> tuple[Any, Any, Any]:
    """A real TCP transport (``kind``, tcp.Server by default) on ``reactor`` and its client socket."""
    import socket

    from twisted.internet import tcp

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        accepted, address = listener.accept()
    accepted.setblocking(False)
    protocol = _Recorder()
    server = (kind or tcp.Server)(accepted, protocol, address, None, 1, reactor)  # type: ignore[arg-type]
    server.repstr = f"<test server on fd {accepted.fileno()}>"  # Twisted sets it from the Port
    protocol.makeConnection(server)  # Server() started reading
    return server, protocol, client


def _poll_until(reactor: Any, done: Any) -> None:
    for _ in range(200):
        reactor.doPoll(0.05)
        reactor.runUntilCurrent()
        if done():
            return
    raise AssertionError("the reactor never got there")


@pytest.fixture
def twisted_reads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The tcp.Connection.doRead calls made: the ones fws's reactor did not inline."""
    from twisted.internet import tcp

    calls: list[Any] = []
    original = tcp.Connection.doRead

    def counted(self: Any) -> Any:
        calls.append(self)
        return original(self)

    monkeypatch.setattr(tcp.Connection, "doRead", counted)
    return calls


def test_fws_reactor_reads_deliver_in_order(private_reactor: Any, twisted_reads: list[Any],
                                            transport_class: type) -> None:
    _, protocol, client = _served(private_reactor, transport_class)
    try:
        for i in range(50):
            client.sendall(b"chunk %d;" % i)
            _poll_until(private_reactor,
                        lambda i=i: b"".join(protocol.received).endswith(b"%d;" % i))
    finally:
        client.close()
    assert b"".join(protocol.received) == b"".join(b"chunk %d;" % i for i in range(50))
    assert twisted_reads == []  # the inlined path served every read
    assert protocol.lost == []


def test_fws_reactor_clean_close_reset_and_protocol_errors(
    private_reactor: Any, twisted_reads: list[Any], logged_errors: list[Any], transport_class: type
) -> None:
    import errno
    import socket
    import struct

    from twisted.internet.error import ConnectionDone, ConnectionLost

    # The client closes: an empty read is a clean end.
    server, protocol, client = _served(private_reactor, transport_class)
    client.sendall(b"last words")
    client.close()
    _poll_until(private_reactor, lambda: protocol.lost)
    assert protocol.received == [b"last words"] and twisted_reads == []
    assert protocol.lost[0].check(ConnectionDone)

    # The client resets (epoll reports HUP and ERR too: Twisted's own path handles it).
    server, protocol, client = _served(private_reactor, transport_class)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    _poll_until(private_reactor, lambda: protocol.lost)
    assert protocol.lost[0].check(ConnectionLost) and twisted_reads == [server]

    # recv fails on a plain "readable" event: EWOULDBLOCK is nothing, anything else
    # a lost connection (not a clean one).
    server_before = server
    server, protocol, client = _served(private_reactor, transport_class)
    real = server.socket
    failures = [BlockingIOError(errno.EAGAIN, "spurious"), ConnectionResetError(errno.ECONNRESET, "reset")]

    class Failing:
        def fileno(self) -> int:
            return real.fileno()

        def recv(self, size: int) -> bytes:
            raise failures.pop(0)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    server.socket = Failing()
    client.sendall(b"unread")
    private_reactor.doPoll(1)
    assert failures and not protocol.lost  # EAGAIN: still open, still readable
    _poll_until(private_reactor, lambda: protocol.lost)
    assert not failures and protocol.received == [] and twisted_reads == [server_before]
    assert protocol.lost[0].check(ConnectionLost)
    client.close()

    # The protocol raises: logged, and the connection dropped with that error.
    server, protocol, client = _served(private_reactor, transport_class)
    protocol.explode = True
    client.sendall(b"boom")
    _poll_until(private_reactor, lambda: protocol.lost)
    assert protocol.lost[0].check(ValueError)
    assert [event["failure"].value for event in logged_errors] == [protocol.lost[0].value]
    logged_errors.clear()
    client.close()

    # A socket object that says it was closed (fileno -1) while its descriptor was
    # still registered: Twisted's "file descriptor went away", not a lost connection.
    from twisted.internet.error import ConnectionFdescWentAway

    server, protocol, client = _served(private_reactor, transport_class)
    real_closed = server.socket

    class Closed:
        def fileno(self) -> int:
            return -1

        def recv(self, size: int) -> bytes:
            raise OSError(errno.EBADF, "Bad file descriptor")

        def __getattr__(self, name: str) -> Any:
            return getattr(real_closed, name)

    server.socket = Closed()
    server.fileno = server.socket.fileno  # Connection binds its socket's fileno
    client.sendall(b"too late")
    _poll_until(private_reactor, lambda: protocol.lost)
    assert protocol.lost[0].check(ConnectionFdescWentAway) and protocol.received == []
    real_closed.close()
    client.close()


def test_lean_server_keeps_no_strings_and_tells_the_same(private_reactor: Any) -> None:
    """
    fws's TCP transport computes logstr, repstr and fileno when read (230 bytes
    per idle connection, issue 16) and tells what tcp.Server tells, before and
    after the connection is lost.
    """
    from twisted.internet import tcp
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    from fws._wire.transport import LeanServer, lean_port

    plain, _, plain_client = _served(private_reactor)
    lean, _, lean_client = _served(private_reactor, LeanServer)
    try:
        assert {"logstr", "repstr", "fileno"} <= set(vars(plain))
        assert not {"logstr", "repstr", "fileno"} & set(vars(lean))
        assert lean.logPrefix() == plain.logPrefix() == "_Recorder,1,127.0.0.1"
        assert lean.fileno() == lean.socket.fileno() and lean.getHandle() is lean.socket
        assert repr(lean).startswith("<_Recorder #1 on ")  # its socket's port: no Port here
        lean.connectionLost(Failure(ConnectionDone()))  # drops protocol, socket and fileno
        assert lean.fileno() == -1 and lean.logPrefix() == "Connection,1,127.0.0.1"
        assert repr(lean) == "<Connection #1 on ?>"
    finally:
        plain_client.close()
        lean_client.close()
        private_reactor.removeReader(plain)
        plain.socket.close()

    # Only TCP ports get it; a port that already builds another class keeps it.
    port = tcp.Port(0, None)  # type: ignore[arg-type]
    lean_port(port)
    assert port.transport is LeanServer
    port.transport = type("Custom", (tcp.Server,), {})
    lean_port(port)
    assert port.transport.__name__ == "Custom"
    lean_port(object())  # not a TCP port: nothing happens


@pytest_twisted.ensureDeferred
async def test_fws_connections_ride_lean_transports(reactor: Any) -> None:
    """The WebSocket port's connections get LeanServer, and its fast paths still take them."""
    from fws._wire.outbound import can_write_directly
    from fws._wire.transport import LeanServer

    server = Server(reactor, ["echo"]).start()
    try:
        client = await server.connect()
        [conn] = server.factory.users.values()
        assert type(conn.transport) is LeanServer and can_write_directly(conn.transport)
        client.send("through")
        assert await client.recv() == (b"through", False)
    finally:
        await server.stop()


def test_fws_server_runs_on_the_fws_reactor(echo_server: FwsProcess) -> None:
    """And on the framing the fixture asked for, which the startup line names."""
    framing = ("Python (FWS_PURE_PYTHON is set)" if echo_server.env["FWS_PURE_PYTHON"]
               else "compiled (fws._speedups)")
    # Logged only once listening succeeded (a failed listen prints just its error),
    # so it may follow the "listening on" that start() waited for.
    echo_server.wait_for_line(f"reactor: FwsEPollReactor; framing: {framing}")


def test_sends_from_io_and_from_timers_both_leave(tmp_path: Any,
                                                  processes: list[FwsProcess]) -> None:
    """
    On fws's reactor a reply queued while a poll's events are handled is flushed
    right after them; one queued from a timer (an asynchronous filter's
    deferLater) falls back to callLater(0). Both must reach the client, in order.
    """
    from tests.helpers import write_module
    from tests.rawws import RawClient, frame

    module = write_module(tmp_path, (
        "from twisted.internet import reactor\n"
        "from twisted.internet.task import deferLater\n"
        "from fws.filters.base import WebSocketMessageFilter\n"
        "class Later(WebSocketMessageFilter):\n"
        "    @staticmethod\n"
        "    async def filter(conn, data):\n"
        "        conn.sendMessage(b'now:' + bytes(data), False)\n"
        "        await deferLater(reactor, 0.01, lambda: None)\n"
        "        conn.sendMessage(b'later:' + bytes(data), False)\n"
    ))
    proc = FwsProcess([], cwd=tmp_path)
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", module, "--max-message-rate", "0"]
    processes.append(proc)
    proc.start()
    proc.wait_for_line("reactor: FwsEPollReactor")
    client = RawClient(proc.port)
    client.send(b"".join(frame(f"m{i}".encode()) for i in range(20)))
    expected = [(1, f"{kind}:m{i}".encode()) for i in range(20) for kind in ("now", "later")]
    assert [client.read_frame() for _ in range(40)] == expected


# --- the garbage collector ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("before", [(700, 10, 10), (1234, 5, 6)])
async def test_gc_thresholds_while_serving(reactor: Any, before: tuple[int, int, int]) -> None:
    """
    A running service raises Python's default collection thresholds to
    GC_THRESHOLDS (fewer collections walking every new connection's objects)
    and puts them back when it stops; thresholds someone else chose stay.
    """
    import gc

    from fws.service import GC_THRESHOLDS

    saved = gc.get_threshold()
    gc.set_threshold(*before)
    serving = GC_THRESHOLDS if before == (700, 10, 10) else before
    try:
        # Two services in one process share the setting: the last to stop restores it.
        running = [Server(reactor, ["echo"]).start(), Server(reactor, ["echo"]).start()]
        try:
            client = await running[0].connect()
            client.send("still echoes")
            assert await client.recv() == (b"still echoes", False)
            assert gc.get_threshold() == serving
            await running.pop(0).stop()
            assert gc.get_threshold() == serving  # the second still runs
        finally:
            for server in running:
                await server.stop()
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*saved)


def test_fws_server_runs_with_fws_gc_thresholds(tmp_path: Any,
                                                processes: list[FwsProcess]) -> None:
    from fws.service import GC_THRESHOLDS
    from tests.helpers import write_module

    module = write_module(tmp_path, (
        "import gc\n"
        "from fws.filters.base import WebSocketMessageFilter\n"
        "class Thresholds(WebSocketMessageFilter):\n"
        "    @staticmethod\n"
        "    def filter(conn, data):\n"
        "        conn.sendMessage(repr(gc.get_threshold()))\n"
    ))
    proc = FwsProcess([], cwd=tmp_path)
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", module]
    processes.append(proc)
    proc.start()
    client = RawClient(proc.port)
    client.send(frame(b"?"))
    assert client.read_frame() == (1, repr(GC_THRESHOLDS).encode())
