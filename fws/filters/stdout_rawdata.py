"""
Print raw bytes as they arrive on a connection, before WebSocket framing::

    --RAWDATA--
    <connection id>: b'...'
"""

from __future__ import annotations

from typing import Any

from fws.filters._stdout import emit
from fws.filters.base import WebSocketDataFilter


class StdoutRawData(WebSocketDataFilter):
    """Print each read as a bytes literal (frames are masked, so rarely readable)."""

    @staticmethod
    def filter(web_socket_instance: Any, data: bytearray) -> None:
        emit("--RAWDATA--", f"{web_socket_instance.id}: {bytes(data)!r}")
