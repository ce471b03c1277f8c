"""
fws's inbound path against plain Autobahn's, byte stream by byte stream.

fws parses most client frames itself (``FwsServerProtocol.dataReceived``,
``fws._wire.framing.parse_frames``) and hands the rest to Autobahn's parser, so
what a client gets must not depend on which parser read a frame, nor on how
the bytes were split into reads: the handshake and the frames in one read go
to Autobahn, frames in later reads to fws's. Each stream here goes, whole
and split at every offset (and at random offsets, by hypothesis), to a plain
Autobahn ``WebSocketServerProtocol`` that echoes, with the protocol options
fws sets, and to fws's protocol with the echo filter, both on in-memory
transports; both must deliver the same messages and write the same bytes
after the handshake response (echoes, pongs, the close frame and its code).

Where fws deliberately differs from Autobahn it is said where it is checked:
1014 (bad gateway) is a valid close code that Autobahn refuses, and fws
closes the TCP connection after answering a bad close frame where Autobahn
resets it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from fws._wire import framing
from fws.limits import Limits
from fws.timers import BucketTimer
from tests.helpers import Server
from tests.system_tools import speedups

HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")
KEY = b"\x37\xfa\x21\x3d"
#: What the echo servers are configured with: small, so that "too big" is cheap to send.
MAX_SIZE = 300


def frame(payload: bytes, opcode: int = 1, fin: bool = True, mask: bool = True, rsv: int = 0,
          length16: bool = False, length64: bool = False) -> bytes:
    """A client frame with a fixed key (so streams are reproducible); lengths as asked."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if length64 or n > 65535:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    elif length16 or n > 125:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | n])
    if not mask:
        return head + payload
    return head + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))


def close(code: int | None = None, reason: bytes = b"", **kwargs: Any) -> bytes:
    return frame((b"" if code is None else struct.pack("!H", code)) + reason, opcode=8, **kwargs)


class _Echo(WebSocketServerProtocol):
    """Plain Autobahn, echoing: the reference fws's inbound path is held to."""

    delivered: list[tuple[bytes, bool]]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.delivered.append((payload, isBinary))
        self.sendMessage(payload, isBinary)


@dataclass
class Outcome:
    """What a stream made a server do."""

    delivered: list[tuple[bytes, bool]] = field(default_factory=list)
    #: Everything written after the handshake response.
    wire: bytes = b""
    #: Server frames in ``wire``: (opcode, payload).
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    #: Whether the server closed the TCP connection, and whether it reset it
    #: (an abort discards what was written but not yet sent: the close frame).
    disconnected: bool = False
    aborted: bool = False

    @property
    def close_code(self) -> int | None:
        for opcode, payload in self.frames:
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        return None

    def same_as(self, other: Outcome) -> bool:
        """The same messages, bytes and TCP close (a reset or not: see the module's docstring)."""
        return (self.delivered, self.wire, self.disconnected) == \
            (other.delivered, other.wire, other.disconnected)


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while len(data) >= 2:
        n = data[1] & 0x7F
        head = 2
        if n == 126:
            n, head = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, head = struct.unpack("!Q", data[2:10])[0], 10
        out.append((data[0] & 0x0F, data[head:head + n]))
        data = data[head + n:]
    return out


def _limits() -> Limits:
    return Limits(max_message_size=MAX_SIZE, max_frame_size=MAX_SIZE, drain_period=0.0)


def _autobahn(clock: Clock) -> tuple[Any, list[tuple[bytes, bool]]]:
    factory = WebSocketServerFactory(reactor=clock)
    factory.setProtocolOptions(**_limits().protocol_options())
    factory._batched_timer = BucketTimer(clock)
    factory.protocol = _Echo
    proto = factory.buildProtocol(None)
    proto.delivered = []
    return proto, proto.delivered


_fws_factories: dict[int, Any] = {}


def _fws(clock: Clock) -> tuple[Any, list[tuple[bytes, bool]]]:
    server = Server(clock, ["echo"], limits=_limits())
    factory = server.factory
    proto = factory.buildProtocol(None)
    delivered: list[tuple[bytes, bool]] = []
    # What the wire hands up (its message upcall), from the fast path and from
    # Autobahn's parser alike: Autobahn's onMessage is only the second.
    message = proto.message

    def record(payload: bytes, is_binary: bool) -> None:
        delivered.append((bytes(payload), is_binary))
        message(payload, is_binary)

    proto.message = record
    return proto, delivered


