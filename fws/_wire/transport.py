"""
The TCP transport of fws's connections: Twisted's ``tcp.Server``, minus three
strings per connection.

Twisted's ``tcp.Server.__init__`` formats its log prefix (``logstr``) and its
``repr`` (``repstr``) for every accepted connection and keeps the socket's
bound ``fileno`` method: 230 bytes per idle connection, read only when
something logs through the legacy ``twisted.python.log`` context (which
:class:`fws._wire.reactor.FwsEPollReactor` no longer pushes), prints the
transport, or adds and removes it from the reactor. :class:`LeanServer`
computes each when asked, from what the transport holds anyway.

:func:`lean_port` makes a listening TCP port build :class:`LeanServer`
transports; ports of any other kind (TLS wraps the protocol, not the
transport; unix sockets have their own class) are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import abstract, tcp


class LeanServer(tcp.Server):
    """
    ``tcp.Server`` whose ``logstr``, ``repstr`` and ``fileno`` are computed when read.

    Never ``self.__dict__`` here: Python keeps an instance's attributes without
    a dict object until something asks for one (64 bytes more, for good).
    """

    @property
    def logstr(self) -> str:
        protocol = getattr(self, "protocol", None)  # gone after connectionLost
        prefix = self._getLogPrefix(protocol) if protocol is not None else "Connection"
        return f"{prefix},{self.sessionno},{self.hostname}"

    @logstr.setter
    def logstr(self, value: str) -> None:
        return None  # Server.__init__'s, computed again when read

    @property
    def repstr(self) -> str:
        server = self.server
        if server is not None:
            port = server._realPortNumber
        else:  # adopted with _fromConnectedSocket: the socket's own port
            try:
                port = self.socket.getsockname()[1]
            except (AttributeError, OSError):  # lost: no socket any more
                port = "?"
        protocol = getattr(self, "protocol", None)
        name = protocol.__class__.__name__ if protocol is not None else "Connection"
        return f"<{name} #{self.sessionno} on {port}>"

    @repstr.setter
    def repstr(self, value: str) -> None:
        return None

    @property
    def fileno(self) -> Callable[[], int]:
        skt = getattr(self, "socket", None)
        if skt is None:  # lost: FileDescriptor's, which says -1
            return abstract.FileDescriptor.fileno.__get__(self)  # type: ignore[no-any-return]
        return skt.fileno  # type: ignore[no-any-return]

    @fileno.setter
    def fileno(self, value: Callable[[], int]) -> None:
        return None  # Connection.__init__'s ``skt.fileno``: the property gives the same

    @fileno.deleter
    def fileno(self) -> None:
        return None  # Connection.connectionLost's, with the socket: see the getter


#: The transport classes fws's fast paths treat as plain TCP (exact classes:
#: a subclass might buffer or write differently).
PLAIN_TCP: frozenset[type] = frozenset({tcp.Server, LeanServer})


def lean_port(port: Any) -> None:
    """Make ``port`` (a listening port, of any kind) build :class:`LeanServer` transports if it is TCP."""
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = LeanServer
