"""Every message goes back to its sender, text as text and binary as binary."""

from __future__ import annotations

from typing import Any

from fws.filters.base import WebSocketMessageFilter


class Echo(WebSocketMessageFilter):
    """Reply with the (possibly filtered) message itself."""

    @staticmethod
    def filter(web_socket_instance: Any, data: bytearray) -> None:
        web_socket_instance.sendMessage(bytes(data), web_socket_instance.is_binary)
