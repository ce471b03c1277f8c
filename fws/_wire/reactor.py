"""
The reactor ``fws_server`` runs on: Twisted's epoll reactor, minus one wrapper.

For every readable or writable socket, Twisted's ``EPollReactor.doPoll`` runs
the event inside ``log.callWithLogger(selectable, ...)``, which pushes a
logging context (three more Python calls and a dict) so that *legacy*
``twisted.python.log`` messages emitted meanwhile carry the connection's log
prefix as their ``system``. fws logs with ``twisted.logger``, whose events
name their source themselves; on the echo path (one read and one write per
message) that wrapper was 21 % of the server's time. :class:`FwsEPollReactor`
dispatches directly. ``_doReadOrWrite`` still catches and logs whatever a
protocol raises, exactly as before.

The commonest event of all, "a TCP connection has data", then still costs
``_doReadOrWrite`` (disconnect and fileno checks), ``Connection.doRead`` and
``Connection._dataReceived`` around the ``recv``: three Python calls per read,
16 % of the echo path. For that event alone (``EPOLLIN`` and nothing else, on a
plain ``tcp.Server`` or fws's :class:`~fws._wire.transport.LeanServer`),
``doPoll`` does what those three do inline, with the same outcomes:
``EWOULDBLOCK`` ignored, other ``recv`` errors a lost connection, an empty
read a clean one, anything the protocol raises logged and the connection
dropped. ``tests/test_fast_path.py`` pins the Twisted
source it mirrors.

``fws_server`` installs it when nothing has installed a reactor yet and the
platform has epoll; under twistd, choose it with ``twistd --reactor fws-epoll``.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.logger import Logger

_log = Logger()


def _reactor_class() -> type:
    from select import EPOLLIN

    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
    from twisted.internet.posixbase import _NO_FILEDESC
    from twisted.internet.tcp import Server
    from twisted.python import log

    from fws._wire.transport import LeanServer

    EWOULDBLOCK = errno.EWOULDBLOCK

    class FwsEPollReactor(EPollReactor):
        """
        ``EPollReactor`` whose ``doPoll`` calls ``_doReadOrWrite`` directly, and
        runs ``fws_after_io`` callables once the events of one poll are handled.

        The second is how fws flushes what a poll's events queued for sending
        (``WireFactory._flush``) without a ``callLater(0)`` per reactor
        turn: a DelayedCall, a heap push and a pass through runUntilCurrent.
        """

        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            #: True while doPoll dispatches events: fws_after_io will run after them.
            self.fws_dispatching = False
            self.fws_after_io: list[Any] = []

        def doPoll(self, timeout: float | None) -> None:
            if timeout is None:
                timeout = -1  # wait indefinitely
            try:
                events = self._poller.poll(timeout, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            dispatch = self._doReadOrWrite
            self.fws_dispatching = True
            try:
                for fd, event in events:
                    selectable = selectables.get(fd)
                    if selectable is None:
                        continue
                    kind = selectable.__class__
                    if event != EPOLLIN or (kind is not LeanServer and kind is not Server):
                        dispatch(selectable, fd, event)  # type: ignore[no-untyped-call]
                        continue
                    # Connection.doRead and _dataReceived, as _doReadOrWrite runs them.
                    try:
                        data = selectable.socket.recv(selectable.bufferSize)
                    except OSError as se:
                        if se.args[0] != EWOULDBLOCK:
                            self._read_failed(selectable)
                        continue
                    if not data:
                        self._disconnectSelectable(selectable, CONNECTION_DONE, True)  # type: ignore[no-untyped-call]
                        continue
                    try:
                        selectable.protocol.dataReceived(data)
                    except BaseException:
                        why = sys.exc_info()[1]
                        log.err()
                        self._disconnectSelectable(selectable, why, True)  # type: ignore[no-untyped-call]
            finally:
                self.fws_dispatching = False
            after = self.fws_after_io
            if after:
                self.fws_after_io = []
                for call in after:
                    try:
                        call()
                    except Exception:
                        _log.failure("unhandled error after I/O in {call!r}", call=call)

        doIteration = doPoll

        def _read_failed(self, selectable: Any) -> None:
            """``recv`` failed: a closed descriptor or a lost connection, as Twisted tells them."""
            if selectable.fileno() == -1:
                self._disconnectSelectable(selectable, _NO_FILEDESC, False)  # type: ignore[no-untyped-call]
            else:
                self._disconnectSelectable(selectable, CONNECTION_LOST, True)  # type: ignore[no-untyped-call]

    return FwsEPollReactor


def install() -> Any:
    """Install :class:`FwsEPollReactor` as the global reactor and return it."""
    from twisted.internet.main import installReactor

    reactor = _reactor_class()()
    installReactor(reactor)
    return reactor


def install_if_possible() -> bool:
    """
    Install the fws reactor unless a reactor is installed already (an embedding
    application's, or one a filter module imported) or epoll is missing.
    """
    import sys

    if "twisted.internet.reactor" in sys.modules:
        return False
    try:
        import select

        if not hasattr(select, "epoll"):
            return False
        install()
    except Exception:  # never fail a start over an optimisation: Twisted picks its default
        return False
    return True


__all__ = ["install", "install_if_possible"]
