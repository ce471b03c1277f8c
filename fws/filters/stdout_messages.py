"""
Print every message with its sender id::

    --MESSAGE--
    <connection id>: <message>

Binary messages print as a Python bytes literal.
"""

from __future__ import annotations

from typing import Any

from fws.filters._stdout import emit, show
from fws.filters.base import WebSocketMessageFilter


class StdoutMessages(WebSocketMessageFilter):
    """Print the message as it is at this point of the pipeline."""

    @staticmethod
    def filter(web_socket_instance: Any, data: bytearray) -> None:
        emit("--MESSAGE--", f"{web_socket_instance.id}: {show(data, web_socket_instance.is_binary)}")