class _Transport(StringTransport):
    """In memory, and like TCP's in letting a protocol unregister a producer it never had."""

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


def run(make: Any, chunks: list[bytes]) -> Outcome:
    """Feed ``chunks`` as successive reads; what the server did."""
    clock = Clock()
    proto, delivered = make(clock)
    transport = _Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    try:
        for chunk in chunks:
            if transport.disconnecting:  # Twisted stops reading a connection it closes
                break
            proto.dataReceived(chunk)
            clock.advance(0)  # fws writes its echoes at the end of the reactor turn
        written = transport.value()
        head, sep, wire = written.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 101"), written
        return Outcome(delivered, wire, _server_frames(wire), bool(transport.disconnecting),
                       bool(getattr(transport, "disconnected", False)))
    finally:
        if proto.state != proto.STATE_CLOSED or transport.connected:
            proto.connectionLost(Failure(ConnectionDone()))
        clock.advance(100)


def both(chunks: list[bytes]) -> tuple[Outcome, Outcome]:
    return run(_autobahn, chunks), run(_fws, chunks)


def splits(stream: bytes) -> list[list[bytes]]:
    """The stream whole, then cut in two at every offset."""
    return [[stream]] + [[stream[:i], stream[i:]] for i in range(1, len(stream))]


GOOD = frame(b"hello") + frame(b"\x00\xff" * 70, opcode=2)

#: name -> frames after the handshake; each must be handled by fws exactly as by Autobahn.
STREAMS: dict[str, bytes] = {
    "text and binary": GOOD + frame("héllo €".encode()) + frame(b"", opcode=2) + frame(b""),
    "at the size limit": frame(b"x" * MAX_SIZE, opcode=2) + frame(b"after"),
    "over the size limit": frame(b"x" * (MAX_SIZE + 1), opcode=2) + frame(b"after"),
    "fragmented": frame(b"fra", fin=False) + frame(b"gmen", opcode=0, fin=False)
    + frame(b"ted", opcode=0) + frame(b"next"),
    "fragmented over the limit": frame(b"x" * 200, opcode=2, fin=False)
    + frame(b"y" * 200, opcode=0),
    "ping and pong between": frame(b"one") + frame(b"ping!", opcode=9) + frame(b"", opcode=10)
    + frame(b"two") + frame(b"", opcode=9),
    "ping inside a fragmented message": frame(b"a", fin=False) + frame(b"p", opcode=9)
    + frame(b"b", opcode=0),
    "client close": GOOD + close(1000, b"bye"),
    "empty close": GOOD + close(),
    "close then more": close(1001) + frame(b"ignored"),
    "rsv bits": GOOD + frame(b"x", rsv=4) + frame(b"after"),
    "rsv on a ping": GOOD + frame(b"p", opcode=9, rsv=2),
    "reserved data opcode": GOOD + frame(b"x", opcode=3),
    "reserved control opcode": GOOD + frame(b"x", opcode=0xB),
    "unmasked": GOOD + frame(b"unmasked", mask=False),
    "stray continuation": GOOD + frame(b"cont", opcode=0),
    "new message inside a fragmented one": frame(b"a", fin=False) + frame(b"b"),
    "invalid utf-8": GOOD + frame(b"\xc3\x28"),
    "utf-8 surrogate": GOOD + frame(b"\xed\xa0\x80"),
    "utf-8 overlong": frame(b"\xc0\xaf"),
    "invalid utf-8 across fragments": frame(b"ok \xe2\x82", fin=False) + frame(b"(", opcode=0),
    "oversized ping": GOOD + frame(b"p" * 126, opcode=9),
    "fragmented ping": GOOD + frame(b"p", opcode=9, fin=False) + frame(b"q", opcode=0),
    "non-minimal 16-bit length": GOOD + frame(b"short", length16=True) + frame(b"after"),
    "non-minimal 16-bit length, binary": frame(b"\x01" * 125, opcode=2, length16=True),
    "non-minimal 64-bit length": GOOD + frame(b"short", length64=True),
    "non-minimal 64-bit length, medium": frame(b"m" * 200, opcode=2, length64=True),
    "close code 999": GOOD + close(999),
    "close code 1004": GOOD + close(1004),
    "close code 1005": GOOD + close(1005),
    "close code 1006": GOOD + close(1006),
    "close code 1015": GOOD + close(1015),
    "close code 2999": GOOD + close(2999),
    "close code 5000": GOOD + close(5000),
    "close code 0": close(0),
    "close code 3000": GOOD + close(3000, b"app"),
    "close code 4999": GOOD + close(4999),
    "close code 1012": close(1012),
    "close with a 1-byte payload": GOOD + frame(b"\x03", opcode=8),
    "close over 125 bytes": GOOD + close(1000, b"r" * 124),
    "fragmented close": GOOD + close(1000, fin=False),
    "unmasked close": GOOD + close(1000, mask=False),
    "close with rsv": GOOD + close(1000, rsv=1),
    "close reason not utf-8": GOOD + close(1000, b"\xff\xfe"),
    "close reason cut utf-8": GOOD + close(1000, "€".encode()[:2]),
}


