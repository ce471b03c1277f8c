"""
fws: a WebSocket server daemon composed from filter modules.

This package is the filter-author API. It deliberately imports neither the
reactor nor Autobahn nor txredisapi: the twistd plugin system and
``setup.cfg`` import it early, before a reactor is chosen.
"""

from fws.filters.base import (
    STOP,
    Refuse,
    StopChain,
    WebSocketConnectFilter,
    WebSocketConsumerFilter,
    WebSocketDataFilter,
    WebSocketDisconnectFilter,
    WebSocketFilter,
    WebSocketMessageFilter,
)

__version__ = "0.1.0"

__all__ = [
    "STOP",
    "Refuse",
    "StopChain",
    "WebSocketConnectFilter",
    "WebSocketConsumerFilter",
    "WebSocketDataFilter",
    "WebSocketDisconnectFilter",
    "WebSocketFilter",
    "WebSocketMessageFilter",
    "__version__",
]
