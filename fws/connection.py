"""
The API filters program against: :class:`Connection` (``web_socket_instance``)
and :class:`Server` (``web_socket_instance.factory``, and the first argument of
a consumer filter).

These are typed descriptions (:class:`typing.Protocol`), not base classes: the
objects fws hands a filter are its Autobahn protocol and factory, whose other
attributes are implementation details that may change in any release. What
is here is the promise; ``mypy`` checks that fws keeps it (see
:func:`fws.service.make_service`), and so does ``tests/test_connection_api.py``
on live objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # importing this module imports neither Autobahn nor Twisted
    from autobahn.websocket.types import ConnectionRequest
    from twisted.internet.interfaces import IReactorTime

    from fws.metrics import FwsMetrics
    from fws.storage_objects import StorageObject

Payload = str | bytes | bytearray | memoryview


@dataclass(frozen=True)
class CloseInfo:
    """
    How a connection ended: what the disconnect chain gets as ``data``.

    The same close as fws's log line ("closed by the server: 4000 kicked")
    describes: the code and reason of the side that closed first.
    """

    #: The close code: fws's when fws closed (``close``, a limit), the
    #: client's otherwise; 1005 when the client's close frame carried none;
    #: 1006 when the client went without a closing handshake.
    code: int
    #: The reason that came with the code (``None`` when none was given), or
    #: how the connection ended uncleanly.
    reason: str | None
    #: Whether the closing handshake completed.
    was_clean: bool


@runtime_checkable
class Connection(Protocol):
    """One client's WebSocket connection, as filters see it."""

    #: Unique id, ``<node id>-<n>``; unique across every fws process too.
    id: str
    #: The token group the connection is in (``broadcast_messages_by_token``), or ``None``.
    token: str | None
    #: The verified JWT claims (``auth_jwt``), or ``None``.
    claims: dict[str, Any] | None
    #: The opening handshake's request: path, params, headers, peer.
    request: ConnectionRequest | None
    #: The client's address (the forwarded one behind a trusted proxy).
    client_ip: str
    #: Whether the message being filtered arrived as a binary frame.
    is_binary: bool
    #: Messages received on this connection so far.
    messages_in: int
    @property
    def send_full(self) -> bool:
        """
        True while the client reads too slowly and what is sent to it is
        dropped (``--slow-consumer-action drop``).
        """

    @property
    def users(self) -> Mapping[str, Connection]:
        """All users of this server process: id -> connection."""

    @property
    def storage_object(self) -> StorageObject:
        """The server's storage object."""

    @property
    def factory(self) -> Server:
        """The server this connection belongs to."""

    @property
    def groups_joined(self) -> set[str]:
        """Every token group this connection has joined (``--max-groups-per-connection``)."""

    def sendMessage(self, payload: Payload, isBinary: bool | None = None) -> None:
        """
        Send one message: ``str`` as text, bytes-like as the kind of the
        message being filtered (or, outside a message chain, text when it is
        valid UTF-8). Does nothing once the connection has closed.
        """

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        """
        Start the closing handshake, with any valid close code (1000-1003,
        1007-1014, 3000-4999; ``ValueError`` for others). The reason is cut
        to 123 bytes of UTF-8, at a character's end.
        """


@runtime_checkable
class Server(Protocol):
    """One fws server, as filters see it (``web_socket_instance.factory``)."""

    #: This node's id: the prefix of its connection ids.
    node_id: str
    #: The reactor the server runs on: what a filter's timers should use
    #: (``reactor.callLater``, ``deferLater(reactor, ...)``), so that a test
    #: (:mod:`fws.testing`, a ``Clock``) can move its time on.
    reactor: IReactorTime
    #: Every resolved option, by its Python name (``options["jwt_audience"]``).
    options: Mapping[str, Any]
    #: The Prometheus registry when metrics are served (``metrics.registry``,
    #: where a filter may register its own), else ``None``.
    metrics: FwsMetrics | None

    @property
    def users(self) -> Mapping[str, Connection]:
        """Every open connection of this process: id -> connection."""

    @property
    def groups(self) -> Mapping[str, Mapping[str, Connection]]:
        """Token group name -> this process's members by id."""

    @property
    def storage_object(self) -> StorageObject:
        """Shared storage and pub/sub."""

    def configured(self, module: str) -> Any:
        """What filter module ``module``'s ``configure(config)`` returned (``KeyError`` if none)."""

    def join_group(self, conn: Any, name: str) -> None:
        """Put ``conn`` in token group ``name`` (on every node), leaving any group it was in."""

    def leave_group(self, conn: Any) -> None:
        """Take ``conn`` out of its token group, if it is in one."""

    def broadcast(self, payload: Payload, isBinary: bool | None = None, *,
                  exclude: Any = None, recipients: Iterable[Any] | None = None) -> int:
        """Send one message to every local user, or to ``recipients``, framing it once."""

    def broadcast_all(self, payload: Payload, isBinary: bool | None = None, *,
                      exclude: Any = None) -> int:
        """Send one message to every user of the logical server (every node)."""

    def broadcast_group(self, group: str, payload: Payload, isBinary: bool | None = None, *,
                        exclude: Any = None) -> int:
        """Send one message to every member of token group ``group``, on every node."""

    def broadcast_channel(self, channel: str, payload: Payload,
                          isBinary: bool | None = None) -> int:
        """
        Send a pub/sub message of ``channel`` to every local user (each node
        gets the message itself); with ``--history`` it is kept and numbered
        as a message of the group ``channel`` (:mod:`fws.history`).
        """


__all__ = ["CloseInfo", "Connection", "Payload", "Server"]
