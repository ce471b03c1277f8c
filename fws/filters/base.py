"""
The chain base classes a filter subclasses.

A filter is a class that subclasses exactly one of the five chain base
classes below and defines ``filter(web_socket_instance, data)`` as a
classmethod or staticmethod (the 2014 project's style; a plain method works
too, on an instance fws creates once).  Which base class it subclasses decides
which event it sees; the order of ``-f`` modules, then definition order inside
a module, decides when it runs.

``filter`` may return:

* ``None`` (or any other plain value): the next filter runs;
* :data:`STOP`: the rest of this event's chain is skipped;
* a ``Deferred`` or a coroutine: the next filter waits for it (and, for the
  message chain, so does the connection's next message). If it fires with
  :data:`STOP`, the chain stops there.

Raising :class:`StopChain` is the same as returning :data:`STOP`; a connect
filter raises :class:`Refuse` to answer the handshake with an HTTP error.
"""

from __future__ import annotations

from typing import Any, ClassVar


class _Stop:
    """The type of :data:`STOP`; there is only ever one instance."""

    _instance: ClassVar[_Stop | None] = None

    def __new__(cls) -> _Stop:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "fws.STOP"

    def __reduce__(self) -> str:
        return "STOP"


STOP: Any = _Stop()
"""Return this from a filter to skip the rest of the event's chain."""


class StopChain(Exception):
    """Raise this from a filter to skip the rest of the event's chain."""


class Refuse(Exception):
    """
    Raised by a connect filter to refuse the opening handshake.

    The client gets an HTTP response with ``status`` instead of the upgrade, and
    no other chain ever sees the connection.

    :param status: HTTP status code, e.g. 401, 403, 404 or 429.
    :param reason: Short text sent as the HTTP reason phrase.
    :param detail: More for the log's one line about the refusal, never sent
        to the client (why a token was invalid, say).
    """

    def __init__(self, status: int = 403, reason: str | None = None, *,
                 detail: str | None = None) -> None:
        if not 400 <= int(status) <= 599:
            raise ValueError(f"Refuse status must be an HTTP error (4xx/5xx), not {status}")
        super().__init__(status, reason)
        self.status = int(status)
        self.reason = reason
        self.detail = detail


class WebSocketFilter:
    """
    Common base of the chain classes; not a chain itself.

    :cvar event: Name of the chain the subclass joins (``connect``, ``data``,
        ``message``, ``disconnect`` or ``consumer``).
    """

    event: ClassVar[str] = ""

    @classmethod
    def filter(cls, web_socket_instance: Any, data: Any) -> Any:  # pragma: no cover - abstract
        """Handle one event; see the module documentation for return values."""
        raise NotImplementedError


class WebSocketConnectFilter(WebSocketFilter):
    """
    Runs when a client's opening handshake arrives, before the upgrade.

    ``web_socket_instance`` is the connection (not yet in ``users``);
    ``data`` is the handshake request (Autobahn's ``ConnectionRequest``:
    ``path``, ``params``, ``headers``, ``peer``).  Raise :class:`Refuse` to turn
    the client away with an HTTP status.
    """

    event = "connect"


class WebSocketDataFilter(WebSocketFilter):
    """
    Runs when raw bytes arrive on the TCP connection, before WebSocket framing.

    ``data`` is a ``bytearray`` of exactly what was read; a filter may change it
    in place, and what is left is what the WebSocket parser sees.
    """

    event = "data"


class WebSocketMessageFilter(WebSocketFilter):
    """
    Runs when a complete WebSocket message arrives.

    ``data`` is a mutable ``bytearray`` of the payload, shared by every filter
    of the chain, so a later filter sees what an earlier one changed.
    ``web_socket_instance.is_binary`` tells whether it came as a binary frame.
    """

    event = "message"


class WebSocketDisconnectFilter(WebSocketFilter):
    """
    Runs once after an opened connection has closed.

    The connection has already left ``users`` and its token group; ``data``
    is a :class:`fws.connection.CloseInfo` (``code``, ``reason``, ``was_clean``).
    """

    event = "disconnect"


class WebSocketConsumerFilter(WebSocketFilter):
    """
    Runs when a message arrives from a pub/sub subscription.

    ``web_socket_instance`` is the server (the factory: ``users``,
    ``storage_object``, ``broadcast``); ``data`` is a dict with ``type``
    (``"message"``), ``pattern``, ``channel`` (str) and ``data`` (bytes).
    """

    event = "consumer"


CHAIN_BASES: tuple[type[WebSocketFilter], ...] = (
    WebSocketConnectFilter,
    WebSocketDataFilter,
    WebSocketMessageFilter,
    WebSocketDisconnectFilter,
    WebSocketConsumerFilter,
)
"""The five chain base classes, in the order a connection meets them."""

EVENTS: tuple[str, ...] = tuple(base.event for base in CHAIN_BASES)
