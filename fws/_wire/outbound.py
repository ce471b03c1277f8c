"""
A connection's way out: its :class:`Lane`, the one object that holds its
outbound state, and what the wire asks a transport about what it still holds.

fws has two ways out for a connection's frames: its own (the lane's queue,
flushed at the end of the reactor turn by :meth:`fws._wire.factory.WireFactory.flush`,
straight to the socket when the lane is ``ok``) and Autobahn's (``sendData``
into the transport, and Autobahn's ``send_queue`` for "sync" and chopped
writes). The lane keeps the two in call order and knows, from the
transport's producer calls, when the client has stopped reading.
"""

from __future__ import annotations

import struct
import sys
from typing import TYPE_CHECKING, Any, Protocol

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from fws._wire.transport import PLAIN_TCP
from fws.limits import CLOSE_SLOW_CONSUMER

try:
    import fcntl
    import termios
except ImportError:  # not a POSIX system: no kernel queue to look at
    fcntl = termios = None  # type: ignore[assignment]


if TYPE_CHECKING:
    from fws.limits import Limits
    from fws.metrics import Stats


class _Limited(Protocol):
    limits: Limits
    stats: Stats


class LaneOwner(Protocol):
    """
    What a lane needs of its connection (:class:`fws._wire.protocol.WireProtocol`
    is one): its transport and Autobahn's state that decide whether the lane
    may write directly, and the close and log line of the slow-consumer limit.
    """

    id: str
    state: int
    STATE_OPEN: int
    transport: Any
    #: Autobahn's queue of "sync" and chopped writes.
    send_queue: Any
    _direct: bool
    _perMessageCompress: Any
    triggered: bool
    _log: Logger

    @property
    def factory(self) -> _Limited: ...

    def sendPreparedMessage(self, preparedMsg: Any) -> None: ...
    def close(self, code: int = 1000, reason: str | None = None, *, drain: bool = False) -> None: ...
    def writes_resumed(self) -> None: ...


@implementer(IPushProducer)
class Lane:
    """
    A connection's outbound state: its queued frames, its socket, whether
    the flush may send to that socket without asking anything else (``ok``),
    and whether its client keeps up (``blocked``, ``unsent``, ``full``).
    It is also the producer the transport pauses when the client stops
    reading, which is one of the things that clear ``ok``.

    A broadcast to thousands touches each recipient's lane instead of the
    connection and its transport: with the kernel's send in between, every
    object touched per delivery is a cache miss, and touching the protocol's
    and the transport's attributes cost more than all the rest of fws's own
    work (benchmarks/cpu_per_delivery.py: 2.2 us of user time per delivery,
    against 0.6 us for a loop over sockets alone).

    ``ok`` holds only while all of these do: the connection is open, without
    compression, not paused by its transport, not over ``--max-send-buffer``,
    and nothing has been written through the transport since its buffer was
    last seen empty. Every change away from that clears it where it happens
    (:meth:`autobahn_writes`, the transport fallback in :meth:`write_out`,
    :meth:`pauseProducing`, the send-buffer limit, a drop, the connection's
    loss, leaving the users); only :meth:`write_out`, having checked them
    all, sets it again. Nor does it hold while Autobahn's ``send_queue`` (its
    "sync" and chopped writes) holds anything: frames queued meanwhile wait
    behind what it holds (``write_out`` puts them in that queue), so the wire
    order is the order of the calls.

    A lost connection's lane lets go of it (:meth:`close`), so that the two
    make no reference cycle: the lane may still be held (by a broadcast's
    recipients, the transport), and then sees a connection that is closed.
    """

    __slots__ = ("blocked", "conn", "dropped", "full", "headed", "ok", "out", "slow", "sock",
                 "unsent")

    def __init__(self, conn: LaneOwner) -> None:
        self.conn = conn
        self.sock: Any = None
        #: Frames waiting for this reactor turn's flush: one frame as bytes, several as a list.
        self.out: bytes | list[bytes] | None = None
        self.ok = False
        #: The transport has paused this producer: the client is not reading.
        self.blocked = False
        #: Bytes written while ``blocked`` (what ``--max-send-buffer`` bounds).
        self.unsent = 0
        #: Over ``--max-send-buffer`` with ``--slow-consumer-action drop``:
        #: messages to the client are dropped (``dropped`` counts them).
        self.full = False
        self.dropped = 0
        #: Over ``--max-send-buffer`` and being closed: nothing more is counted.
        self.slow = False
        #: The client takes group messages with a header (the ``fws.v1``
        #: subprotocol): :meth:`fws._wire.factory.WireFactory.send_split` sends it
        #: the headed frame, everyone else the plain one.
        self.headed = False

    def write_out(self) -> None:
        """
        Write the queued frames, straight to the socket when nothing else is
        waiting in the transport (one ``send``, no poller registration), and
        through the transport otherwise (or for the part the socket did not take).

        While Autobahn's ``send_queue`` holds anything (a "sync" or chopped
        write, which it hands to the transport a piece per reactor turn), the
        frames join that queue instead: written now, they would overtake it,
        or land inside a chopped frame.
        """
        out = self.out
        if not out:
            return
        self.out = None
        self.write(out if out.__class__ is bytes else b"".join(out))  # type: ignore[arg-type]

    def write(self, data: bytes) -> None:
        """
        Write ``data`` now, after what was queued: the way :meth:`write_out`
        writes (also for fws's own 101 response, which so costs one ``send``
        instead of a poller registration, a reactor turn and its removal).

        This is the one place where a lane becomes ``ok`` (the flush then
        sends for it without coming here): after a direct send that took
        everything, on an open connection that nothing else can stand in the
        way of.
        """
        if self.out:
            self.write_out()
        conn = self.conn
        transport = conn.transport
        if transport is None:
            self.ok = False
            return
        if self.blocked:
            self.account(len(data))
        queue = conn.send_queue
        if queue:
            self.ok = False
            queue.append((data, False))
            return
        if conn._direct and not transport.dataBuffer and not transport._tempDataBuffer \
                and transport.connected and not transport._writeDisconnected:
            try:
                sent = transport.socket.send(data)
            except OSError:  # EAGAIN, or an error Twisted will find and report itself
                sent = 0
            if sent == len(data):
                if not self.ok and conn.state == conn.STATE_OPEN and not self.blocked \
                        and not self.full and conn._perMessageCompress is None \
                        and not transport.disconnecting and not conn.triggered:
                    self.sock = transport.socket
                    self.ok = True
                return
            data = data[sent:]
        self.ok = False
        transport.write(data)

    def autobahn_writes(self, size: int) -> None:
        """
        Autobahn is about to write ``size`` bytes itself (handshake, control
        frames, compressed messages): the frames queued so far go first, so
        the order on the wire is the order of the calls, and what it writes
        is counted like them. It waits in the transport's buffer, so the lane
        is no longer ``ok`` until :meth:`write_out` has seen that buffer empty.
        """
        if self.out:
            self.write_out()
        self.ok = False
        if self.blocked:
            self.account(size)

    def account(self, size: int) -> None:
        """
        Count ``size`` bytes written while the transport says the client is not
        reading, and act once more than ``--max-send-buffer`` are waiting.
        """
        if self.slow:
            return
        self.unsent += size
        if self.unsent > self.conn.factory.limits.max_send_buffer:
            self._over_send_buffer()

    def _over_send_buffer(self) -> None:
        self.ok = False
        conn = self.conn
        factory = conn.factory
        if factory.limits.slow_consumer_action == "drop":
            if not self.full:
                self.full = True
                factory.stats.slow_consumer_drops += 1
                conn._log.info("connection {conn_id} is {unsent} bytes behind; dropping messages "
                               "to it until it catches up", conn_id=conn.id, unsent=self.unsent)
            return
        self.slow = True
        factory.stats.slow_consumer_closes += 1
        conn._log.info("closing slow consumer {conn_id}: {unsent} bytes unsent", conn_id=conn.id,
                       unsent=self.unsent)
        conn.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    # --- IPushProducer: the transport's word on whether the client reads -------------------

    def pauseProducing(self) -> None:
        self.ok = False
        self.blocked = True

    def resumeProducing(self) -> None:
        """Twisted's buffer is empty again: the client caught up."""
        self.blocked = False
        self.unsent = 0
        if self.full:
            self.full = False
            conn = self.conn
            conn._log.info("connection {conn_id} caught up; {dropped} messages to it were dropped",
                           conn_id=conn.id, dropped=self.dropped)
            self.dropped = 0
        self.conn.writes_resumed()

    def stopProducing(self) -> None:
        self.ok = False
        self.blocked = True

    def close(self) -> None:
        """The connection is lost: nothing more is written, and the lane forgets it."""
        self.ok = False
        self.blocked = True
        self.full = False
        self.out = None
        self.sock = None
        self.conn = _GONE  # type: ignore[assignment]