@pytest.fixture(params=["compiled", "pure"])
def fast_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with fws's compiled frame parser and with the Python one."""
    import fws._wire.protocol

    if request.param == "compiled":
        if not framing.COMPILED:
            speedups()  # skips (fails under CI) saying what to install
        from fws import _speedups

        monkeypatch.setattr(fws._wire.protocol, "parse_frames", _speedups.parse_frames)
    else:
        monkeypatch.setattr(fws._wire.protocol, "parse_frames", framing.py_parse_frames)
    return str(request.param)


@pytest.mark.parametrize("name", list(STREAMS))
def test_every_split_of_every_stream(name: str, fast_parser: str) -> None:
    """
    Split anywhere, fws does what Autobahn does; and what the client gets
    does not depend on the split. Only whether the TCP connection closes
    right after a protocol error may: Autobahn finds a fault in a frame
    header twice when the header is cut (once per read), and the second time
    closes without waiting for the client's close frame.
    """
    stream = HANDSHAKE + STREAMS[name]
    reference = run(_autobahn, [stream])
    for chunks in splits(stream):
        autobahn, fws = both(chunks)
        assert fws.same_as(autobahn), (name, [len(c) for c in chunks], autobahn, fws)
        assert (fws.delivered, fws.wire) == (reference.delivered, reference.wire), \
            (name, [len(c) for c in chunks], reference, fws)


@pytest.mark.parametrize("name", list(STREAMS))
def test_byte_by_byte(name: str, fast_parser: str) -> None:
    stream = HANDSHAKE + STREAMS[name]
    chunks = [bytes([b]) for b in stream]
    autobahn, fws = both(chunks)
    assert fws.same_as(autobahn), (autobahn, fws)


_pieces = st.sampled_from(list(STREAMS.values()))


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(_pieces, min_size=1, max_size=4), cuts=st.lists(st.integers(1, 2000),
                                                                        max_size=8))
def test_concatenated_streams_at_random_cuts(parts: list[bytes], cuts: list[int]) -> None:
    stream = HANDSHAKE + b"".join(parts)
    points = sorted({c % len(stream) for c in cuts} - {0})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    autobahn, fws = both(chunks)
    assert fws.same_as(autobahn), (autobahn, fws)


# --- the expectations themselves, not only the agreement ------------------------------------


@pytest.mark.parametrize(("name", "code"), [
    ("non-minimal 16-bit length", 1002), ("non-minimal 64-bit length", 1002),
    ("non-minimal 16-bit length, binary", 1002), ("non-minimal 64-bit length, medium", 1002),
])
def test_frames_that_fail_the_connection(name: str, code: int) -> None:
    """Whichever parser reads the frame: the close frame, then the wait for the client's."""
    for chunks in ([HANDSHAKE + STREAMS[name]], [HANDSHAKE, STREAMS[name]]):
        outcome = run(_fws, chunks)
        assert outcome.close_code == code, outcome
        assert not outcome.disconnected


