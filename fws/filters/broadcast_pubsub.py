"""Every pub/sub message goes to every connected user (valid UTF-8 as text, else binary)."""

from __future__ import annotations

from typing import Any

from fws.filters.base import WebSocketConsumerFilter


class BroadcastPubSub(WebSocketConsumerFilter):
    """Forward ``data["data"]`` of each pub/sub message to all users, framed once."""

    @staticmethod
    def filter(web_socket_instance: Any, data: dict[str, Any]) -> None:
        # Every node receives the pub/sub message itself: deliver locally only
        # (with --history, as a message of the channel's group: fws.history).
        web_socket_instance.broadcast_channel(data["channel"], data["data"])
