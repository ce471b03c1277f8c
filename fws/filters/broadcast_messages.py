"""Every message goes to every other connected user (on every node with Redis), framed once."""

from __future__ import annotations

from typing import Any

from fws.filters.base import WebSocketMessageFilter


class BroadcastMessages(WebSocketMessageFilter):
    """Send each message to all users but its sender, text as text, binary as binary."""

    @staticmethod
    def filter(web_socket_instance: Any, data: bytearray) -> None:
        web_socket_instance.factory.broadcast_all(
            bytes(data), web_socket_instance.is_binary, exclude=web_socket_instance
        )