BAD_CLOSES = [
    ("close code 999", 1002), ("close code 1004", 1002), ("close code 1005", 1002),
    ("close code 1006", 1002), ("close code 1015", 1002), ("close code 5000", 1002),
    ("close code 2999", 1002), ("close code 0", 1002),
    ("close with a 1-byte payload", 1002), ("close over 125 bytes", 1002),
    ("fragmented close", 1002), ("unmasked close", 1002), ("close with rsv", 1002),
    ("close reason not utf-8", 1007), ("close reason cut utf-8", 1007),
]


@pytest.mark.parametrize(("name", "code"), BAD_CLOSES + [
    # A good close is answered with 1000, whatever its code (Autobahn's echoCloseCodeReason off).
    ("close code 3000", 1000), ("close code 1012", 1000), ("close code 4999", 1000),
    ("client close", 1000), ("empty close", 1000),
])
def test_close_frames_are_answered_then_the_connection_closed(name: str, code: int) -> None:
    """
    A bad close frame gets 1002 (1007 for a reason that is not UTF-8, as
    Autobahn's own server and its TestSuite's case 7.5.1 have it), a good one
    its echo; then the TCP connection closes, without a reset, which would
    throw the close frame away before it is sent (Autobahn resets after a bad
    one: it takes the bad frame for the answer to the close it just sent).
    """
    for chunks in ([HANDSHAKE + STREAMS[name]], [HANDSHAKE, STREAMS[name]]):
        outcome = run(_fws, chunks)
        assert outcome.close_code == code, outcome
        assert outcome.disconnected and not outcome.aborted, outcome


def test_1014_is_a_valid_close_code() -> None:
    """
    1014 (bad gateway, registered with IANA) is answered like any good code;
    Autobahn refuses it with 1002, the one place fws answers differently on
    purpose. The code reaches the disconnect chain as the client's.
    """
    stream = GOOD + close(1014, b"upstream")
    for chunks in ([HANDSHAKE + stream], [HANDSHAKE, stream]):
        outcome = run(_fws, chunks)
        assert outcome.frames[-1] == (8, struct.pack("!H", 1000)), outcome
        assert outcome.disconnected and not outcome.aborted
    assert run(_autobahn, [HANDSHAKE + stream]).close_code == 1002
    clock = Clock()
    proto, _ = _fws(clock)
    proto.makeConnection(_Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)))
    proto.dataReceived(HANDSHAKE + stream)
    assert (proto.remoteCloseCode, proto.remoteCloseReason) == (1014, "upstream")
    proto.connectionLost(Failure(ConnectionDone()))


# --- keepalive ---------------------------------------------------------------------------------


def _keepalive(make: Any) -> tuple[list[int], bool, list[tuple[bytes, bool]]]:
    """
    A client that stops answering pings but keeps sending a message every 4 s,
    each in its own read: what was pinged, whether it was dropped, what arrived.
    (Defaults: a ping after 30 s of silence, the connection dropped 10 s later
    without a pong.)
    """
    clock = Clock()
    proto, delivered = make(clock)
    transport = _Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    try:
        proto.dataReceived(HANDSHAKE)
        clock.advance(30.5)  # the first ping goes out
        for i in range(30):  # two minutes of messages, no pong
            proto.dataReceived(frame(b"m%d" % i))
            clock.advance(0)
            clock.advance(4)
            if transport.disconnecting:
                break
        wire = transport.value().partition(b"\r\n\r\n")[2]
        pings = [i for i, (opcode, _) in enumerate(_server_frames(wire)) if opcode == 9]
        return pings, bool(transport.disconnecting), delivered
    finally:
        if transport.connected:
            proto.connectionLost(Failure(ConnectionDone()))
        clock.advance(100)


def test_data_frames_restart_the_keepalive_as_with_autobahn(fast_parser: str) -> None:
    """
    Autobahn takes a data frame for the missing pong (``autoPingRestartOnAnyTraffic``)
    and pings again 30 s later; fws's fast path, which reads those frames, must too.
    """
    autobahn, fws = _keepalive(_autobahn), _keepalive(_fws)
    assert fws == autobahn
    pings, dropped, delivered = fws
    assert not dropped and len(delivered) == 30 and len(pings) == 4  # every 30 s