class _Gone:
    """
    What a lost connection's :class:`Lane` points to instead of it: closed,
    so the broadcast loop and the flush skip it as they skip any closed one.
    """

    state = WebSocketProtocol.STATE_CLOSED
    transport = None
    _perMessageCompress = None

    def writes_resumed(self) -> None:
        return None


_GONE = _Gone()


def can_write_directly(transport: Any) -> bool:
    """
    Whether fws may ``send()`` on this transport's socket itself when the
    transport has nothing buffered: plain TCP connections of the Twisted
    version these attributes are pinned for (``tests/test_fast_path.py``);
    TLS, unix sockets and anything unknown always go through ``write``.
    """
    return (type(transport) in PLAIN_TCP and isinstance(getattr(transport, "dataBuffer", None), bytes)
            and isinstance(getattr(transport, "_tempDataBuffer", None), list)
            and hasattr(transport, "_writeDisconnected") and hasattr(transport, "socket")
            and hasattr(transport, "disconnecting"))


#: Linux's SIOCOUTQ (the same number as TIOCOUTQ): bytes of a socket's send
#: queue its peer has not acknowledged yet.
_SIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if sys.platform.startswith("linux") \
    else None


def unsent_bytes(transport: Any) -> tuple[int, int]:
    """
    ``(buffered, in_kernel)``: what the transport still buffers for its peer,
    and what the kernel holds that the peer has not acknowledged.

    An abort (TCP reset) discards both. A TLS transport wraps the TCP one:
    both are looked at. The kernel's part is known on Linux only (0 elsewhere,
    and for sockets it cannot be asked about).
    """
    buffered = 0
    for _ in range(3):
        data = getattr(transport, "dataBuffer", None)
        if isinstance(data, bytes):
            buffered += (len(data) - getattr(transport, "offset", 0)
                         + getattr(transport, "_tempDataLen", 0))
        sock = getattr(transport, "socket", None)
        if sock is not None:
            return buffered, _kernel_unsent(sock)
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return buffered, 0


def _kernel_unsent(sock: Any) -> int:
    if _SIOCOUTQ is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0])
    except (OSError, ValueError, TypeError):  # closed meanwhile, or not a socket it knows
        return 0
