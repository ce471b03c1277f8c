"""
What a connection sends arrives in the order it was sent, every frame whole.

fws has two ways out for a connection's frames: its own (a lane's queue,
flushed at the end of the reactor turn, straight to the socket when the lane
is ``ok``) and Autobahn's (``sendData`` into the transport, and Autobahn's
``send_queue`` for "sync" and chopped writes, written a piece per reactor
turn). Issue 14: a frame of the first kind overtook queued ones of the second
(sent a, b, c; received a, c, b), or landed inside a chopped frame.

The state machine drives one server connection over a real TCP socket pair on
a private fws reactor (the tests turn it by hand) and parses what the client
socket received; the other tests do the same with a real Autobahn client.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
import zlib
from typing import Any

import pytest
import pytest_twisted
import txaio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from fws._wire.framing import encode_frame
from tests.helpers import Server
from tests.rawws import handshake_request

#: A message big enough to fill the small socket buffers and Twisted's 64 KiB
#: one, so that the transport pauses the lane (the client is not reading).
STALL = 160_000
#: Incompressible, so that it fills the buffers with compression too.
STALL_PAYLOAD = random.Random(14).randbytes(STALL)

payloads = st.binary(max_size=300)
texts = st.text(max_size=60)


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """
    Server-to-client frames in ``data`` as ``(first byte, payload)``, and the
    incomplete rest. Fails on a masked frame (no server sends one).
    """
    frames = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, f"masked frame from the server at {pos}"
        n, head = b1 & 0x7F, 2
        if n == 126:
            if len(data) - pos < 4:
                break
            n, head = struct.unpack_from("!H", data, pos + 2)[0], 4
        elif n == 127:
            if len(data) - pos < 10:
                break
            n, head = struct.unpack_from("!Q", data, pos + 2)[0], 10
        if len(data) - pos < head + n:
            break
        frames.append((b0, data[pos + head:pos + head + n]))
        pos += head + n
    return frames, data[pos:]


def messages(frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """``(opcode, payload)`` per frame, compressed ones inflated (permessage-deflate)."""
    inflate = zlib.decompressobj(-15)
    out = []
    for b0, payload in frames:
        assert b0 & 0x80, "fws sends every message in one frame"
        opcode, rsv1 = b0 & 0x0F, b0 & 0x40
        assert not b0 & 0x30
        if rsv1:
            payload = inflate.decompress(payload + b"\x00\x00\xff\xff")
        out.append((opcode, payload))
    return out


class Wire:
    """
    One fws connection on a real ``tcp.Server`` transport whose client end is
    a plain socket, on a private fws reactor turned by :meth:`turn`.
    """

    def __init__(self, compressed: bool) -> None:
        from fws._wire.reactor import _reactor_class

        self.reactor = _reactor_class()()
        self._txaio_loop = txaio.config.loop
        txaio.config.loop = self.reactor  # Autobahn's send_queue turns this reactor too
        try:
            self._open(compressed)
        except BaseException:
            txaio.config.loop = self._txaio_loop
            raise

    def _open(self, compressed: bool) -> None:
        from twisted.internet import tcp

        argv = ["-f", "echo", "--log-level", "warn", "--max-send-buffer", str(64 << 20)]
        self.server = Server.from_argv(self.reactor, *(argv + ["--compression"] * compressed))
        self.factory = self.server.factory
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            self.client = socket.socket()
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.client.connect(("127.0.0.1", port))
            accepted, address = listener.accept()
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        accepted.setblocking(False)
        self.client.setblocking(False)
        from twisted.internet.address import IPv4Address

        peer = IPv4Address("TCP", *address)
        self.conn = self.factory.buildProtocol(peer)
        self.transport = tcp.Server(accepted, self.conn, address, None, 1, self.reactor)  # type: ignore[arg-type]
        self.transport.repstr = "<wire>"
        self.conn.makeConnection(self.transport)
        extra = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if compressed else ""
        self.client.sendall(handshake_request(port, extra=extra))
        self.reading = True
        self.received = b""
        self.eof = False
        for _ in range(200):
            self.turn()
            if b"\r\n\r\n" in self.received:
                break
        head, _, self.received = self.received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert self.conn.state == self.conn.STATE_OPEN
        assert (self.conn._perMessageCompress is not None) == compressed

    def turn(self) -> None:
        """One reactor turn, then what the client can read (while it reads)."""
        self.reactor.doPoll(0)
        self.reactor.runUntilCurrent()
        if self.reading:
            self.read()

    def read(self) -> None:
        while not self.eof:
            try:
                chunk = self.client.recv(1 << 20)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                self.eof = True  # a reset
                return
            if not chunk:
                self.eof = True
                return
            self.received += chunk

    def busy(self) -> bool:
        """Whether the server still holds output for the client, anywhere."""
        conn, transport = self.conn, self.transport
        return bool(conn._lane.out or conn.send_queue or conn.triggered
                    or self.factory._dirty or getattr(transport, "dataBuffer", b"")
                    or getattr(transport, "_tempDataBuffer", None))

    def settle(self) -> None:
        self.reading = True
        quiet = 0
        for _ in range(2000):
            before = len(self.received)
            self.turn()
            if self.busy() or len(self.received) != before:
                quiet = 0
            else:
                quiet += 1
                if quiet >= 3:
                    return
        raise AssertionError("the server never finished sending")

    def close(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        try:
            if self.transport.connected:
                self.transport.stopReading()
                self.transport.stopWriting()
                self.transport.connectionLost(Failure(ConnectionDone()))
            self.client.close()
            for call in self.reactor.getDelayedCalls():
                call.cancel()
            self.reactor.waker.connectionLost(None)
            self.reactor._poller.close()
        finally:
            txaio.config.loop = self._txaio_loop


@settings(max_examples=200, stateful_step_count=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
class OutboundOrder(RuleBasedStateMachine):
    """
    Every way out, in any order: the client gets exactly the frames sent while
    the connection was open, in call order, each whole (after a drop, a prefix
    of them, the last maybe cut short).
    """

    wire: Wire

    def __init__(self) -> None:
        super().__init__()
        self.expected: list[tuple[int, bytes]] = []
        self.closed = False  # a close frame was sent: nothing more may follow it
        self.dropped = False

    @initialize(compressed=st.booleans())
    def connect(self, compressed: bool) -> None:
        self.wire = Wire(compressed)

    @property
    def sending(self) -> bool:
        return not self.closed and not self.dropped

    def _message(self, payload: bytes, binary: bool) -> None:
        if self.sending:
            self.expected.append((2 if binary else 1, payload))

    @rule(payload=payloads)
    def send_binary(self, payload: bytes) -> None:
        self.wire.conn.sendMessage(payload, True)
        self._message(payload, True)

    @rule(text=texts)
    def send_text(self, text: str) -> None:
        self.wire.conn.sendMessage(text)
        self._message(text.encode(), False)

    @rule(text=texts)
    def broadcast(self, text: str) -> None:
        self.wire.factory.broadcast(text)
        self._message(text.encode(), False)

    @rule(payload=payloads, binary=st.booleans())
    def sync_send(self, payload: bytes, binary: bool) -> None:
        if not binary:
            payload = payload.decode("latin-1").encode()  # valid UTF-8
        self.wire.conn.sendMessage(payload, binary, sync=True)
        self._message(payload, binary)

    @precondition(lambda self: self.sending)
    @rule(payload=payloads, chopsize=st.integers(1, 50))
    def chopped_send(self, payload: bytes, chopsize: int) -> None:
        # A raw frame: Autobahn's sendData writes it whatever the state, so only while open.
        self.wire.conn.sendData(encode_frame(payload, True), chopsize=chopsize)
        self._message(payload, True)

    @rule(payload=st.binary(max_size=125))
    def ping(self, payload: bytes) -> None:
        self.wire.conn.sendPing(payload)
        if self.sending:
            self.expected.append((9, payload))

    @precondition(lambda self: self.wire.reading and self.sending)
    @rule()
    def pause(self) -> None:
        """The client stops reading and a big message fills the buffers: the transport pauses the lane."""
        self.wire.reading = False
        self.wire.conn.sendMessage(STALL_PAYLOAD, True)
        self._message(STALL_PAYLOAD, True)
        for _ in range(2000):  # what Autobahn's send_queue holds goes a piece per turn first
            self.wire.turn()
            if self.wire.conn._lane.blocked:
                break
        assert self.wire.conn._lane.blocked

    @rule()
    def resume(self) -> None:
        self.wire.reading = True
        for _ in range(500):
            self.wire.turn()
            if not self.wire.conn._lane.blocked:
                break

    @rule(turns=st.integers(1, 3))
    def turn(self, turns: int) -> None:
        for _ in range(turns):
            self.wire.turn()

    @rule()
    def close(self) -> None:
        self.wire.conn.close(1000, "bye")
        if self.sending:
            self.expected.append((8, struct.pack("!H", 1000) + b"bye"))
            self.closed = True

    @rule()
    def drop(self) -> None:
        self.wire.conn.dropConnection(abort=False)
        self.dropped = True

    @invariant()
    def in_order_so_far(self) -> None:
        wire = getattr(self, "wire", None)
        if wire is None:
            return
        frames, _ = parse_frames(wire.received)
        got = messages(frames)
        assert got == self.expected[:len(got)]

    def teardown(self) -> None:
        wire = getattr(self, "wire", None)
        if wire is None:
            return
        try:
            wire.settle()
            frames, rest = parse_frames(wire.received)
            got = messages(frames)
            if self.dropped:
                # Autobahn skips what its send_queue still held: a prefix arrives.
                assert got == self.expected[:len(got)]
                assert len(rest) < 2 + 8 + STALL
            else:
                assert rest == b""
                assert got == self.expected
        finally:
            wire.close()


TestOutboundOrder = OutboundOrder.TestCase


# --- the same over real sockets, with a real Autobahn client -----------------------------------


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("compression", [False, True])
async def test_sync_and_chopped_writes_do_not_let_later_frames_overtake(
        reactor: Any, compression: bool) -> None:
    """
    sent a, b (sync), c: received a, b, c; a chopped frame is not cut into
    by the frames sent after it (the client would fail the connection).
    """
    from autobahn.websocket.compress import (
        PerMessageDeflateOffer,
        PerMessageDeflateResponseAccept,
    )

    argv = ["-f", "echo", "--compression"] if compression else ["-f", "echo"]
    server = Server.from_argv(reactor, *argv).start()
    try:
        options: dict[str, Any] = {}
        if compression:
            options = {"perMessageCompressionOffers": [PerMessageDeflateOffer()],
                       "perMessageCompressionAccept": PerMessageDeflateResponseAccept}
        client = await server.connect(**options)
        [conn] = server.factory.users.values()
        factory = server.factory
        conn.sendMessage("warm")
        assert await client.recv() == (b"warm", False)  # the lane is ok now (uncompressed)
        expected: list[str] = []

        def send(text: str, **how: Any) -> None:
            conn.sendMessage(text, **how)
            expected.append(text)

        for round_ in range(3):
            send(f"a{round_}")
            send(f"b{round_}", sync=True)
            send(f"b{round_}'", sync=True)
            send(f"c{round_}")
            factory.broadcast(f"d{round_}")
            expected.append(f"d{round_}")
            chopped = f"e{round_}" + "." * 300
            conn.sendData(encode_frame(chopped.encode(), False), chopsize=7)
            expected.append(chopped)
            send(f"f{round_}")
            conn.sendPing(f"p{round_}".encode())
            factory.broadcast(f"g{round_}")
            expected.append(f"g{round_}")
            send(f"h{round_}", sync=True)
            send(f"i{round_}")
        got = [(await client.recv())[0].decode() for _ in expected]
        assert got == expected
        pings = [payload for kind, payload in client.factory.events if kind == "ping"]
        assert pings == [b"p0", b"p1", b"p2"]
        events = [payload.decode() for _, payload in client.factory.events]
        for round_ in range(3):  # each ping between f and g of its round
            at = events.index(f"p{round_}")
            assert events[at - 1] == f"f{round_}" and events[at + 1] == f"g{round_}"
        await client.silent(0.05)
    finally:
        await server.stop()
